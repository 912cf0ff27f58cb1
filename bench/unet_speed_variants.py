"""Which speed-ups pay on this GPU: plain diffusers pipelines, full-size random-weight SD1.5 / SDXL, one variant
at a time (eager, channels_last, cuDNN attention, regional and whole-model torch.compile, CUDA graphs).

This is the measurement that chose what `webui.models.acceleration` does; it times diffusers only (SD Studio's
own path is `bench/gpu_speed.py`). For each variant: seconds per image (30 steps DPM++ 2M Karras, CFG 7,
batch 1, fp16), the denoising loop's it/s, first-call time (compilation included), peak GPU memory, and the
largest pixel difference from the eager image of the same seed. Needs the wheels carried in .whl/
(diffusers-0.42.1, importlib_metadata, lazy_importer: `source bench/device_env.sh`).

    python bench/unet_speed_variants.py --families sd1 sdxl --variants eager channels_last compile_blocks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.txt2img_speed import SIZES, plain_pipeline, random_components  # noqa: E402

VARIANTS = ("eager", "channels_last", "cudnn_attention", "compile_blocks", "compile_unet", "compile_unet_vae",
            "compile_unet_cudagraphs")


def apply_variant(pipeline, variant: str) -> None:
    if variant in ("channels_last", "compile_unet", "compile_unet_vae", "compile_unet_cudagraphs", "compile_blocks"):
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    if variant == "compile_blocks":
        pipeline.unet.compile_repeated_blocks(fullgraph=True)
    elif variant in ("compile_unet", "compile_unet_vae"):
        pipeline.unet.compile(fullgraph=True)
        if variant == "compile_unet_vae":
            pipeline.vae.decoder.compile(fullgraph=True)
    elif variant == "compile_unet_cudagraphs":
        pipeline.unet.compile(fullgraph=True, mode="reduce-overhead")


def run_once(pipeline, size: int, steps: int, loop_times: list[float]) -> object:
    marks: list[float] = []

    def on_step(pipe, index, timestep, kwargs):
        if index == 0 or index == steps - 1:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
        return kwargs

    image = pipeline("a photo of a red circle", negative_prompt="blurry", height=size, width=size,
                     num_inference_steps=steps, guidance_scale=7.0, output_type="pt",
                     generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step).images
    loop_times.append((marks[-1] - marks[0]) / (steps - 1))  # seconds per step between the first and last step
    return image


def measure(family: str, variant: str, steps: int, repeats: int, reference) -> tuple[dict, object]:
    size = SIZES[family]
    components = random_components(family, "cuda", seed=1)
    pipeline = plain_pipeline(components, family)
    apply_variant(pipeline, variant)
    context = torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION) \
        if variant == "cudnn_attention" else contextlib.nullcontext()
    loop: list[float] = []
    with context:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        image = run_once(pipeline, size, steps, loop)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        run_once(pipeline, size, steps, loop)  # CUDA graphs record on the second call
        loop.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            image = run_once(pipeline, size, steps, loop)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    step = sorted(loop)[len(loop) // 2]
    result = {"family": family, "variant": variant, "s_per_image": round(seconds, 4), "it_per_s": round(1 / step, 1),
              "first_image_s": round(first, 1), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if reference is not None:
        result["max_abs_diff_vs_eager"] = round(float((image.float() - reference.float()).abs().max()), 4)
    del pipeline, components
    torch._dynamo.reset()  # the next variant starts with no compiled code
    torch.cuda.empty_cache()
    return result, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--families", nargs="+", default=["sd1"], choices=sorted(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import diffusers

    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "diffusers": diffusers.__version__}), flush=True)
    rows = []
    for family in args.families:
        reference = None
        for variant in args.variants:
            try:
                row, image = measure(family, variant, args.steps, args.repeats, reference)
            except Exception as error:  # one failing variant must not lose the others' numbers
                row, image = {"family": family, "variant": variant, "error": f"{type(error).__name__}: {error}"[:400]}, None
                torch._dynamo.reset()
            if variant == "eager" and image is not None:
                reference = image
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print("\n| family | variant | s/image | it/s | first image s | peak GiB | max diff |")
    for row in rows:
        print(f"| {row['family']} | {row['variant']} | {row.get('s_per_image', row.get('error', ''))} | "
              f"{row.get('it_per_s', '')} | {row.get('first_image_s', '')} | {row.get('peak_gib', '')} | "
              f"{row.get('max_abs_diff_vs_eager', '')} |")


if __name__ == "__main__":
    main()
