"""The LoRA layer names ComfyUI (and Forge, whose loader uses ComfyUI's key maps) and A1111 map for each model
family, and the tensor suffixes each reads: expected-key tables written from their source-visible naming (no
code of theirs), built over a loaded model's own module names. `webui.training.key_check` counts a saved
file's keys against them.

ComfyUI maps, per family: the UNet's LDM names and diffusers paths under `lora_unet_` (diffusers paths also in
the attention-processor spelling, with or without `unet.`); a DiT's original names (`diffusion_model.` /
`lora_unet_`) and diffusers paths (`transformer.` / `lora_transformer_`); only the six projections of each CLIP
encoder layer (`lora_te*_text_model_...`, `text_encoder*.text_model.`), numbered by which CLIPs the model has;
T5 under OneTrainer's `lora_te<N>_` numbers. A1111 maps kohya names only: `lora_unet_` + LDM name for any
UNet, SD1/SD2 diffusers paths renumbered by the SD block layout (`a1111_unet_name`), CLIP modules under
`lora_te_`/`lora_te1_`, OpenCLIP (SD2, SDXL's second encoder) projections only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from torch import nn

from webui.models.families import ModelFamily
from webui.models.formats.kohya import targetable_module_paths, unet_ldm_names


def _underscored(name: str) -> str:
    return name.replace(".", "_")


# --------------------------------------------------------------------------------------------
# File keys: (layer name, tensor suffix)
# --------------------------------------------------------------------------------------------

# Tensor suffixes after "<layer>." that ComfyUI's LoRA loader reads (LoRA, LoCon, LoHa, LoKr, GLoRA, norms, diff).
COMFYUI_SUFFIXES = frozenset({
    "alpha", "dora_scale", "reshape_weight", "lora_up.weight", "lora_down.weight", "lora_mid.weight",
    "lora_B.weight", "lora_A.weight", "lora.up.weight", "lora.down.weight", "lora_linear_layer.up.weight",
    "lora_linear_layer.down.weight", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "a1.weight", "a2.weight",
    "b1.weight", "b2.weight", "w_norm", "b_norm", "diff", "diff_b", "set_weight",
})
# ComfyUI also reads attention-processor files: "<layer>_lora.up.weight".
COMFYUI_PROCESSOR_SUFFIXES = ("_lora.up.weight", "_lora.down.weight")
# A1111's network modules: kohya LoRA / LoCon, LyCORIS LoHa / LoKr / full / norm / GLoRA / OFT / IA3.
A1111_SUFFIXES = frozenset({
    "alpha", "dora_scale", "lora_up.weight", "lora_down.weight", "lora_mid.weight", "hada_w1_a", "hada_w1_b",
    "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a",
    "lokr_w2_b", "lokr_t2", "diff", "diff_b", "w_norm", "b_norm", "a1.weight", "a2.weight", "b1.weight",
    "b2.weight", "oft_blocks", "oft_diag",
})


def keys_read(keys: Sequence[str], layers: set[str], suffixes: frozenset[str],
              processor_suffixes: Sequence[str] = ()) -> list[str]:
    """The keys whose layer name is in `layers` and whose tensor suffix the loader reads."""
    consumed = []
    for key in keys:
        for suffix in processor_suffixes:
            if key.endswith(suffix) and key[: -len(suffix)] in layers:
                consumed.append(key)
                break
        else:
            for position in (match.start() for match in re.finditer(r"\.", key)):
                if key[:position] in layers and key[position + 1:] in suffixes:
                    consumed.append(key)
                    break
    return consumed


# --------------------------------------------------------------------------------------------
# The model's module names, as each loader spells them
# --------------------------------------------------------------------------------------------

_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(mlp\.fc1|mlp\.fc2|self_attn\.[qkv]_proj|self_attn\.out_proj)$")


def _clip_paths(module: nn.Module) -> dict[str, str]:
    """Installed path -> path below `text_model.` (the level transformers 5 removed), for a CLIP encoder."""
    return {path: path.removeprefix("text_model.") for path in targetable_module_paths(module)}


def _comfyui_text_names(family: ModelFamily, component: str, module: nn.Module) -> set[str]:
    """T5 layers under the family's `comfyui_t5_lora_prefixes`; the six projections of each CLIP encoder layer
    under its `comfyui_clip_lora_prefixes` (ComfyUI maps no other CLIP module)."""
    names: set[str] = set()
    for prefix in family.comfyui_t5_lora_prefixes.get(component, ()):
        names.update(prefix + _underscored(path) for path in targetable_module_paths(module))
    for prefix in family.comfyui_clip_lora_prefixes.get(component, ()):
        for path in _clip_paths(module).values():
            if _CLIP_LAYER.match(path):
                dotted = prefix.endswith(".")
                names.add(f"{prefix}text_model.{path}" if dotted else f"{prefix}text_model_{_underscored(path)}")
    return names


def _comfyui_unet_names(unet: nn.Module) -> set[str]:
    """lora_unet_ + the LDM name or the diffusers path (underscored); the LDM name under diffusion_model.;
    the diffusers path with attention-processor spelling ("attn1.processor.to_q", "...processor.to_out")."""
    names: set[str] = set()
    for path, ldm in unet_ldm_names(targetable_module_paths(unet)).items():
        names.update({f"lora_unet_{_underscored(ldm)}", f"diffusion_model.{ldm}", f"lora_unet_{_underscored(path)}",
                      f"lycoris_{_underscored(path)}"})
        processor = path.replace(".to_", ".processor.to_").removesuffix(".0" if path.endswith(".to_out.0") else "")
        names.update({processor, f"unet.{processor}"})
    return names


def _comfyui_dit_names(family: ModelFamily, denoiser: nn.Module) -> set[str]:
    """Original module names (diffusion_model. / lora_unet_) and the diffusers paths they became
    (transformer. / lora_transformer_ / lycoris_, and the family's `comfyui_extra_dit_lora_prefixes`)."""
    names: set[str] = set()
    for original, parts in family.lora_original_names(denoiser).items():
        names.update({f"diffusion_model.{original}", f"lora_unet_{_underscored(original)}"})
        for part in parts:
            names.update({f"transformer.{part.path}", f"lora_transformer_{_underscored(part.path)}",
                          f"lycoris_{_underscored(part.path)}"})
            names.update(prefix + part.path for prefix in family.comfyui_extra_dit_lora_prefixes)
    return names


def comfyui_layer_names(family: ModelFamily, modules: Mapping[str, nn.Module]) -> set[str]:
    """Every layer name ComfyUI maps to a module of this model (`modules`: denoiser and text encoders)."""
    names: set[str] = set()
    denoiser = modules.get(family.denoiser)
    if denoiser is not None:
        names |= _comfyui_unet_names(denoiser) if family.denoiser == "unet" else _comfyui_dit_names(family, denoiser)
    for component in family.text_encoders:
        if modules.get(component) is not None:
            names |= _comfyui_text_names(family, component, modules[component])
    return names


# A1111 turns kohya's diffusers-path UNet names into its own (LDM) module names by the SD block numbering:
# three input / output blocks per level, the resnet sub-modules renamed (`_a1111_unet_name`).
_A1111_RESNET_PARTS = MappingProxyType({
    "conv1": "in_layers.2", "conv2": "out_layers.3", "norm1": "in_layers.0", "norm2": "out_layers.0",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"})


def a1111_unet_name(path: str) -> str | None:
    """The LDM module name A1111 gives a diffusers UNet path of a kohya SD1/SD2 LoRA, or None if it has none."""
    if path == "conv_in":
        return "input_blocks.0.0"
    if path == "conv_out":
        return "out.2"
    if match := re.fullmatch(r"time_embedding\.linear_(\d+)", path):
        return f"time_embed.{int(match[1]) * 2 - 2}"
    if match := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(attentions|resnets)\.(\d+)\.(.+)", path):
        side, level, kind, index, rest = match[1], int(match[2]), match[3], int(match[4]), match[5]
        block = 1 + 3 * level + index if side == "down" else 3 * level + index
        if kind == "resnets":
            rest = _A1111_RESNET_PARTS.get(rest, rest)
        return f"{'input' if side == 'down' else 'output'}_blocks.{block}.{1 if kind == 'attentions' else 0}.{rest}"
    if match := re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", path):
        rest = match[3] if match[1] == "attentions" else _A1111_RESNET_PARTS.get(match[3], match[3])
        return f"middle_block.{1 if match[1] == 'attentions' else int(match[2]) * 2}.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path):
        return f"input_blocks.{3 + 3 * int(match[1])}.0.op"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", path):
        level = int(match[1])
        return f"output_blocks.{2 + 3 * level}.{2 if level > 0 else 1}.conv"
    return None


# The projections of an OpenCLIP layer A1111 takes kohya CLIP names for (`_a1111_text_names`).
_A1111_OPEN_CLIP_LAYERS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                           "mlp_fc1", "mlp_fc2")


def _a1111_text_names(family: ModelFamily, component: str, module: nn.Module) -> set[str]:
    """The family's `a1111_text_lora_names` for one encoder: a CLIP (transformers modules in A1111) takes its
    encoder layers' or every module's names, an OpenCLIP only the six projections of each layer (q/k/v go to
    the fused attention)."""
    paths = list(_clip_paths(module).values())
    names: set[str] = set()
    for prefix, modules in family.a1111_text_lora_names.get(component, ()):
        for path in paths:
            layer = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", path)
            if (modules == "clip" or (modules == "clip_layers" and layer)
                    or (modules == "open_clip" and layer and _underscored(layer[2]) in _A1111_OPEN_CLIP_LAYERS)):
                names.add(f"{prefix}text_model_{_underscored(path)}")
    return names


def a1111_layer_names(family: ModelFamily, modules: Mapping[str, nn.Module]) -> set[str]:
    """Every layer name A1111 maps to a module of this model (families whose `single_file_lora_loader` is A1111)."""
    names: set[str] = set()
    unet = modules.get("unet")
    if unet is not None:
        for path, ldm in unet_ldm_names(targetable_module_paths(unet)).items():
            names.add(f"lora_unet_{_underscored(ldm)}")  # SDXL files: lora_unet_ + LDM name
            if a1111_unet_name(path) == ldm:              # SD1/SD2 files: diffusers paths, renumbered
                names.add(f"lora_unet_{_underscored(path)}")
    for component in family.text_encoders:
        if modules.get(component) is not None:
            names |= _a1111_text_names(family, component, modules[component])
    return names
