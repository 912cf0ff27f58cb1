"""Full-size SD3.5 Medium single file (random weights, fp16, bundled CLIP-L/bigG/T5-XXL, Stability's key
names) through the catalog and manager on a GPU, next to diffusers' own `from_single_file` on the same file.

No real weights can be downloaded, so the file holds seeded random weights of the published shapes (the
shipped configs); what this checks is the path a real download takes: header classification, diffusers'
SD3 converters, sizes fitted back from the tensors, module building, and one 1024x1024 denoise. Run on the
lent GPU (diffusers carried as a wheel in .whl/):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/diffusers-*.whl
    PYTHONPATH=/tmp/site:$PWD python3 bench/sd3_single_file_on_device.py --work /tmp/sd3 --out $OUT/sd3.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.sd3_files import write_single_file  # noqa: E402
from webui.models.catalog import CheckpointCatalog  # noqa: E402
from webui.models.hashing import HashCache  # noqa: E402
from webui.models.manager import ModelManager  # noqa: E402
from webui.models.model_configs import config_dir, load_component_config  # noqa: E402

FILE_NAME = "sd3.5_medium_incl_clips_t5xxlfp16.safetensors"


def random_medium_modules() -> dict[str, torch.nn.Module]:
    """The shipped (published SD3.5 Medium) configs, randomly initialised on the GPU in fp16, then on the CPU."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16)
    modules: dict[str, torch.nn.Module] = {}
    with torch.device("cuda"):
        modules["transformer"] = diffusers.SD3Transformer2DModel.from_config(load_component_config("sd3", "transformer"))
        modules["vae"] = diffusers.AutoencoderKL.from_config(load_component_config("sd3", "vae"))
        for name in ("text_encoder", "text_encoder_2"):
            config = {k: v for k, v in load_component_config("sd3", name).items() if k != "architectures"}
            modules[name] = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_dict(config))
        modules["text_encoder_3"] = transformers.T5EncoderModel(
            transformers.T5Config.from_dict(load_component_config("sd3", "text_encoder_3")))
    torch.set_default_dtype(torch.float32)
    modules["text_encoder"].text_projection.weight.data = torch.eye(768, dtype=torch.float16, device="cuda")
    return {name: module.to("cpu").eval() for name, module in modules.items()}


def timed_denoise(pipeline, steps: int) -> tuple[float, bool]:
    generator = torch.Generator("cuda").manual_seed(1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipeline("a photo of a cat", negative_prompt="blurry", num_inference_steps=steps, height=1024,
                      width=1024, guidance_scale=4.5, generator=generator, output_type="np").images
    torch.cuda.synchronize()
    return time.perf_counter() - start, bool(torch.isfinite(torch.from_numpy(images)).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name()}
    checkpoints = args.work / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    modules = random_medium_modules()
    path = write_single_file(checkpoints / FILE_NAME, modules, dtype=torch.float16)
    report["file_gb"] = round(path.stat().st_size / 1e9, 2)
    report["write_s"] = round(time.perf_counter() - start, 1)

    catalog = CheckpointCatalog(checkpoints, HashCache(args.work / "hashes.json"))
    record = catalog.refresh()[0]
    report["label"], report["variant"] = record.architecture.label, record.architecture.variant
    manager = ModelManager(catalog, torch.device("cuda"), torch.float16)
    start = time.perf_counter()
    with manager.checkout(manager.state_for(record.name)) as model:
        report["load_s"] = round(time.perf_counter() - start, 1)
        pipeline = model.pipeline
        report["pipeline"] = type(pipeline).__name__
        report["transformer_tensors"] = sum(t.numel() for t in pipeline.transformer.state_dict().values())
        report["weights_equal_source"] = {
            name: all(torch.equal(getattr(pipeline, name).state_dict()[key].cpu().to(value.dtype), value)
                      for key, value in module.state_dict().items() if key in getattr(pipeline, name).state_dict())
            for name, module in modules.items()}
        timed_denoise(pipeline, 2)  # warm-up
        seconds, finite = timed_denoise(pipeline, args.steps)
        report["app_s_per_image"], report["app_image_finite"] = round(seconds, 2), finite
        ours = {key: value.cpu() for key, value in pipeline.transformer.state_dict().items()}
    del model, pipeline, manager
    torch.cuda.empty_cache()

    import diffusers

    try:
        reference = diffusers.StableDiffusion3Pipeline.from_single_file(
            str(path), config=str(config_dir("sd3")), local_files_only=True, torch_dtype=torch.float16).to("cuda")
        theirs = reference.transformer.state_dict()
        report["diffusers_from_single_file_transformer_equal"] = all(
            torch.equal(ours[key], theirs[key].cpu()) for key in theirs) and set(ours) == set(theirs)
        timed_denoise(reference, 2)
        seconds, finite = timed_denoise(reference, args.steps)
        report["diffusers_s_per_image"], report["diffusers_image_finite"] = round(seconds, 2), finite
    except Exception as error:  # a report line, not a crash: the app's path above is what is checked
        report["diffusers_from_single_file_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
