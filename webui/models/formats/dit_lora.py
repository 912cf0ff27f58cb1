"""LoRA names of transformer (DiT) models: the original module names (Stability's MMDiT, BFL's Flux) that
kohya/sd-scripts, ComfyUI and ai-toolkit files use, mapped onto the diffusers modules the pipeline has.

The original models fuse projections diffusers keeps apart (SD3's `attn.qkv`, Flux's `linear1` = q, k, v and
the MLP input) and order some modulation outputs the other way round (shift, scale); diffusers' single-file
converters split and swap those weights by rows when a checkpoint is loaded. A LoRA update of such a layer
is split the same way: each diffusers module gets the rows of the update that land in its weight
(:class:`RowPart`). Families describe their names with :func:`original_names` (one table each, in the
family's file); the LoRA reader (`models/lora.py`) looks names up in the result, so it sees one target
naming whatever the file's.

diffusers' LoRA converters are not used for the namings the families' tables read: SD3's `lora_state_dict`
converts no kohya names, and the Flux one splits `linear1` at the full-size widths (3072/12288) written into it,
where the split here follows the loaded model's own module sizes. Layouts no table describes (XLabs' Flux
attention-processor LoRAs) are brought to diffusers' names by diffusers' own converter, through the pipeline's
public `lora_state_dict` (:func:`converted_by_diffusers`, the one place that calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

RowRanges = tuple[tuple[int, int], ...]  # (start, stop) row ranges of the original weight, concatenated


@dataclass(frozen=True)
class RowPart:
    """One installed module's share of an original layer: its path, and which rows of the original weight
    (and of a LoRA update of it) form this module's weight, in order; None = all rows, unchanged."""

    path: str
    rows: RowRanges | None = None


@dataclass(frozen=True)
class OriginalLayer:
    """A rule of a family's table: the original module name (relative to a block when in a block table) and
    the diffusers modules it became, in row order; `swapped` for the (shift, scale) -> (scale, shift) halves."""

    original: str
    targets: tuple[str, ...]
    swapped: bool = False


def layer(original: str, *targets: str, swapped: bool = False) -> OriginalLayer:
    return OriginalLayer(original, targets, swapped)


def _out_features(module: nn.Module) -> int:
    return int(module.weight.shape[0])


def _parts(denoiser: nn.Module, rule: OriginalLayer, target_prefix: str) -> tuple[RowPart, ...] | None:
    """The row parts of one rule for the modules the loaded denoiser has; None when one of them is missing."""
    modules = []
    for target in rule.targets:
        try:
            modules.append((target_prefix + target, denoiser.get_submodule(target_prefix + target)))
        except AttributeError:
            return None
    if rule.swapped:
        (path, module), = modules
        rows = _out_features(module)
        return (RowPart(path, ((rows // 2, rows), (0, rows // 2))),)
    if len(modules) == 1:
        return (RowPart(modules[0][0]),)
    parts, start = [], 0
    for path, module in modules:
        stop = start + _out_features(module)
        parts.append(RowPart(path, ((start, stop),)))
        start = stop
    return tuple(parts)


def original_names(denoiser: nn.Module, top_level: Iterable[OriginalLayer],
                   blocks: Sequence[tuple[str, str, Iterable[OriginalLayer]]],
                   last_block_rules: dict[str, Iterable[OriginalLayer]] | None = None) -> dict[str, tuple[RowPart, ...]]:
    """Original module name -> the installed modules (and rows) it became, for every rule whose modules the
    loaded denoiser has. `blocks` holds (original block list, diffusers block list, rules) with the block
    index in between (`joint_blocks.3.` -> `transformer_blocks.3.`); `last_block_rules` replace a block
    list's rules in its last block (SD3's last context block only modulates)."""
    names: dict[str, tuple[RowPart, ...]] = {}
    for rule in top_level:
        parts = _parts(denoiser, rule, "")
        if parts is not None:
            names[rule.original] = parts
    for original_list, diffusers_list, rules in blocks:
        try:
            count = len(denoiser.get_submodule(diffusers_list))
        except AttributeError:
            continue
        for index in range(count):
            chosen = rules
            if last_block_rules and index == count - 1 and original_list in last_block_rules:
                chosen = last_block_rules[original_list]
            for rule in chosen:
                parts = _parts(denoiser, rule, f"{diffusers_list}.{index}.")
                if parts is not None:
                    names[f"{original_list}.{index}.{rule.original}"] = parts
    return names


def converted_by_diffusers(state_dict: Mapping[str, Tensor], pipeline_class: str,
                           markers: Sequence[str]) -> Mapping[str, Tensor]:
    """A LoRA state dict in a layout only diffusers converts (a key holds one of `markers`, e.g. XLabs'
    `double_blocks.0.processor.qkv_lora1.down.weight`), as `<pipeline_class>.lora_state_dict` converts it:
    `transformer.<diffusers path>.lora_A/lora_B.weight` (no alpha: those layouts scale by 1). Other state
    dicts come back as they are, for the families' own tables."""
    if not markers or not any(marker in key for key in state_dict for marker in markers):
        return state_dict
    import diffusers

    converted = getattr(diffusers, pipeline_class).lora_state_dict(dict(state_dict))
    return converted[0] if isinstance(converted, tuple) else converted


def joined_lora_factors(parts: Sequence[RowPart], factors: Mapping[str, tuple[Tensor, Tensor, float]],
                        rows: int) -> tuple[Tensor, Tensor, float]:
    """One original fused layer's LoRA (down, up, alpha) from LoRAs of some of the installed modules it became
    (`factors`: module path -> (down [r, in], up [out, r], scale alpha / r)); the inverse of the row split, for
    writing files in the original names (sd-scripts' `..._attn_qkv`, `..._linear1`). The downs are stacked and
    each up sits in its module's rows and its own rank's columns (block-diagonal; rows of untrained modules stay
    zero), each part's scale baked into its up, alpha = the joined rank (scale 1): up @ down is exactly the
    parts' updates in the original row order. `rows`: the original layer's output rows."""
    present = [part for part in parts if part.path in factors]
    down = torch.cat([factors[part.path][0] for part in present])
    up = down.new_zeros((rows, down.shape[0]))
    column = 0
    for part in present:
        part_down, part_up, scale = factors[part.path]
        rank = part_down.shape[0]
        offset = 0
        for start, stop in part.rows or ((0, part_up.shape[0]),):
            up[start:stop, column:column + rank] = part_up[offset:offset + stop - start] * scale
            offset += stop - start
        column += rank
    return down, up, float(down.shape[0])
