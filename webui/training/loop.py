"""The one training loop every method shares: data, noise, loss, optimizer steps, samples, saves, resume.

The trainer builds its own fp32 copy of the model from the app's `CheckpointWeights` with
`build_pipeline`, so the pipeline the app generates with is never touched (mixed precision is autocast
over fp32 weights, and only on CUDA). Noise follows the base model's scheduler config (epsilon or
v-prediction) through diffusers' `DDPMScheduler`; min-SNR-gamma weighting and noise offset are kohya's.

Every random draw (data order, flips, latent samples, noise, timesteps) comes from the seed, and resumable
state holds the trained tensors, the optimizer, the lr schedule and the noise generator, so a resumed run
continues exactly where the saved one stopped. Files are written under temporary names and renamed, so a
cancelled or crashed run never leaves a half-written LoRA, embedding, checkpoint or state behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from webui.models.checkpoint_loading import CheckpointWeights, build_pipeline
from webui.models.families import family_named
from webui.models.hashing import sha256_of_file, sha256_of_folder
from webui.models.module_construction import constructing_modules
from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.distributed import ProcessGroup
from webui.training.dataset import (
    BatchSample,
    DatasetSummary,
    LatentCache,
    TrainingDataset,
    class_image_dataset,
    unet_latents,
)
from webui.training.key_check import KeyCheck, saved_file_checker
from webui.training.methods import SaveRequest, TrainerModels, TrainingMethod, create_method, epoch_suffix
from webui.training.objectives import (  # noqa: F401 (min_snr_weights, prediction_target: re-exported)
    ObjectiveError,
    min_snr_weights,
    objective_for,
    per_sample_loss,
    prediction_target,
)
from webui.training.ema import EMA_SUFFIX, WeightAverage
from webui.training.optim import build_lr_scheduler, build_optimizer
from webui.training.validation import MAX_VALIDATION_IMAGES, VALIDATION_LEVELS, VALIDATION_NOISE_SEED, training_sets

STATE_FORMAT = "sd-studio-training-state"
STATE_VERSION = 1
SMOOTHING = 0.9
CAPTION_TOKENS = 77  # CLIP's caption length, for an encoder whose config does not say


class TrainingError(RuntimeError):
    """Training started but cannot go on (diverged loss, a state that does not fit...)."""


@dataclass(frozen=True)
class TrainingPaths:
    """Where results go: the app's model folders, plus a work folder for state, class images and samples."""

    lora_dir: Path
    embeddings_dir: Path
    checkpoints_dir: Path
    work_dir: Path

    @property
    def states_dir(self) -> Path:
        return Path(self.work_dir) / "states"

    @property
    def class_images_dir(self) -> Path:
        return Path(self.work_dir) / "class_images"

    @property
    def samples_dir(self) -> Path:
        return Path(self.work_dir) / "samples"


@dataclass(frozen=True)
class TrainingProgress:
    """One report to the UI/CLI: after each optimizer step, and for phases (class images, caching)."""

    step: int
    total_steps: int
    epoch: int                      # the epoch in progress, from 1; 0 before training starts
    total_epochs: int
    loss: float | None = None
    smoothed_loss: float | None = None
    lr: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    samples: tuple[tuple[str, Image.Image], ...] = ()
    files_saved: tuple[Path, ...] = ()
    message: str = ""
    validation_loss: float | None = None  # set on the report right after a validation measurement


@dataclass
class TrainingResult:
    files: list[Path]
    cancelled: bool
    steps_done: int
    epochs_done: int
    final_loss: float | None
    warnings: list[str] = field(default_factory=list)
    state_dir: Path | None = None
    summary: DatasetSummary | None = None
    usage: str = ""
    key_checks: list[KeyCheck] = field(default_factory=list)  # per saved LoRA / embedding: which loaders read it
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)

    @property
    def key_problems(self) -> list[str]:
        """Keys of the saved files that a loader would ignore (the run is then "saved with warnings")."""
        return [line for check in self.key_checks for line in check.problems()]


# --------------------------------------------------------------------------------------------
# Progress bookkeeping
# --------------------------------------------------------------------------------------------


class _ProgressTracker:
    """Smoothed loss, ETA and the latest samples/files, turned into `TrainingProgress` reports."""

    def __init__(self, on_progress: Callable[[TrainingProgress], None] | None):
        self._on_progress = on_progress
        self._started = time.monotonic()
        self._loop_started: float | None = None
        self._first_step = 0
        self.total_steps = 0
        self.total_epochs = 0
        self.smoothed: float | None = None
        self._updates = 0
        self._raw_average = 0.0
        self.last_loss: float | None = None
        self.samples: tuple[tuple[str, Image.Image], ...] = ()
        self.files: list[Path] = []

    def start_loop(self, first_step: int, total_steps: int, total_epochs: int) -> None:
        self._loop_started = time.monotonic()
        self._first_step = first_step
        self.total_steps, self.total_epochs = total_steps, total_epochs

    def record_loss(self, loss: float) -> None:
        """Exponential moving average with bias correction, so early values are not pulled to zero."""
        self.last_loss = loss
        self._updates += 1
        self._raw_average = SMOOTHING * self._raw_average + (1 - SMOOTHING) * loss
        self.smoothed = self._raw_average / (1 - SMOOTHING ** self._updates)

    def restore_smoothed(self, value: float | None) -> None:
        if value is not None:
            self.smoothed = value
            self._raw_average = value
            self._updates = 10_000  # the average is already warmed up

    def report(self, step: int, epoch: int, lr: float | None = None, message: str = "",
               validation_loss: float | None = None) -> None:
        if self._on_progress is None:
            return
        elapsed = time.monotonic() - self._started
        eta = None
        if self._loop_started is not None and step > self._first_step:
            per_step = (time.monotonic() - self._loop_started) / (step - self._first_step)
            eta = per_step * max(0, self.total_steps - step)
        self._on_progress(TrainingProgress(
            step=step, total_steps=self.total_steps, epoch=epoch, total_epochs=self.total_epochs,
            loss=self.last_loss, smoothed_loss=self.smoothed, lr=lr, elapsed_s=elapsed, eta_s=eta,
            samples=self.samples, files_saved=tuple(self.files), message=message, validation_loss=validation_loss,
        ))


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------


def _checkpoint_hash(base: CheckpointWeights) -> str:
    """The base model's sha256 (known from the catalog's cache, else computed once here)."""
    record = base.record
    if record.sha256:
        return record.sha256
    path = Path(record.path)
    if path.is_dir():
        return sha256_of_folder(path)
    return sha256_of_file(path) if path.is_file() else ""


def _precision(config: TrainingConfig, device: torch.device, warnings: list[str]) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether fp16 loss scaling is needed)."""
    if config.mixed_precision == "no":
        return None, False
    if device.type != "cuda":
        warnings.append(f"mixed_precision {config.mixed_precision} only applies on CUDA; "
                        f"training on {device.type} runs in fp32")
        return None, False
    if config.mixed_precision == "bf16":
        if not torch.cuda.is_bf16_supported():
            warnings.append("this GPU has no bf16; training in fp16 with loss scaling instead")
            return torch.float16, True
        return torch.bfloat16, False
    return torch.float16, True


def encode_captions(models: TrainerModels, captions: list[str], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text conditioning as the app's generation computes it (the family's encoding rule, A1111 clip skip);
    captions are cut at CLIP's 77 tokens, and at the length generation gives T5 (`ModelFamily.sequence_limit`)."""
    family = models.model_family
    ids = []
    for name, tokenizer, encoder in zip(family.tokenizers, models.tokenizers, models.prompt_encoders):
        if name == family.sequence_tokenizer:  # T5 (SD3, Flux): as many tokens as generation gives it
            length = family.sequence_limit(models.base.architecture.variant)
        else:  # CLIP: its 77 positions
            length = int(getattr(getattr(encoder, "config", None), "max_position_embeddings", None) or CAPTION_TOKENS)
        ids.append(tokenizer(captions, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids.to(models.device))
    return family.encode_token_ids(models.prompt_encoders, ids, clip_skip,
                                   **family.text_encoding_options(models.denoiser_config))


def _enable_text_encoder_checkpointing(encoder: torch.nn.Module) -> None:
    """transformers 5 renamed gradient checkpointing to activation checkpointing; use whichever exists."""
    options = {"use_reentrant": False}
    if hasattr(encoder, "activation_checkpointing_enable"):
        encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


# --------------------------------------------------------------------------------------------
# Class images (DreamBooth prior preservation)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_images(models: TrainerModels, prompts: list[str], generators: list[torch.Generator], *, steps: int,
                    cfg: float, resolution: int, clip_skip: int, autocast: Any = None) -> list[Image.Image]:
    """Generate with the trainer's copy, conditioned exactly as in training (same encoder path, clip skip).

    Prompts are encoded here rather than by the pipeline, so new TI tokens are spelled out once, by the
    method, and diffusers' own multi-vector expansion never runs on them a second time.
    """
    hidden, pooled = encode_captions(models, prompts, clip_skip)
    negative, negative_pooled = encode_captions(models, [""] * len(prompts), clip_skip)
    extra = {}
    if models.model_family.conditions_on_pooled_text:
        extra = {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    with autocast if autocast is not None else nullcontext():
        return models.pipeline(
            prompt_embeds=hidden, negative_prompt_embeds=negative, num_inference_steps=steps, guidance_scale=cfg,
            height=resolution, width=resolution, generator=generators, output_type="pil", **extra,
        ).images


def class_images_folder(paths: TrainingPaths, base_hash: str, prompt: str, resolution: int) -> Path:
    """Cache folder keyed by (base checkpoint hash, class prompt, resolution), reused across runs."""
    key = hashlib.sha256(json.dumps([base_hash, prompt, resolution]).encode("utf-8")).hexdigest()[:16]
    return paths.class_images_dir / key


def _save_image_atomically(image: Image.Image, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.partial.png")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)


def ensure_class_images(config: TrainingConfig, models: TrainerModels, paths: TrainingPaths,
                        tracker: _ProgressTracker, should_stop: Callable[[], bool]) -> list[Path] | None:
    """`num_class_images` images of the class prompt from the base model; generates only the missing ones.

    Returns None when asked to stop part-way (images already written stay for the next run).
    """
    prompt = config.effective_class_prompt
    folder = class_images_folder(paths, models.base_hash, prompt, config.resolution)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "about.json").write_text(json.dumps({"base_model": models.base_name, "base_hash": models.base_hash,
                                                   "prompt": prompt, "resolution": config.resolution}, indent=1))
    wanted = [folder / f"{index:05d}.png" for index in range(config.num_class_images)]
    missing = [path for path in wanted if not path.is_file()]
    if missing:
        tracker.report(0, 0, message=f"generating {len(missing)} class image(s) of '{prompt}' "
                                     f"({len(wanted) - len(missing)} cached)")
    batch_size = 4 if models.device.type == "cuda" else 1
    for start in range(0, len(missing), batch_size):
        if should_stop():
            return None
        chunk = missing[start:start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(int(path.stem)) for path in chunk]
        images = generate_images(models, [prompt] * len(chunk), generators, steps=config.sample_steps,
                                 cfg=config.sample_cfg, resolution=config.resolution, clip_skip=config.clip_skip)
        for image, path in zip(images, chunk):
            _save_image_atomically(image, path)
        tracker.report(0, 0, message=f"class images {len(wanted) - len(missing) + start + len(chunk)}/{len(wanted)}")
    return wanted


# --------------------------------------------------------------------------------------------
# Resumable state
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Position:
    """Where training stands: optimizer steps done, the current epoch and micro-batches done in it."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0


def _write_state(folder: Path, *, config: TrainingConfig, method: TrainingMethod, optimizer: torch.optim.Optimizer,
                 lr_scheduler: Any, scaler: Any, generator: torch.Generator, position: _Position,
                 models: TrainerModels, smoothed_loss: float | None, ema: WeightAverage | None = None) -> Path:
    """Write a state folder atomically (staged under a hidden name, then renamed into place)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in method.trainable_state().items()},
              str(staging / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "grad_scaler": scaler.state_dict() if scaler is not None else None}, staging / "optimizer.pt")
    save_file({"noise_generator": generator.get_state()}, str(staging / "rng.safetensors"))
    if ema is not None:
        save_file(ema.state(), str(staging / "ema.safetensors"))
    (staging / "state.json").write_text(json.dumps({
        "format": STATE_FORMAT, "version": STATE_VERSION, "step": position.step, "epoch": position.epoch,
        "batches_done_in_epoch": position.batches_done, "method": config.method,
        "base_checkpoint": models.base_name, "base_hash": models.base_hash, "smoothed_loss": smoothed_loss,
        "config": config.to_dict(),
    }, indent=1), encoding="utf-8")
    if folder.exists():
        retired = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(folder)
    return folder


def read_state_info(folder: Path) -> dict[str, Any]:
    """The JSON part of a saved state (step, epoch, method, config), checked for format."""
    folder = Path(folder)
    info_file = folder / "state.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingConfigError("resume_from", f"{folder} is not a saved training state ({error})") from error
    if info.get("format") != STATE_FORMAT:
        raise TrainingConfigError("resume_from", f"{folder} is not a saved training state of this app")
    return info


def _load_state(folder: Path, *, config: TrainingConfig, method: TrainingMethod, optimizer: torch.optim.Optimizer,
                lr_scheduler: Any, scaler: Any, generator: torch.Generator, models: TrainerModels,
                warnings: list[str], ema: WeightAverage | None = None) -> tuple[_Position, float | None]:
    from safetensors.torch import load_file

    info = read_state_info(folder)
    if info.get("method") != config.method:
        raise TrainingConfigError("resume_from", f"the state was saved by a {info.get('method')!r} run; "
                                                 f"this run is {config.method!r}")
    if info.get("base_hash") and models.base_hash and info["base_hash"] != models.base_hash:
        warnings.append(f"resuming a state trained on {info.get('base_checkpoint')!r} with base {models.base_name!r}")
    try:
        method.load_trainable_state(load_file(str(folder / "trainable.safetensors"), device=str(models.device)))
    except ValueError as error:
        raise TrainingConfigError("resume_from", str(error)) from error
    saved = torch.load(folder / "optimizer.pt", map_location=models.device, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if scaler is not None and saved.get("grad_scaler"):
        scaler.load_state_dict(saved["grad_scaler"])
    generator.set_state(load_file(str(folder / "rng.safetensors"))["noise_generator"])
    if ema is not None:
        if (folder / "ema.safetensors").is_file():
            try:
                ema.load_state(load_file(str(folder / "ema.safetensors"), device=str(models.device)))
            except ValueError as error:
                raise TrainingConfigError("resume_from", str(error)) from error
        else:
            ema.restart()
            warnings.append("the saved state has no EMA weights; the average starts from the resumed weights")
    position = _Position(int(info["step"]), int(info["epoch"]), int(info.get("batches_done_in_epoch", 0)))
    return position, info.get("smoothed_loss")


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class _Trainer:
    """One run's moving parts; `run_training` builds it and drives `train`."""

    def __init__(self, config: TrainingConfig, models: TrainerModels, method: TrainingMethod,
                 dataset: TrainingDataset, class_dataset: TrainingDataset | None, paths: TrainingPaths,
                 tracker: _ProgressTracker, should_stop: Callable[[], bool], warnings: list[str],
                 validation: TrainingDataset | None = None, group: ProcessGroup | None = None):
        self.config, self.models, self.method = config, models, method
        self.group = group or ProcessGroup.single()
        self.seen: dict[int, list[str]] = {}  # epoch -> the images this process trained on (the run's rank log)
        self.dataset, self.class_dataset, self.validation = dataset, class_dataset, validation
        self.validation_cache: LatentCache | None = None
        self.validation_losses: list[tuple[int, float]] = []
        self._prompt_samples: tuple[tuple[str, Image.Image], ...] = ()
        self._validation_samples: tuple[tuple[str, Image.Image], ...] = ()
        self.paths, self.tracker, self.should_stop, self.warnings = paths, tracker, should_stop, warnings
        try:
            self.objective = objective_for(models.model_family.training_objective, config,
                                           dict(models.base.scheduler_config))
        except ObjectiveError as error:
            raise TrainingError(str(error)) from error
        warnings.extend(self.objective.warnings())
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.autocast_dtype, needs_scaler = _precision(config, models.device, warnings)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        self.latent_cache: LatentCache | None = None
        self.class_latent_cache: LatentCache | None = None
        self.batches_per_epoch = (dataset.batches_per_epoch(config.train_batch_size) if not self.group.distributed
                                  else len(self.epoch_plan(0)))
        if self.batches_per_epoch == 0:
            raise TrainingConfigError("train_batch_size", f"{self.group.size} training processes need at least "
                                      f"{self.group.size} images of one bucket size per batch; the dataset has fewer")
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        if config.max_train_steps:
            self.total_steps = config.max_train_steps
            self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.total_epochs = config.max_train_epochs
            self.total_steps = self.total_epochs * self.steps_per_epoch
        self.files: list[Path] = []
        self.key_checker = saved_file_checker(models.base, (paths.lora_dir, paths.embeddings_dir))
        self.key_checks: list[KeyCheck] = []
        self.state_dir: Path | None = None
        self.position = _Position()
        self._masks: dict[tuple[int, int, bool, tuple[int, ...]], torch.Tensor] = {}
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._set_up_modules()

    # ---- set-up ----
    def _set_up_modules(self) -> None:
        """Train modes, checkpointing, optimizer and lr schedule over the method's parameter groups."""
        config, models = self.config, self.models
        models.denoiser.train()
        if config.gradient_checkpointing:
            models.denoiser.enable_gradient_checkpointing()
        if self.method.text_encoder_trains():
            for encoder in models.text_encoders:
                encoder.train()
                if config.gradient_checkpointing:
                    _enable_text_encoder_checkpointing(encoder)
        groups = self.method.parameter_groups()
        for group in groups:
            group.setdefault("weight_decay", config.weight_decay)
        self.trained_parameters = [parameter for group in groups for parameter in group["params"]]
        if not self.trained_parameters:
            raise TrainingConfigError("down_lr_weight", "nothing would train: every trained part is frozen")
        self.optimizer = build_optimizer(config.optimizer, groups, weight_decay=config.weight_decay)
        self.lr_scheduler = build_lr_scheduler(config.lr_scheduler, self.optimizer, total_steps=self.total_steps,
                                               warmup_steps=config.lr_warmup_steps, cycles=config.lr_cycles,
                                               power=config.lr_power)
        self.ema = WeightAverage(self.trained_parameters, config.ema_decay) if config.use_ema else None
        if config.optimizer == "Prodigy" and min(group["lr"] for group in groups) < 0.1:
            self.warnings.append("Prodigy adapts its own step size; learning rates around 1.0 are usual with it")

    @property
    def global_batch_size(self) -> int:
        """Samples per micro-batch over all processes."""
        return self.config.train_batch_size * self.group.size

    def epoch_plan(self, epoch: int) -> list[list[BatchSample]]:
        """The epoch's global micro-batches (per-process batch x processes, from the seed, the same on every
        process); with several processes a bucket's last batch smaller than the group is left out, so every
        process trains on at least one sample of every batch and all take the same number of steps."""
        batches = self.dataset.epoch_batches(epoch, self.global_batch_size, self.config.seed)
        if not self.group.distributed:
            return batches
        return [batch for batch in batches if len(batch) >= self.group.size]

    def _build_cache(self, dataset: TrainingDataset, report: Callable[[int, int], None]) -> LatentCache | None:
        """This process's share of the latents, joined with the others' (each image is encoded once in all)."""
        group = self.group
        cache = LatentCache.build(dataset, self.models.vae, self.models.device, report, self.should_stop,
                                  share=(group.rank, group.size))
        if not group.distributed:
            return cache
        if group.any(cache is None):
            return None
        return LatentCache.joined(group.gather_objects(cache.entries()), self.models.device)

    def cache_latents(self) -> bool:
        """Encode every image once (split over the processes); False when cancelled part-way."""
        share = "" if not self.group.distributed else f" (this process's share of {self.group.size})"

        def report(done: int, total: int) -> None:
            if done == total or done % 10 == 0:
                self.tracker.report(0, 0, message=f"caching latents {done}/{total}{share}")

        self.latent_cache = self._build_cache(self.dataset, report)
        if self.latent_cache is None:
            return False
        if self.class_dataset is not None:
            self.class_latent_cache = self._build_cache(self.class_dataset, report)
            return self.class_latent_cache is not None
        return True

    def cache_validation_latents(self) -> bool:
        """Validation images are always encoded once: every measurement reuses the same latents."""
        if self.validation is None or not self.group.is_main:  # validation runs on the first process
            return True
        self.validation_cache = LatentCache.build(self.validation, self.models.vae, self.models.device,
                                                  should_stop=self.should_stop)
        return self.validation_cache is not None

    # ---- one micro-batch ----
    def _latent_parameters(self, dataset: TrainingDataset, cache: LatentCache | None,
                           samples: list[BatchSample]) -> torch.Tensor:
        if cache is not None:
            return torch.stack([cache.get(s.index, s.flip) for s in samples])
        pixels = torch.stack([dataset.pixels(s.index, s.flip) for s in samples]).to(self.models.device)
        with torch.no_grad():
            return self.models.vae.encode(pixels.to(self.models.vae.dtype)).latent_dist.parameters

    def _time_ids(self, dataset: TrainingDataset, samples: list[BatchSample]) -> torch.Tensor:
        """SDXL micro-conditioning: original size, crop top-left, target size (all height, width)."""
        rows = []
        for sample in samples:
            item = dataset.items[sample.index]
            top, left = dataset.crop_top_left(sample.index)
            rows.append([item.size[1], item.size[0], top, left, item.bucket[1], item.bucket[0]])
        return torch.tensor(rows, dtype=torch.float32, device=self.models.device)

    def _loss_masks(self, dataset: TrainingDataset, samples: list[BatchSample],
                    latent_size: tuple[int, ...]) -> torch.Tensor | None:
        """Masked loss: each sample's mask at latent size [B, 1, h, w] (area-averaged, so a latent cell weighs
        the share of its pixels the mask keeps); None when no sample in the batch has a mask."""
        if not self.config.masked_loss or not any(dataset.items[s.index].has_mask for s in samples):
            return None
        masks = []
        for sample in samples:
            key = (id(dataset), sample.index, sample.flip, tuple(latent_size))
            if key not in self._masks:
                pixels = dataset.mask(sample.index, sample.flip)
                self._masks[key] = (torch.ones((1, *latent_size)) if pixels is None else
                                    F.interpolate(pixels.unsqueeze(0), size=tuple(latent_size), mode="area")[0])
            masks.append(self._masks[key])
        return torch.stack(masks).to(self.models.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.models.device.type, dtype=self.autocast_dtype)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text conditioning of training captions (with gradients only when the text side trains).

        With `cache_text_encoder_outputs` (a frozen text encoder, checked by the config) each distinct caption
        is encoded once per run and its output reused. The cache is keyed by the caption's text, so a caption
        that changes (edited between runs, shuffled or dropped out per sample) is encoded anew, never mixed up.
        """
        prompts = [self.method.expand_prompt(caption) for caption in captions]
        if not self.config.cache_text_encoder_outputs:
            text_grad = self.method.text_encoder_trains() and torch.is_grad_enabled()
            with self._autocast(), (nullcontext() if text_grad else torch.no_grad()):
                return encode_captions(self.models, prompts, self.config.clip_skip)
        missing = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self._text_cache))
        if missing:
            with self._autocast(), torch.no_grad():
                hidden, pooled = encode_captions(self.models, missing, self.config.clip_skip)
            for row, prompt in enumerate(missing):
                self._text_cache[prompt] = (hidden[row].detach().clone(),
                                             None if pooled is None else pooled[row].detach().clone())
        rows = [self._text_cache[prompt] for prompt in prompts]
        pooled_rows = [row[1] for row in rows]
        return (torch.stack([row[0] for row in rows]),
                None if pooled_rows[0] is None else torch.stack(pooled_rows))

    def batch_loss(self, dataset: TrainingDataset, cache: LatentCache | None, samples: list[BatchSample]) -> torch.Tensor:
        """The loss of one micro-batch. With several processes `samples` is the global batch: this process
        trains its rows, drawing the noise of all rows (so every process's generator stays the same) and
        returning its rows' share of the global mean (the shares sum to the one-process loss)."""
        config, models, device = self.config, self.models, self.models.device
        total = len(samples)
        start, stop = self.group.rows(total)
        samples = samples[start:stop]
        if self.group.distributed and dataset is self.dataset:
            self.seen.setdefault(self.position.epoch, []).extend(dataset.items[s.index].path.name for s in samples)
        parameters = self._latent_parameters(dataset, cache, samples)
        latents = unet_latents(parameters.float(), models.vae.config).to(device)
        hidden, pooled = self.encode([sample.caption for sample in samples])
        shape = (total, *latents.shape[1:])
        noise = torch.randn(shape, generator=self.generator)[start:stop].to(device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(
                (total, latents.shape[1], 1, 1), generator=self.generator)[start:stop].to(device)
        batch = self.objective.noised(latents, noise, self.generator, rows=(start, stop, total))
        with self._autocast():
            prediction = models.model_family.denoiser_training_call(
                models.denoiser, batch.noisy, batch.timesteps, hidden, pooled, self._time_ids(dataset, samples))
        per_sample = per_sample_loss(prediction, batch.target, self._loss_masks(dataset, samples, latents.shape[-2:]))
        if batch.weights is not None:
            per_sample = per_sample * batch.weights
        return per_sample.mean() if not self.group.distributed else per_sample.sum() / total

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean error on the validation images at the fixed `VALIDATION_LEVELS` with fixed noise per image (no
        loss weighting, the masks applied), so measurements differ only because the weights changed."""
        models, dataset = self.models, self.validation
        levels = torch.tensor(VALIDATION_LEVELS)
        losses = []
        models.denoiser.eval()
        try:
            for index, item in enumerate(dataset.items):
                samples = [BatchSample(index, False, item.caption)] * len(levels)
                parameters = self._latent_parameters(dataset, self.validation_cache, samples[:1])
                latents = unet_latents(parameters.float(), models.vae.config).to(models.device).repeat(len(levels), 1, 1, 1)
                noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(VALIDATION_NOISE_SEED + index))
                batch = self.objective.at_levels(latents, noise.to(models.device), levels)
                hidden, pooled = self.encode([item.caption] * len(levels))
                with self._autocast():
                    prediction = models.model_family.denoiser_training_call(
                        models.denoiser, batch.noisy, batch.timesteps, hidden, pooled, self._time_ids(dataset, samples))
                mask = self._loss_masks(dataset, samples, latents.shape[-2:])
                losses.append(float(per_sample_loss(prediction, batch.target, mask).mean()))
        finally:
            models.denoiser.train()
        return sum(losses) / len(losses)

    def validate(self, step: int, epoch: int) -> None:
        loss = self.validation_loss()
        self.validation_losses.append((step, loss))
        self.tracker.report(step, epoch, self.lr(), message=f"validation loss {loss:.4f} at step {step}",
                            validation_loss=loss)

    def validation_images(self, step: int) -> tuple[tuple[str, Image.Image], ...]:
        """Images from the first validation captions, with the sample settings: what the held-out pictures'
        captions draw now."""
        captions = list(dict.fromkeys(item.caption for item in self.validation.items))[:MAX_VALIDATION_IMAGES]
        return self._generate(captions, step, "validation", label="validation: ")

    def class_samples(self, micro_index: int) -> list[BatchSample]:
        """The prior-preservation images for one micro-batch: cycling through a seeded order."""
        count = len(self.class_dataset)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.config.seed)).tolist()
        size = self.global_batch_size
        return [BatchSample(order[(micro_index * size + j) % count], False, self.class_dataset.items[0].caption)
                for j in range(size)]

    # ---- the loop ----
    def lr(self) -> float:
        """The schedule's current lr (a block-weighted group's lr divided by its weight)."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"]) / float(group.get("lr_weight", 1.0))

    def optimizer_step(self, batches: list[list[BatchSample]], first_micro_index: int) -> float | None:
        """Accumulate gradients over `batches`, then one optimizer step; None when cancelled mid-way."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        if self.group.distributed and self.group.any(self.should_stop()):  # all processes stop together
            return None
        for offset, samples in enumerate(batches):
            if not self.group.distributed and self.should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                return None
            loss = self.batch_loss(self.dataset, self.latent_cache, samples)
            if self.class_dataset is not None:
                prior = self.batch_loss(self.class_dataset, self.class_latent_cache,
                                        self.class_samples(first_micro_index + offset))
                loss = loss + self.config.prior_loss_weight * prior
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {self.position.step + 1}; lower the "
                                    "learning rate, or use bf16 instead of fp16")
            scaled = loss / len(batches)
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += float(loss.detach()) / len(batches)
        parameters = [p for p in self.trained_parameters if p.requires_grad]  # pivotal freezes some mid-run
        if self.group.distributed:  # the shares' gradients sum to the global batch's
            self.group.sum_gradients(parameters, 1.0)
            total = self.group.sum_value(total)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0 and parameters:
            torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.update()
        return total

    def sample_images(self, step: int) -> tuple[tuple[str, Image.Image], ...]:
        """Images from the sample prompts with a fixed seed, on the trainer's own (training) copy."""
        return self._generate([prompt for prompt in self.config.sample_prompts if prompt.strip()], step, "")

    def _generate(self, prompts: list[str], step: int, kind: str, label: str = "") -> tuple[tuple[str, Image.Image], ...]:
        """One image per prompt (seeds sample_seed, +1, ...), saved as samples/<name>/<step>-[<kind>-]<i>.png."""
        config, models = self.config, self.models
        samples = []
        folder = self.paths.samples_dir / config.output_name
        folder.mkdir(parents=True, exist_ok=True)
        models.denoiser.eval()
        try:
            for index, prompt in enumerate(prompts):
                generator = torch.Generator("cpu").manual_seed(config.sample_seed + index)
                image = generate_images(models, [self.method.expand_prompt(prompt)], [generator],
                                        steps=config.sample_steps, cfg=config.sample_cfg, resolution=config.resolution,
                                        clip_skip=config.clip_skip, autocast=self._autocast())[0]
                _save_image_atomically(image, folder / f"{step:06d}-{kind + '-' if kind else ''}{index}.png")
                samples.append((label + prompt, image))
        finally:
            models.denoiser.train()
        return tuple(samples)

    def save(self, epoch: int, final: bool) -> None:
        """The method's files and the resumable state; only the first process writes (all hold the same weights)."""
        if not self.group.is_main:
            return
        suffix = "" if final else epoch_suffix(epoch)
        request = SaveRequest(paths=self.paths, suffix=suffix, step=self.position.step, epoch=epoch,
                              summary=self.dataset.summary(), processes=self.group.size)
        written = self._save_outputs(request)
        self.files.extend(written)
        self.tracker.files.extend(written)
        if self.config.save_state:
            name = f"{self.config.output_name}{'' if final else epoch_suffix(epoch)}-state"
            self.state_dir = _write_state(
                self.paths.states_dir / name, config=self.config, method=self.method, optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler, scaler=self.scaler, generator=self.generator, position=self.position,
                models=self.models, smoothed_loss=self.tracker.smoothed, ema=self.ema,
            )
        checks = [check for check in map(self.key_checker, written) if check is not None]
        self.key_checks.extend(checks)
        self.tracker.report(self.position.step, epoch, self.lr(),
                            message="; ".join(["saved " + ", ".join(path.name for path in written),
                                               *(check.summary() for check in checks)]))

    def _save_outputs(self, request: SaveRequest) -> list[Path]:
        """The method's files from the raw weights and, with EMA, from the averages: `<name>_ema...` beside
        them, or under the plain name instead of them."""
        if self.ema is None:
            return self.method.save_outputs(request)
        if self.config.ema_output == "instead":
            with self.ema.applied():
                return self.method.save_outputs(request)
        written = self.method.save_outputs(request)
        with self.ema.applied():
            written += self.method.save_outputs(dataclasses.replace(request, suffix=EMA_SUFFIX + request.suffix))
        return written

    def train(self, start: _Position) -> bool:
        """Run from `start` to the end; False when cancelled."""
        config = self.config
        self.position = start
        accumulation = config.gradient_accumulation_steps
        self.tracker.start_loop(start.step, self.total_steps, self.total_epochs)
        epoch = start.epoch
        if self.validation is not None and self.group.is_main:
            self.validate(start.step, start.epoch)
        while epoch < self.total_epochs and self.position.step < self.total_steps:
            batches = self.epoch_plan(epoch)
            done = self.position.batches_done if epoch == start.epoch else 0
            while done < len(batches) and self.position.step < self.total_steps:
                group = batches[done:done + accumulation]
                self.method.on_step_start(self.position.step, self.total_steps)
                loss = self.optimizer_step(group, epoch * self.batches_per_epoch + done)
                if loss is None:
                    return False
                done += len(group)
                step = self.position.step + 1
                self.position = _Position(step, epoch, done)
                self.tracker.record_loss(loss)
                if self.group.is_main:  # samples and validation come from the first process only
                    self._generate_due_images(step)
                self.tracker.report(step, epoch + 1, self.lr())
                if config.validation_every_n_steps and step % config.validation_every_n_steps == 0 and self.group.is_main:
                    self.validate(step, epoch + 1)
            if done >= len(batches):
                epoch += 1
                self.position = _Position(self.position.step, epoch, 0)
                finished = epoch >= self.total_epochs or self.position.step >= self.total_steps
                if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and not finished:
                    self.save(epoch, final=False)
        if self.validation is not None and self.group.is_main and self.validation_losses[-1][0] != self.position.step:
            self.validate(self.position.step, self.position.epoch)
        return True

    def _generate_due_images(self, step: int) -> None:
        """Sample-prompt images and validation images when their intervals come round; the gallery shows the
        latest of both."""
        config = self.config
        if config.sample_every_n_steps and step % config.sample_every_n_steps == 0:
            self._prompt_samples = self.sample_images(step)
        if config.validation_images_every_n_steps and step % config.validation_images_every_n_steps == 0:
            self._validation_samples = self.validation_images(step)
        self.tracker.samples = self._prompt_samples + self._validation_samples


def write_rank_log(paths: TrainingPaths, name: str, group: ProcessGroup, seen: dict[int, list[str]]) -> Path | None:
    """With several processes: `<work>/logs/<name>-processes.json`, the images each process trained on per
    epoch (gathered from all processes, written by the first), so a user can check the split."""
    everyone = group.gather_objects([(group.rank, seen)])
    if not group.is_main:
        return None
    log = {"processes": group.size,
           "epochs": {str(epoch): {str(rank): ranks_seen.get(epoch, []) for rank, ranks_seen in everyone}
                      for epoch in sorted({epoch for _, ranks_seen in everyone for epoch in ranks_seen})}}
    path = Path(paths.work_dir) / "logs" / f"{name}-processes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(log, indent=1), encoding="utf-8")
    os.replace(temporary, path)
    return path


def run_training(config: TrainingConfig, base: CheckpointWeights, paths: TrainingPaths, device: torch.device, *,
                 on_progress: Callable[[TrainingProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, group: ProcessGroup | None = None) -> TrainingResult:
    """Train `config.method` on a private copy of `base`; write the results into `paths`.

    Raises `TrainingConfigError` / `DatasetError` for bad input before any training starts. Cancelling
    (`should_stop()` returning True) stops before the next micro-batch and keeps what was saved so far.
    With `group` (several processes, see `webui.training.distributed`) every process calls this; the first
    one alone reports progress, writes files, samples and state.
    """
    group = group or ProcessGroup.single()
    if not group.is_main:
        on_progress = None
    config.validate().check_family(family_named(base.architecture.family))
    stop = should_stop or (lambda: False)
    warnings: list[str] = []
    tracker = _ProgressTracker(on_progress)
    dataset, validation = training_sets(config)
    summary = dataset.summary()
    warnings += [f"skipped {s.name}: {s.reason}" for s in summary.skipped] + summary.notes
    tracker.report(0, 0, message="dataset: " + summary.describe())

    pipeline = build_pipeline(base, device, torch.float32)
    models = TrainerModels(pipeline=pipeline, family=base.architecture.family, device=device, base=base,
                           base_hash=_checkpoint_hash(base))
    method = create_method(config, models)
    method.dataset_trigger_words = list(summary.trigger_words)
    for path in method.final_output_paths(paths):
        if path.exists():
            warnings.append(f"{path.name} already exists and will be replaced when training finishes")

    def cancelled_result(trainer: _Trainer | None = None) -> TrainingResult:
        return TrainingResult(
            files=list(trainer.files) if trainer else [], cancelled=True,
            steps_done=trainer.position.step if trainer else 0,
            epochs_done=trainer.position.epoch if trainer else 0,
            final_loss=tracker.last_loss, warnings=warnings, state_dir=trainer.state_dir if trainer else None,
            summary=summary, usage=method.usage_hint(), key_checks=list(trainer.key_checks) if trainer else [],
            validation_losses=list(trainer.validation_losses) if trainer else [],
        )

    class_dataset = None
    if config.uses_prior_preservation:
        class_paths = ensure_class_images(config, models, paths, tracker, stop) if group.is_main else []
        if group.any(class_paths is None):
            return cancelled_result()
        group.wait_for_everyone()
        if not group.is_main:  # the first process generated them; the others read the same folder
            class_paths = ensure_class_images(config, models, paths, tracker, stop)
        class_dataset = class_image_dataset(class_paths, config.effective_class_prompt, config.resolution)

    with torch.random.fork_rng(devices=[]), constructing_modules():  # adapters / token rows are new parameters
        torch.manual_seed(config.seed)  # PEFT initialises new adapters (on the CPU) from torch's global generator
        method.prepare()

    if validation is not None:
        tracker.report(0, 0, message=f"validation: {len(validation)} held-out image(s)")
    trainer = _Trainer(config, models, method, dataset, class_dataset, paths, tracker, stop, warnings, validation,
                       group)
    tracker.report(0, 0, message=f"effective batch {config.train_batch_size * group.size * config.gradient_accumulation_steps}"
                                 f" = {config.train_batch_size} per process x {group.size} process(es) x "
                                 f"{config.gradient_accumulation_steps} accumulation step(s)")
    if config.cache_latents and not trainer.cache_latents():
        return cancelled_result(trainer)
    if not trainer.cache_validation_latents():
        return cancelled_result(trainer)
    start = _Position()
    if config.resume_from:
        start, smoothed = _load_state(Path(config.resume_from).expanduser(), config=config, method=method,
                                      optimizer=trainer.optimizer, lr_scheduler=trainer.lr_scheduler,
                                      scaler=trainer.scaler, generator=trainer.generator, models=models,
                                      warnings=warnings, ema=trainer.ema)
        tracker.restore_smoothed(smoothed)
        if start.step >= trainer.total_steps:
            warnings.append(f"the saved state is already at step {start.step} of {trainer.total_steps}; "
                            "nothing left to train")
        tracker.report(start.step, start.epoch, trainer.lr(), message=f"resumed at step {start.step}")
    if not trainer.train(start):
        return cancelled_result(trainer)
    epochs_run = trainer.position.epoch + (1 if trainer.position.batches_done else 0)
    trainer.save(epochs_run, final=True)
    if group.distributed:
        log = write_rank_log(paths, config.output_name, group, trainer.seen)
        if log is not None:
            tracker.report(trainer.position.step, epochs_run, message=f"images per process: {log}")
        group.wait_for_everyone()
    return TrainingResult(
        files=list(trainer.files), cancelled=False, steps_done=trainer.position.step,
        epochs_done=epochs_run, final_loss=tracker.last_loss, warnings=warnings,
        state_dir=trainer.state_dir, summary=summary, usage=method.usage_hint(), key_checks=list(trainer.key_checks),
        validation_losses=list(trainer.validation_losses),
    )
