"""Full-size Flux.1 dev in the layout people download for ComfyUI/Forge (random weights): a BFL-named
float8_e4m3fn transformer (`flux1-dev-fp8.safetensors`) in models/unet, `models/VAE/ae.safetensors`, and
`clip_l.safetensors` + `t5xxl_fp8_e4m3fn.safetensors` in models/text_encoder, through the catalog and the
manager on a GPU in bf16, next to diffusers' own `FluxTransformer2DModel.from_single_file` on the same file.

No real weights can be downloaded, so the files hold seeded random weights of the published shapes (the
shipped configs); what this checks is the path a real download takes at full width (3072, where diffusers'
converter splits the single-stream blocks itself): header classification, companion lookup, fp8 upcast,
sizes fitted back from the tensors, module building, one 1024x1024 denoise. Run on the lent GPU (wheels of
the versions in .venv carried in .whl/):

    . bench/device_env.sh && python3 bench/flux_single_file_on_device.py --work /tmp/flux --out $OUT/flux.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.flux_files import ae_state, clip_l_file_state, save, t5_file_state, transformer_to_bfl  # noqa: E402
from webui.models.catalog import CheckpointCatalog  # noqa: E402
from webui.models.hashing import HashCache  # noqa: E402
from webui.models.manager import ModelManager  # noqa: E402
from webui.models.model_configs import config_dir, load_component_config  # noqa: E402

FP8 = torch.float8_e4m3fn


def on_gpu(build) -> torch.nn.Module:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        module = build()
    torch.set_default_dtype(torch.float32)
    return module


def write_files(models: Path) -> dict[str, float]:
    """The four files, each built on the GPU, written, and freed before the next (GPU and host memory)."""
    import diffusers
    import transformers

    sizes = {}
    transformer = on_gpu(lambda: diffusers.FluxTransformer2DModel.from_config(
        load_component_config("flux", "transformer")))
    state = {key: value.to(FP8).cpu() for key, value in transformer_to_bfl(transformer.state_dict(), "").items()}
    del transformer
    path = save(state, models / "unet" / "flux1-dev-fp8.safetensors", FP8)
    sizes["transformer_gb"] = round(path.stat().st_size / 1e9, 2)
    del state
    t5 = on_gpu(lambda: transformers.T5EncoderModel(transformers.T5Config.from_dict(
        load_component_config("flux", "text_encoder_2"))))
    path = save({k: v.to(FP8).cpu() for k, v in t5_file_state(t5).items()},
                models / "text_encoder" / "t5xxl_fp8_e4m3fn.safetensors", FP8)
    sizes["t5_gb"] = round(path.stat().st_size / 1e9, 2)
    del t5
    clip_config = {k: v for k, v in load_component_config("flux", "text_encoder").items() if k != "architectures"}
    clip = on_gpu(lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(clip_config)))
    state = clip_l_file_state(clip.cpu())
    state["text_projection.weight"] = torch.eye(768)
    save(state, models / "text_encoder" / "clip_l.safetensors", torch.bfloat16)
    vae = on_gpu(lambda: diffusers.AutoencoderKL.from_config(load_component_config("flux", "vae")))
    save(ae_state(vae.cpu()), models / "VAE" / "ae.safetensors", torch.bfloat16)
    del clip, vae
    gc.collect()
    torch.cuda.empty_cache()
    return sizes


def timed_denoise(pipeline, steps: int) -> tuple[float, bool]:
    generator = torch.Generator("cuda").manual_seed(1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipeline("a photo of a cat", num_inference_steps=steps, height=1024, width=1024, guidance_scale=3.5,
                      generator=generator, output_type="np").images
    torch.cuda.synchronize()
    return time.perf_counter() - start, bool(torch.isfinite(torch.from_numpy(images)).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name()}
    models = args.work / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report.update(write_files(models))
    report["write_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report), flush=True)  # progress, in case the run is cut off

    catalog = CheckpointCatalog(models / "Stable-diffusion", HashCache(args.work / "hashes.json"))
    record = catalog.find("unet/flux1-dev-fp8")
    report["label"], report["usable"] = record.architecture.label, record.usable
    manager = ModelManager(catalog, torch.device("cuda"), torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with manager.checkout(manager.state_for(record.name)) as model:
        report["load_s"] = round(time.perf_counter() - start, 1)
        report["notes"] = list(model.warnings)
        pipeline = model.pipeline
        report["pipeline"] = type(pipeline).__name__
        report["transformer_params"] = sum(t.numel() for t in pipeline.transformer.parameters())
        timed_denoise(pipeline, 2)  # warm-up
        seconds, finite = timed_denoise(pipeline, args.steps)
        report["s_per_image"], report["image_finite"] = round(seconds, 2), finite
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        print(json.dumps(report), flush=True)
        ours = pipeline.transformer.state_dict()
        import diffusers

        try:
            reference = diffusers.FluxTransformer2DModel.from_single_file(
                str(record.path), config=str(config_dir("flux")), subfolder="transformer", local_files_only=True,
                torch_dtype=torch.bfloat16).to("cuda")
            theirs = reference.state_dict()
            report["diffusers_from_single_file_equal"] = set(ours) == set(theirs) and all(
                torch.equal(ours[key], theirs[key]) for key in theirs)
        except Exception as error:  # a report line, not a crash: the app's path above is what is checked
            report["diffusers_from_single_file_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
