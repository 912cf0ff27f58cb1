"""The models the speed suite measures, written to disk first so that loading is measured too.

Full runs: SD1.5 / SDXL with random weights at full size, built by bench/txt2img_speed.py's builders and
written as A1111-layout single files (`a`, `b` and `c`, for switching) plus a diffusers folder of `a` (what
plain diffusers loads with `from_pretrained`). Smoke runs: three copies of the embedded default model
(`sd-studio-toy`, a diffusers folder). Also writes the random kohya LoRA files and the training dataset.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from bench.txt2img_speed import SIZES, plain_pipeline, random_components, write_single_file
from webui.models.default_model import DEFAULT_MODEL_NAME, SHIPPED_DEFAULT_MODEL, TRAINING_RECORD_FILES

SMOKE_SIZE = 64  # the toy model's smallest sensible image (its native size is 128)
TRAIN_PRESETS = {"sd1": "sd1_lora", "sdxl": "sdxl_lora", "toy": "toy_lora"}
# Kohya's key prefix per text encoder attribute of the pipeline.
TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
SDXL_TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


@dataclass
class Subject:
    """One model family as the suite measures it: three checkpoints in the app's folder, one diffusers folder."""

    label: str             # "sd1", "sdxl" or "toy"
    family: str            # the app's family of the checkpoints
    size: int              # image side
    data_dir: Path         # the app's data folder for this family
    checkpoints: tuple[Path, Path, Path]
    plain_folder: Path     # diffusers folder of checkpoint a, for plain diffusers' start-up

    @property
    def names(self) -> tuple[str, str, str]:
        return tuple(path.name.removesuffix(".safetensors") for path in self.checkpoints)  # type: ignore[return-value]

    def cleanup(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def checkpoint_folder(data_dir: Path) -> Path:
    folder = data_dir / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare_full(family: str, device: str, data_dir: Path):
    """Write checkpoint a (and its diffusers folder); return the subject and plain diffusers' pipeline on `device`.
    Call `write_others` after the plain measurements (b and c are written then, so a's modules can be freed)."""
    folder = checkpoint_folder(data_dir)
    paths = tuple(folder / f"{family}-{letter}.safetensors" for letter in "abc")
    components = random_components(family, device, seed=1)
    write_single_file(components, family, paths[0])
    pipeline = plain_pipeline(components, family)
    plain_folder = data_dir / "plain" / family
    pipeline.save_pretrained(plain_folder)
    return Subject(family, family, SIZES[family], data_dir, paths, plain_folder), pipeline


def write_others(subject: Subject, device: str) -> None:
    """Checkpoints b (other random weights, made on `device`: faster) and c (a byte copy of b under another
    name, for the cold read). The smoke run's three copies exist already."""
    a, b, c = subject.checkpoints
    if subject.label == "toy":
        return
    write_single_file(random_components(subject.family, device, seed=2), subject.family, b)
    shutil.copyfile(b, c)


def prepare_smoke(device: str, data_dir: Path):
    """Three copies of the embedded default model, and plain diffusers' pipeline of the first."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    folder = checkpoint_folder(data_dir)
    paths = tuple(folder / f"{DEFAULT_MODEL_NAME}-{letter}" for letter in "abc")
    for path in paths:
        shutil.copytree(SHIPPED_DEFAULT_MODEL, path, ignore=shutil.ignore_patterns(*TRAINING_RECORD_FILES, "README.md"))
    pipeline = StableDiffusionPipeline.from_pretrained(paths[0], dtype=torch.float32, safety_checker=None).to(device)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, use_karras_sigmas=True)
    pipeline.set_progress_bar_config(disable=True)
    return Subject("toy", "sd1", SMOKE_SIZE, data_dir, paths, paths[0]), pipeline


def lora_targets(pipeline) -> dict[str, torch.nn.Module]:
    """Kohya key -> module for what kohya's LoRA trains: every Linear / 1x1 conv of the UNet's transformer
    blocks (attention, feed-forward, proj_in/out) and of the text encoders' layers."""
    targets: dict[str, torch.nn.Module] = {}
    for name, module in pipeline.unet.named_modules():
        if ".attentions." in name and _adaptable(module):
            targets["lora_unet_" + name.replace(".", "_")] = module
    prefixes = SDXL_TEXT_ENCODER_PREFIXES if getattr(pipeline, "text_encoder_2", None) is not None else TEXT_ENCODER_PREFIXES
    for attribute, prefix in prefixes.items():
        encoder = getattr(pipeline, attribute, None)
        if encoder is None:
            continue
        for name, module in encoder.named_modules():
            if ".layers." in name and _adaptable(module):
                targets[f"{prefix}_" + name.replace(".", "_")] = module
    return targets


def _adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or (
        isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1))


def write_random_lora(pipeline, path: Path, rank: int, seed: int) -> int:
    """A random kohya LoRA (fp16, alpha = rank) over `lora_targets`; returns how many modules it adapts."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, module in lora_targets(pipeline).items():
        if isinstance(module, torch.nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:
            down_shape, up_shape = (rank, module.in_channels, 1, 1), (module.out_channels, rank, 1, 1)
        tensors[f"{key}.lora_down.weight"] = (torch.randn(down_shape, generator=generator) * 0.01).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(up_shape, generator=generator) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return len(tensors) // 3


def write_random_dataset(folder: Path, count: int, size: int) -> Path:
    """`count` random-noise PNGs of size x size with a caption each: a training set that costs what real images do."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text("bnch, a photo of a thing")
    return folder
