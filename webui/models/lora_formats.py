"""LoRA / LyCORIS file formats: which tensors form one layer's update, and the update's math.

A LoRA file is a flat dict of tensors. This module groups the tensors by the layer they change,
names the layer as the file does (kohya's underscore names, diffusers / PEFT dotted paths), computes
each layer's weight update, and lists a loaded model's module names in every spelling files use
(:func:`index_module_names`). :mod:`webui.models.lora` puts these together against a loaded model.

Formats understood (the layer name, then the tensor roles):

* kohya-ss / A1111: ``lora_unet_<name>`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` +
  ``.lora_down.weight``, ``.lora_up.weight``, optional ``.lora_mid.weight`` (LoCon Tucker) and ``.alpha``.
* LyCORIS under the same names: LoHa ``.hada_w1_a/_b``, ``.hada_w2_a/_b`` (+ ``.hada_t1/_t2``), LoKr
  ``.lokr_w1`` or ``.lokr_w1_a/_b``, ``.lokr_w2`` or ``.lokr_w2_a/_b`` (+ ``.lokr_t2``), full ``.diff``
  (+ ``.diff_b`` bias).
* diffusers / PEFT: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (also ``text_encoder.`` and
  ``text_encoder_2.``), older diffusers ``.lora.down.weight`` / ``.lora.up.weight``,
  ``.lora_linear_layer.down/up.weight`` and attention-processor names (``attn1.processor.to_q_lora``).
* DoRA (weight-decomposed) layers of any of these: kohya / LyCORIS ``.dora_scale`` beside the factors, PEFT
  ``.lora_magnitude_vector``; see :func:`dora_weight` for the math and which axis each layout normalises.
* Transformer (DiT) families name their files' prefixes themselves (``ModelFamily.lora_key_prefixes``,
  e.g. SD3's ``lora_unet_`` / ``diffusion_model.`` over the original MMDiT names and ``transformer.`` /
  ``lora_transformer_`` over diffusers'); original fused layers are split by rows
  (:mod:`webui.models.formats.dit_lora`, :func:`rows_of`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from webui.models.formats.dit_lora import RowPart
from webui.models.formats.kohya import CLIP_TEXT_MODEL_PARTS, reader_prefixes, targetable_module_paths, unet_ldm_names

KIND_LORA = "lora"
KIND_LOCON = "locon"
KIND_LOHA = "loha"
KIND_LOKR = "lokr"
KIND_DIFF = "diff"

COMPONENT_UNET = "unet"
COMPONENT_TE = "text_encoder"
COMPONENT_TE2 = "text_encoder_2"

# kohya prefix -> pipeline component, longest first (the table is the families', webui.models.formats.kohya).
KOHYA_PREFIXES = reader_prefixes()
DOTTED_PREFIXES = (
    ("text_encoder_2.", COMPONENT_TE2),
    ("text_encoder.", COMPONENT_TE),
    ("unet.", COMPONENT_UNET),
)
# Early diffusers files (save_attn_procs) have bare UNet paths without the "unet." prefix.
_BARE_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in.", "conv_out.",
                    "time_embedding.", "add_embedding.")
_BARE_TEXT_ROOTS = ("text_model.", "encoder.layers.")

# File tensor suffix -> role. Checked longest first so ".lora_A.default.weight" wins over ".weight".
_ROLE_SUFFIXES: tuple[tuple[str, str], ...] = tuple(sorted(
    (
        ("lora_down.weight", "down"), ("lora_up.weight", "up"), ("lora_mid.weight", "mid"),
        ("lora_A.weight", "down"), ("lora_B.weight", "up"),
        ("lora_A.default.weight", "down"), ("lora_B.default.weight", "up"),
        ("lora.down.weight", "down"), ("lora.up.weight", "up"),
        ("lora_linear_layer.down.weight", "down"), ("lora_linear_layer.up.weight", "up"),
        ("alpha", "alpha"),
        ("hada_w1_a", "hada_w1_a"), ("hada_w1_b", "hada_w1_b"),
        ("hada_w2_a", "hada_w2_a"), ("hada_w2_b", "hada_w2_b"),
        ("hada_t1", "hada_t1"), ("hada_t2", "hada_t2"),
        ("lokr_w1", "lokr_w1"), ("lokr_w1_a", "lokr_w1_a"), ("lokr_w1_b", "lokr_w1_b"),
        ("lokr_w2", "lokr_w2"), ("lokr_w2_a", "lokr_w2_a"), ("lokr_w2_b", "lokr_w2_b"),
        ("lokr_t2", "lokr_t2"),
        ("diff", "diff"), ("diff_b", "diff_b"),
        ("dora_scale", "dora_scale"), ("wd_for_diff", "wd_for_diff"), ("lora_magnitude_vector", "magnitude"),
        ("lora_magnitude_vector.weight", "magnitude"), ("lora_magnitude_vector.default.weight", "magnitude"),
    ),
    key=lambda item: -len(item[0]),
))
# Attention-processor LoRAs (diffusers <= 0.20): "...attn1.processor.to_q_lora.down.weight".
_PROCESSOR_SUFFIXES = (("down.weight", "down"), ("up.weight", "up"))
_PROCESSOR_LAYERS = {
    "unet": (("to_q_lora", "to_q"), ("to_k_lora", "to_k"), ("to_v_lora", "to_v"),
             ("to_out_lora", "to_out.0")),
    "text": (("to_q_lora", "q_proj"), ("to_k_lora", "k_proj"), ("to_v_lora", "v_proj"),
             ("to_out_lora", "out_proj")),
}




class LoraFileError(ValueError):
    """A LoRA file cannot be used with the loaded model; the message names the file and the reason."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"LoRA '{self.path.name}': {reason}")


class ForeignLoraError(LoraFileError):
    """A readable LoRA made for another model family or architecture. The issue's rule (and A1111's habit of
    generating on when a network does not fit) is to skip it with a warning rather than fail the job."""


@dataclass(frozen=True, eq=False)  # identity semantics: tensors have no meaningful ==
class LoraPatch:
    """The update of one layer: ``target`` is a dotted path relative to the pipeline as installed
    (e.g. ``unet.mid_block.attentions.0.proj_in``); ``tensors`` holds the factors by role."""

    target: str
    kind: str
    tensors: Mapping[str, Tensor]
    alpha: float | None
    rank: int

    @property
    def component(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def module_path(self) -> str:
        return self.target.split(".", 1)[1]


@dataclass
class RawLayer:
    """One layer's tensors as the file names them, before they are matched to a module."""

    component: str
    name: str  # kohya underscore name (without prefix) or a dotted module path
    dotted: bool
    tensors: dict[str, Tensor] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


def _split_role(key: str) -> tuple[str, str] | None:
    """(layer name, role) of a file key, or None when the key is not a LoRA tensor."""
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], role
    for suffix, role in _PROCESSOR_SUFFIXES:
        if key.endswith("." + suffix):
            layer = key[: -len(suffix) - 1]
            if any(layer.endswith("." + name) for name, _ in _PROCESSOR_LAYERS["unet"]):
                return layer, role
    return None


def _rename_processor_layer(name: str, component: str) -> str:
    """"attn1.processor.to_q_lora" names the module "attn1.to_q" (UNet) or "self_attn.q_proj" (CLIP)."""
    renames = _PROCESSOR_LAYERS["unet" if component == COMPONENT_UNET else "text"]
    for processor_name, module_name in renames:
        if name.endswith("." + processor_name):
            name = name[: -len(processor_name)] + module_name
            return name.replace(".processor.", ".")
    return name


LayerPrefixes = Sequence[tuple[str, str, bool]]  # (key prefix, component, dotted name) a family's files use


def _locate_layer(layer: str, prefixes: LayerPrefixes = ()) -> tuple[str, str, bool] | None:
    """(component, name, dotted) of a layer name in any supported naming scheme: a family's own `prefixes`
    when it has them (`ModelFamily.lora_key_prefixes`), else the SD families' shared tables."""
    if prefixes:
        layer = layer.removeprefix("base_model.model.")
        return next(((component, layer[len(prefix):], dotted) for prefix, component, dotted in prefixes
                     if layer.startswith(prefix)), None)
    for prefix, component in KOHYA_PREFIXES:
        if layer.startswith(prefix):
            return component, layer[len(prefix):], False
    layer = layer.removeprefix("base_model.model.")
    for prefix, component in DOTTED_PREFIXES:
        if layer.startswith(prefix):
            return component, layer[len(prefix):], True
    if layer.startswith(_BARE_UNET_ROOTS):
        return COMPONENT_UNET, layer, True
    if layer.startswith(_BARE_TEXT_ROOTS):
        return COMPONENT_TE, layer, True
    return None


def group_layers(state_dict: Mapping[str, Tensor],
                 prefixes: LayerPrefixes = ()) -> tuple[list[RawLayer], list[str]]:
    """Group file tensors by layer; keys in no known naming scheme come back as the second value."""
    layers: dict[tuple[str, str], RawLayer] = {}
    stray: list[str] = []
    for key, tensor in state_dict.items():
        split = _split_role(key)
        located = _locate_layer(split[0], prefixes) if split is not None else None
        if split is None or located is None:
            stray.append(key)
            continue
        component, name, dotted = located
        if dotted and not prefixes:
            name = _rename_processor_layer(name, component)
        layer = layers.setdefault((component, name), RawLayer(component, name, dotted))
        if split[1] in layer.tensors:  # the same role under two spellings: keep the first
            stray.append(key)
            continue
        layer.tensors[split[1]] = tensor
        layer.keys.append(key)
    return list(layers.values()), stray


def describe_non_lora(keys: list[str]) -> str:
    """What a file without any LoRA tensor most likely is, for the error message."""
    if any(key.startswith(("model.diffusion_model.", "first_stage_model.")) for key in keys):
        return "looks like a full Stable Diffusion checkpoint, not a LoRA"
    if any(key in ("emb_params", "string_to_param", "clip_l", "clip_g") or "string_to_param" in key
           for key in keys):
        return "looks like a textual inversion embedding, not a LoRA"
    if any(key.startswith(("lora_transformer_", "transformer.", "diffusion_model.")) for key in keys):
        return "looks like a LoRA for a transformer (DiT) model such as Flux or SD3, not SD1.x/SD2.x/SDXL"
    return "holds no LoRA / LyCORIS tensors"


# --------------------------------------------------------------------------------------------
# Kinds, ranks and the reference math
# --------------------------------------------------------------------------------------------


def _has(tensors: Mapping[str, Tensor], *roles: str) -> bool:
    return all(role in tensors for role in roles)


def classify(tensors: Mapping[str, Tensor]) -> tuple[str, int] | str:
    """(kind, rank) of a layer's tensor set, or a reason string when it is not usable. A DoRA layer is its
    factors' kind with a magnitude beside them (`is_dora`)."""
    if "wd_for_diff" in tensors:  # LyCORIS's marker: the magnitude renormalises the update alone, not W + dW
        return "DoRA of the update alone (LyCORIS wd_for_diff) is not supported"
    if _has(tensors, "down", "up"):
        down = tensors["down"]
        is_conv = down.ndim == 4 and (tuple(down.shape[2:]) != (1, 1) or "mid" in tensors)
        return (KIND_LOCON if is_conv else KIND_LORA), int(down.shape[0])
    if _has(tensors, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        return KIND_LOHA, int(tensors["hada_w1_b"].shape[0])
    has_w1 = "lokr_w1" in tensors or _has(tensors, "lokr_w1_a", "lokr_w1_b")
    has_w2 = "lokr_w2" in tensors or _has(tensors, "lokr_w2_a", "lokr_w2_b")
    if has_w1 and has_w2:
        for factor in ("lokr_w1_b", "lokr_w2_b"):
            if factor in tensors:
                return KIND_LOKR, int(tensors[factor].shape[0])
        return KIND_LOKR, 0  # both Kronecker factors stored in full: no rank, scale 1
    if "diff" in tensors:
        return KIND_DIFF, 0
    if is_dora(tensors):
        return f"a DoRA magnitude without the factors of its update (tensors: {', '.join(sorted(tensors))})"
    return f"incomplete layer (tensors: {', '.join(sorted(tensors))})"


# --------------------------------------------------------------------------------------------
# DoRA: the update's direction, renormalised to a trained magnitude
#
# The patched weight is m * (W + dW) / ||W + dW||, the norm taken per output channel (one value per row of W,
# conv kernels flattened) or, for files of early LyCORIS versions, per input channel (one per column). Which
# one a file means is told by the magnitude's shape, as ComfyUI tells it: kohya / LyCORIS `dora_scale` of
# shape (out, 1[, 1, 1]) is per output channel (LyCORIS `wd_on_out`, the DoRA paper's and PEFT's choice),
# (1, in[, 1, 1]) (or a vector of `in` values) per input channel; PEFT's `lora_magnitude_vector` ((out,), conv (1, out, 1, 1)) is always
# per output channel. At a strength s below 1 the weight is blended, W + s * (W' - W), as ComfyUI and Forge do.
# --------------------------------------------------------------------------------------------

DORA_ROLES = ("dora_scale", "magnitude")
AXIS_OUTPUT = "output"
AXIS_INPUT = "input"


def is_dora(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a layer's tensors carry a DoRA magnitude (kohya `dora_scale` or PEFT `lora_magnitude_vector`)."""
    return any(role in tensors for role in DORA_ROLES)


def dora_magnitude(tensors: Mapping[str, Tensor], weight_shape: Sequence[int]) -> tuple[Tensor, str]:
    """(the magnitude shaped to broadcast over the weight, AXIS_OUTPUT or AXIS_INPUT) of a DoRA layer.

    Raises ValueError naming the shapes a weight of `weight_shape` takes when the file's magnitude fits none."""
    out_features, in_features = int(weight_shape[0]), int(weight_shape[1])
    trailing = (1,) * (len(weight_shape) - 2)
    if "magnitude" in tensors:
        magnitude = tensors["magnitude"]
        if magnitude.numel() != out_features:
            raise ValueError(f"lora_magnitude_vector has shape {tuple(magnitude.shape)}; a weight of shape "
                             f"{tuple(weight_shape)} takes one value per output channel ({out_features})")
        return magnitude.reshape(out_features, 1, *trailing), AXIS_OUTPUT
    scale = tensors["dora_scale"]
    shape = tuple(scale.shape)
    if shape and shape[0] == out_features and scale.numel() == out_features:
        return scale.reshape(out_features, 1, *trailing), AXIS_OUTPUT
    if scale.numel() == in_features and (len(shape) == 1 or shape[:2] == (1, in_features)):
        return scale.reshape(1, in_features, *trailing), AXIS_INPUT
    raise ValueError(f"dora_scale has shape {shape}; a weight of shape {tuple(weight_shape)} takes "
                     f"({out_features}, 1{', 1' * len(trailing)}) (one value per output channel) or "
                     f"(1, {in_features}{', 1' * len(trailing)}) (one per input channel)")


def dora_weight(base: Tensor, delta: Tensor, magnitude: Tensor, axis: str) -> Tensor:
    """m * (W + dW) / ||W + dW||, the norm over each output channel (AXIS_OUTPUT) or input channel (AXIS_INPUT);
    float32 machine epsilon keeps a zero channel finite, as LyCORIS and ComfyUI do."""
    adapted = base + delta
    if axis == AXIS_OUTPUT:
        norm = adapted.reshape(adapted.shape[0], -1).norm(dim=1).reshape(magnitude.shape)
    else:
        norm = adapted.transpose(0, 1).reshape(adapted.shape[1], -1).norm(dim=1).reshape(magnitude.shape)
    return adapted * (magnitude.to(adapted) / (norm + torch.finfo(torch.float32).eps))


def _tucker_shape(core: Tensor, out_factor: Tensor, in_factor: Tensor) -> tuple[int, int]:
    return int(out_factor.shape[1]), int(in_factor.shape[1]) * math.prod(core.shape[2:])


def update_shape(kind: str, tensors: Mapping[str, Tensor]) -> tuple[int, int]:
    """(output features, input features x kernel size) of the weight a layer's update changes.

    Lets a file be checked against a model's shapes without computing any delta.
    """
    if kind in (KIND_LORA, KIND_LOCON):
        down, up = tensors["down"], tensors["up"]
        if int(up.shape[1]) != int(down.shape[0]):
            raise ValueError(f"lora_up has rank {up.shape[1]} but lora_down has rank {down.shape[0]}")
        kernel = math.prod(tensors["mid"].shape[2:]) if "mid" in tensors else math.prod(down.shape[2:])
        return int(up.shape[0]), int(down.shape[1]) * kernel
    if kind == KIND_LOHA:
        if "hada_t1" in tensors:
            return _tucker_shape(tensors["hada_t1"], tensors["hada_w1_a"], tensors["hada_w1_b"])
        return int(tensors["hada_w1_a"].shape[0]), int(tensors["hada_w1_b"].shape[1])
    if kind == KIND_LOKR:
        if "lokr_w1" in tensors:
            w1 = (int(tensors["lokr_w1"].shape[0]), int(tensors["lokr_w1"].shape[1]))
        else:
            w1 = (int(tensors["lokr_w1_a"].shape[0]), int(tensors["lokr_w1_b"].shape[1]))
        if "lokr_w2" in tensors:
            full = tensors["lokr_w2"]
            w2 = (int(full.shape[0]), math.prod(full.shape[1:]))
        elif "lokr_t2" in tensors:
            w2 = _tucker_shape(tensors["lokr_t2"], tensors["lokr_w2_a"], tensors["lokr_w2_b"])
        else:
            w2 = (int(tensors["lokr_w2_a"].shape[0]), int(tensors["lokr_w2_b"].shape[1]))
        return w1[0] * w2[0], w1[1] * w2[1]
    diff = tensors["diff"]
    return int(diff.shape[0]), math.prod(diff.shape[1:])


def _rebuild_tucker(core: Tensor, out_factor: Tensor, in_factor: Tensor) -> Tensor:
    """W[p, r, h, w] = sum_ij core[i, j, h, w] * out_factor[i, p] * in_factor[j, r] (LyCORIS CP form)."""
    return torch.einsum("ijhw,ip,jr->prhw", core, out_factor, in_factor)


def _lora_delta(tensors: Mapping[str, Tensor]) -> Tensor:
    down, up = tensors["down"], tensors["up"]
    up_matrix = up.reshape(up.shape[0], -1)
    down_matrix = down.reshape(down.shape[0], -1)
    if "mid" in tensors:
        # down (1x1) -> mid (kxk) -> up (1x1), composed into one kxk convolution.
        return torch.einsum("abhw,oa,bi->oihw", tensors["mid"], up_matrix, down_matrix)
    return up_matrix @ down_matrix


def _loha_delta(tensors: Mapping[str, Tensor]) -> Tensor:
    def product(index: str) -> Tensor:
        out_factor, in_factor = tensors[f"hada_w{index}_a"], tensors[f"hada_w{index}_b"]
        if f"hada_t{index}" in tensors:
            return _rebuild_tucker(tensors[f"hada_t{index}"], out_factor, in_factor)
        return out_factor @ in_factor

    return product("1") * product("2")


def _lokr_delta(tensors: Mapping[str, Tensor]) -> Tensor:
    w1 = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
    if "lokr_w2" in tensors:
        w2 = tensors["lokr_w2"]
    elif "lokr_t2" in tensors:
        w2 = _rebuild_tucker(tensors["lokr_t2"], tensors["lokr_w2_a"], tensors["lokr_w2_b"])
    else:
        w2 = tensors["lokr_w2_a"] @ tensors["lokr_w2_b"]
    if w2.ndim == 4:
        w1 = w1.reshape(*w1.shape[:2], 1, 1)
    # A 2-D w2 of a convolution holds (in x kh x kw) per row; the 2-D Kronecker product then lays
    # the columns out exactly as the 4-D one would after the final reshape.
    return torch.kron(w1, w2)


def patch_scale(patch: LoraPatch) -> float:
    """alpha / rank, the factor trainers bake into every LoRA-style update (1 when alpha is absent)."""
    if patch.kind == KIND_DIFF or patch.alpha is None or patch.rank <= 0:
        return 1.0
    return patch.alpha / patch.rank


def patch_delta(patch: LoraPatch, weight_shape: torch.Size | tuple[int, ...],
                device: torch.device | str | None = None, base: Tensor | None = None) -> Tensor:
    """The fp32 weight update of one layer at strength 1, shaped like the weight it changes.

    A DoRA layer's update depends on the weight it changes (`base`, required for it): it is the
    renormalised weight minus `base` (`dora_weight`), so `base + s * update` is ComfyUI's and Forge's blend
    at strength s."""
    tensors = {role: tensor.to(device=device, dtype=torch.float32)
               for role, tensor in patch.tensors.items() if role != "diff_b"}
    if patch.kind in (KIND_LORA, KIND_LOCON):
        delta = _lora_delta(tensors)
    elif patch.kind == KIND_LOHA:
        delta = _loha_delta(tensors)
    elif patch.kind == KIND_LOKR:
        delta = _lokr_delta(tensors)
    elif patch.kind == KIND_DIFF:
        delta = tensors["diff"]
    else:
        raise ValueError(f"unknown LoRA patch kind {patch.kind!r}")
    if delta.numel() != math.prod(weight_shape):
        raise ValueError(
            f"{patch.target}: the {patch.kind} update has {tuple(delta.shape)} values "
            f"but the weight is {tuple(weight_shape)}"
        )
    delta = delta.reshape(weight_shape) * patch_scale(patch)
    if not is_dora(tensors):
        return delta
    if base is None:
        raise ValueError(f"{patch.target}: a DoRA update depends on the weight it changes, which was not given")
    magnitude, axis = dora_magnitude(tensors, weight_shape)
    base = base.to(device=delta.device, dtype=torch.float32)
    return dora_weight(base, delta, magnitude, axis) - base


def rows_of(kind: str, tensors: Mapping[str, Tensor], rows: tuple[tuple[int, int], ...],
            scale: float) -> tuple[str, dict[str, Tensor]]:
    """(kind, tensors) of the update of only these rows of a layer's weight (a fused layer's share of one
    installed module). Row-factored kinds keep their factors (LoRA: the up rows; LoHa: both out factors);
    others become a full "diff" of those rows with `scale` (alpha / rank) applied, as a diff has no alpha.
    A DoRA magnitude per output channel keeps these rows' values (each row's norm is its own); one per input
    channel cannot be split (ValueError)."""
    index = torch.cat([torch.arange(start, stop) for start, stop in rows])
    plain = {role: tensor for role, tensor in tensors.items() if role not in DORA_ROLES}
    whole_shape = update_shape(kind, plain)
    kind, part = _rows_of_update(kind, plain, index, scale)
    if is_dora(tensors):
        magnitude, axis = dora_magnitude(tensors, whole_shape)
        if axis != AXIS_OUTPUT:
            raise ValueError("its DoRA magnitude is per input channel, which cannot be split between the "
                             "modules this fused layer became")
        part["dora_scale"] = magnitude.reshape(-1).index_select(0, index).reshape(-1, 1)
    return kind, part


def _rows_of_update(kind: str, tensors: Mapping[str, Tensor], index: Tensor,
                    scale: float) -> tuple[str, dict[str, Tensor]]:
    """`rows_of` for a layer without a DoRA magnitude."""
    if kind in (KIND_LORA, KIND_LOCON) and "mid" not in tensors:
        return kind, {**tensors, "up": tensors["up"].index_select(0, index)}
    if kind == KIND_LOHA and "hada_t1" not in tensors and "hada_t2" not in tensors:
        return kind, {**tensors, "hada_w1_a": tensors["hada_w1_a"].index_select(0, index),
                      "hada_w2_a": tensors["hada_w2_a"].index_select(0, index)}
    full = LoraPatch(target="", kind=kind, tensors=tensors, alpha=None, rank=0)
    delta = patch_delta(full, update_shape(kind, tensors)) if kind != KIND_DIFF else tensors["diff"].float()
    diff = {"diff": delta.reshape(delta.shape[0], -1).index_select(0, index) * (1.0 if kind == KIND_DIFF else scale)}
    if "diff_b" in tensors:
        diff["diff_b"] = tensors["diff_b"].index_select(0, index)
    return KIND_DIFF, diff


def patch_bias_delta(patch: LoraPatch, device: torch.device | str | None = None) -> Tensor | None:
    """The fp32 bias update (only full-weight "diff" layers carry one)."""
    bias = patch.tensors.get("diff_b")
    return None if bias is None else bias.to(device=device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Module names of the loaded model, in every spelling LoRA files use
#
# kohya joins module paths with underscores, which module names also contain, so names are
# resolved by writing the model's own module names the same way, never by splitting them.
# --------------------------------------------------------------------------------------------


@dataclass
class ModuleNameIndex:
    """Spellings of one component's LoRA-targetable modules -> their installed paths; an original (fused)
    module name of a DiT resolves to its own name, whose installed parts `fused` holds."""

    dotted: dict[str, str] = field(default_factory=dict)
    underscored: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, torch.Size] = field(default_factory=dict)
    fused: dict[str, tuple[RowPart, ...]] = field(default_factory=dict)

    def add(self, spelling: str, path: str) -> None:
        for table, key in ((self.dotted, spelling), (self.underscored, spelling.replace(".", "_"))):
            if table.get(key, path) != path:
                table[key] = ""  # two modules share this spelling: ambiguous, never matched
            else:
                table[key] = path

    def resolve(self, layer: RawLayer) -> str | None:
        table = self.dotted if layer.dotted else self.underscored
        return table.get(layer.name) or None

    def parts(self, resolved: str) -> tuple[RowPart, ...]:
        """The installed modules (and their rows) a resolved name updates."""
        return self.fused.get(resolved) or (RowPart(resolved),)

    def update_shape(self, resolved: str) -> tuple[int, int]:
        """(rows, columns) a layer's update must have: a fused layer's rows are its parts' rows together."""
        if resolved not in self.fused:
            shape = self.shapes[resolved]
            return int(shape[0]), math.prod(shape[1:])
        parts = self.fused[resolved]
        shape = self.shapes[parts[0].path]
        rows = sum(stop - start for part in parts for start, stop in part.rows or ((0, self.shapes[part.path][0]),))
        return rows, math.prod(shape[1:])


def index_module_names(component: str, module: nn.Module,
                       original_names: Mapping[str, tuple[RowPart, ...]] | None = None) -> ModuleNameIndex:
    """Every Linear / Conv2d of a pipeline component under each name a LoRA file may give it, plus the
    denoiser's `original_names` (a DiT family's: `ModelFamily.lora_original_names`)."""
    index = ModuleNameIndex()
    paths = targetable_module_paths(module)
    for path in paths:
        index.shapes[path] = module.get_submodule(path).weight.shape
        index.add(path, path)
        if component.startswith(COMPONENT_TE):
            # Files name CLIP layers "text_model.encoder..." whether or not this install has that level.
            if path.startswith("text_model."):
                index.add(path.removeprefix("text_model."), path)
            elif path.startswith(CLIP_TEXT_MODEL_PARTS):
                index.add("text_model." + path, path)
    if component == COMPONENT_UNET:
        for path, ldm_name in unet_ldm_names(paths).items():
            index.add(ldm_name, path)
    for name, parts in (original_names or {}).items():
        if len(parts) == 1 and parts[0].rows is None:
            index.add(name, parts[0].path)
        else:
            index.fused[name] = parts
            index.add(name, name)
    return index


def peft_alpha(metadata: Mapping[str, str], layer: RawLayer) -> float | None:
    """lora_alpha from diffusers' ``lora_adapter_metadata`` (PEFT config), per-module patterns first."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw or not layer.dotted:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(config, dict):
        return None
    patterns = config.get(f"{layer.component}.alpha_pattern") or {}
    for pattern, value in patterns.items() if isinstance(patterns, dict) else ():
        try:
            if re.fullmatch(rf"(.*\.)?{pattern}", layer.name):
                return float(value)
        except (re.error, TypeError, ValueError):
            continue
    alpha = config.get(f"{layer.component}.lora_alpha")
    return float(alpha) if isinstance(alpha, (int, float)) else None
