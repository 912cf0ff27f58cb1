"""Train the shipped toy 2x upscaler: Real-ESRGAN's compact SRVGG design, small, on toy-world renders.

    .venv/bin/python -m tools.upscaler.train_toy_upscaler --threads 1    # the shipped run: CPU, 12 min
    .venv/bin/python -m tools.upscaler.train_toy_upscaler --device cuda  # the same on a GPU

The shipped model was trained on this project's 2-core CPU machine (no GPU time was available for it): 4,000
steps in 720 s with one torch thread, the machine shared with other work.

Writes ``models/default/upscalers/2x-SDStudio-ToyCompact.safetensors`` (the key layout Real-ESRGAN's compact
models ship with, so spandrel detects it as "RealESRGAN Compact", scale 2) and
``tools/upscaler/2x-SDStudio-ToyCompact.training.json`` (settings, losses, validation, timings).

Why these choices: the app needs an upscaler that works offline, and the default model draws flat-coloured
shapes with anti-aliased edges and stripes. The sharp render is the target; its input is softened the way
generated pictures are (``toy_pairs.soften_and_halve``: optional slight blur, area downscale by 2, optional
slight noise, 8-bit rounding). Crops are centred on edges most of the time, because flat background teaches
nothing. The loss is L1 plus L1 on horizontal and vertical pixel differences, a cheap term that rewards
edges as steep as the target's. The weights saved are an exponential moving average of the trained ones (as
Real-ESRGAN ships ``params_ema``). The network starts as a bicubic-like interpolator (`start_as_interpolator`);
from random weights (``--start random``) the same run ended 7 to 8 dB worse on the validation renders and drew
staircases on diagonal edges. Everything is seeded; on a GPU, kernels are not bitwise deterministic.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tools.upscaler import quality
from tools.upscaler.toy_pairs import AREA, SCALE, SOFT, VALIDATION_START, pair, scene_render, soften_and_halve, to_tensor

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "2x-SDStudio-ToyCompact"
DEFAULT_OUTPUT = REPO / "models" / "default" / "upscalers" / f"{MODEL_NAME}.safetensors"
DEFAULT_REPORT = Path(__file__).resolve().parent / f"{MODEL_NAME}.training.json"
CROP_MARGIN = 4  # high-resolution pixels around a crop, so the blur sees real neighbours (even: keeps 2x alignment)
EDGE_THRESHOLD = 0.1  # a pixel is on an edge when a neighbour differs by more than this (0..1 scale)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    parser.add_argument("--num-feat", type=int, default=32, help="SRVGG feature channels")
    parser.add_argument("--num-conv", type=int, default=8, help="SRVGG body convolutions")
    parser.add_argument("--images", type=int, default=1200, help="training renders (scenes 0..N-1)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[192, 256, 320],
                        help="render sizes of the sharp images, cycled over the scenes (objects scale with them)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=40, help="low-resolution crop side (the target is twice that)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate at the start (cosine decay)")
    parser.add_argument("--min-lr", type=float, default=2e-5)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--edge-weight", type=float, default=0.5, help="weight of the pixel-difference L1 term")
    parser.add_argument("--edge-crop-share", type=float, default=0.85, help="share of crops centred on an edge")
    parser.add_argument("--blur-share", type=float, default=0.7, help="share of inputs blurred before the downscale")
    parser.add_argument("--blur-max", type=float, default=1.2, help="largest blur sigma (high-resolution pixels)")
    parser.add_argument("--noise-share", type=float, default=0.5, help="share of inputs with added noise")
    parser.add_argument("--noise-max", type=float, default=4.0, help="largest noise sigma (on the 0..255 scale)")
    parser.add_argument("--ema", type=float, default=0.999, help="decay of the saved weight average")
    parser.add_argument("--validation-images", type=int, default=8)
    parser.add_argument("--validate-every", type=int, default=500)
    parser.add_argument("--start", choices=("interpolator", "random"), default="interpolator",
                        help="initial weights: a bicubic-like 2x interpolator (see start_as_interpolator) or random")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); on a busy shared CPU 1 is faster than 2")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="precision of the saved weights")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    return parser.parse_args(argv)


def build_model(num_feat: int, num_conv: int) -> torch.nn.Module:
    """spandrel's own SRVGGNetCompact (PReLU, the activation spandrel's detector expects), 2x."""
    from webui.upscaling.spandrel_architectures import load_architectures

    load_architectures()  # makes spandrel's architecture modules importable without torchvision
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=SCALE,
                           act_type="prelu")


def catmull_rom_taps(offset: float) -> list[float]:
    """Three Catmull-Rom (bicubic, a = -0.5) weights for the input pixels at -1, 0, +1 when the output sample
    sits ``offset`` input pixels from the centre one; the far fourth tap is dropped and the rest renormalised."""
    def weight(distance: float) -> float:
        d = abs(distance)
        return 1.5 * d**3 - 2.5 * d**2 + 1 if d < 1 else -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2 if d < 2 else 0.0
    taps = [weight(offset - position) for position in (-1, 0, 1)]
    return [tap / sum(taps) for tap in taps]


@torch.no_grad()
def start_as_interpolator(model: torch.nn.Module) -> None:
    """Set the initial weights so the untrained network already is a bicubic-like 2x interpolator.

    SRVGG adds a nearest-neighbour upsample to its output, so a network that has not learned enough draws
    staircases on diagonal edges (seen in the random start: a striped star on green lost to Lanczos). From
    this start training only has to learn what beats interpolation. Feature channels 0..2 carry the RGB input
    unchanged through every layer (identity 3x3 kernels, PReLU slope 1: a linear path); the last convolution
    turns them into the four sub-pixel phases of a 2x Catmull-Rom upsample minus the nearest-neighbour image.
    Every other channel keeps its random start, and its share of the last convolution starts at zero. The
    result is an ordinary SRVGG state dict: only the initial values are chosen.
    """
    layers = list(model.body)
    convolutions = [layer for layer in layers if isinstance(layer, torch.nn.Conv2d)]
    activations = [layer for layer in layers if isinstance(layer, torch.nn.PReLU)]
    channels = convolutions[0].in_channels
    for convolution in convolutions[:-1]:
        convolution.weight[:channels].zero_()
        convolution.bias[:channels].zero_()
        for channel in range(channels):
            convolution.weight[channel, channel, 1, 1] = 1.0
    for activation in activations:
        activation.weight[:channels] = 1.0
    last = convolutions[-1]
    last.weight.zero_()
    last.bias.zero_()
    phases = [torch.tensor(catmull_rom_taps(offset)) for offset in (-0.25, 0.25)]  # output pixels 2i, 2i+1
    for channel in range(channels):
        for row in range(SCALE):
            for column in range(SCALE):
                kernel = torch.outer(phases[row], phases[column])
                kernel[1, 1] -= 1.0  # the nearest-neighbour image SRVGG adds back
                last.weight[channel * SCALE * SCALE + row * SCALE + column, channel] = kernel


class CropSampler:
    """Aligned training crops from pre-rendered sharp images, mostly centred on edges."""

    def __init__(self, images: list[torch.Tensor], patch: int, edge_share: float, rng: np.random.Generator):
        self.images = images
        self.side = SCALE * patch + 2 * CROP_MARGIN
        self.edge_share = edge_share
        self.rng = rng
        self.edges = [self._edge_pixels(image) for image in images]

    @staticmethod
    def _edge_pixels(image: torch.Tensor) -> np.ndarray:
        pixels = image.float() / 255
        across = (pixels[:, :, 1:] - pixels[:, :, :-1]).abs().amax(0)[:-1, :]
        down = (pixels[:, 1:, :] - pixels[:, :-1, :]).abs().amax(0)[:, :-1]
        return torch.nonzero((across > EDGE_THRESHOLD) | (down > EDGE_THRESHOLD)).numpy()

    def batch(self, size: int) -> torch.Tensor:
        crops = []
        for index in self.rng.integers(len(self.images), size=size):
            image, edges = self.images[index], self.edges[index]
            height, width = image.shape[1:]
            if len(edges) and self.rng.random() < self.edge_share:
                center_y, center_x = edges[self.rng.integers(len(edges))]
            else:
                center_y, center_x = self.rng.integers(height), self.rng.integers(width)
            top = int(np.clip(center_y - self.side // 2, 0, height - self.side)) // 2 * 2
            left = int(np.clip(center_x - self.side // 2, 0, width - self.side)) // 2 * 2
            crops.append(image[:, top:top + self.side, left:left + self.side])
        return torch.stack(crops).float() / 255


def training_pair(sampler: CropSampler, args: argparse.Namespace, rng: np.random.Generator,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-resolution input, sharp target) crops with random softening, on the CPU."""
    high = sampler.batch(args.batch)
    blur = np.where(rng.random(args.batch) < args.blur_share, rng.uniform(0.2, args.blur_max, args.batch), 0.0)
    noise = np.where(rng.random(args.batch) < args.noise_share, rng.uniform(0, args.noise_max, args.batch), 0.0)
    low = soften_and_halve(high, torch.tensor(blur, dtype=torch.float32),
                           torch.tensor(noise / 255.0, dtype=torch.float32), generator)
    inner = CROP_MARGIN // SCALE
    return low[:, :, inner:-inner, inner:-inner], high[:, :, CROP_MARGIN:-CROP_MARGIN, CROP_MARGIN:-CROP_MARGIN]


def loss_of(output: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 on pixels plus ``edge_weight`` times L1 on horizontal and vertical pixel differences."""
    pixel = F.l1_loss(output, target)
    across = F.l1_loss(output[..., :, 1:] - output[..., :, :-1], target[..., :, 1:] - target[..., :, :-1])
    down = F.l1_loss(output[..., 1:, :] - output[..., :-1, :], target[..., 1:, :] - target[..., :-1, :])
    return pixel + edge_weight * (across + down)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def validate(model: torch.nn.Module, pairs: dict[str, list], device: str) -> dict[str, float]:
    """Mean PSNR of the model and of Lanczos on the validation renders (never the benchmark's)."""
    model.eval()
    result = {}
    for condition, items in pairs.items():
        result[f"{condition}_model_psnr"] = round(float(np.mean(
            [quality.psnr(quality.model_upscale(model, low, device), high) for low, high in items])), 3)
        result[f"{condition}_lanczos_psnr"] = round(float(np.mean(
            [quality.psnr(quality.LANCZOS(low, SCALE), high) for low, high in items])), 3)
    model.train()
    return result


def shown_path(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    images = [to_tensor(scene_render(index, args.sizes[index % len(args.sizes)])).squeeze(0).mul(255).round().byte()
              for index in range(args.images)]
    sampler = CropSampler(images, args.patch, args.edge_crop_share, rng)
    validation = {name: [pair(VALIDATION_START + index, 256, softening) for index in range(args.validation_images)]
                  for name, softening in (("area", AREA), ("soft", SOFT))}
    render_seconds = time.perf_counter() - started

    model = build_model(args.num_feat, args.num_conv)
    if args.start == "interpolator":
        start_as_interpolator(model)
    model = model.to(args.device)
    average = copy.deepcopy(model).eval()
    for parameter in average.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    history: list[dict[str, float]] = []
    recent: list[float] = []
    train_started = time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        low, high = training_pair(sampler, args, rng, generator)
        loss = loss_of(model(low.to(args.device)), high.to(args.device), args.edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for kept, trained in zip(average.parameters(), model.parameters()):
                kept.lerp_(trained, 1 - decay)
        recent.append(float(loss.detach()))
        if (step + 1) % args.validate_every == 0 or step + 1 == args.steps:
            entry = {"step": step + 1, "loss": round(float(np.mean(recent)), 5),
                     "seconds": round(time.perf_counter() - train_started, 1), **validate(average, validation, args.device)}
            recent.clear()
            history.append(entry)
            print(json.dumps(entry), flush=True)
    train_seconds = time.perf_counter() - train_started

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    state = {key: value.detach().to("cpu", dtype).contiguous() for key, value in average.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"architecture": "RealESRGAN Compact (SRVGGNetCompact)",
                                              "scale": str(SCALE), "num_feat": str(args.num_feat),
                                              "num_conv": str(args.num_conv), "trained_by": "tools/upscaler/train_toy_upscaler.py"})
    report = {
        "command": "python -m tools.upscaler.train_toy_upscaler " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {key: (shown_path(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "file_bytes": args.out.stat().st_size,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() if args.device == "cpu"
        else torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "validation_scenes": f"{VALIDATION_START}..{VALIDATION_START + args.validation_images - 1} at 256 px",
        "history": history,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({report['file_bytes']} bytes) and {args.report}")


if __name__ == "__main__":
    main()
