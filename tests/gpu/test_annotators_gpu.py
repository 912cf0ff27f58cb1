"""On the GPU machine (controlnet_aux installed, CUDA): the controlnet extension's annotators that need weights.

For each one, a file of RANDOM weights of the exact network controlnet_aux builds is written in
lllyasviel/Annotators' layout (the file name, and the key prefixes / wrapping dicts controlnet_aux's own
loaders expect) into a data folder's annotator folder. The product's runner (weights-only loading) must give,
on CUDA, a map of the input's size equal to what controlnet_aux's own `from_pretrained` loading gives, so the
layout is the one its loader reads and both load the same weights. Without the file the reason names it. One
server (`--device cuda`) then runs a txt2img job with a ControlNet unit on a weight annotator.

Run there with `python3 -m pytest tests/gpu/test_annotators_gpu.py -m gpu -rs`; skipped without CUDA or
where controlnet_aux does not import.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageDraw

from tests.conftest import start_server, stop_server, with_default_model
from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm
from webui.extensions import api
from webui.extensions.loader import ExtensionSwitches, load_extensions, module_name
from webui.extensions.registry import LOADED, ExtensionRegistry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")

BUILTIN = Path(__file__).resolve().parents[2] / "extensions-builtin"
SIZE = 512
RESOLUTION = 384           # the detectors work at 384; the map must come back at the input's 512


def _aux(module: str) -> types.ModuleType:
    return importlib.import_module(f"controlnet_aux.{module}")


@pytest.fixture(scope="module")
def annotators(tmp_path_factory) -> types.ModuleType:
    """The extension's annotators module, loaded through the real extension loader; skips without controlnet_aux."""
    try:
        importlib.import_module("controlnet_aux")
    except Exception as error:  # noqa: BLE001 - whatever stops the import is the skip reason
        pytest.skip(f"controlnet_aux does not import: {type(error).__name__}: {error}")
    tmp = tmp_path_factory.mktemp("annotators-ext")
    registry = ExtensionRegistry(api.API_VERSION)
    load_extensions(registry, [(BUILTIN, True)], ExtensionSwitches(tmp / "extensions.json"),
                    lambda record: api.ExtensionSetup(registry, record, tmp / "extension-data"))
    assert registry.records["controlnet"].state == LOADED, registry.records["controlnet"].problem
    return sys.modules[f"{module_name('controlnet')}.annotators"]


def _module_prefixed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as a DataParallel model saves them (the loaders strip `module.`)."""
    return {f"module.{key}": value for key, value in state.items()}


def _hed() -> dict[str, Any]:
    return {"ControlNetHED.pth": _aux("hed").ControlNetHED_Apache2().state_dict()}


def _pidinet() -> dict[str, Any]:
    return {"table5_pidinet.pth": {"state_dict": _module_prefixed(_aux("pidi.model").pidinet().state_dict())}}


def _lineart() -> dict[str, Any]:
    generator = _aux("lineart").Generator
    return {"sk_model.pth": generator(3, 1, 3).state_dict(), "sk_model2.pth": generator(3, 1, 3).state_dict()}


def _lineart_anime() -> dict[str, Any]:
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = _aux("lineart_anime").UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    return {"netG.pth": _module_prefixed(network.state_dict())}


def _openpose() -> dict[str, Any]:
    # The body file's keys lack the network's first name part (`conv1_1.weight` for `model0.conv1_1.weight`).
    state = _aux("open_pose.model").bodypose_model().state_dict()
    return {"body_pose_model.pth": {key.split(".", 1)[1]: value for key, value in state.items()}}


def _midas() -> dict[str, Any]:
    network = _aux("midas.midas.dpt_depth").DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    return {"dpt_hybrid-midas-501f0c75.pt": network.state_dict()}


def _normal_bae() -> dict[str, Any]:
    options = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                    importance_ratio=0.7)
    return {"scannet.pt": {"model": _module_prefixed(_aux("normalbae.nets.NNET").NNET(options).state_dict())}}


def _mlsd() -> dict[str, Any]:
    return {"mlsd_large_512_fp32.pth": _aux("mlsd.models.mbv2_mlsd_large").MobileV2_MLSD_Large().state_dict()}


def _body_only(folder: Path) -> Any:
    """controlnet_aux's body estimator loading the file itself (its OpenposeDetector.from_pretrained would also
    want the hand and face files)."""
    body = _aux("open_pose.body").Body(str(folder / "body_pose_model.pth"))
    return _aux("open_pose").OpenposeDetector(body.to(torch.device("cuda")), None, None)


def _on_cuda(load: Callable[[str], Any]) -> Callable[[Path], Any]:
    return lambda folder: load(str(folder)).to(torch.device("cuda"))


# name -> (the files in lllyasviel/Annotators' layout, controlnet_aux's own loading of the folder)
CASES: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[Path], Any]]] = {
    "softedge_hed": (_hed, _on_cuda(lambda path: _aux("hed").HEDdetector.from_pretrained(path))),
    "softedge_pidinet": (_pidinet, _on_cuda(lambda path: _aux("pidi").PidiNetDetector.from_pretrained(path))),
    "lineart_realistic": (_lineart, _on_cuda(lambda path: _aux("lineart").LineartDetector.from_pretrained(path))),
    "lineart_coarse": (_lineart, _on_cuda(lambda path: _aux("lineart").LineartDetector.from_pretrained(path))),
    "lineart_anime": (_lineart_anime,
                      _on_cuda(lambda path: _aux("lineart_anime").LineartAnimeDetector.from_pretrained(path))),
    "openpose": (_openpose, _body_only),
    "depth_midas": (_midas, _on_cuda(lambda path: _aux("midas").MidasDetector.from_pretrained(path))),
    "normal_bae": (_normal_bae, _on_cuda(lambda path: _aux("normalbae").NormalBaeDetector.from_pretrained(path))),
    "mlsd": (_mlsd, _on_cuda(lambda path: _aux("mlsd").MLSDdetector.from_pretrained(path))),
}


def scene() -> Image.Image:
    """A 512x512 picture with shapes and lines (something for edge, line and depth detectors to see)."""
    image = Image.new("RGB", (SIZE, SIZE), (40, 60, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 80, 260, 280), fill=(220, 40, 40))
    draw.rectangle((300, 260, 470, 460), fill=(240, 220, 60))
    for offset in range(0, SIZE, 64):
        draw.line((offset, 0, SIZE - offset, SIZE), fill=(255, 255, 255), width=3)
    return image


def write_files(folder: Path, files: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        torch.save(content, folder / name)


@pytest.mark.parametrize("name", list(CASES))
def test_each_annotator_runs_on_cuda_from_a_random_weight_file_and_matches_controlnet_aux(annotators, name,
                                                                                          tmp_path):
    make_files, reference_loader = CASES[name]
    folder = tmp_path / "models" / "ControlNet" / "annotators"
    found = annotators.Annotators(folder)
    missing = found.reason(name)
    for file in annotators.ANNOTATORS[name].files:
        assert file in missing and str(folder) in missing
    assert "controlnet_aux" not in missing          # the package imports here: only the file is missing

    torch.manual_seed(0)
    write_files(folder, make_files())
    assert found.reason(name) == "" and name in found.usable()
    cuda = torch.device("cuda")
    result = found.run(name, scene(), RESOLUTION, -1, -1, cuda)
    assert result.size == (SIZE, SIZE) and result.mode == "RGB"
    assert found.devices_of(name) == {"cuda"}

    annotator = annotators.ANNOTATORS[name]
    reference = reference_loader(folder)     # controlnet_aux's own loading of the same folder, on CUDA
    with torch.inference_mode():
        expected = annotator.call(reference, scene(), RESOLUTION, annotator.default_a, annotator.default_b)
    expected = expected.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    difference = np.abs(np.asarray(result, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    print(f"{name}: map {result.size}, mean {np.asarray(result).mean():.1f}, differs from controlnet_aux's own "
          f"loading by {difference.mean():.3f} on average (max {difference.max()})")
    assert difference.mean() < 0.5


def test_a_file_of_another_network_is_refused_with_the_reason(annotators, tmp_path):
    folder = tmp_path / "annotators"
    write_files(folder, {"ControlNetHED.pth": _mlsd()["mlsd_large_512_fp32.pth"]})
    with pytest.raises(annotators.AnnotatorUnavailable, match="ControlNetHED.pth does not hold the weights"):
        annotators.Annotators(folder).run("softedge_hed", scene(), RESOLUTION, -1, -1, torch.device("cuda"))


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_txt2img_job_uses_a_weight_annotator_on_the_server(annotators, tmp_path, default_model_folder):
    data = with_default_model(tmp_path / "data", default_model_folder)
    write_ldm(data / "models" / "ControlNet" / "control_v11p_sd15_softedge.safetensors",
              tiny_controlnet(sd1_unet_config(), seed=3, scale=8))
    torch.manual_seed(0)
    write_files(data / "models" / "ControlNet" / "annotators", _hed())
    server = start_server(data, "--nowebui", "--device", "cuda")   # API only: the GPU machine has no gradio
    try:
        modules = requests.get(server.url + "/controlnet/module_list", timeout=60).json()
        assert "softedge_hed" in modules["module_list"] and "softedge_hed" not in modules["unavailable"]
        assert "dpt_hybrid-midas-501f0c75.pt" in modules["unavailable"]["depth_midas"]
        unit = {"enabled": True, "image": _b64(scene()), "module": "softedge_hed",
                "model": "control_v11p_sd15_softedge", "weight": 1.0, "processor_res": 256}
        body = {"prompt": "a red circle on a blue background", "width": 128, "height": 128, "steps": 4, "seed": 7,
                "sampler_name": "Euler", "alwayson_scripts": {"controlnet": {"args": [unit]}}}
        answer = requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        assert 'Module: softedge_hed' in answer.json()["info"]
        refused = requests.post(server.url + "/sdapi/v1/txt2img", json={
            **body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "module": "depth_midas"}]}}}, timeout=300)
        assert refused.status_code == 422 and "dpt_hybrid-midas-501f0c75.pt" in refused.json()["detail"]
        detected = requests.post(server.url + "/controlnet/detect", json={
            "controlnet_module": "softedge_hed", "controlnet_input_images": [_b64(scene())],
            "controlnet_processor_res": 256}, timeout=120)
        assert detected.status_code == 200, detected.text
        shown = Image.open(io.BytesIO(base64.b64decode(detected.json()["images"][0])))
        assert shown.size == (SIZE, SIZE)
    finally:
        stop_server(server)
