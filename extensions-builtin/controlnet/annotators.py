"""ControlNet preprocessors that need annotator weights, run through `controlnet_aux` (0.0.10's detectors).

The weights are the files of the Hugging Face repository lllyasviel/Annotators, put by the user in the
annotator folder (`<ControlNet folder>/annotators/`, or sd-webui-controlnet's
`extensions/sd-webui-controlnet/annotator/downloads/<name>/`). Nothing is ever downloaded.

Loading is weights-only: this module reads each file with `torch.load(..., weights_only=True)` itself,
builds controlnet_aux's own network class and hands it to the detector's constructor, instead of calling
`from_pretrained`, whose `torch.load` would unpickle whatever a file holds on older torch. A file that holds
more than tensors is refused. Loaded detectors are kept per (annotator, device), a few at most.

An annotator is usable when controlnet_aux imports (it needs torchvision and timm) and its files are present;
otherwise `Annotators.reason` says exactly which is missing: the package (with the import error) or the file
(its name, where to get it and the folder to put it in).
"""

from __future__ import annotations

import functools
import importlib
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SOURCE = "https://huggingface.co/lllyasviel/Annotators"
PACKAGE = "controlnet_aux==0.0.10"
FOLDER_NAME = "annotators"                 # under the ControlNet folder
CACHE_SIZE = 2                              # loaded detectors kept (a depth model is ~500 MB)

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Built:
    """A loaded detector and the networks it runs (moved to the job's device together)."""

    detector: Any
    networks: tuple[torch.nn.Module, ...]


@dataclass(frozen=True)
class WeightAnnotator:
    """A preprocessor with sd-webui-controlnet's name whose detector needs weight `files`.

    `build` makes the detector from controlnet_aux and the files' weights-only state dicts; `call` runs it on
    an RGB image at a resolution with the unit's two parameters and returns a PIL map."""

    name: str
    files: tuple[str, ...]
    build: Callable[[list[dict[str, Any]]], Built]
    call: Callable[[Any, Image.Image, int, float, float], Image.Image]
    default_a: float = -1
    default_b: float = -1
    label_a: str = ""
    label_b: str = ""
    downloads: str = ""        # sd-webui-controlnet's `annotator/downloads/<name>/` folder
    extra: dict[str, Any] = field(default_factory=dict)


def _aux(module: str) -> types.ModuleType:
    return importlib.import_module(f"controlnet_aux.{module}")


def _strip(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}


class _OtherWeights(ValueError):
    """The file's tensors are not the network's (another annotator's file under this name, or damaged)."""


def _loaded(network: torch.nn.Module, state: Any) -> torch.nn.Module:
    try:
        network.load_state_dict(dict(state), strict=True)
    except (RuntimeError, TypeError, ValueError) as error:   # missing/unexpected keys, other shapes
        raise _OtherWeights(str(error)[:300]) from None
    return network.float().eval()


def _hed(states: list[dict[str, Any]]) -> Built:
    hed = _aux("hed")
    network = _loaded(hed.ControlNetHED_Apache2(), states[0])
    return Built(hed.HEDdetector(network), (network,))


def _pidinet(states: list[dict[str, Any]]) -> Built:
    pidi, model = _aux("pidi"), _aux("pidi.model")
    network = _loaded(model.pidinet(), _strip(states[0]["state_dict"]))
    return Built(pidi.PidiNetDetector(network), (network,))


def _lineart(states: list[dict[str, Any]]) -> Built:
    lineart = _aux("lineart")
    network = _loaded(lineart.Generator(3, 1, 3), states[0])
    return Built(lineart.LineartDetector(network, network), (network,))   # one file: the fine or the coarse net


def _lineart_anime(states: list[dict[str, Any]]) -> Built:
    anime = _aux("lineart_anime")
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = _loaded(anime.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False), _strip(states[0]))
    return Built(anime.LineartAnimeDetector(network), (network,))


def _openpose(states: list[dict[str, Any]]) -> Built:
    """Body only: controlnet_aux's `Body(path)` would torch.load the file itself, so its estimator is made
    empty and given the network this module loaded (the file's keys lack the network's first name part)."""
    open_pose, body_module, model = _aux("open_pose"), _aux("open_pose.body"), _aux("open_pose.model")
    network = model.bodypose_model()
    network = _loaded(network, _aux("open_pose.util").transfer(network, states[0]))
    body = object.__new__(body_module.Body)
    body.model = network
    return Built(open_pose.OpenposeDetector(body, None, None), (network,))


def _midas(states: list[dict[str, Any]]) -> Built:
    """DPT-Hybrid: the network MidasDetector wraps (its MiDaSInference only adds no_grad, which the detector's
    call already has)."""
    midas, dpt = _aux("midas"), _aux("midas.midas.dpt_depth")
    state = states[0]["model"] if "optimizer" in states[0] else states[0]
    network = _loaded(dpt.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True), state)
    return Built(midas.MidasDetector(network), (network,))


def _normal_bae(states: list[dict[str, Any]]) -> Built:
    normal, nnet = _aux("normalbae"), _aux("normalbae.nets.NNET")
    options = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                    importance_ratio=0.7)
    network = _loaded(nnet.NNET(options), _strip(states[0]["model"]))
    return Built(normal.NormalBaeDetector(network), (network,))


def _mlsd(states: list[dict[str, Any]]) -> Built:
    mlsd, large = _aux("mlsd"), _aux("mlsd.models.mbv2_mlsd_large")
    network = _loaded(large.MobileV2_MLSD_Large(), states[0])
    return Built(mlsd.MLSDdetector(network), (network,))


def _plain(detector: Any, image: Image.Image, resolution: int, a: float, b: float) -> Image.Image:
    return detector(image, detect_resolution=resolution, image_resolution=resolution, output_type="pil")


def _edges(detector: Any, image: Image.Image, resolution: int, a: float, b: float) -> Image.Image:
    return detector(image, detect_resolution=resolution, image_resolution=resolution, safe=False, scribble=False,
                    output_type="pil")


ANNOTATORS: dict[str, WeightAnnotator] = {annotator.name: annotator for annotator in (
    WeightAnnotator("softedge_hed", ("ControlNetHED.pth",), _hed, _edges, downloads="hed"),
    WeightAnnotator("softedge_pidinet", ("table5_pidinet.pth",), _pidinet, _edges, downloads="pidinet"),
    WeightAnnotator("lineart_realistic", ("sk_model.pth",), _lineart,
                    lambda d, image, r, a, b: d(image, coarse=False, detect_resolution=r, image_resolution=r,
                                                output_type="pil"), downloads="lineart"),
    WeightAnnotator("lineart_coarse", ("sk_model2.pth",), _lineart,
                    lambda d, image, r, a, b: d(image, coarse=True, detect_resolution=r, image_resolution=r,
                                                output_type="pil"), downloads="lineart"),
    WeightAnnotator("lineart_anime", ("netG.pth",), _lineart_anime, _plain, downloads="lineart_anime"),
    WeightAnnotator("openpose", ("body_pose_model.pth",), _openpose,
                    lambda d, image, r, a, b: d(image, detect_resolution=r, image_resolution=r, include_body=True,
                                                include_hand=False, include_face=False, output_type="pil"),
                    downloads="openpose"),
    WeightAnnotator("depth_midas", ("dpt_hybrid-midas-501f0c75.pt",), _midas, _plain, downloads="midas"),
    WeightAnnotator("normal_bae", ("scannet.pt",), _normal_bae, _plain, downloads="normal_bae"),
    WeightAnnotator("mlsd", ("mlsd_large_512_fp32.pth",), _mlsd,
                    lambda d, image, r, a, b: d(image, thr_v=a, thr_d=b, detect_resolution=r, image_resolution=r,
                                                output_type="pil"),
                    0.1, 0.1, "MLSD Value Threshold", "MLSD Distance Threshold", downloads="mlsd"),
)}
# sd-webui-controlnet names these annotators also go by.
ALIASES = {"hed": "softedge_hed", "pidinet": "softedge_pidinet", "lineart": "lineart_realistic",
           "depth": "depth_midas"}
# Annotators sd-webui-controlnet has that are not run here, with why.
NOT_RUN = {
    "depth_zoe": "its controlnet_aux detector builds its MiDaS backbone through torch.hub from GitHub",
    "openpose_full": "only the body detector (openpose) is run here",
    "seg_ofade20k": "controlnet_aux has no UniFormer/OneFormer segmenter",
}


class AnnotatorUnavailable(ValueError):
    """A weight annotator that cannot run here; the message says what is missing and where it goes."""


class Annotators:
    """The weight annotators of one app: where their files are, whether controlnet_aux imports, and the
    detectors loaded lately. One object per app (nothing shared between app instances)."""

    def __init__(self, folder: Path, extra_folders: tuple[Path, ...] = ()):
        self.folder = folder
        self.extra_folders = extra_folders     # e.g. <data>/extensions/sd-webui-controlnet/annotator/downloads
        self._import_problem: str | None = None
        self._imported = False
        self._detectors: OrderedDict[tuple[str, str], Built] = OrderedDict()
        self._lock = threading.Lock()

    def package_problem(self) -> str:
        """"" when controlnet_aux imports, else why not (checked once per app: an import is slow)."""
        with self._lock:
            if not self._imported:
                try:
                    importlib.import_module("controlnet_aux")
                except Exception as error:   # noqa: BLE001 - any failure (a broken torchvision) is the reason
                    self._import_problem = f"{type(error).__name__}: {error}"
                self._imported = True
            return self._import_problem or ""

    def file_path(self, annotator: WeightAnnotator, name: str) -> Path | None:
        """Where `name` is: the annotator folder, or sd-webui-controlnet's downloads/<its folder>/."""
        candidates = [self.folder / name] + [folder / annotator.downloads / name for folder in self.extra_folders]
        return next((path for path in candidates if path.is_file()), None)

    def reason(self, name: str) -> str:
        """"" when annotator `name` can run, else exactly what is missing."""
        if name in NOT_RUN:
            return (f"preprocessor {name!r} is not available here: {NOT_RUN[name]}; send an already preprocessed "
                    "map with module 'none' instead")
        annotator = ANNOTATORS[name]
        missing = [file for file in annotator.files if self.file_path(annotator, file) is None]
        problems = []
        package = self.package_problem()
        if package:
            problems.append(f"the {PACKAGE} package, which does not import here ({package}; it also needs "
                            "torchvision and timm)")
        if missing:
            problems.append(f"the annotator weights {', '.join(missing)} (from {SOURCE}) in {self.folder}")
        if not problems:
            return ""
        return (f"preprocessor {name!r} needs {' and '.join(problems)}; "
                "or send an already preprocessed map with module 'none'")

    def usable(self) -> list[str]:
        return [name for name in ANNOTATORS if not self.reason(name)]

    def unavailable(self) -> dict[str, str]:
        """Every weight annotator that cannot run, with the reason."""
        names = list(ANNOTATORS) + list(NOT_RUN)
        return {name: reason for name in names if (reason := self.reason(name))}

    def _detector(self, annotator: WeightAnnotator, device: torch.device) -> Built:
        key = (annotator.name, str(device))
        with self._lock:
            if key in self._detectors:
                self._detectors.move_to_end(key)
                return self._detectors[key]
        states = [read_weights(self.file_path(annotator, name)) for name in annotator.files]
        try:
            built = annotator.build(states)
        except (_OtherWeights, KeyError) as error:    # KeyError: a file without the dict its loader unwraps
            raise AnnotatorUnavailable(f"{', '.join(annotator.files)} does not hold the weights controlnet_aux's "
                                       f"{annotator.name} network takes: {error}") from None
        except Exception as error:   # noqa: BLE001 - controlnet_aux failing to build its network here
            raise AnnotatorUnavailable(f"controlnet_aux could not build its {annotator.name} network here "
                                       f"({type(error).__name__}: {str(error)[:300]})") from None
        for network in built.networks:
            network.to(device)
        with self._lock:
            self._detectors[key] = built
            while len(self._detectors) > CACHE_SIZE:
                self._detectors.popitem(last=False)
        return built

    def run(self, name: str, image: Image.Image, resolution: int, a: float, b: float,
            device: torch.device) -> Image.Image:
        """The control map of `image` by annotator `name` on `device`, as an RGB image of the input's size
        (the detector works with the shorter side at `resolution`)."""
        problem = self.reason(name)
        if problem:
            raise AnnotatorUnavailable(problem)
        annotator = ANNOTATORS[name]
        built = self._detector(annotator, device)
        a = annotator.default_a if a == -1 else a
        b = annotator.default_b if b == -1 else b
        with torch.inference_mode():
            result = annotator.call(built.detector, image.convert("RGB"), resolution, a, b)
        result = result.convert("RGB")
        if result.size != image.size:
            result = result.resize(image.size, Image.Resampling.BILINEAR)
        return result

    def devices_of(self, name: str) -> set[str]:
        """The device types annotator `name` is loaded on now (e.g. {"cuda"})."""
        with self._lock:
            return {str(next(network.parameters()).device.type) for (loaded, _), built in self._detectors.items()
                    if loaded == name for network in built.networks}


def read_weights(path: Path | None) -> dict[str, Any]:
    """The file's tensors, read without running any pickled code (a file that needs more is refused)."""
    if path is None:
        raise AnnotatorUnavailable("an annotator file disappeared while it was being loaded")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # noqa: BLE001 - pickle errors of many kinds: the file is refused either way
        raise AnnotatorUnavailable(f"{path.name} in {path.parent} holds more than weights or is damaged, so it is "
                                   f"not loaded ({type(error).__name__}: {str(error)[:200]})") from None
