"""The Train tab's form: one widget per `TrainingConfig` field, and the config built back from the widgets.

Widgets are made from a table of field specs, so every setting has exactly one widget (keyed and
`elem_id`-ed by its config field name, `train_<field>`), presets fill the same widgets, and one function
turns widget values into a validated config. Labels use the names kohya_ss users know.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.training.config import (
    CAPTION_EXTENSIONS,
    EMA_OUTPUTS,
    FLOW_TIMESTEP_SAMPLINGS,
    LORA_FILE_LAYOUTS,
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    NETWORK_TYPE_LABELS,
    NETWORK_TYPES,
    OPTIMIZERS,
    UNET_TARGET_CHOICES,
    TrainingConfig,
    TrainingConfigError,
)
from webui.training.launcher import cuda_device_count

METHOD_CHOICES = (("LoRA", "lora"), ("DreamBooth", "dreambooth"), ("DreamBooth-LoRA", "dreambooth_lora"),
                  ("Textual Inversion", "textual_inversion"), ("Pivotal", "pivotal"))


@dataclass(frozen=True)
class FieldSpec:
    """How one config field is edited: kind is int, float, bool, text, choice, lines (one item a line), multi or
    gpus (this machine's CUDA devices, as checkboxes)."""

    name: str
    label: str
    kind: str
    choices: tuple[Any, ...] = ()
    info: str | None = None


def _spec(name: str, label: str, kind: str, choices: tuple[Any, ...] = (), info: str | None = None) -> FieldSpec:
    return FieldSpec(name, label, kind, choices, info)


# Grouped as the tab shows them; each group becomes a row (dataset) or an accordion (hyperparameters).
DATASET_GROUPS: dict[str, tuple[FieldSpec, ...]] = {
    "words": (
        _spec("trigger_word", "Trigger word", "text", info="the new word that calls up your subject, e.g. sks"),
        _spec("class_word", "Class word", "text", info="what it is: person, dog, style..."),
        _spec("caption_template", "Caption template", "text", info="for images without a caption file"),
        _spec("caption_extension", "Caption extension", "choice", CAPTION_EXTENSIONS),
    ),
    "captions": (
        _spec("prepend_trigger", "Put the trigger word first in captions", "bool"),
        _spec("shuffle_captions", "Shuffle caption tags", "bool"),
        _spec("keep_tokens", "Keep first N tags", "int", info="never shuffled or dropped"),
        _spec("repeats", "Repeats", "int", info="times each image is seen per epoch"),
    ),
    "dropout": (
        _spec("caption_dropout_rate", "Caption dropout rate", "float",
              info="share of samples trained with an empty caption (0 = off)"),
        _spec("caption_tag_dropout_rate", "Tag dropout rate", "float",
              info="share of tags after the kept ones left out of each sample (0 = off)"),
    ),
    "buckets": (
        _spec("resolution", "Resolution", "int"),
        _spec("enable_bucketing", "Enable buckets (keep aspect ratios)", "bool"),
        _spec("min_bucket_resolution", "Min bucket side", "int"),
        _spec("max_bucket_resolution", "Max bucket side", "int"),
        _spec("bucket_step", "Bucket step", "int"),
    ),
    "augment": (
        _spec("flip_augment", "Random horizontal flip", "bool"),
        _spec("cache_latents", "Cache latents", "bool"),
        _spec("cache_text_encoder_outputs", "Cache text encoder outputs", "bool",
              info="encode each caption once (needs a frozen text encoder; not for TI or pivotal)"),
    ),
    "masks": (
        _spec("masked_loss", "Masked loss", "bool",
              info="learn only where the mask is white: <image>_mask.png beside each image, the masks folder, "
                   "or the image's transparency"),
        _spec("masks_dir", "Masks folder (optional)", "text", info="a folder in datasets/ with <image>.png masks"),
    ),
}

HYPERPARAMETER_GROUPS: dict[str, tuple[FieldSpec, ...]] = {
    "Network (LoRA)": (
        _spec("network_type", "Network type", "choice",
              tuple((NETWORK_TYPE_LABELS[kind], kind) for kind in NETWORK_TYPES),
              info="LoRA (LoCon with a conv rank), DoRA, or LyCORIS LoHa / LoKr (SD1, SD2, SDXL)"),
        _spec("rank", "Network rank (dim)", "int"),
        _spec("alpha", "Network alpha", "float"),
        _spec("conv_rank", "Conv rank (LoCon, 0 = off)", "int"),
        _spec("conv_alpha", "Conv alpha", "float"),
        _spec("target_modules", "UNet layers", "multi", UNET_TARGET_CHOICES),
    ),
    "Learning rate and optimizer": (
        _spec("unet_lr", "UNet learning rate", "float"),
        _spec("text_encoder_lr", "Text encoder learning rate", "float"),
        _spec("down_lr_weight", "UNet down blocks lr weight", "float", info="x UNet lr; 0 freezes them"),
        _spec("mid_lr_weight", "UNet mid block lr weight", "float", info="x UNet lr; 0 freezes it"),
        _spec("up_lr_weight", "UNet up blocks lr weight", "float", info="x UNet lr; 0 freezes them"),
        _spec("train_text_encoder", "Train the text encoder", "bool"),
        _spec("embedding_lr", "Embedding learning rate", "float"),
        _spec("lr_scheduler", "LR scheduler", "choice", LR_SCHEDULERS),
        _spec("lr_warmup_steps", "LR warmup steps", "int"),
        _spec("lr_cycles", "LR cycles (cosine with restarts)", "int"),
        _spec("lr_power", "LR power (polynomial)", "float"),
        _spec("optimizer", "Optimizer", "choice", OPTIMIZERS),
        _spec("weight_decay", "Weight decay", "float"),
        _spec("max_grad_norm", "Max grad norm (0 = no clipping)", "float"),
    ),
    "Steps and batch": (
        _spec("train_batch_size", "Train batch size", "int"),
        _spec("gradient_accumulation_steps", "Gradient accumulation steps", "int"),
        _spec("gpus", "GPUs", "gpus", info="two or more train together, one process each (effective batch = "
                                           "batch size x GPUs x accumulation)"),
        _spec("max_train_epochs", "Epochs", "int"),
        _spec("max_train_steps", "Max train steps (0 = by epochs)", "int"),
        _spec("seed", "Seed", "int"),
    ),
    "Precision and loss": (
        _spec("mixed_precision", "Mixed precision", "choice", MIXED_PRECISIONS),
        _spec("gradient_checkpointing", "Gradient checkpointing", "bool"),
        _spec("clip_skip", "Clip skip", "int"),
        _spec("min_snr_gamma", "Min SNR gamma (0 = off)", "float"),
        _spec("noise_offset", "Noise offset", "float"),
        _spec("flow_timestep_sampling", "Flow matching: timestep sampling", "choice", FLOW_TIMESTEP_SAMPLINGS,
              info="SD3.5: how noise levels are drawn; logit_normal as SD3 was trained"),
        _spec("flow_logit_mean", "Flow matching: logit mean", "float", info="above 0: more training at high noise"),
        _spec("flow_logit_std", "Flow matching: logit std", "float"),
    ),
    "EMA": (
        _spec("use_ema", "Keep an EMA of the trained weights", "bool"),
        _spec("ema_decay", "EMA decay", "float", info="averages about the last 1/(1-decay) steps, e.g. 0.999"),
        _spec("ema_output", "EMA file", "choice", EMA_OUTPUTS,
              info="beside: <name>_ema.safetensors next to the raw file; instead: only the EMA file"),
    ),
    "Saving, samples and resume": (
        _spec("save_every_n_epochs", "Save every N epochs (0 = only at the end)", "int"),
        _spec("lora_file_layout", "LoRA file layout", "choice", LORA_FILE_LAYOUTS,
              info="auto: kohya for SD1/SD2/SDXL, diffusers for SD3.5/Flux; kohya = sd-scripts' lora_unet_ names"),
        _spec("save_state", "Save training state (for resuming)", "bool"),
        _spec("sample_every_n_steps", "Sample every N steps (0 = never)", "int"),
        _spec("sample_prompts", "Sample prompts (one per line)", "lines"),
        _spec("sample_steps", "Sample steps", "int"),
        _spec("sample_cfg", "Sample CFG scale", "float"),
        _spec("sample_seed", "Sample seed", "int"),
        _spec("resume_from", "Resume from state folder", "text",
              info="the name of one of your saved states (e.g. my_lora-state); listed here when the page loads"),
    ),
    "Validation": (
        _spec("validation_dir", "Validation folder", "text",
              info="held-out images with captions, a folder in datasets/ (none of them a training image)"),
        _spec("validation_split", "Or hold out this share of the dataset", "float", info="0 to 0.5; 0 = none"),
        _spec("validation_every_n_steps", "Validation loss every N steps", "int",
              info="also measured before the first and after the last step"),
        _spec("validation_images_every_n_steps", "Validation images every N steps (0 = never)", "int"),
    ),
    "Prior preservation (DreamBooth)": (
        _spec("with_prior_preservation", "Use prior preservation (class images)", "bool",
              info="DreamBooth-LoRA always uses it"),
        _spec("class_prompt", "Class prompt", "text", info="empty: 'a <class word>'"),
        _spec("num_class_images", "Class images", "int"),
        _spec("prior_loss_weight", "Prior loss weight", "float"),
    ),
    "Textual inversion / pivotal": (
        _spec("token", "Token", "text", info="empty: the trigger word"),
        _spec("init_word", "Init word", "text", info="empty: the class word"),
        _spec("num_vectors", "Vectors per token", "int"),
        _spec("embedding_train_fraction", "Pivotal: fraction of steps that train the embedding", "float"),
    ),
}

# Short elem_ids for the accordions (tests and CSS open them by these).
GROUP_IDS: dict[str, str] = {
    "Network (LoRA)": "train_group_network",
    "Learning rate and optimizer": "train_group_optimizer",
    "Steps and batch": "train_group_steps",
    "Precision and loss": "train_group_precision",
    "EMA": "train_group_ema",
    "Saving, samples and resume": "train_group_saving",
    "Validation": "train_group_validation",
    "Prior preservation (DreamBooth)": "train_group_prior",
    "Textual inversion / pivotal": "train_group_embedding",
}
# Set by their own widgets (names, folders, checkpoint, method), not by the spec table.
JOB_WIDGET_FIELDS = ("method", "output_name", "base_checkpoint", "dataset_dir")
# Accordions that only some methods use; hidden for the others so the form shows what matters.
GROUP_METHODS: dict[str, tuple[str, ...]] = {
    "Network (LoRA)": ("lora", "dreambooth_lora", "pivotal"),
    "Prior preservation (DreamBooth)": ("lora", "dreambooth", "dreambooth_lora", "pivotal"),
    "Textual inversion / pivotal": ("textual_inversion", "pivotal"),
}


def all_specs() -> list[FieldSpec]:
    return [spec for groups in (DATASET_GROUPS, HYPERPARAMETER_GROUPS) for specs in groups.values() for spec in specs]


def make_widget(spec: FieldSpec, value: Any) -> gr.components.Component:
    """The widget for one field, showing `value` (a config value)."""
    if spec.kind == "gpus":
        return gpu_widget(spec, value, cuda_device_count())
    elem_id = f"train_{spec.name}"
    common: dict[str, Any] = {"label": spec.label, "elem_id": elem_id}
    if spec.info:
        common["info"] = spec.info
    if spec.kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if spec.kind == "float":
        return gr.Number(value=value, **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), value=value, **common)
    if spec.kind == "multi":
        return gr.CheckboxGroup(choices=list(spec.choices), value=list(value), **common)
    if spec.kind == "lines":
        return gr.Textbox(value="\n".join(value), lines=3, **common)
    return gr.Textbox(value=value, **common)


def gpu_widget(spec: FieldSpec, value: str, available: int) -> gr.CheckboxGroup:
    """One checkbox per CUDA device that exists (the first one ticked by default); hidden without CUDA, where
    training runs on the app's own device."""
    chosen = [part.strip() for part in value.split(",") if part.strip()] or (["0"] if available else [])
    return gr.CheckboxGroup(choices=[(f"GPU {index}", str(index)) for index in range(available)], value=chosen,
                            label=spec.label, info=spec.info, elem_id=f"train_{spec.name}", visible=available > 0)


def widget_value(spec: FieldSpec, value: Any) -> Any:
    """A config value as its widget holds it (lists for checkbox groups, one line per item for prompts)."""
    if spec.kind == "gpus":
        return [part.strip() for part in value.split(",") if part.strip()]
    if spec.kind == "lines":
        return "\n".join(value)
    if spec.kind == "multi":
        return list(value)
    return value


def config_from_widgets(values: dict[str, Any]) -> TrainingConfig:
    """Widget values by field name -> a `TrainingConfig`; a missing or wrongly typed value raises its field's error.

    Nothing here judges ranges: `TrainingConfig.validate` (run by `submit_training`) owns those rules.
    """
    specs = {spec.name: spec for spec in all_specs()}
    data: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        kind = spec.kind if spec is not None else "text"
        if kind in ("int", "float"):
            if value is None or value == "":
                raise TrainingConfigError(name, f"enter a number for {spec.label}")
            data[name] = value
        elif kind == "lines":
            data[name] = tuple(line.strip() for line in str(value or "").splitlines() if line.strip())
        elif kind == "multi":
            data[name] = tuple(value or ())
        elif kind == "gpus":
            data[name] = ",".join(str(item) for item in (value or ()))
        elif kind == "bool":
            data[name] = bool(value)
        else:
            data[name] = "" if value is None else str(value).strip()
    return TrainingConfig.from_dict(data)


def default_form_config(resolution: int) -> TrainingConfig:
    """The defaults the form opens with: the config's, at the base model's native resolution."""
    step = 64 if resolution >= 128 else 8
    minimum = max(step, (resolution // 2) // step * step)
    return dataclasses.replace(TrainingConfig(), resolution=resolution, bucket_step=step,
                               min_bucket_resolution=minimum, max_bucket_resolution=resolution * 2)
