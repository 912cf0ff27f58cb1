"""A1111's X/Y/Z axis list, mapped onto this app's axis table (`webui.xyz.axes`) in one place.

A1111 API clients name an axis by its position in the script's dropdown (`script_args[0]` is the X type
index), and that dropdown differs per tab: axes marked txt2img-only or img2img-only are left out of the
other tab's list, so "Sampler" is index 9 on both tabs but "Checkpoint name" is 11 on txt2img and 10 on
img2img. `A1111_AXES` is A1111's list in its order with the tab each entry belongs to and the label of
our axis that does the same thing (None where this app has no such axis: those are refused by name).
"""

from __future__ import annotations

from typing import Literal

from webui.xyz.axes import NOTHING_LABEL, AxisRegistry
from webui.xyz.ranges import AxisValueError

Tab = Literal["both", "txt2img", "img2img"]

# (A1111 label, tab, our axis label or None)
A1111_AXES: tuple[tuple[str, Tab, str | None], ...] = (
    ("Nothing", "both", NOTHING_LABEL),
    ("Seed", "both", "Seed"),
    ("Var. seed", "both", "Var. seed"),
    ("Var. strength", "both", "Var. strength"),
    ("Steps", "both", "Steps"),
    ("Hires steps", "txt2img", "Hires steps"),
    ("CFG Scale", "both", "CFG Scale"),
    ("Image CFG Scale", "img2img", None),
    ("Prompt S/R", "both", "Prompt S/R"),
    ("Prompt order", "both", "Prompt order"),
    ("Sampler", "txt2img", "Sampler"),
    ("Hires sampler", "txt2img", None),
    ("Sampler", "img2img", "Sampler"),
    ("Checkpoint name", "both", "Checkpoint name"),
    ("Negative Guidance minimum sigma", "both", None),
    ("Sigma Churn", "both", None),
    ("Sigma min", "both", None),
    ("Sigma max", "both", None),
    ("Sigma noise", "both", None),
    ("Schedule type", "both", "Schedule type"),
    ("Schedule min sigma", "both", None),
    ("Schedule max sigma", "both", None),
    ("Schedule rho", "both", None),
    ("Eta", "both", None),
    ("Clip skip", "both", "Clip skip"),
    ("Denoising", "both", "Denoising"),
    ("Initial noise multiplier", "both", None),
    ("Extra noise", "both", None),
    ("Hires upscaler", "txt2img", "Hires upscaler"),
    ("Cond. Image Mask Weight", "img2img", None),
    ("VAE", "both", "VAE"),
    ("Styles", "both", "Styles"),
    ("UniPC Order", "both", None),
    ("Face restore", "both", None),
    ("Token merging ratio", "both", None),
    ("Token merging ratio high-res", "both", None),
    ("Always discard next-to-last sigma", "both", None),
    ("SGM noise multiplier", "both", None),
    ("Refiner checkpoint", "both", "Refiner checkpoint"),
    ("Refiner switch at", "both", "Refiner switch at"),
    ("RNG source", "both", None),
)


def a1111_axis_list(is_img2img: bool) -> list[tuple[str, str | None]]:
    """A1111's dropdown for one tab, in its order: (A1111 label, our label or None). Index = A1111's type."""
    tab = "img2img" if is_img2img else "txt2img"
    return [(label, ours) for label, where, ours in A1111_AXES if where in ("both", tab)]


def resolve_a1111_axis(axis_type: object, is_img2img: bool, registry: AxisRegistry, axis: str) -> str:
    """Our axis label for an A1111 axis type: its dropdown index, or a label (A1111's or one of ours, such
    as "Size" or "LoRA name"). Raises AxisValueError naming the axis when it does not exist or this app
    has no equivalent."""
    choices = a1111_axis_list(is_img2img)
    tab = "img2img" if is_img2img else "txt2img"
    if isinstance(axis_type, bool) or not isinstance(axis_type, (int, str)):
        raise AxisValueError(f"{axis} type must be an axis index or label, got {axis_type!r}")
    if isinstance(axis_type, int):
        if not 0 <= axis_type < len(choices):
            raise AxisValueError(f"{axis} type {axis_type} is not an index of A1111's {tab} axis list (0..{len(choices) - 1})")
        label, ours = choices[axis_type]
    else:
        wanted = axis_type.strip().casefold() or NOTHING_LABEL.casefold()
        found = next(((label, ours) for label, ours in choices if label.casefold() == wanted), None)
        if found is None:
            if axis_type in registry:
                return registry.get(axis_type).label
            known = [label for label, ours in choices if ours] + [
                label for label in registry.labels() if label not in {ours for _, ours in choices}]
            raise AxisValueError(f"{axis} type {axis_type!r} is unknown; supported: {', '.join(known)}")
        label, ours = found
    if ours is None:
        raise AxisValueError(f"{axis} type {label!r} (A1111's {tab} X/Y/Z axis) is not supported by this server")
    return ours
