"""Training job settings: one frozen dataclass, JSON in and out, presets, and validation a UI can show.

Every hyperparameter of every method lives in :class:`TrainingConfig`, so a run is fully described by one
JSON file (the Train tab, the API and ``python -m webui.train`` all pass the same object). Validation
raises :class:`TrainingConfigError` whose message names the field and what it accepts, because the UI
shows the message as it is. Presets are plain JSON files holding only the fields they set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from webui.models.families import ModelFamily

METHODS = ("lora", "dreambooth", "dreambooth_lora", "textual_inversion", "pivotal")
LORA_METHODS = ("lora", "dreambooth_lora", "pivotal")
EMBEDDING_METHODS = ("textual_inversion", "pivotal")
PRIOR_PRESERVATION_METHODS = ("lora", "dreambooth", "dreambooth_lora", "pivotal")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy", "Adafactor")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
# How flow-matching models (SD3) draw the noise level of each sample: SD3's logit-normal (most steps at middle
# noise levels, the paper's best), or uniform over (0, 1). Noise-prediction models ignore it.
FLOW_TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
# The key layout of a saved LoRA: the base family's usual one ("auto": kohya's for SD1/SD2/SDXL, diffusers' PEFT
# keys for SD3.5/Flux), kohya sd-scripts' (`lora_unet_` + the model's original module names, what ComfyUI, Forge
# and sd-scripts read) or diffusers' (`transformer.`/`unet.` + diffusers module names, what `load_lora_weights`
# reads).
LORA_FILE_LAYOUTS = ("auto", "kohya", "diffusers")
# The adapter trained by the LoRA methods, all through PEFT: plain LoRA (LoCon with conv_rank), LyCORIS's LoHa /
# LoKr, or DoRA (a LoRA whose weight is renormalised to a trained magnitude per output channel, `use_dora`).
NETWORK_TYPES = ("lora", "loha", "lokr", "dora")
NETWORK_TYPE_LABELS = {"lora": "LoRA (LoCon with a conv rank)", "loha": "LoHa", "lokr": "LoKr", "dora": "DoRA"}
# Network types only LyCORIS's kohya-named layout holds (diffusers' PEFT keys have no LoHa / LoKr).
LYCORIS_NETWORK_TYPES = ("loha", "lokr")
BLOCK_LR_FIELDS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
# Where the EMA weights go: `<name>_ema.safetensors` beside the raw weights, or in place of them.
EMA_OUTPUTS = ("beside", "instead")
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2")
PROJECTION_TARGETS = ("proj_in", "proj_out")
UNET_TARGET_CHOICES = ATTENTION_TARGETS + FEED_FORWARD_TARGETS + PROJECTION_TARGETS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Caption sidecars are written beside images from a request: a fixed list, so a caption can never be
# saved as `.json`, `.pth` or any other file something else would read.
CAPTION_EXTENSIONS = (".txt", ".caption")
PRESETS_FOLDER = Path(__file__).resolve().parent / "presets"
# Characters that break file names on some OS or prompt parsing (`<lora:name:1>`, `(word:1.2)`).
_FORBIDDEN_NAME_CHARACTERS = set('/\\:<>"|?*()[]{},')


class TrainingConfigError(ValueError):
    """A setting that cannot work; `field` names it and the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run; defaults follow common kohya_ss practice for SD1.5 LoRA."""

    # --- job ---
    method: str = "lora"
    output_name: str = ""
    base_checkpoint: str = ""
    dataset_dir: str = ""
    trigger_word: str = ""
    class_word: str = ""
    # --- dataset ---
    caption_extension: str = ".txt"
    caption_template: str = "{trigger}, a {class}"
    prepend_trigger: bool = True
    shuffle_captions: bool = False
    keep_tokens: int = 1
    # kohya's caption_dropout_rate / caption_tag_dropout_rate: the share of samples trained on an empty caption
    # (so the subject also comes without its words), and of tags after the first `keep_tokens` dropped per sample.
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    repeats: int = 1
    resolution: int = 512
    enable_bucketing: bool = True
    min_bucket_resolution: int = 256
    max_bucket_resolution: int = 1024
    bucket_step: int = 64
    flip_augment: bool = False
    cache_latents: bool = True
    # Masked loss: each image's loss is weighted by its mask (white = learn, black = ignore), from
    # `<image>_mask.png` beside it, else `masks_dir/<image>.png`, else the image's alpha channel.
    masked_loss: bool = False
    masks_dir: str = ""
    # Encode each distinct caption once and reuse it (only while the text encoder is frozen).
    cache_text_encoder_outputs: bool = False
    # --- network ---
    network_type: str = "lora"
    rank: int = 16
    alpha: float = 16.0
    train_text_encoder: bool = False
    conv_rank: int = 0
    conv_alpha: float = 0.0
    target_modules: tuple[str, ...] = ATTENTION_TARGETS
    # --- optimisation ---
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5
    # kohya's block learning-rate weights: the UNet's down, mid and up blocks train at unet_lr times these
    # (0 freezes a block). One weight per part, not kohya's per-block lists.
    down_lr_weight: float = 1.0
    mid_lr_weight: float = 1.0
    up_lr_weight: float = 1.0
    embedding_lr: float = 5e-4
    lr_scheduler: str = "constant"
    lr_cycles: int = 1
    lr_power: float = 1.0
    lr_warmup_steps: int = 0
    optimizer: str = "AdamW"
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    # CUDA devices to train on, "0,1" (as CUDA_VISIBLE_DEVICES spells them): "" or one id trains in the app's
    # process on its device; two or more start one training process per GPU (DDP, see docs/MULTI_GPU.md), each
    # with train_batch_size, so the effective batch is train_batch_size x GPUs x gradient_accumulation_steps.
    gpus: str = ""
    max_train_epochs: int = 10
    max_train_steps: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    clip_skip: int = 1
    min_snr_gamma: float = 0.0
    noise_offset: float = 0.0
    flow_timestep_sampling: str = "logit_normal"
    flow_logit_mean: float = 0.0
    flow_logit_std: float = 1.0
    seed: int = 42
    # --- EMA of the trained weights (SimpleTuner's use_ema / ema_decay) ---
    use_ema: bool = False
    ema_decay: float = 0.999
    ema_output: str = "beside"
    # --- saving, sampling, resuming ---
    save_every_n_epochs: int = 0
    lora_file_layout: str = "auto"
    save_state: bool = True
    sample_every_n_steps: int = 0
    sample_prompts: tuple[str, ...] = ()
    sample_seed: int = 1234
    sample_steps: int = 20
    sample_cfg: float = 7.0
    resume_from: str = ""
    # --- validation: held-out images (a folder, or a share of the dataset) ---
    validation_dir: str = ""
    validation_split: float = 0.0
    validation_every_n_steps: int = 0
    validation_images_every_n_steps: int = 0
    # --- DreamBooth prior preservation ---
    with_prior_preservation: bool = False
    class_prompt: str = ""
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    # --- textual inversion / pivotal ---
    token: str = ""
    init_word: str = ""
    num_vectors: int = 1
    embedding_train_fraction: float = 0.5

    # ---- derived values (one place decides the fallbacks) ----
    @property
    def uses_lora(self) -> bool:
        return self.method in LORA_METHODS

    @property
    def uses_block_lr_weights(self) -> bool:
        return any(getattr(self, name) != 1.0 for name in BLOCK_LR_FIELDS)

    def _first_block_weight(self) -> str:
        return next(name for name in BLOCK_LR_FIELDS if getattr(self, name) != 1.0)

    @property
    def block_lr_weights(self) -> dict[str, float]:
        """{"down": ..., "mid": ..., "up": ...} for the optimizer's parameter groups."""
        return {name.split("_")[0]: getattr(self, name) for name in BLOCK_LR_FIELDS}

    @property
    def uses_validation(self) -> bool:
        return bool(self.validation_dir.strip()) or self.validation_split > 0

    @property
    def uses_embedding(self) -> bool:
        return self.method in EMBEDDING_METHODS

    @property
    def uses_prior_preservation(self) -> bool:
        """DreamBooth-LoRA always uses the class images; other methods when asked to."""
        return self.method == "dreambooth_lora" or (
            self.with_prior_preservation and self.method in PRIOR_PRESERVATION_METHODS
        )

    @property
    def effective_token(self) -> str:
        """The new word TI / pivotal teach: `token`, else the trigger word (lower case: CLIP lowercases text)."""
        return (self.token or self.trigger_word).strip().lower()

    @property
    def effective_trigger(self) -> str:
        """The word captions must contain: the new token for embedding methods, else the trigger word."""
        return self.effective_token if self.uses_embedding else self.trigger_word.strip()

    @property
    def effective_init_word(self) -> str:
        return (self.init_word or self.class_word).strip()

    @property
    def effective_class_prompt(self) -> str:
        """The prompt class images are generated from (`class_prompt`, else "a <class word>")."""
        if self.class_prompt.strip():
            return self.class_prompt.strip()
        return f"a {self.class_word.strip()}" if self.class_word.strip() else ""

    @property
    def token_strings(self) -> tuple[str, ...]:
        """One tokenizer entry per learned vector: `token`, `token_1`, ... (kohya/A1111 style)."""
        token = self.effective_token
        return (token,) + tuple(f"{token}_{index}" for index in range(1, self.num_vectors))

    # ---- JSON ----
    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: Path) -> Path:
        """Write the config as JSON atomically (a temp file, then a rename)."""
        return _write_atomically(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        """Build from JSON values; unknown keys and wrongly typed values raise `TrainingConfigError`."""
        if not isinstance(data, dict):
            raise TrainingConfigError("config", f"must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TrainingConfigError(unknown[0], f"unknown setting; known settings: {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        values = {name: _coerce(name, value, hints[name]) for name, value in data.items()}
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainingConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise TrainingConfigError("config", f"cannot read {path}: {error.strerror or error}") from error
        except json.JSONDecodeError as error:
            raise TrainingConfigError("config", f"{path.name} is not valid JSON ({error})") from error
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)

    # ---- validation ----
    @property
    def gpu_ids(self) -> tuple[int, ...]:
        """The `gpus` field as device ids (validated by `validate`)."""
        return tuple(int(part) for part in self.gpus.replace(" ", "").split(",") if part)

    def validate(self) -> TrainingConfig:
        """Check every value a run depends on; returns self so calls can chain."""
        _one_of("method", self.method, METHODS)
        if not re.fullmatch(r"\s*(\d+\s*(,\s*\d+\s*)*)?", self.gpus):
            raise TrainingConfigError("gpus", f"list CUDA device numbers separated by commas, like 0,1 (got {self.gpus!r})")
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise TrainingConfigError("gpus", f"each GPU can be listed once (got {self.gpus!r})")
        _file_name("output_name", self.output_name)
        if not self.base_checkpoint.strip():
            raise TrainingConfigError("base_checkpoint", "choose the checkpoint to train on")
        if not self.dataset_dir.strip():
            raise TrainingConfigError("dataset_dir", "choose the folder with the training images")
        self._validate_dataset()
        self._validate_network()
        self._validate_optimisation()
        self._validate_saving_and_sampling()
        self._validate_method_specific()
        return self

    def check_family(self, family: ModelFamily) -> TrainingConfig:
        """Refuse what the base model's family cannot train: a method it lacks (SD3: LoRA methods only), image
        sides its denoiser cannot take (SD3/Flux: multiples of 16)."""
        if self.method not in family.training_methods:
            raise TrainingConfigError("method", f"{family.label} checkpoints can be trained with "
                                                f"{', '.join(family.training_methods)}; not {self.method}")
        sizes = [("resolution", self.resolution)]
        if self.enable_bucketing:
            sizes += [("bucket_step", self.bucket_step), ("min_bucket_resolution", self.min_bucket_resolution),
                      ("max_bucket_resolution", self.max_bucket_resolution)]
        if self.network_type == "dora" and family.denoiser != "unet" and self.lora_file_layout == "kohya":
            raise TrainingConfigError("lora_file_layout", f"{family.label} DoRA LoRAs are saved with diffusers' keys "
                                      "(lora_magnitude_vector): the original fused layers' magnitudes need every "
                                      "part trained; choose the auto or diffusers layout")
        if self.network_type in LYCORIS_NETWORK_TYPES and family.trained_lora_layout != "kohya":
            from webui.models.families import FAMILIES

            able = [f.label for f in FAMILIES if f.trained_lora_layout == "kohya" and "lora" in f.training_methods]
            raise TrainingConfigError("network_type", f"{family.label} LoRAs are saved with diffusers' keys, which "
                                      f"have no {self.network_type}; {family.label} trains: lora. LoHa and LoKr "
                                      f"train for {', '.join(able)}")
        if self.uses_block_lr_weights and family.denoiser != "unet":
            raise TrainingConfigError(self._first_block_weight(), f"{family.label} models have a {family.denoiser}, "
                                      "not a UNet with down/mid/up blocks; leave the block weights at 1")
        for name, value in sizes:
            if value % family.size_multiple:
                raise TrainingConfigError(name, f"must be a multiple of {family.size_multiple} for "
                                                f"{family.label} (got {value})")
        return self

    def _validate_dataset(self) -> None:
        check_caption_extension(self.caption_extension)
        if "{trigger}" not in self.caption_template and "{class}" not in self.caption_template:
            raise TrainingConfigError("caption_template", "must contain {trigger} and/or {class}")
        _int_range("keep_tokens", self.keep_tokens, 0, 75)
        if self.masks_dir.strip() and not self.masked_loss:
            raise TrainingConfigError("masks_dir", "a masks folder is only read with masked_loss on")
        _float_range("caption_dropout_rate", self.caption_dropout_rate, 0.0, 1.0)
        _float_range("caption_tag_dropout_rate", self.caption_tag_dropout_rate, 0.0, 1.0)
        _int_range("repeats", self.repeats, 1, 10_000)
        _int_range("resolution", self.resolution, 64, 4096)
        _multiple_of("resolution", self.resolution, 8)
        _int_range("bucket_step", self.bucket_step, 8, 512)
        _multiple_of("bucket_step", self.bucket_step, 8)
        if self.enable_bucketing:
            _int_range("min_bucket_resolution", self.min_bucket_resolution, self.bucket_step, self.resolution)
            _int_range("max_bucket_resolution", self.max_bucket_resolution, self.resolution, 8192)
            _multiple_of("min_bucket_resolution", self.min_bucket_resolution, self.bucket_step)
            _multiple_of("max_bucket_resolution", self.max_bucket_resolution, self.bucket_step)

    def _validate_network(self) -> None:
        if not self.uses_lora:
            if self.network_type != "lora":
                raise TrainingConfigError("network_type", f"{self.method} trains no LoRA; leave it at lora")
            return
        _one_of("network_type", self.network_type, NETWORK_TYPES)
        _int_range("rank", self.rank, 1, 1024)
        _float_range("alpha", self.alpha, 0.0, 4096.0, low_open=True)
        _int_range("conv_rank", self.conv_rank, 0, 1024)
        if self.conv_rank:
            _float_range("conv_alpha", self.conv_alpha, 0.0, 4096.0, low_open=True)
        if not self.target_modules:
            raise TrainingConfigError("target_modules", f"choose at least one of {', '.join(UNET_TARGET_CHOICES)}")
        for target in self.target_modules:
            _one_of("target_modules", target, UNET_TARGET_CHOICES)

    def _validate_optimisation(self) -> None:
        from webui.training.optim import optimizer_unavailable_reason

        if self.method != "textual_inversion":
            _float_range("unet_lr", self.unet_lr, 0.0, 10.0, low_open=True)
        for name in BLOCK_LR_FIELDS:
            _float_range(name, getattr(self, name), 0.0, 10.0)
        if self.uses_block_lr_weights and self.method == "textual_inversion":
            raise TrainingConfigError(self._first_block_weight(), "textual inversion trains no UNet weights; "
                                                                  "leave the block weights at 1")
        if self.uses_block_lr_weights and not any(getattr(self, name) for name in BLOCK_LR_FIELDS):
            raise TrainingConfigError("down_lr_weight", "with every block weight at 0 nothing in the UNet trains")
        if self.train_text_encoder:
            _float_range("text_encoder_lr", self.text_encoder_lr, 0.0, 10.0, low_open=True)
        if self.uses_embedding:
            _float_range("embedding_lr", self.embedding_lr, 0.0, 10.0, low_open=True)
        _one_of("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _int_range("lr_cycles", self.lr_cycles, 1, 1000)
        _float_range("lr_power", self.lr_power, 0.0, 100.0, low_open=True)
        _int_range("lr_warmup_steps", self.lr_warmup_steps, 0, 1_000_000)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        reason = optimizer_unavailable_reason(self.optimizer)
        if reason:
            raise TrainingConfigError("optimizer", reason)
        _float_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _float_range("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _int_range("train_batch_size", self.train_batch_size, 1, 1024)
        _int_range("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, 1024)
        _int_range("max_train_epochs", self.max_train_epochs, 0, 100_000)
        _int_range("max_train_steps", self.max_train_steps, 0, 10_000_000)
        if self.max_train_epochs == 0 and self.max_train_steps == 0:
            raise TrainingConfigError("max_train_steps", "set max_train_steps or max_train_epochs above 0")
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _int_range("clip_skip", self.clip_skip, 1, 12)
        _float_range("min_snr_gamma", self.min_snr_gamma, 0.0, 100.0)
        _float_range("noise_offset", self.noise_offset, 0.0, 1.0)
        if self.cache_text_encoder_outputs and self.train_text_encoder:
            raise TrainingConfigError("cache_text_encoder_outputs", "needs a frozen text encoder; turn off "
                                                                    "train_text_encoder or the cache")
        if self.cache_text_encoder_outputs and self.uses_embedding:
            raise TrainingConfigError("cache_text_encoder_outputs", f"{self.method} trains the new token's "
                                                                    "embedding, so the text encoder's output changes")
        _one_of("flow_timestep_sampling", self.flow_timestep_sampling, FLOW_TIMESTEP_SAMPLINGS)
        _float_range("flow_logit_mean", self.flow_logit_mean, -10.0, 10.0)
        _float_range("flow_logit_std", self.flow_logit_std, 0.0, 10.0, low_open=True)
        _int_range("seed", self.seed, 0, 2**63 - 1)
        if self.use_ema:
            _float_range("ema_decay", self.ema_decay, 0.0, 0.999999, low_open=True)
            _one_of("ema_output", self.ema_output, EMA_OUTPUTS)

    def _validate_saving_and_sampling(self) -> None:
        _int_range("save_every_n_epochs", self.save_every_n_epochs, 0, 100_000)
        if self.lora_file_layout not in LORA_FILE_LAYOUTS:
            raise TrainingConfigError("lora_file_layout", f"must be one of {', '.join(LORA_FILE_LAYOUTS)}")
        _int_range("sample_every_n_steps", self.sample_every_n_steps, 0, 10_000_000)
        if self.sample_every_n_steps and not any(prompt.strip() for prompt in self.sample_prompts):
            raise TrainingConfigError("sample_prompts", "give at least one prompt, or set sample_every_n_steps to 0")
        _int_range("sample_seed", self.sample_seed, 0, 2**63 - 1)
        _int_range("sample_steps", self.sample_steps, 1, 150)
        _float_range("sample_cfg", self.sample_cfg, 1.0, 30.0)
        _float_range("validation_split", self.validation_split, 0.0, 0.5)
        _int_range("validation_every_n_steps", self.validation_every_n_steps, 0, 10_000_000)
        _int_range("validation_images_every_n_steps", self.validation_images_every_n_steps, 0, 10_000_000)
        if self.validation_dir.strip() and self.validation_split:
            raise TrainingConfigError("validation_split", "choose a validation folder or a split of the dataset, "
                                                          "not both")
        if not self.uses_validation:
            for name in ("validation_every_n_steps", "validation_images_every_n_steps"):
                if getattr(self, name):
                    raise TrainingConfigError(name, "needs validation images: set validation_dir or validation_split")

    def _validate_method_specific(self) -> None:
        if self.with_prior_preservation and self.method not in PRIOR_PRESERVATION_METHODS:
            raise TrainingConfigError(
                "with_prior_preservation", f"only {', '.join(PRIOR_PRESERVATION_METHODS)} use class images"
            )
        if self.uses_prior_preservation:
            if not self.effective_class_prompt:
                raise TrainingConfigError("class_prompt", "prior preservation needs a class prompt or a class word")
            _int_range("num_class_images", self.num_class_images, 1, 10_000)
            _float_range("prior_loss_weight", self.prior_loss_weight, 0.0, 100.0)
        if self.uses_embedding:
            token = self.effective_token
            if not token:
                raise TrainingConfigError("token", "name the new token (or set a trigger word)")
            if re.search(r"\s", token):
                raise TrainingConfigError("token", f"must be one word without spaces (got {token!r})")
            _file_name("token", token)
            if not self.effective_init_word:
                raise TrainingConfigError("init_word", "give a word the new token starts from (or set a class word)")
            _int_range("num_vectors", self.num_vectors, 1, 75)
        if self.method == "pivotal":
            _float_range("embedding_train_fraction", self.embedding_train_fraction, 0.0, 1.0)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """A JSON value as the field's type; wrong kinds raise with the field name."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise TrainingConfigError(name, "must be a list of strings")
        return tuple(value)
    if origin in (types.UnionType, typing.Union):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if annotation is bool:
        if not isinstance(value, bool):
            raise TrainingConfigError(name, f"must be true or false (got {value!r})")
        return value
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainingConfigError(name, f"must be a whole number (got {value!r})")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainingConfigError(name, f"must be a number (got {value!r})")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise TrainingConfigError(name, f"must be text (got {value!r})")
        return value
    return value


def check_caption_extension(extension: Any) -> str:
    """The caption sidecar extension if it is one of CAPTION_EXTENSIONS; TrainingConfigError otherwise."""
    _one_of("caption_extension", extension, CAPTION_EXTENSIONS)
    return extension


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrainingConfigError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _int_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingConfigError(name, f"must be a whole number from {low} to {high} (got {value!r})")


def _float_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if valid:
        valid = (value > low if low_open else value >= low) and value <= high
    if not valid:
        lower = f"above {low:g}" if low_open else f"from {low:g}"
        raise TrainingConfigError(name, f"must be a number {lower} up to {high:g} (got {value!r})")


def _multiple_of(name: str, value: int, step: int) -> None:
    if value % step:
        raise TrainingConfigError(name, f"must be a multiple of {step} (got {value})")


def _file_name(name: str, value: str) -> None:
    text = value.strip()
    if not text:
        raise TrainingConfigError(name, "must not be empty")
    if text != value or text.startswith(".") or any(c in _FORBIDDEN_NAME_CHARACTERS for c in text) or len(text) > 120:
        raise TrainingConfigError(
            name, f"{value!r} is not a usable file name: no leading dot or surrounding spaces, at most 120 "
                  "characters, none of / \\ : < > \" | ? * ( ) [ ] { } ,"
        )


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def list_presets(user_folder: Path | None = None) -> list[str]:
    """Names of the shipped presets, then the user's own (a user preset may shadow a shipped one)."""
    names = sorted(path.stem for path in PRESETS_FOLDER.glob("*.json"))
    if user_folder is not None and Path(user_folder).is_dir():
        names += sorted(path.stem for path in Path(user_folder).glob("*.json") if path.stem not in names)
    return names


def load_preset(name: str, user_folder: Path | None = None) -> TrainingConfig:
    """A preset's values over the defaults; the user's folder is searched before the shipped presets.

    The name must be a plain file name, so a request cannot make it read `../../somewhere.json`.
    """
    if not isinstance(name, str):
        raise TrainingConfigError("preset", f"must be a preset name (got {name!r})")
    _file_name("preset", name)
    candidates = ([Path(user_folder) / f"{name}.json"] if user_folder is not None else []) + [PRESETS_FOLDER / f"{name}.json"]
    for path in candidates:
        if path.is_file():
            return TrainingConfig.load(path)
    raise TrainingConfigError("preset", f"no preset named {name!r}; available: {', '.join(list_presets(user_folder))}")


def save_user_preset(config: TrainingConfig, folder: Path, name: str) -> Path:
    """Save a config as a named preset; job-specific fields (dataset, names, resume) are left out."""
    _file_name("preset", name)
    job_fields = {"output_name", "dataset_dir", "trigger_word", "class_word", "resume_from", "token", "base_checkpoint",
                  "masks_dir", "validation_dir"}
    values = {key: value for key, value in config.to_dict().items() if key not in job_fields}
    return _write_atomically(Path(folder) / f"{name}.json", json.dumps(values, indent=2) + "\n")


def _write_atomically(path: Path, text: str) -> Path:
    """Write through a temporary file of its own, then rename: two saves of one name at once (two browser
    tabs, two API clients) each replace the file whole instead of tripping over one shared temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
