"""Plan and run an X/Y/Z plot: every cell's request is built and checked before the first image.

`build_plan` reads the three axes, checks every value (and every cell request, through the request's own
`validate()`), fixes random seeds and orders the cells so the most expensive axis changes least often.
`run_plan` then only calls the caller's `generate` for each cell and draws the grids, so a typo in the
last value of the Z axis is reported at once instead of after an hour of generation.

Cell order: the axes are sorted by `AxisOption.cost`, highest first = outermost loop; equal costs keep
A1111's default order Z (outer), Y, X (inner). The same order is used to apply the axis values to a
cell's request (outer axis first), so a LoRA name axis has put its tag in the prompt before a LoRA
weight axis looks for it.

Infotext: the grid's parameters record the axes as A1111 does (`Script: X/Y/Z plot`, `X Type`,
`X Values`, ...) with the values as the user typed them, plus `Fixed X Values` when random seeds (-1)
were fixed; `parse_xyz_fields` turns these back into axis specs, preferring the fixed seeds so a pasted
plot reproduces the same images.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from PIL import Image

from webui.generation.outputs import image_grid
from webui.xyz.axes import NOTHING_LABEL, AxisChoices, AxisOption, AxisRegistry, resolve_axis_values
from webui.xyz.grid import combine_side_by_side, draw_grid, legend_font_size
from webui.xyz.ranges import AxisValueError, join_values

SCRIPT_TITLE = "X/Y/Z plot"
AXIS_NAMES = ("X", "Y", "Z")
# A1111's default order of the nested loops, outermost first, used between axes of equal cost.
DEFAULT_LOOP_ORDER = ("Z", "Y", "X")
SEED_AXIS_LABELS = ("Seed", "Var. seed")
# A1111 draws random seeds below 2**32 - 1 (fix_seed / fix_axis_seeds).
RANDOM_SEED_BOUND = 4294967294


@dataclass(frozen=True)
class AxisSpec:
    """One axis as the user set it: a label, and values as text or (choice axes, multiselect) as a list."""

    label: str = NOTHING_LABEL
    values_text: str = ""
    values: Sequence[str] | None = None

    @property
    def entered_text(self) -> str:
        """The values as text: what was typed, or the multiselect list as CSV (what the infotext records)."""
        return join_values(self.values) if self.values is not None else self.values_text


@dataclass(frozen=True)
class PlotLimits:
    """Caps that keep one plot from exhausting memory: cells, and pixels of the finished grid.

    200 megapixels is A1111's default "Maximum grid size"."""

    max_cells: int = 1000
    max_grid_pixels: int = 200_000_000


@dataclass(frozen=True)
class ResolvedAxis:
    """An axis after validation: its option, the per-cell values and their legend texts."""

    name: str                       # "X", "Y" or "Z"
    option: AxisOption
    values: tuple[Any, ...]
    legends: tuple[str, ...]        # "Label: value" per value ("" for Nothing)
    values_text: str                # as entered
    fixed_values_text: str | None   # the values with random seeds fixed, when any -1 was replaced

    @property
    def label(self) -> str:
        return self.option.label

    @property
    def is_nothing(self) -> bool:
        return self.option.is_nothing

    def __len__(self) -> int:
        return len(self.values)


class PlotCell(NamedTuple):
    """One image of the plot: its position on the three axes and the request that makes it."""

    x_index: int
    y_index: int
    z_index: int
    request: Any


@dataclass(frozen=True)
class XYZPlan:
    """A validated plot: the resolved axes and every cell, in execution order."""

    base_request: Any
    x: ResolvedAxis
    y: ResolvedAxis
    z: ResolvedAxis
    cells: tuple[PlotCell, ...]
    loop_order: tuple[str, str, str]   # axis names, outermost loop first
    keep_seeds: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x), len(self.y), len(self.z)

    @property
    def cell_count(self) -> int:
        return len(self.cells)

    def grid_index(self, x_index: int, y_index: int, z_index: int) -> int:
        """Position of a cell in x/y/z order (x fastest), the order of `XYZResult.cell_images`."""
        x_count, y_count, _ = self.shape
        return x_index + y_index * x_count + z_index * x_count * y_count

    def infotext_fields(self) -> dict[str, str]:
        """The grid's extra infotext parameters, A1111's keys; Nothing axes are left out."""
        fields = {"Script": SCRIPT_TITLE}
        for axis in (self.x, self.y, self.z):
            if axis.is_nothing:
                continue
            fields[f"{axis.name} Type"] = axis.label
            fields[f"{axis.name} Values"] = axis.values_text
            if axis.fixed_values_text is not None:
                fields[f"Fixed {axis.name} Values"] = axis.fixed_values_text
        return fields


@dataclass(frozen=True)
class XYZResult:
    """What a run produced; `cell_images` is in x/y/z order with None for cells that did not run."""

    plan: XYZPlan
    grids: tuple[Image.Image, ...]          # one per Z value, without the Z title
    combined: Image.Image                   # all Z grids side by side under their titles (or the only grid)
    cell_images: tuple[Image.Image | None, ...]
    interrupted: bool
    include_sub_grids: bool = False

    @property
    def images(self) -> list[Image.Image]:
        """The images to show and save: the combined grid, then the sub grids when asked for and several."""
        extra = list(self.grids) if self.include_sub_grids and len(self.grids) > 1 else []
        return [self.combined, *extra]

    @property
    def completed_cells(self) -> int:
        return sum(image is not None for image in self.cell_images)

    def infotext_fields(self) -> dict[str, str]:
        return self.plan.infotext_fields()


# ---------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------


def build_plan(
    base_request: Any,
    x: AxisSpec | None,
    y: AxisSpec | None,
    z: AxisSpec | None,
    registry: AxisRegistry,
    choices: AxisChoices,
    limits: PlotLimits = PlotLimits(),
    keep_seeds: bool = False,
    *,
    rng: random.Random | None = None,
) -> XYZPlan:
    """Validate all axes and cells and return the plan; raises AxisValueError naming what is wrong.

    Unless `keep_seeds`, a seed or variation seed of -1 (in the request or as a Seed / Var. seed axis
    value) is replaced by one random seed, so cells differ only by their axis values. `rng` makes that
    choice reproducible in tests.
    """
    random_source = rng if rng is not None else random.Random()
    specs = dict(zip(AXIS_NAMES, (x or AxisSpec(), y or AxisSpec(), z or AxisSpec())))
    options = {name: registry.get(spec.label) for name, spec in specs.items()}
    _refuse_repeated_axes(options)

    axes = {
        name: _resolve_axis(name, specs[name], options[name], choices, limits.max_cells)
        for name in AXIS_NAMES
    }
    cell_count = len(axes["X"]) * len(axes["Y"]) * len(axes["Z"])
    if cell_count > limits.max_cells:
        raise AxisValueError(
            f"the plot would have {len(axes['X'])} x {len(axes['Y'])} x {len(axes['Z'])} = {cell_count} cells; "
            f"the limit is {limits.max_cells}"
        )

    if not keep_seeds:
        base_request = _fix_request_seeds(base_request, random_source)
        axes = {name: _fix_axis_seeds(axis, random_source) for name, axis in axes.items()}

    loop_order = _loop_order(axes)
    cells = _build_cells(base_request, axes, loop_order, choices.hires_upscalers)
    _check_grid_pixels(cells, limits)
    return XYZPlan(
        base_request=base_request,
        x=axes["X"],
        y=axes["Y"],
        z=axes["Z"],
        cells=tuple(cells),
        loop_order=loop_order,
        keep_seeds=keep_seeds,
    )


def _refuse_repeated_axes(options: dict[str, AxisOption]) -> None:
    seen: dict[str, str] = {}
    for name, option in options.items():
        if option.is_nothing:
            continue
        if option.label in seen:
            raise AxisValueError(
                f"{option.label!r} is used on both the {seen[option.label]} and the {name} axis; use it once"
            )
        seen[option.label] = name


def _resolve_axis(name: str, spec: AxisSpec, option: AxisOption, choices: AxisChoices, max_values: int) -> ResolvedAxis:
    if option.is_nothing:
        return ResolvedAxis(name, option, (None,), ("",), "", None)
    axis_title = f"{name} axis ({option.label})"
    raw_values: str | Sequence[str] = list(spec.values) if spec.values is not None else spec.values_text
    values = resolve_axis_values(option, raw_values, axis_title, choices, max_values=max_values)
    if not values:
        raise AxisValueError(f"{axis_title} has no values; enter some or set the axis to {NOTHING_LABEL}")
    return ResolvedAxis(
        name=name,
        option=option,
        values=tuple(values),
        legends=tuple(_legend(option, value) for value in values),
        values_text=spec.entered_text.strip(),
        fixed_values_text=None,
    )


def _legend(option: AxisOption, value: Any) -> str:
    return f"{option.label}: {option.legend_text(value)}"


def _random_seed(random_source: random.Random) -> int:
    return random_source.randrange(RANDOM_SEED_BOUND)


def _fix_request_seeds(request: Any, random_source: random.Random) -> Any:
    """Seed and variation seed -1 -> one fixed random value each, shared by every cell (A1111 fix_seed)."""
    changes = {
        name: _random_seed(random_source)
        for name in ("seed", "subseed")
        if getattr(request, name, None) == -1
    }
    return dataclasses.replace(request, **changes) if changes else request


def _fix_axis_seeds(axis: ResolvedAxis, random_source: random.Random) -> ResolvedAxis:
    """Each -1 on a Seed / Var. seed axis becomes its own random seed, recorded as `Fixed X Values`."""
    if axis.label not in SEED_AXIS_LABELS or -1 not in axis.values:
        return axis
    values = tuple(_random_seed(random_source) if value == -1 else value for value in axis.values)
    return dataclasses.replace(
        axis,
        values=values,
        legends=tuple(_legend(axis.option, value) for value in values),
        fixed_values_text=", ".join(str(value) for value in values),
    )


def _loop_order(axes: dict[str, ResolvedAxis]) -> tuple[str, str, str]:
    """Axis names outermost first: highest cost first, A1111's Z, Y, X order between equal costs."""
    ordered = sorted(DEFAULT_LOOP_ORDER, key=lambda name: -axes[name].option.cost)
    return ordered[0], ordered[1], ordered[2]


def _describe_cell(axes: dict[str, ResolvedAxis], indices: dict[str, int]) -> str:
    parts = [axes[name].legends[indices[name]] for name in AXIS_NAMES if not axes[name].is_nothing]
    return ", ".join(parts) if parts else "the only cell"


def _build_cells(base_request: Any, axes: dict[str, ResolvedAxis], loop_order: tuple[str, str, str],
                 hires_upscalers: tuple[str, ...] = ()) -> list[PlotCell]:
    outer, middle, inner = (axes[name] for name in loop_order)
    cells: list[PlotCell] = []
    for outer_index in range(len(outer)):
        for middle_index in range(len(middle)):
            for inner_index in range(len(inner)):
                indices = dict(zip(loop_order, (outer_index, middle_index, inner_index)))
                request = base_request
                for name in loop_order:
                    request = _apply_axis(axes[name], request, indices[name])
                _validate_cell(request, axes, indices, hires_upscalers)
                cells.append(PlotCell(indices["X"], indices["Y"], indices["Z"], request))
    return cells


def _apply_axis(axis: ResolvedAxis, request: Any, index: int) -> Any:
    try:
        return axis.option.apply(request, axis.values[index])
    except AxisValueError as error:
        raise AxisValueError(f"{axis.name} axis: {error}") from error
    except (ValueError, TypeError) as error:
        raise AxisValueError(f"{axis.name} axis ({axis.label}) value {axis.legends[index]!r}: {error}") from error


def _validate_cell(request: Any, axes: dict[str, ResolvedAxis], indices: dict[str, int],
                   hires_upscalers: tuple[str, ...] = ()) -> None:
    """Run the request's own checks (sizes, step counts, sampler/schedule pairs) on the cell request;
    `hires_upscalers` (the app's list, model upscalers included) are names hires fix may use."""
    validate = getattr(request, "validate", None)
    if not callable(validate):
        return
    try:
        if hires_upscalers:
            validate(model_upscalers=hires_upscalers)
        else:
            validate()
    except ValueError as error:
        raise AxisValueError(f"cell {_describe_cell(axes, indices)}: {error}") from error


def estimated_output_size(request: Any) -> tuple[int, int]:
    """The size of the image a request makes, counting the hires-fix upscale."""
    width, height = int(request.width), int(request.height)
    if not getattr(request, "enable_hr", False):
        return width, height
    resize_x, resize_y = int(getattr(request, "hr_resize_x", 0)), int(getattr(request, "hr_resize_y", 0))
    if resize_x and resize_y:
        return resize_x, resize_y
    if resize_x:
        return resize_x, round(height * resize_x / width)
    if resize_y:
        return round(width * resize_y / height), resize_y
    scale = float(getattr(request, "hr_scale", 1.0))
    return int(width * scale), int(height * scale)


def _check_grid_pixels(cells: Sequence[PlotCell], limits: PlotLimits) -> None:
    total = 0
    for cell in cells:
        width, height = estimated_output_size(cell.request)
        total += width * height * int(getattr(cell.request, "image_count", 1))
    if total > limits.max_grid_pixels:
        raise AxisValueError(
            f"the grid would have about {total / 1e6:.1f} megapixels ({len(cells)} cells); "
            f"the limit is {limits.max_grid_pixels / 1e6:.1f} megapixels"
        )


# ---------------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------------


def run_plan(
    plan: XYZPlan,
    generate: Callable[[Any], list[Image.Image]],
    *,
    on_cell: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    draw_legend: bool = True,
    include_sub_grids: bool = False,
    margin: int = 0,
) -> XYZResult:
    """Generate every cell in plan order and draw the grids (`run_cells`, then `draw_plot`).

    `on_cell(done, total)` is called before each cell (`done` = cells finished so far). When
    `should_stop()` is true before a cell, or after a cell that produced no image, the run stops and the
    grids show the missing cells blank, with `interrupted=True`. A cell whose request makes several
    images shows them as one image grid, as A1111 does. Errors from `generate` propagate.
    """
    cell_images, interrupted = run_cells(plan, generate, on_cell=on_cell, should_stop=should_stop)
    return draw_plot(plan, cell_images, interrupted, draw_legend=draw_legend, include_sub_grids=include_sub_grids,
                     margin=margin)


def run_cells(
    plan: XYZPlan,
    generate: Callable[[Any], list[Image.Image]],
    cells: Sequence[int] | None = None,
    *,
    on_cell: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[Image.Image | None], bool]:
    """Generate the plan cells numbered in `cells` (all by default; a part of a plot split over several
    workers runs some), in that order: (cell images in x/y/z order with None for cells not run, interrupted).
    `on_cell(done, total)` counts within `cells`; stopping is as `run_plan` describes."""
    chosen = list(range(plan.cell_count)) if cells is None else list(cells)
    cell_images: list[Image.Image | None] = [None] * plan.cell_count
    interrupted = False
    for done, number in enumerate(chosen):
        cell = plan.cells[number]
        if should_stop is not None and should_stop():
            interrupted = True
            break
        if on_cell is not None:
            on_cell(done, len(chosen))
        produced = list(generate(cell.request))
        if produced:
            image = produced[0] if len(produced) == 1 else image_grid(produced)
            cell_images[plan.grid_index(cell.x_index, cell.y_index, cell.z_index)] = image
        elif should_stop is not None and should_stop():
            interrupted = True
            break
    return cell_images, interrupted


def draw_plot(plan: XYZPlan, cell_images: Sequence[Image.Image | None], interrupted: bool, *,
              draw_legend: bool = True, include_sub_grids: bool = False, margin: int = 0) -> XYZResult:
    """The grids of a plot from its cell images (x/y/z order, None for cells that did not run)."""
    cell_size = _cell_size(plan, cell_images)
    x_count, y_count, z_count = plan.shape
    per_grid = x_count * y_count
    grids = tuple(
        draw_grid(
            list(cell_images[z_index * per_grid:(z_index + 1) * per_grid]),
            x_count,
            y_count,
            cell_size,
            plan.x.legends,
            plan.y.legends,
            margin=margin,
            draw_legend=draw_legend,
        )
        for z_index in range(z_count)
    )
    if z_count == 1:
        combined = grids[0]
    else:
        combined = combine_side_by_side(
            grids, plan.z.legends, font_size=legend_font_size(*cell_size), margin=margin, draw_titles=draw_legend
        )
    return XYZResult(
        plan=plan,
        grids=grids,
        combined=combined,
        cell_images=tuple(cell_images),
        interrupted=interrupted,
        include_sub_grids=include_sub_grids,
    )


def _cell_size(plan: XYZPlan, cell_images: Sequence[Image.Image | None]) -> tuple[int, int]:
    """The largest produced image; the largest expected one when nothing was produced."""
    sizes = [image.size for image in cell_images if image is not None]
    if not sizes:
        sizes = [estimated_output_size(cell.request) for cell in plan.cells]
    return max(width for width, _ in sizes), max(height for _, height in sizes)


# ---------------------------------------------------------------------------------------------------------
# Infotext paste
# ---------------------------------------------------------------------------------------------------------


def parse_xyz_fields(params: dict[str, str]) -> dict[str, AxisSpec]:
    """Axis specs {"x", "y", "z"} from parsed infotext parameters; {} when they hold no X/Y/Z plot.

    Accepts what `webui.generation.infotext.parse_infotext` returns, including its `Key-1`/`Key-2` split
    of a `WxH` value (a one-value Size axis). Fixed seeds win over the typed values (see module doc).
    """
    if not any(f"{name} Type" in params for name in AXIS_NAMES):
        return {}
    specs: dict[str, AxisSpec] = {}
    for name in AXIS_NAMES:
        label = str(params.get(f"{name} Type", "")).strip() or NOTHING_LABEL
        if label == NOTHING_LABEL:
            specs[name.lower()] = AxisSpec(NOTHING_LABEL)
            continue
        text = _field_text(params, f"Fixed {name} Values") or _field_text(params, f"{name} Values")
        specs[name.lower()] = AxisSpec(label, text)
    return specs


def _field_text(params: dict[str, str], key: str) -> str:
    if key in params:
        return str(params[key])
    first, second = params.get(f"{key}-1"), params.get(f"{key}-2")
    if first is not None and second is not None:
        return f"{first}x{second}"
    return ""
