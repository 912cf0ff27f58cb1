"""The X/Y/Z axis table: what each axis label means for a generation request, as data.

Every axis has the same shape (`AxisOption`): how its value text is read (`kind`), what it offers the UI
(`choices`), how one value changes a request (`apply`), and how expensive a change of value is (`cost`,
so the plan can keep the checkpoint axis in the outer loop). Requests are frozen dataclasses changed with
`dataclasses.replace`, so an axis works on txt2img and img2img requests alike and never mutates shared
state (A1111's axes flip global options and restore them afterwards; here nothing needs restoring).

Extensions add axes with `AxisRegistry.register`; `default_axis_registry()` builds a fresh registry with
the built-in table each time, so nothing is shared between callers.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from webui.generation import samplers as sampler_tables
from webui.generation.requests import MAX_DISTILLED_CFG_SCALE, MAX_SHIFT, MIN_SHIFT, NO_REFINER_CHOICE
from webui.xyz.ranges import AxisValueError, DEFAULT_MAX_VALUES, parse_float_values, parse_int_values, value_items

AxisKind = Literal["int", "float", "str", "choice"]

NOTHING_LABEL = "Nothing"

# Relative cost of changing the axis value between two cells (see XYZ plan ordering).
CHECKPOINT_COST = 100
VAE_COST = 70
LORA_NAME_COST = 50

# Extra-network kinds whose tags the LoRA axes edit; A1111 treats `lyco` as another name for `lora`.
LORA_TAG_KINDS = ("lora", "lyco")
# The extra-network tag grammar of webui.generation.prompt_syntax, with the kind restricted to LoRAs.
_LORA_TAG = re.compile(r"<(?P<kind>" + "|".join(LORA_TAG_KINDS) + r"):(?P<body>[^>]+)>")
_SIZE = re.compile(r"\s*(?P<width>\d+)\s*[xX×]\s*(?P<height>\d+)\s*")

VAE_SPECIAL_CHOICES = ("Automatic", "None")


@dataclass(frozen=True)
class AxisChoices:
    """What the app has installed right now; the caller fills it so this module needs no model catalog.

    Sampler and schedule names default to the full tables this app supports.
    """

    samplers: tuple[str, ...] = field(default_factory=lambda: tuple(sampler_tables.sampler_names()))
    schedule_types: tuple[str, ...] = field(default_factory=lambda: tuple(sampler_tables.schedule_type_names()))
    checkpoints: tuple[str, ...] = ()      # A1111 titles, `name [shorthash]` (or the bare name if not hashed)
    vaes: tuple[str, ...] = ()             # file names in models/VAE ("Automatic"/"None" are always offered)
    loras: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    hires_upscalers: tuple[str, ...] = ()


@dataclass(frozen=True)
class AxisOption:
    """One entry of the axis table.

    - `kind` says how value text is read: "int"/"float" accept ranges, "str" plain CSV items, "choice"
      items that must name one of `choices(...)` (matched ignoring case, then canonicalised).
    - `apply(request, value)` returns a changed copy of the request; it raises `AxisValueError` when the
      value cannot apply to that request (e.g. a Prompt S/R search string missing from the prompt).
    - `choices` lists the values the UI offers (and, for "choice" axes, the only ones accepted).
    - `validate(values)` checks the whole resolved list (ranges of numbers and the like).
    - `prepare(values, choices)` turns the read items into the per-cell values (pairs, permutations, ...);
      it may return a lazy iterable, which the planner cuts off at its cell limit.
      `validate` and `prepare` raise ValueError with a message about the value; the axis is named for them.
    - `match_choice(text, options)` finds the canonical option for a typed value (aliases, titles), or None.
    - `format_value(value)` is the legend text for one cell value.
    - `cost` ranks how slow a value change is; the most expensive axis becomes the outer loop.
    """

    label: str
    kind: AxisKind
    apply: Callable[[Any, Any], Any]
    choices: Callable[[AxisChoices], Sequence[str]] | None = None
    validate: Callable[[Sequence[Any]], None] | None = None
    cost: int = 0
    prepare: Callable[[list[Any], AxisChoices], Iterable[Any]] | None = None
    match_choice: Callable[[str, Sequence[str]], str | None] | None = None
    format_value: Callable[[Any], str] | None = None
    # The request field the axis varies when only some model families use it ("shift"): the app refuses the
    # axis for checkpoints whose family lacks it (webui.generation.family_fields).
    request_field: str | None = None

    @property
    def is_nothing(self) -> bool:
        return self.label == NOTHING_LABEL

    def legend_text(self, value: Any) -> str:
        """What the grid shows for a cell value: the bare text, without the axis label."""
        if self.is_nothing:
            return ""
        return self.format_value(value) if self.format_value is not None else format_axis_value(value)


class AxisRegistry:
    """The axis options one plot can use: the built-in table plus whatever extensions register."""

    def __init__(self, options: Iterable[AxisOption] = ()) -> None:
        """Register `options` in order; a Nothing axis is put first when they have none (plans need it)."""
        self._options: dict[str, AxisOption] = {}
        options = list(options)
        if not any(option.is_nothing for option in options):
            options.insert(0, AxisOption(NOTHING_LABEL, "str", _apply_nothing))
        for option in options:
            self.register(option)

    def register(self, option: AxisOption) -> None:
        """Add an axis; a label already taken (ignoring case) is refused so no axis is silently replaced."""
        key = option.label.strip().casefold()
        if not key:
            raise ValueError("an axis needs a non-empty label")
        if option.kind not in ("int", "float", "str", "choice"):
            raise ValueError(f"axis {option.label!r}: kind must be int, float, str or choice, not {option.kind!r}")
        if option.kind == "choice" and option.choices is None:
            raise ValueError(f"axis {option.label!r}: a choice axis needs a choices function")
        if key in self._options:
            raise ValueError(f"an X/Y/Z axis named {self._options[key].label!r} is already registered")
        self._options[key] = option

    def get(self, label: str) -> AxisOption:
        """The axis with this label (case-insensitive); an empty label means Nothing."""
        key = (label.strip() or NOTHING_LABEL).casefold()
        try:
            return self._options[key]
        except KeyError:
            raise AxisValueError(f"unknown X/Y/Z axis {label!r}; available: {', '.join(self.labels())}") from None

    def labels(self) -> list[str]:
        """Labels in registration order (built-ins first, Nothing first of all), for the axis dropdowns."""
        return [option.label for option in self._options.values()]

    def options(self) -> list[AxisOption]:
        return list(self._options.values())

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and label.strip().casefold() in self._options

    def __iter__(self) -> Iterator[AxisOption]:
        return iter(list(self._options.values()))

    def __len__(self) -> int:
        return len(self._options)


def format_axis_value(value: Any) -> str:
    """Generic legend text: floats without binary noise (`0.3`, `7`), sequences joined with `, `."""
    if isinstance(value, float):
        return format(round(value, 8), ".8g")
    if isinstance(value, (tuple, list)):
        return ", ".join(format_axis_value(item) for item in value)
    return str(value)


def resolve_axis_values(
    option: AxisOption,
    raw_values: str | Sequence[str],
    axis: str,
    axis_choices: AxisChoices,
    *,
    max_values: int = DEFAULT_MAX_VALUES,
) -> list[Any]:
    """Read, canonicalise, expand and check the values of one axis; `axis` names it in error messages.

    `raw_values` is the text the user typed or the list a multiselect produced. Raises AxisValueError.
    """
    if option.kind == "int":
        values: list[Any] = parse_int_values(raw_values, axis, max_values=max_values)
    elif option.kind == "float":
        values = parse_float_values(raw_values, axis, max_values=max_values)
    else:
        values = value_items(raw_values, axis)
        if len(values) > max_values:
            raise AxisValueError(f"{axis}: {len(values)} values, but an axis may have at most {max_values}")
        if option.kind == "choice":
            values = _canonical_choices(option, values, axis, axis_choices)
    # The hooks' messages say what is wrong with a value; the axis is named here.
    try:
        if option.prepare is not None:
            values = list(itertools.islice(option.prepare(values, axis_choices), max_values + 1))
        if len(values) > max_values:
            raise AxisValueError(f"these values make more than {max_values} plot entries")
        if option.validate is not None:
            option.validate(values)
    except ValueError as error:
        raise AxisValueError(f"{axis}: {error}") from error
    return values


def _canonical_choices(option: AxisOption, values: list[str], axis: str, axis_choices: AxisChoices) -> list[str]:
    assert option.choices is not None  # guaranteed by AxisRegistry.register
    options = list(option.choices(axis_choices))
    if not options:
        raise AxisValueError(f"{axis}: there is nothing installed to choose from")
    matcher = option.match_choice or match_ignoring_case
    canonical: list[str] = []
    for value in values:
        match = matcher(value, options)
        if match is None:
            raise AxisValueError(f"{axis}: unknown value {value!r}; valid values: {', '.join(options)}")
        canonical.append(match)
    return canonical


def match_ignoring_case(text: str, options: Sequence[str]) -> str | None:
    """The option equal to `text`, exactly or else ignoring case and surrounding spaces."""
    wanted = text.strip()
    if wanted in options:
        return wanted
    folded = wanted.casefold()
    return next((option for option in options if option.casefold() == folded), None)


# ---------------------------------------------------------------------------------------------------------
# Value checks
# ---------------------------------------------------------------------------------------------------------


def numbers_between(low: float, high: float | None = None) -> Callable[[Sequence[Any]], None]:
    """A `validate` hook refusing numbers outside low..high (no upper bound when high is None)."""

    def check(values: Sequence[Any]) -> None:
        for value in values:
            if value < low or (high is not None and value > high):
                bound = f"{low}..{high}" if high is not None else f"at least {low}"
                raise AxisValueError(f"{format_axis_value(value)} is outside the allowed range ({bound})")

    return check


# ---------------------------------------------------------------------------------------------------------
# Apply functions (one per axis behaviour)
# ---------------------------------------------------------------------------------------------------------


def set_field(name: str, **also: Any) -> Callable[[Any, Any], Any]:
    """An `apply` that sets one request field (and fixed companions, e.g. enable_hr=True)."""

    def apply(request: Any, value: Any) -> Any:
        return dataclasses.replace(request, **{name: value}, **also)

    return apply


def _apply_nothing(request: Any, value: Any) -> Any:
    return request


def _apply_size(request: Any, value: tuple[int, int]) -> Any:
    width, height = value
    return dataclasses.replace(request, width=width, height=height)


def _parse_sizes(values: list[str], axis_choices: AxisChoices) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    for value in values:
        match = _SIZE.fullmatch(value)
        if match is None:
            raise AxisValueError(f"{value!r} is not WIDTHxHEIGHT, e.g. 512x768")
        sizes.append((int(match["width"]), int(match["height"])))
    return sizes


def _format_size(value: tuple[int, int]) -> str:
    return f"{value[0]}x{value[1]}"


@dataclass(frozen=True)
class PromptReplacement:
    """One Prompt S/R cell: `search` (the axis's first value) replaced by `replacement`."""

    search: str
    replacement: str


def _prepare_search_replace(values: list[str], axis_choices: AxisChoices) -> list[PromptReplacement]:
    return [PromptReplacement(values[0], value) for value in values]


def _apply_search_replace(request: Any, value: PromptReplacement) -> Any:
    """Replace in the prompt and negative prompt (and the hires prompts when set), as A1111's Prompt S/R."""
    if value.search not in request.prompt and value.search not in request.negative_prompt:
        raise AxisValueError(f"Prompt S/R: {value.search!r} is not in the prompt or the negative prompt")
    changes = {
        name: getattr(request, name).replace(value.search, value.replacement)
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
        if isinstance(getattr(request, name, None), str)
    }
    return dataclasses.replace(request, **changes)


def _prepare_prompt_order(values: list[str], axis_choices: AxisChoices) -> Iterator[tuple[str, ...]]:
    if len(set(values)) != len(values):
        raise AxisValueError("every fragment must be different")
    return itertools.permutations(values)


def _apply_prompt_order(request: Any, order: tuple[str, ...]) -> Any:
    """Put the fragments into the prompt's fragment slots in `order` (the slots are where they first occur)."""
    prompt: str = request.prompt
    slots: list[tuple[int, int]] = []
    for fragment in order:
        start = prompt.find(fragment)
        if start < 0:
            raise AxisValueError(f"Prompt order: {fragment!r} is not in the prompt")
        slots.append((start, start + len(fragment)))
    slots.sort()
    for (_, previous_end), (next_start, _) in zip(slots, slots[1:]):
        if next_start < previous_end:
            raise AxisValueError("Prompt order: the fragments overlap in the prompt; use fragments that do not")
    pieces: list[str] = []
    position = 0
    for (start, end), fragment in zip(slots, order):
        pieces.append(prompt[position:start])
        pieces.append(fragment)
        position = end
    pieces.append(prompt[position:])
    return dataclasses.replace(request, prompt="".join(pieces))


def _match_sampler(text: str, options: Sequence[str]) -> str | None:
    """A sampler by name, ignoring case, or by A1111 alias (`k_dpmpp_2m`)."""
    direct = match_ignoring_case(text, options)
    if direct is not None:
        return direct
    try:
        name = sampler_tables.find_sampler(text).name
    except sampler_tables.UnknownSamplerError:
        return None
    return name if name in options else None


def _match_schedule_type(text: str, options: Sequence[str]) -> str | None:
    """A schedule type by label, ignoring case, or by A1111 internal name (`sgm_uniform`)."""
    direct = match_ignoring_case(text, options)
    if direct is not None:
        return direct
    try:
        label = sampler_tables.find_schedule_type(text)
    except sampler_tables.UnknownSamplerError:
        return None
    return label if label in options else None


def _checkpoint_name(title: str) -> str:
    """`name` of an A1111 title `name [shorthash]`."""
    return re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", title.strip())


def _match_checkpoint(text: str, options: Sequence[str]) -> str | None:
    """A checkpoint by title `name [hash]`, by bare name (with or without file extension), or by short hash."""
    direct = match_ignoring_case(text, options)
    if direct is not None:
        return direct
    wanted = _checkpoint_name(text).casefold()
    for option in options:
        name = _checkpoint_name(option).casefold()
        if wanted in (name, name.rsplit("/", 1)[-1]) or wanted.rsplit(".", 1)[0] == name:
            return option
    for option in options:
        hash_match = re.search(r"\[([0-9a-fA-F]+)\]$", option)
        if hash_match and hash_match.group(1).casefold() == text.strip().casefold():
            return option
    return None


def _format_checkpoint(title: str) -> str:
    return _checkpoint_name(title)


def _prepare_styles(values: list[str], axis_choices: AxisChoices) -> list[tuple[str, ...]]:
    """Each value is a style name or several joined by `|`; each name must be a known style."""
    combinations: list[tuple[str, ...]] = []
    for value in values:
        names: list[str] = []
        for part in value.split("|"):
            if not part.strip():
                raise AxisValueError(f"{value!r} has an empty style name")
            match = match_ignoring_case(part, axis_choices.styles)
            if match is None:
                known = ", ".join(axis_choices.styles) or "(no styles defined)"
                raise AxisValueError(f"unknown style {part.strip()!r}; valid styles: {known}")
            names.append(match)
        combinations.append(tuple(names))
    return combinations


def _apply_styles(request: Any, names: tuple[str, ...]) -> Any:
    """Add the styles after those already selected (A1111 extends the list); a style is not added twice."""
    current = tuple(request.styles)
    return dataclasses.replace(request, styles=current + tuple(name for name in names if name not in current))


def _format_styles(names: tuple[str, ...]) -> str:
    return " | ".join(names)


# --- LoRA tags -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraWeight:
    """One LoRA weight cell: the weight, for the LoRA tag named `lora_name` (None = the first LoRA tag)."""

    weight: float
    lora_name: str | None = None


def _prepare_lora_weights(values: list[str], axis_choices: AxisChoices) -> list[LoraWeight]:
    """`0.5`, `0-1 [5]`, `name:0.5` or `name:0-1 (+0.25)` -> one LoraWeight per weight."""
    weights: list[LoraWeight] = []
    for value in values:
        try:
            weights.extend(LoraWeight(number) for number in parse_float_values([value], "weight"))
            continue
        except AxisValueError:
            lora_name, separator, number_text = value.rpartition(":")
        if not separator or not lora_name.strip():
            raise AxisValueError(f"{value!r} is not a weight (0.5, 0-1 [5]) or NAME:WEIGHT (mylora:0.5)")
        try:
            numbers = parse_float_values([number_text], f"weight of {lora_name.strip()}")
        except AxisValueError as error:
            raise AxisValueError(f"in {value!r}: {error}") from None
        weights.extend(LoraWeight(number, lora_name.strip()) for number in numbers)
    return weights


def _format_lora_weight(value: LoraWeight) -> str:
    weight = format_axis_value(value.weight)
    return f"{value.lora_name}:{weight}" if value.lora_name else weight


def _format_weight_argument(weight: float) -> str:
    """A weight as it reads in a prompt tag: `0.5`, `1`, `-0.25`."""
    return format(round(weight, 8), ".8g")


def _with_weight(tag_body: str, weight: str) -> str:
    """The tag body `name:args` with its text-encoder and UNet multipliers set to `weight`.

    Positional args 1 and 2 (te, unet) and named `te=`/`unet=` are replaced; a third positional arg (the
    dynamic dim) and other named args are kept. A tag without positional args gets the weight as its first.
    """
    name, *args = tag_body.split(":")
    new_args: list[str] = []
    positional_index = 0
    for arg in args:
        if arg.count("=") == 1:
            key = arg.split("=", 1)[0].strip()
            new_args.append(f"{key}={weight}" if key in ("te", "unet") else arg)
        else:
            new_args.append(weight if positional_index < 2 else arg)
            positional_index += 1
    if positional_index == 0:
        new_args.insert(0, weight)
    return ":".join([name, *new_args])


def _lora_tag_name(match: re.Match[str]) -> str:
    return match["body"].split(":", 1)[0]


def _apply_lora_weight(request: Any, value: LoraWeight) -> Any:
    """Rewrite the weight of the first LoRA tag, or of every tag of the named LoRA, in the prompt(s)."""
    weight_text = _format_weight_argument(value.weight)
    tags = list(_LORA_TAG.finditer(request.prompt))
    if not tags:
        raise AxisValueError("LoRA weight: the prompt has no <lora:name:weight> tag whose weight could be set")
    if value.lora_name is None:
        target = _lora_tag_name(tags[0])
    else:
        names = [_lora_tag_name(tag) for tag in tags]
        target = next((name for name in names if name.casefold() == value.lora_name.casefold()), "")
        if not target:
            raise AxisValueError(
                f"LoRA weight: the prompt has no <lora:{value.lora_name}:...> tag; "
                f"its LoRA tags are: {', '.join(names)}"
            )

    def rewrite(match: re.Match[str]) -> str:
        if _lora_tag_name(match) != target:
            return match[0]
        return f"<{match['kind']}:{_with_weight(match['body'], weight_text)}>"

    changes = {"prompt": _LORA_TAG.sub(rewrite, request.prompt)}
    hires_prompt = getattr(request, "hr_prompt", "")
    if isinstance(hires_prompt, str) and hires_prompt:
        changes["hr_prompt"] = _LORA_TAG.sub(rewrite, hires_prompt)
    return dataclasses.replace(request, **changes)


def _replace_first_lora_name(prompt: str, lora_name: str) -> str | None:
    """The prompt with its first LoRA tag renamed, or None when it has no LoRA tag."""
    match = _LORA_TAG.search(prompt)
    if match is None:
        return None
    _, _, rest = match["body"].partition(":")
    body = f"{lora_name}:{rest}" if rest else lora_name
    return f"{prompt[:match.start()]}<{match['kind']}:{body}>{prompt[match.end():]}"


def _apply_lora_name(request: Any, lora_name: str) -> Any:
    """Rename the first LoRA tag, keeping its weights; with no LoRA tag, add `<lora:NAME:1>` at the end."""
    prompt = _replace_first_lora_name(request.prompt, lora_name)
    if prompt is None:
        tag = f"<lora:{lora_name}:1>"
        prompt = f"{request.prompt} {tag}" if request.prompt.strip() else tag
    changes = {"prompt": prompt}
    hires_prompt = getattr(request, "hr_prompt", "")
    if isinstance(hires_prompt, str) and hires_prompt:
        changes["hr_prompt"] = _replace_first_lora_name(hires_prompt, lora_name) or hires_prompt
    return dataclasses.replace(request, **changes)


# ---------------------------------------------------------------------------------------------------------
# The built-in table
# ---------------------------------------------------------------------------------------------------------


def builtin_axis_options() -> list[AxisOption]:
    """The built-in axes in A1111's dropdown order (a new list on every call)."""
    seed_range = numbers_between(-1, 2**32 - 1)
    return [
        AxisOption(NOTHING_LABEL, "str", _apply_nothing),
        AxisOption("Seed", "int", set_field("seed"), validate=seed_range),
        AxisOption("Var. seed", "int", set_field("subseed"), validate=seed_range),
        AxisOption("Var. strength", "float", set_field("subseed_strength"), validate=numbers_between(0.0, 1.0)),
        AxisOption("Steps", "int", set_field("steps"), validate=numbers_between(1)),
        AxisOption(
            "Hires steps", "int", set_field("hr_second_pass_steps", enable_hr=True), validate=numbers_between(0)
        ),
        AxisOption("CFG Scale", "float", set_field("cfg_scale"), validate=numbers_between(0.0)),
        AxisOption("Distilled CFG Scale", "float", set_field("distilled_cfg_scale"),
                   validate=numbers_between(0.0, MAX_DISTILLED_CFG_SCALE), request_field="distilled_cfg_scale"),
        AxisOption("Shift", "float", set_field("shift"), validate=numbers_between(MIN_SHIFT, MAX_SHIFT),
                   request_field="shift"),
        AxisOption(
            "Prompt S/R", "str", _apply_search_replace,
            prepare=_prepare_search_replace, format_value=lambda value: value.replacement,
        ),
        AxisOption("Prompt order", "str", _apply_prompt_order, prepare=_prepare_prompt_order),
        AxisOption(
            "Sampler", "choice", set_field("sampler_name"),
            choices=lambda available: available.samplers, match_choice=_match_sampler,
        ),
        AxisOption(
            "Schedule type", "choice", set_field("scheduler"),
            choices=lambda available: available.schedule_types, match_choice=_match_schedule_type,
        ),
        AxisOption(
            "Checkpoint name", "choice", set_field("checkpoint"),
            choices=lambda available: sorted(available.checkpoints, key=str.casefold),
            match_choice=_match_checkpoint, format_value=_format_checkpoint, cost=CHECKPOINT_COST,
        ),
        AxisOption(
            "VAE", "choice", set_field("vae"),
            choices=lambda available: [*VAE_SPECIAL_CHOICES, *available.vaes], cost=VAE_COST,
        ),
        AxisOption("Clip skip", "int", set_field("clip_skip"), validate=numbers_between(1, 12), request_field="clip_skip"),
        AxisOption("Size", "str", _apply_size, prepare=_parse_sizes, format_value=_format_size),
        AxisOption("Denoising", "float", set_field("denoising_strength"), validate=numbers_between(0.0, 1.0)),
        AxisOption(
            "Hires upscaler", "choice", set_field("hr_upscaler", enable_hr=True),
            choices=lambda available: available.hires_upscalers,
        ),
        AxisOption(
            "LoRA weight", "str", _apply_lora_weight, prepare=_prepare_lora_weights, format_value=_format_lora_weight,
        ),
        AxisOption(
            "LoRA name", "choice", _apply_lora_name,
            choices=lambda available: available.loras, cost=LORA_NAME_COST,
        ),
        AxisOption(
            "Styles", "str", _apply_styles,
            choices=lambda available: available.styles, prepare=_prepare_styles, format_value=_format_styles,
        ),
        AxisOption(
            "Refiner checkpoint", "choice", set_field("refiner_checkpoint"),
            choices=lambda available: [NO_REFINER_CHOICE, *sorted(available.checkpoints, key=str.casefold)],
            match_choice=_match_checkpoint, format_value=_format_checkpoint, cost=CHECKPOINT_COST,
        ),
        AxisOption("Refiner switch at", "float", set_field("refiner_switch_at"), validate=numbers_between(0.01, 1.0)),
    ]


def default_axis_registry() -> AxisRegistry:
    """A new registry holding the built-in axes; extensions register theirs on the instance they are given."""
    return AxisRegistry(builtin_axis_options())
