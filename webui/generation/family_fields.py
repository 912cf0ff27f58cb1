"""Which generation settings a model family uses: the ONE rule behind the per-family controls.

Some request fields only mean something for some families: "Clip skip" for CLIP-prompted models, Forge's
"Distilled CFG Scale" for guidance-distilled models (Flux.1 dev), "Shift" for flow-matching models (SD3.5,
Flux). The family object says which it is (`ModelFamily.uses_clip_skip`, `distilled_guidance`,
`flow_matching`); this table maps request fields to those answers, so the UI (which controls it shows),
the infotext (which keys it writes) and the X/Y/Z plot (which axes it refuses) agree without naming a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from webui.models.families import ModelFamily

@dataclass(frozen=True)
class FamilyField:
    """A request field only some families use: the `ModelFamily` flag that says so, what users call the
    setting, and which models have it (for messages)."""

    flag: str
    label: str
    who_uses_it: str


FAMILY_FIELDS: Mapping[str, FamilyField] = MappingProxyType({
    "clip_skip": FamilyField("uses_clip_skip", "Clip skip", "models prompted through CLIP alone"),
    "distilled_cfg_scale": FamilyField("distilled_guidance", "Distilled CFG Scale",
                                       "guidance-distilled models"),
    "hr_distilled_cfg": FamilyField("distilled_guidance", "Hires Distilled CFG Scale",
                                    "guidance-distilled models"),
    "shift": FamilyField("flow_matching", "Shift", "flow-matching models"),
})


def family_uses(family: ModelFamily, field_name: str) -> bool:
    """Whether `field_name` of a generation request affects images of this family (fields not in the table
    apply to every family)."""
    rule = FAMILY_FIELDS.get(field_name)
    return rule is None or bool(getattr(family, rule.flag))


def shown_fields(family: ModelFamily) -> dict[str, bool]:
    """For every family-dependent request field: whether a UI shows its control for this family."""
    return {name: family_uses(family, name) for name in FAMILY_FIELDS}


def unused_field_message(family: ModelFamily, field_name: str, checkpoint: str) -> str:
    """Why a setting cannot be varied for a checkpoint: what it is, and which models have it."""
    rule = FAMILY_FIELDS[field_name]
    return (f"{rule.label} does not apply to {checkpoint} ({family.label}): only {rule.who_uses_it} "
            f"have it")


def sampling_shift(family: ModelFamily, shift: float | None, scheduler_config: Mapping[str, object]) -> float | None:
    """The fixed shift a model samples with: the request's, else its own scheduler config's; None for
    families that are not flow-matching and for configs whose shift follows the image size (diffusers'
    `use_dynamic_shifting`, Flux.1 dev) when the request sets none. What the infotext writes as "Shift" and
    a flow scheduler is built with."""
    if not family.flow_matching:
        return None
    if shift is not None:
        return float(shift)
    if scheduler_config.get("use_dynamic_shifting"):
        return None
    configured = scheduler_config.get("shift")
    return float(configured) if isinstance(configured, (int, float)) and not isinstance(configured, bool) else None
