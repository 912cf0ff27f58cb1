"""txt2img speed and checkpoint-switch time: SD Studio's engine vs plain diffusers, in the same run.

Builds full-size SD1.5 (and optionally SDXL) models with random weights from the shipped configs,
writes them as A1111-layout single-file checkpoints, and times:
  - plain diffusers `StableDiffusionPipeline.__call__` on the same modules (the baseline),
  - SD Studio's queue + manager + run_txt2img on the single-file checkpoint,
  - a same-architecture checkpoint switch (weights copied from pinned RAM into resident modules).
Prints one JSON object (and writes it to --out). Run on a GPU machine:

    python bench/txt2img_speed.py --device cuda --families sd1 sdxl --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safetensors.torch import save_file  # noqa: E402

from webui.context import build_context  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.models.ldm_conversion import diffusers_to_ldm  # noqa: E402
from webui.models.model_configs import load_component_config  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402

SIZES = {"sd1": 512, "sdxl": 1024}


def random_components(family: str, device: str, seed: int) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):
        components = {
            "unet": UNet2DConditionModel.from_config(load_component_config(family, "unet")),
            "vae": AutoencoderKL.from_config(load_component_config(family, "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(load_component_config(family, "text_encoder"))),
        }
        if family == "sdxl":
            components["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(load_component_config(family, "text_encoder_2")))
    # Random init gives huge activations in deep nets; scale weights down so fp16 stays finite.
    with torch.no_grad():
        for module in components.values():
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(0.5)
    return {name: module.half().eval() for name, module in components.items()}


def write_single_file(components: dict[str, torch.nn.Module], family: str, path: Path) -> None:
    state_dicts = {name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in components.items()}
    save_file({k: v.contiguous() for k, v in diffusers_to_ldm(state_dicts, family).items()}, str(path))


def plain_pipeline(components: dict[str, torch.nn.Module], family: str):
    """Plain diffusers' pipeline around the modules, with DPM++ 2M Karras (the baseline every bench compares to)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from webui.models.model_configs import config_dir

    scheduler = DPMSolverMultistepScheduler.from_config(load_component_config(family, "scheduler"), use_karras_sigmas=True)
    tokenizer = CLIPTokenizer.from_pretrained(config_dir(family) / "tokenizer")
    if family == "sdxl":
        pipeline = StableDiffusionXLPipeline(
            tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(config_dir(family) / "tokenizer_2"),
            scheduler=scheduler, **components)
    else:
        pipeline = StableDiffusionPipeline(tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False, **components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def plain_diffusers_seconds(components, family: str, size: int, steps: int, repeats: int) -> float:
    pipeline = plain_pipeline(components, family)
    run = lambda: pipeline("a photo of a red circle", negative_prompt="blurry", height=size, width=size,  # noqa: E731
                           num_inference_steps=steps, guidance_scale=7.0,
                           generator=torch.Generator("cpu").manual_seed(1))
    run()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def studio_seconds(ctx, checkpoint: str, size: int, steps: int, repeats: int) -> float:
    request = Txt2ImgRequest(prompt="a photo of a red circle", negative_prompt="blurry", width=size, height=size,
                             steps=steps, seed=1, sampler_name="DPM++ 2M", checkpoint=checkpoint, save_images=False)
    ctx.generation.submit_txt2img(request).result()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        ctx.generation.submit_txt2img(request).result()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def timed_select(ctx, name: str) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    ctx.models.select_checkpoint(name)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def switch_seconds(ctx, loaded: str, other: str, rounds: int) -> dict[str, float]:
    """Cold: `other` read from disk and converted; warm: both in the RAM cache, weights copied in place."""
    cold = timed_select(ctx, other)
    warm = sorted(timed_select(ctx, name) for _ in range(rounds) for name in (loaded, other))
    return {"cold_switch_s": cold, "warm_switch_median_s": warm[len(warm) // 2],
            "copied": ctx.manager.switch_count["copied"], "rebuilt": ctx.manager.switch_count["rebuilt"]}


def bench_family(family: str, device: str, steps: int, repeats: int, data_dir: Path) -> dict:
    size = SIZES[family]
    checkpoints = data_dir / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    components = random_components(family, device, seed=1)
    write_single_file(components, family, checkpoints / f"{family}-a.safetensors")
    baseline = plain_diffusers_seconds(components, family, size, steps, repeats)
    del components
    write_single_file(random_components(family, "cpu", seed=2), family, checkpoints / f"{family}-b.safetensors")
    torch.cuda.empty_cache()
    ctx = build_context(settings_from_args(["--data-dir", str(data_dir), "--device", device, "--precision", "fp16"]))
    try:
        studio = studio_seconds(ctx, f"{family}-a", size, steps, repeats)
        switching = switch_seconds(ctx, f"{family}-a", f"{family}-b", rounds=4)
    finally:
        ctx.close()
    for path in checkpoints.glob(f"{family}-*.safetensors"):
        path.unlink()
    return {"size": size, "steps": steps, "plain_diffusers_s_per_image": baseline,
            "sd_studio_s_per_image": studio, "overhead_percent": 100 * (studio / baseline - 1), **switching}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--families", nargs="+", default=["sd1"], choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            results[family] = bench_family(family, args.device, args.steps, args.repeats, Path(tmp) / family)
            print(json.dumps({family: results[family]}), flush=True)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
