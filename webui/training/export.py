"""Write training results in the file formats every Stable Diffusion tool loads.

A trained LoRA is only useful if A1111, ComfyUI, Forge, Civitai and diffusers can all read it, so SD1/SD2/SDXL
LoRAs are written in kohya-ss's layout (``lora_unet_*`` / ``lora_te*_`` names, ``lora_down`` / ``lora_up`` /
``alpha`` tensors, a DoRA's ``dora_scale``, ``ss_*`` and ``modelspec.*`` metadata), not in diffusers' PEFT layout, which A1111
cannot load. SD3/Flux LoRAs (no A1111 support either way) use diffusers' PEFT keys by default, the layout
diffusers' loaders read (`ModelFamily.trained_lora_layout`), or on request (`TrainingConfig.lora_file_layout`)
sd-scripts' names of the original modules, fused layers joined (`original_named_layers`). Embeddings are written the way A1111 and kohya write them, and full fine-tunes become an
A1111-layout single ``.safetensors`` when the model has a standard SD1/SD2/SDXL shape (a diffusers
folder otherwise, e.g. for the shipped toy model). Every file is written to a temporary name and
renamed into place, so a crash or a full disk never leaves a half-written model that the catalogs
would list.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as serialize_safetensors
from safetensors.torch import save_file
from torch import Tensor

from webui.models.checkpoint_loading import CheckpointWeights
from webui.models.default_model import TRAINING_RECORD_FILES
from webui.models.families import FAMILIES, ModelFamily, family_named
from webui.models.formats.dit_lora import joined_lora_factors
from webui.models.formats.kohya import kohya_text_path, unet_ldm_names_for_config
from webui.models.merger import _matches_shipped_configs
from webui.models.model_configs import load_component_config
from webui.models.single_file_writer import single_file_state, weightless_denoiser

COMPONENT_UNET = "unet"
COMPONENT_TE = "text_encoder"
COMPONENT_TE2 = "text_encoder_2"
COMPONENT_VAE = "vae"

MODELSPEC_VERSION = "1.0.0"
# modelspec.implementation values as kohya writes them: SD1/SD2 LoRAs use diffusers' module names,
# SDXL LoRAs, embeddings and checkpoints the original (SGM / LDM) code's.
IMPLEMENTATION_DIFFUSERS = "diffusers"
IMPLEMENTATION_STABILITY = "https://github.com/Stability-AI/generative-models"
KOHYA_LAYOUT, DIFFUSERS_LAYOUT = "kohya", "diffusers"
LORA_NETWORK_MODULE = "networks.lora"
# The safetensors metadata key holding a diffusers LoRA's PEFT config (diffusers' `LORA_ADAPTER_METADATA_KEY`).
DIFFUSERS_ADAPTER_METADATA = "lora_adapter_metadata"
# modelspec.prediction_type values: noise (epsilon), velocity (v) and rectified flow (SD3, Flux).
PREDICTION_TYPES = ("epsilon", "v", "flow")
# A1111's textual-inversion .pt files map the placeholder "*" to its CLIP token id.
A1111_PLACEHOLDER = "*"
A1111_PLACEHOLDER_TOKEN_ID = 265
SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def lora_layout(family: ModelFamily, layout: str | None) -> str:
    """The layout a LoRA is saved in: the one asked for ("kohya" / "diffusers"), else ("auto", None) the
    family's usual one (`ModelFamily.trained_lora_layout`)."""
    return layout if layout in (KOHYA_LAYOUT, DIFFUSERS_LAYOUT) else family.trained_lora_layout


def _implementation(family: ModelFamily, layout: str | None = None) -> str:
    """modelspec.implementation of a trained LoRA: whose module names its keys use (diffusers-layout files
    always diffusers' own; kohya-layout files of "sgm"-named families the original code's)."""
    if lora_layout(family, layout) == DIFFUSERS_LAYOUT or family.lora_module_naming != "sgm":
        return IMPLEMENTATION_DIFFUSERS
    return family.original_implementation


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a hidden temporary file beside ``path``, then rename it into place.

    The temporary name does not end in a model suffix, so folder scans never list a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def checked_lora_target(path: Path | str, layers: Mapping[str, Any], metadata: Mapping[str, str] | None
                        ) -> tuple[Path, dict[str, str]]:
    """The path and metadata of a LoRA about to be written, refused up front when they cannot make a file every
    loader reads (not .safetensors, no layers, metadata that is not str -> str)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"a LoRA must be a .safetensors file, got {path.name!r}")
    if not layers:
        raise ValueError("no LoRA layers to save")
    return path, _check_metadata(metadata)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """safetensors metadata must be str -> str; say which entry is not, instead of failing deep inside."""
    checked: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map strings to strings; {key!r} -> {type(value).__name__}")
        checked[key] = value
    return checked


def _data_section_sha256(serialized: bytes) -> str:
    """sha256 of a safetensors file's tensor bytes (after the header): kohya's ``sshs_model_hash``.

    The tensor bytes do not depend on the metadata, so the hash can be stored in the same file.
    """
    header_length = int.from_bytes(serialized[:8], "little")
    return hashlib.sha256(memoryview(serialized)[8 + header_length:]).hexdigest()


def _iso_date() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _resolution_pair(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    values = tuple(int(value) for value in resolution)
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise ValueError(f"resolution must be a size or (width, height), got {resolution!r}")
    return values[0], values[1]


def _as_metadata_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# LoRA (kohya-ss layout)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # tensors have no meaningful ==
class LoraLayerWeights:
    """The trained factors of one layer: delta W = alpha / rank * up @ down.

    ``down`` is ``[rank, in]`` (linear) or ``[rank, in, kh, kw]`` (convolution); ``up`` is ``[out, rank]``
    or ``[out, rank, 1, 1]``. A DoRA layer also has PEFT's ``magnitude``, one value per output channel (shaped
    as PEFT keeps it: ``[out]``, a convolution's ``[1, out, 1, 1]``): the weight becomes
    magnitude * (W + delta W) / ||W + delta W|| per output channel.
    """

    down: Tensor
    up: Tensor
    alpha: float
    magnitude: Tensor | None = None

    def __post_init__(self) -> None:
        if self.down.ndim not in (2, 4) or self.up.ndim not in (2, 4):
            raise ValueError(f"LoRA factors must be 2-D or 4-D; got down {tuple(self.down.shape)}, "
                             f"up {tuple(self.up.shape)}")
        if self.up.shape[1] != self.down.shape[0]:
            raise ValueError(f"up has rank {self.up.shape[1]} but down has rank {self.down.shape[0]}")
        if self.up.ndim == 4 and tuple(self.up.shape[2:]) != (1, 1):
            raise ValueError(f"a convolution's up factor must be [out, rank, 1, 1], got {tuple(self.up.shape)}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"alpha must be a finite number, got {self.alpha!r}")
        if self.magnitude is not None and self.magnitude.numel() != self.up.shape[0]:
            raise ValueError(f"a DoRA magnitude needs one value per output channel ({self.up.shape[0]}), got "
                             f"{tuple(self.magnitude.shape)}")

    def dora_scale(self) -> Tensor:
        """The magnitude as kohya / LyCORIS files store it per output channel (`wd_on_output`): ``[out, 1]``,
        a convolution's ``[out, 1, 1, 1]``, the shape ComfyUI and Forge tell the output axis by."""
        if self.magnitude is None:
            raise ValueError("not a DoRA layer")
        return self.magnitude.detach().float().reshape(self.up.shape[0], *(1,) * (self.down.ndim - 1))

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> Tensor:
        """The fp32 weight update at strength 1, flattened to ``[out, in * kh * kw]``."""
        up = self.up.detach().float().reshape(self.up.shape[0], -1)
        down = self.down.detach().float().reshape(self.rank, -1)
        return (float(self.alpha) / self.rank) * (up @ down)


def _split_component(layer_key: str) -> tuple[str, str]:
    component, separator, module_path = layer_key.partition(".")
    if not separator or not module_path:
        raise ValueError(f"LoRA layer {layer_key!r} is not '<component>.<module path>'")
    return component, module_path


def kohya_layer_names(layer_keys: Sequence[str], family: str,
                      unet_config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Our layer keys (``"unet.<diffusers path>"``, ``"text_encoder.<path>"``...) -> kohya layer names.

    SD1/SD2 UNet layers keep their diffusers path (dots become underscores); SDXL UNet layers get their
    LDM names, which is what kohya and A1111 use for SDXL. ``unet_config`` describes the SDXL UNet
    (the shipped SDXL base config when omitted).
    """
    model_family = family_named(family)
    prefixes = model_family.kohya_lora_prefixes
    encoder_kinds = {encoder.component: encoder.kind for encoder in model_family.ldm_text_encoders}
    ldm_names: dict[str, str] | None = None
    names: dict[str, str] = {}
    for layer_key in layer_keys:
        component, module_path = _split_component(layer_key)
        prefix = prefixes.get(component)
        if prefix is None:
            raise ValueError(f"LoRA layer {layer_key!r}: unknown component {component!r} for {family}; "
                             f"expected one of {', '.join(prefixes)}")
        if component == COMPONENT_UNET and model_family.lora_module_naming == "sgm":
            if ldm_names is None:
                ldm_names = unet_ldm_names_for_config(unet_config or load_component_config(family, COMPONENT_UNET))
            if module_path not in ldm_names:
                raise ValueError(f"LoRA layer {layer_key!r} is not a weight layer of the {model_family.label} UNet "
                                 "(no LDM name for it)")
            module_path = ldm_names[module_path]
        elif component != model_family.denoiser and encoder_kinds.get(component) != "t5":
            module_path = kohya_text_path(module_path)  # CLIP layers below "text_model."; T5's as they are
        names[layer_key] = prefix + module_path.replace(".", "_")
    clashes = len(names) - len(set(names.values()))
    if clashes:
        raise ValueError(f"{clashes} LoRA layer(s) map to the same kohya name; are there duplicate layer keys?")
    return names


def original_named_layers(layers: Mapping[str, LoraLayerWeights], family: ModelFamily,
                          denoiser_config: Mapping[str, Any]) -> dict[str, LoraLayerWeights]:
    """A transformer family's trained layers (`transformer.<diffusers path>`) as LoRAs of the model's original
    modules (`transformer.<original name>`: SD3's `joint_blocks.0.x_block.attn.qkv`, Flux's `single_blocks.0.
    linear1`), the modules a fused original layer became joined again (`formats/dit_lora.joined_lora_factors`);
    text-encoder layers as they are. The original names are the family's table the LoRA reader uses."""
    names = family.lora_original_names(weightless_denoiser(family, denoiser_config))
    owners = {part.path: original for original, parts in names.items() for part in parts}
    grouped: dict[str, dict[str, tuple[Tensor, Tensor, float]]] = {}
    renamed: dict[str, LoraLayerWeights] = {}
    for layer_key, weights in layers.items():
        component, module_path = _split_component(layer_key)
        if component != family.denoiser:
            renamed[layer_key] = weights
            continue
        original = owners.get(module_path)
        if weights.magnitude is not None:
            raise ValueError(f"LoRA layer {layer_key!r} is a DoRA layer; {family.label} DoRA LoRAs are saved in the "
                             "diffusers layout (a fused original layer's magnitude needs every part)")
        if original is None or weights.down.ndim != 2:
            raise ValueError(f"LoRA layer {layer_key!r} has no original {family.label} module name to be saved "
                             "under in kohya's layout; save it in the diffusers layout")
        grouped.setdefault(original, {})[module_path] = (weights.down.detach().float(), weights.up.detach().float(),
                                                         float(weights.alpha) / weights.rank)
    for original, members in grouped.items():
        parts = names[original]
        if len(parts) == 1 and parts[0].rows is None:
            renamed[f"{family.denoiser}.{original}"] = layers[f"{family.denoiser}.{parts[0].path}"]
            continue
        rows = sum(stop - start for part in parts for start, stop in part.rows or ())
        down, up, alpha = joined_lora_factors(parts, members, rows)
        renamed[f"{family.denoiser}.{original}"] = LoraLayerWeights(down, up, alpha)
    return renamed


def save_kohya_lora(path: Path, layers: Mapping[str, LoraLayerWeights], metadata: Mapping[str, str], family: str,
                    *, dtype: torch.dtype = torch.float16, unet_config: Mapping[str, Any] | None = None) -> Path:
    """Write a kohya-ss LoRA ``.safetensors`` that A1111, ComfyUI, kohya and diffusers all load.

    ``layers`` keys are ``"unet.<diffusers module path>"``, ``"text_encoder.<path>"`` and (SDXL)
    ``"text_encoder_2.<path>"``. Factors are stored in ``dtype``; alpha as an fp32 scalar so that its
    exact value survives. The file also records ``sshs_model_hash`` (sha256 of the tensor data, as
    kohya writes it) and, when the metadata carries modelspec keys, ``modelspec.hash_sha256``.
    """
    path, file_metadata = checked_lora_target(path, layers, metadata)
    model_family = family_named(family)
    if model_family.denoiser != COMPONENT_UNET:  # transformer families: sd-scripts names the original modules
        layers = original_named_layers(layers, model_family, unet_config or load_component_config(
            family, model_family.denoiser))
    names = kohya_layer_names(list(layers), family, unet_config)
    tensors: dict[str, Tensor] = {}
    for layer_key, weights in layers.items():
        name = names[layer_key]
        tensors[f"{name}.lora_down.weight"] = weights.down.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = weights.up.detach().to("cpu", dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(weights.alpha), dtype=torch.float32)
        if weights.magnitude is not None:  # fp32 like alpha: the weight is renormalised to exactly these norms
            tensors[f"{name}.dora_scale"] = weights.dora_scale().to("cpu", torch.float32).contiguous()
    return _write_hashed(path, tensors, file_metadata)


def _write_hashed(path: Path, tensors: dict[str, Tensor], file_metadata: dict[str, str]) -> Path:
    """Write a LoRA file atomically with the hashes kohya and modelspec readers expect of its data section
    (`sshs_model_hash`, `modelspec.hash_sha256` when the file carries modelspec keys)."""
    data_hash = _data_section_sha256(serialize_safetensors(tensors))
    file_metadata["sshs_model_hash"] = data_hash
    if any(key.startswith("modelspec.") for key in file_metadata):
        file_metadata["modelspec.hash_sha256"] = "0x" + data_hash
    serialized = serialize_safetensors(tensors, metadata=file_metadata)
    return _atomic_write(path, lambda temporary: temporary.write_bytes(serialized))


def save_diffusers_lora(path: Path, layers: Mapping[str, LoraLayerWeights], metadata: Mapping[str, str],
                        family: str, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write a LoRA with diffusers/PEFT keys: ``<component>.<diffusers module path>.lora_A.weight`` (down) and
    ``.lora_B.weight`` (up; CLIP layers under ``text_model.``), the layout diffusers' DiT pipelines
    (`StableDiffusion3Pipeline.load_lora_weights`) and ComfyUI load. Such files hold no alpha tensors (diffusers refuses keys without "lora"): rank and alpha
    go into diffusers' ``lora_adapter_metadata`` (the PEFT config per component, which diffusers and this app's
    reader apply), beside the ``ss_*`` / ``modelspec.*`` metadata."""
    path, file_metadata = checked_lora_target(path, layers, metadata)
    model_family = family_named(family)
    components = model_family.components
    clip_encoders = {encoder.component for encoder in model_family.ldm_text_encoders if encoder.kind != "t5"}
    tensors: dict[str, Tensor] = {}
    adapters: dict[str, dict[str, Any]] = {}
    for layer_key, weights in layers.items():
        component, module_path = _split_component(layer_key)
        if component not in components:
            raise ValueError(f"LoRA layer {layer_key!r}: {component!r} is not a component of {family}")
        # CLIP layers keep transformers' "text_model." level in the keys (ComfyUI maps only those names;
        # diffusers drops it where the installed CLIP has none); the PEFT config names the module as installed.
        key = f"{component}.{kohya_text_path(module_path)}" if component in clip_encoders else layer_key
        tensors[f"{key}.lora_A.weight"] = weights.down.detach().to("cpu", dtype).contiguous()
        tensors[f"{key}.lora_B.weight"] = weights.up.detach().to("cpu", dtype).contiguous()
        if weights.magnitude is not None:  # PEFT's checkpoint name and shape, fp32 like a kohya file's dora_scale
            tensors[f"{key}.lora_magnitude_vector"] = weights.magnitude.detach().to("cpu", torch.float32).contiguous()
        adapter = adapters.setdefault(component, {"r": weights.rank, "lora_alpha": float(weights.alpha),
                                                  "target_modules": [], "rank_pattern": {}, "alpha_pattern": {}})
        if weights.magnitude is not None:
            adapter["use_dora"] = True
        adapter["target_modules"].append(module_path)
        if weights.rank != adapter["r"]:
            adapter["rank_pattern"][module_path] = weights.rank
        if float(weights.alpha) != adapter["lora_alpha"]:
            adapter["alpha_pattern"][module_path] = float(weights.alpha)
    file_metadata[DIFFUSERS_ADAPTER_METADATA] = json.dumps(
        {f"{component}.{key}": value for component, adapter in adapters.items() for key, value in adapter.items()},
        sort_keys=True)
    return _write_hashed(path, tensors, file_metadata)


def save_trained_lora(path: Path, layers: Mapping[str, LoraLayerWeights], metadata: Mapping[str, str], family: str,
                      *, denoiser_config: Mapping[str, Any] | None = None, layout: str | None = None) -> Path:
    """Save a trained LoRA in `layout` ("kohya" / "diffusers"), by default ("auto") in the layout its family's
    LoRAs ship in (`ModelFamily.trained_lora_layout`)."""
    if lora_layout(family_named(family), layout) == DIFFUSERS_LAYOUT:
        return save_diffusers_lora(path, layers, metadata, family)
    return save_kohya_lora(path, layers, metadata, family, unet_config=denoiser_config)


def lora_metadata(*, name: str, trigger_words: Sequence[str], base_model_name: str, base_model_hash: str,
                  family: str, resolution: int | Sequence[int], steps: int, epochs: int, rank: int, alpha: float,
                  tag_frequency: Mapping[str, Mapping[str, int]], extra: Mapping[str, object] | None = None,
                  prediction_type: str | None = None, variant: str | None = None,
                  layout: str | None = None) -> dict[str, str]:
    """The ``ss_*`` (kohya) and ``modelspec.*`` (Stability) metadata that A1111, Civitai and kohya read.

    ``tag_frequency`` is ``{dataset folder: {caption tag: count}}``, which A1111 shows as the LoRA's
    training tags. ``extra`` adds or overrides keys (non-string values are written as JSON / str).
    ``prediction_type`` ("epsilon" / "v" / "flow") defaults to the family's: v only for SD2 trained at 768 or
    more, flow for flow-matching families (SD3). ``variant`` names the base model within its family (SD3.5
    Medium/Large, Flux.1 dev/schnell) for ``modelspec.architecture``; ``layout`` the file's key layout (see
    `save_trained_lora`) for ``modelspec.implementation``.
    """
    model_family = family_named(family)
    if isinstance(trigger_words, str):
        trigger_words = [trigger_words]
    triggers = [word.strip() for word in trigger_words if word.strip()]
    width, height = _resolution_pair(resolution)
    prediction = prediction_type or model_family.default_prediction_type((width, height))
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction!r}")
    frequencies = {str(folder): {str(tag): int(count) for tag, count in tags.items()}
                   for folder, tags in tag_frequency.items()}
    trigger_phrase = ", ".join(triggers)
    metadata = {
        "ss_output_name": name,
        "ss_network_module": LORA_NETWORK_MODULE,
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": model_family.kohya_base_model_version,
        "ss_v2": str(model_family.kohya_is_v2),
        "ss_sd_model_name": base_model_name,
        "ss_sd_model_hash": base_model_hash,
        "ss_resolution": f"({width}, {height})",
        "ss_steps": str(int(steps)),
        "ss_max_train_steps": str(int(steps)),
        "ss_epoch": str(int(epochs)),
        "ss_num_epochs": str(int(epochs)),
        "ss_tag_frequency": json.dumps(frequencies),
        "ss_training_finished_at": str(time.time()),
        "ss_training_comment": (f"Trigger words: {trigger_phrase}. " if trigger_phrase else "")
        + "Trained with SD Studio.",
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{model_family.modelspec_architecture(prediction, variant)}/lora",
        "modelspec.implementation": _implementation(model_family, layout),
        "modelspec.title": name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": prediction,
        "modelspec.date": _iso_date(),
    }
    if _SHA256_HEX.match(base_model_hash or ""):
        metadata["ss_new_sd_model_hash"] = base_model_hash.lower()
    if trigger_phrase:
        metadata["modelspec.trigger_phrase"] = trigger_phrase
        metadata["modelspec.usage_hint"] = f"Trigger words: {trigger_phrase}"
    for key, value in (extra or {}).items():
        metadata[str(key)] = _as_metadata_value(value)
    return metadata


# --------------------------------------------------------------------------------------------
# Textual inversion
# --------------------------------------------------------------------------------------------


def _vector_matrix(label: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise ValueError(f"{label} must be a floating point tensor")
    matrix = value.detach().to("cpu", torch.float32)
    if matrix.ndim == 1:
        matrix = matrix.unsqueeze(0)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{label} must be [vectors, width], got {tuple(value.shape)}")
    return matrix.contiguous()


def _embedding_family(vectors: Mapping[str, Tensor]) -> ModelFamily | None:
    """The family an embedding's widths belong to (None for non-standard widths such as the toy model's)."""
    if set(vectors) == set(SDXL_EMBEDDING_KEYS):
        widths = tuple(int(vectors[key].shape[1]) for key in SDXL_EMBEDDING_KEYS)
    else:
        widths = (int(next(iter(vectors.values())).shape[1]),)
    return next((family for family in FAMILIES if family.text_encoder_widths == widths), None)


def save_embedding(path: Path, vectors: Tensor | Mapping[str, Tensor], token: str, step: int) -> Path:
    """Write a textual-inversion embedding that A1111 (and this app) loads under the file's name.

    SD1/SD2: ``vectors`` is ``[n, width]``; a ``.safetensors`` path gets kohya's ``{"emb_params": T}``
    plus token/step metadata, a ``.pt`` path A1111's own dict layout. SDXL: ``vectors`` is
    ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, stored under those keys in either format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt"):
        raise ValueError(f"an embedding must be a .safetensors or .pt file, got {path.name!r}")
    if not token or not token.strip():
        raise ValueError("the embedding needs a token (its name in prompts)")
    if isinstance(vectors, Mapping):
        if set(vectors) != set(SDXL_EMBEDDING_KEYS):
            raise ValueError(f"SDXL embedding vectors must be keyed {SDXL_EMBEDDING_KEYS}, got {sorted(vectors)}")
        tensors = {key: _vector_matrix(key, vectors[key]) for key in SDXL_EMBEDDING_KEYS}
        if tensors["clip_l"].shape[0] != tensors["clip_g"].shape[0]:
            raise ValueError(f"clip_l has {tensors['clip_l'].shape[0]} vectors but clip_g has "
                             f"{tensors['clip_g'].shape[0]}; they must match")
    else:
        tensors = {"emb_params": _vector_matrix("vectors", vectors)}
    family = _embedding_family(tensors)
    if suffix == ".pt":
        if "emb_params" in tensors:
            content: dict[str, object] = {
                "string_to_token": {A1111_PLACEHOLDER: A1111_PLACEHOLDER_TOKEN_ID},
                "string_to_param": {A1111_PLACEHOLDER: tensors["emb_params"]},
                "name": token,
                "step": int(step),
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
            }
        else:
            content = dict(tensors)
        return _atomic_write(path, lambda temporary: torch.save(content, temporary))
    metadata = {"token": token, "step": str(int(step))}
    if family is not None:
        resolution = (family.native_size,) * 2
        metadata.update({
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": f"{family.modelspec_architecture(family.default_prediction_type(resolution))}"
                                      "/textual-inversion",
            "modelspec.implementation": IMPLEMENTATION_STABILITY,
            "modelspec.title": token,
            "modelspec.date": _iso_date(),
        })
    return _atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


# --------------------------------------------------------------------------------------------
# Full checkpoints (DreamBooth)
# --------------------------------------------------------------------------------------------


def _cast(state_dict: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Float tensors to ``dtype`` on the CPU; integer buffers (position ids) keep their type."""
    return {key: (tensor.detach().to("cpu", dtype) if tensor.is_floating_point() else tensor.detach().cpu())
            .contiguous() for key, tensor in state_dict.items()}


def save_single_file_checkpoint(path: Path, state_dicts: Mapping[str, Mapping[str, Tensor]], family: str,
                                metadata: Mapping[str, str] | None = None,
                                dtype: torch.dtype = torch.float16, variant: str | None = None,
                                configs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write diffusers component state dicts as one single-file ``.safetensors`` checkpoint (A1111's layout;
    SD3.5/Flux in the layout their files ship in, `webui.models.single_file_writer`, which needs the
    denoiser's entry of ``configs``).

    Needs every component but optional text encoders (SD3.5's T5), diffusers-named. The file loads in A1111
    (UNet families), ComfyUI, this app's catalog and diffusers' ``from_single_file``.
    """
    path = Path(path)
    model_family = family_named(family)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"a single-file checkpoint must be a .safetensors file, got {path.name!r}")
    required = [name for name in model_family.components if name not in model_family.optional_text_encoders]
    missing = [name for name in required if name not in state_dicts]
    if missing:
        raise ValueError(f"a {family} checkpoint needs components {missing}; a checkpoint without them "
                         "would not load in A1111")
    extra_metadata = _check_metadata(metadata)
    cast = {component: _cast(state_dicts[component], dtype) for component in model_family.components
            if component in state_dicts}
    ldm_state = {key: tensor.contiguous() for key, tensor in single_file_state(cast, family, configs or {}).items()}
    resolution = model_family.native_size
    prediction = model_family.default_prediction_type((resolution, resolution))
    file_metadata = {
        "format": "pt",
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": model_family.modelspec_architecture(prediction, variant),
        "modelspec.implementation": IMPLEMENTATION_STABILITY,
        "modelspec.title": path.stem,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": prediction,
        "modelspec.date": _iso_date(),
        **extra_metadata,
    }
    return _atomic_write(path, lambda temporary: save_file(ldm_state, str(temporary), metadata=file_metadata))


def _weights_file_name(component: str) -> str:
    """The file name diffusers / transformers look for in a component folder."""
    return "model.safetensors" if component.startswith(COMPONENT_TE) else "diffusion_pytorch_model.safetensors"


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
# Files of the base model that describe the base model, not the result.
_BASE_ONLY_FILES = frozenset({"README.md", "merge_recipe.json", *TRAINING_RECORD_FILES})


def _replace_folder(staged: Path, target: Path, overwrite: bool) -> None:
    """Move a fully written folder into place, replacing ``target`` only when asked to."""
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} already exists")
        retired = target.with_name(f".{target.name}.replaced-{os.getpid()}-{time.monotonic_ns()}")
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staged.rename(target)


def save_diffusers_folder(folder: Path, state_dicts: Mapping[str, Mapping[str, Tensor]], base_folder: Path, *,
                          dtype: torch.dtype = torch.float16, metadata: Mapping[str, str] | None = None,
                          overwrite: bool = False) -> Path:
    """Write a diffusers model folder: the base model's configs and tokenizer, with new weights.

    Components in ``state_dicts`` get new ``.safetensors`` weights; the others (e.g. an untouched VAE)
    keep the base model's files. Used for models whose shapes are not a standard SD family (the
    shipped toy model), which a single-file checkpoint cannot describe.
    """
    folder, base_folder = Path(folder), Path(base_folder)
    if not (base_folder / "model_index.json").is_file():
        raise ValueError(f"{base_folder} is not a diffusers model folder (no model_index.json)")
    for component in state_dicts:
        if not (base_folder / component / "config.json").is_file():
            raise ValueError(f"the base model {base_folder.name} has no {component}/config.json")
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists")
    file_metadata = {"format": "pt", **_check_metadata(metadata)}

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        if here == base_folder:
            # model_index.json is what makes a folder a model: it is copied last (below).
            return {name for name in names if name in _BASE_ONLY_FILES or name == "model_index.json"}
        if here.parent == base_folder and here.name in state_dicts:
            return {name for name in names if name.endswith(_WEIGHT_SUFFIXES) or name.endswith(".index.json")}
        return set()

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as staging:
        staged = Path(staging) / folder.name
        shutil.copytree(base_folder, staged, ignore=ignore)
        for component, state_dict in state_dicts.items():
            save_file(_cast(state_dict, dtype), str(staged / component / _weights_file_name(component)),
                      metadata=file_metadata)
        shutil.copy2(base_folder / "model_index.json", staged / "model_index.json")
        _replace_folder(staged, folder, overwrite)
    return folder


def _check_same_shapes(state_dicts: Mapping[str, Mapping[str, Tensor]], base: CheckpointWeights) -> None:
    """A trained model must keep the base layout, or neither output format could describe it."""
    for component, state_dict in state_dicts.items():
        base_state = base.state_dicts.get(component)
        if base_state is None:
            raise ValueError(f"the base model has no component {component!r}")
        if set(state_dict) != set(base_state):
            unknown = sorted(set(state_dict) ^ set(base_state))
            raise ValueError(f"{component} parameters differ from the base model's, e.g. {unknown[:3]}")
        for key, tensor in state_dict.items():
            if tuple(tensor.shape) != tuple(base_state[key].shape):
                raise ValueError(
                    f"{component}.{key} is {tuple(tensor.shape)} but {tuple(base_state[key].shape)} in the base "
                    "model; new tokens belong in an embedding file, not in the checkpoint"
                )


def save_trained_checkpoint(folder: Path, name: str, state_dicts: Mapping[str, Mapping[str, Tensor]],
                            base: CheckpointWeights, *, metadata: Mapping[str, str] | None = None,
                            dtype: torch.dtype = torch.float16, overwrite: bool = False) -> Path:
    """Save a fine-tuned model into the checkpoint ``folder`` so the catalog lists it at once.

    Models with the shipped SD1/SD2/SDXL shapes become ``<name>.safetensors`` in the A1111 layout;
    others (the toy model) become a diffusers folder ``<name>/`` copied from the base model's folder.
    Components missing from ``state_dicts`` (typically the VAE) are taken from ``base``.
    """
    if not name or any(character in name for character in "/\\") or name.startswith("."):
        raise ValueError(f"invalid model name {name!r}: use a plain file name")
    _check_same_shapes(state_dicts, base)
    folder = Path(folder)
    if _matches_shipped_configs(base):
        target = folder / f"{name}.safetensors"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists")
        complete = {component: state_dicts.get(component, base_state)
                    for component, base_state in base.state_dicts.items()}
        return save_single_file_checkpoint(target, complete, base.architecture.family, metadata, dtype,
                                           base.architecture.variant, base.configs)
    if base.record.format != "diffusers":
        raise ValueError(f"{base.record.name} does not match the shipped {base.architecture.label} configs and is "
                         "not a diffusers folder; there is no format to save its fine-tune in")
    return save_diffusers_folder(folder / name, state_dicts, base.record.path, dtype=dtype, metadata=metadata,
                                 overwrite=overwrite)
