"""Quality and speed of the shipped toy 2x upscaler against Lanczos and bicubic, on held-out toy-world renders.

    .venv/bin/python bench/upscaler_quality.py [--count 100] [--device cpu|cuda] [--repeats 5]

Quality: held-out scenes (numbers from ``tools.upscaler.toy_pairs.TEST_START``, a range training never draws
from) rendered at ``--size`` pixels are the ground truth; their half-size inputs are made two ways, a plain
area downscale and the "soft" one (blur sigma 0.8, noise sigma 2/255, then the area downscale), and each
input is enlarged 2x by the model (loaded through spandrel, like the app does), Lanczos and bicubic (PIL).
PSNR and SSIM against the render, mean over the images, and how many images the model beats Lanczos on.

Speed: one 512x512 input tile through the model (its output is a 1024x1024 image), median of ``--repeats``
after a warm-up; "image" adds the PIL-to-tensor and back conversions around it, i.e. a whole 512x512 picture
to a 1024x1024 one untiled; Lanczos on the same picture for scale. On CUDA, fp16 as well (spandrel says
the compact architecture supports it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.upscaler import quality  # noqa: E402
from tools.upscaler.toy_pairs import AREA, SCALE, SOFT, held_out_pair, to_image, to_tensor  # noqa: E402
from tools.upscaler.train_toy_upscaler import DEFAULT_OUTPUT  # noqa: E402

CONDITIONS = {"area": AREA, "soft": SOFT}


def load_descriptor(path: Path, device: str):
    """The model as the app loads it: spandrel detects the architecture and scale from the state dict."""
    from safetensors.torch import load_file

    from webui.upscaling.spandrel_architectures import load_architectures

    descriptor = load_architectures().load(load_file(str(path)))
    descriptor.model.eval()
    return descriptor.to(device)


def measure_quality(descriptor, count: int, size: int, device: str) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    methods = {"model": lambda low: quality.model_upscale(descriptor, low, device),
               "lanczos": lambda low: quality.LANCZOS(low, SCALE),
               "bicubic": lambda low: quality.BICUBIC(low, SCALE)}
    for condition, softening in CONDITIONS.items():
        scores: dict[str, dict[str, list[float]]] = {name: {"psnr": [], "ssim": []} for name in methods}
        for index in range(count):
            low, high = held_out_pair(index, size, softening)
            for name, method in methods.items():
                enlarged = method(low)
                scores[name]["psnr"].append(quality.psnr(enlarged, high))
                scores[name]["ssim"].append(quality.ssim(enlarged, high))
        row = {f"{name}_{metric}": round(float(np.mean(values)), 4 if metric == "ssim" else 3)
               for name, metrics in scores.items() for metric, values in metrics.items()}
        row["model_beats_lanczos_psnr"] = int(sum(m > lz for m, lz in zip(scores["model"]["psnr"], scores["lanczos"]["psnr"])))
        row["images"] = count
        results[condition] = row
    return results


def median_ms(function, repeats: int, device: str) -> float:
    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    function()
    synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


@torch.inference_mode()
def measure_speed(descriptor, repeats: int, device: str) -> dict[str, float]:
    picture, _ = held_out_pair(0, 1024, SOFT)  # a 512x512 input
    results = {}
    dtypes = {"fp32": torch.float32}
    if device.startswith("cuda") and descriptor.supports_half:
        dtypes["fp16"] = torch.float16
    for label, dtype in dtypes.items():
        descriptor.model.to(dtype)
        tile = to_tensor(picture).to(device=device, dtype=dtype)
        results[f"tile_512_ms_{label}"] = median_ms(lambda: descriptor(tile), repeats, device)  # noqa: B023 - called at once
        results[f"image_512_to_1024_ms_{label}"] = median_ms(
            lambda: to_image(descriptor(to_tensor(picture).to(device=device, dtype=dtype))), repeats, device)  # noqa: B023 - called at once
    descriptor.model.to(torch.float32)
    results["lanczos_512_to_1024_ms"] = median_ms(lambda: quality.LANCZOS(picture, SCALE), repeats, "cpu")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--count", type=int, default=100, help="held-out renders per condition")
    parser.add_argument("--size", type=int, default=256, help="side of the ground-truth renders")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    descriptor = load_descriptor(args.model, args.device)
    report = {
        "model": args.model.name,
        "architecture": descriptor.architecture.name,
        "scale": descriptor.scale,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quality": measure_quality(descriptor, args.count, args.size, args.device),
        "speed": measure_speed(descriptor, args.repeats, args.device),
    }
    print(json.dumps(report, indent=2))
    print()
    print("| input | method | PSNR dB | SSIM |")
    print("| --- | --- | --- | --- |")
    for condition, row in report["quality"].items():
        for method in ("model", "lanczos", "bicubic"):
            print(f"| {condition} | {method} | {row[f'{method}_psnr']:.2f} | {row[f'{method}_ssim']:.4f} |")


if __name__ == "__main__":
    main()
