"""X/Y/Z plot use case, one queue job: the glue between the generation service and the plot engine.

`XyzService.submit` builds and checks the whole plan on the caller's thread, so a typo in any axis or a cell the
app cannot run (unknown LoRA tag, broken checkpoint, over-limit size) is reported before anything is
queued. The job then generates every cell itself, inline on its worker (a job never submits jobs),
reports `Cell i of N`, honours Interrupt between and inside cells,
draws and saves the grid with an infotext that records the axes, and puts the user's checkpoint back.
When other workers are free, the scheduler splits the job (its `Splitter`): the plan is made once, each
worker runs a run of consecutive cells (`XyzPart`), and the grid is drawn from the gathered cells.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.generation.family_fields import family_uses, unused_field_message
from webui.generation.infotext import create_infotext
from webui.generation.outputs import dated_folder, save_grid
from webui.generation.requests import Txt2ImgRequest
from webui.generation.upscaler_choices import hires_upscaler_names
from webui.generation.samplers import schedule_type_names
from webui.jobs.progress import JobControl, ProgressSnapshot
from webui.generation.request_codec import decode_request, encode_request
from webui.jobs.job import Job
from webui.jobs.spec import JobKind, JobSpec, Splitter
from webui.generation.service import describe_request
from webui.security.identity import User, name_of
from webui.xyz.axes import VAE_SPECIAL_CHOICES, AxisChoices, AxisRegistry, default_axis_registry
from webui.xyz.plot import AxisSpec, PlotCell, PlotLimits, XYZPlan, XYZResult, build_plan, draw_plot, run_cells
from webui.xyz.ranges import AxisValueError

if TYPE_CHECKING:  # only their types are needed here
    from webui.generation.service import GenerationService
    from webui.jobs.worker import Worker
    from webui.models.manager import ModelManager

JOB_KIND = "xyz-plot"
GRIDS_FOLDER = "txt2img-grids"
_CELL_MESSAGE = re.compile(r"Cell (?P<index>\d+) of (?P<total>\d+)")
_DONE_MESSAGE = re.compile(r"Done: (?P<index>\d+) of (?P<total>\d+) cells")


@dataclass(frozen=True)
class XyzOptions:
    """The plot options of A1111's X/Y/Z script, plus whether the finished grid is saved."""

    draw_legend: bool = True
    keep_seeds: bool = False          # keep -1 seeds random per cell instead of fixing one seed for all
    include_sub_images: bool = False  # show every cell image after the grid
    include_sub_grids: bool = False   # show each Z grid on its own after the combined one
    margin: int = 0
    save_grid: bool = True

    def validate(self) -> "XyzOptions":
        """Refuse a margin the grid drawer would refuse later, inside the job."""
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or not 0 <= self.margin <= 500:
            raise AxisValueError(f"grid margin must be a whole number of pixels from 0 to 500, got {self.margin!r}")
        return self


@dataclass
class XyzRun:
    """What the job returns: the engine's result plus what the app showed and saved.

    `images` is the gallery order (combined grid, then the sub grids and cell images that were asked for),
    with one infotext per image in `infotexts`; `infotext` is the grid's, the one saved in its PNG.
    """

    result: XYZResult
    images: list[Image.Image]
    infotexts: list[str]
    infotext: str
    saved_paths: list[Path] = field(default_factory=list)
    warnings: tuple[str, ...] = ()

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted

    @property
    def grid(self) -> Image.Image:
        return self.result.combined


@dataclass(frozen=True)
class XyzJob:
    """A plot as a job: the base request, the three axes as the user set them, options and limits."""

    base_request: Txt2ImgRequest
    x: AxisSpec | None
    y: AxisSpec | None
    z: AxisSpec | None
    options: XyzOptions = XyzOptions()
    limits: PlotLimits = PlotLimits()


@dataclass(frozen=True)
class XyzPart:
    """Some cells of a plot, for one of the workers a plot is split over: the plan is made once when the
    job is split, so every part draws the same seeds and the grid is the one-worker grid."""

    plan: XYZPlan
    cells: tuple[int, ...]  # indices into plan.cells


@dataclass
class XyzCells:
    """What a run of some or all cells of a plot made: images (x/y/z order, None: not run) and infotexts
    by the same index."""

    plan: XYZPlan
    images: list[Image.Image | None]
    infotexts: dict[int, str]
    warnings: list[str]
    interrupted: bool


@dataclass
class XyzService:
    """Plans, checks and queues plots; its job kind runs the cells inline on the worker that took it."""

    generation: GenerationService
    registry: AxisRegistry = field(default_factory=default_axis_registry)  # the axis table (extensions add rows)

    def axis_choices(self) -> AxisChoices:
        """What the axes may name right now; read on every call because models and styles change at runtime."""
        generation = self.generation
        return AxisChoices(
            samplers=tuple(generation.sampler_names()),  # extensions' samplers included
            schedule_types=tuple(schedule_type_names()),
            checkpoints=tuple(generation.models.checkpoint_titles()),
            # The VAE axis always offers Automatic and None itself; only the files are listed here.
            vaes=tuple(name for name in generation.models.vae_names() if name not in VAE_SPECIAL_CHOICES),
            loras=tuple(generation.loras.files()),
            styles=tuple(generation.styles.names()),
            hires_upscalers=tuple(hires_upscaler_names(generation.upscalers)),  # its models too
        )

    def plan(self, base_request: Txt2ImgRequest, x: AxisSpec | None, y: AxisSpec | None, z: AxisSpec | None,
             options: XyzOptions = XyzOptions(), limits: PlotLimits = PlotLimits()) -> XYZPlan:
        """Build the plan and run the app's own checks on every cell; raises ValueError naming what is wrong.

        The engine checks values and request fields; the app adds what only it knows: the size and step
        limits it runs with, styles, checkpoint files, LoRA tags in the prompt and VAE files.
        """
        options.validate()
        base_request = self.generation.pin_checkpoint(self.generation.validate_txt2img(base_request))
        plan = build_plan(base_request, x, y, z, self.registry, self.axis_choices(), limits, options.keep_seeds)
        _check_cells_with_app(self.generation, plan)
        return plan

    def submit(self, base_request: Txt2ImgRequest, x: AxisSpec | None, y: AxisSpec | None, z: AxisSpec | None,
               options: XyzOptions = XyzOptions(), *, limits: PlotLimits = PlotLimits(),
               owner: User | None = None, webhook_url: str | None = None) -> Job:
        """Validate the whole plot now (errors raise here, nothing is queued), then queue ONE job running it,
        owned by `owner` (the user asking; None for scripts run by the machine's owner), whose outputs
        folder its cells and grid are saved in.

        The job's result is an `XyzRun`; its progress message reads `Cell i of N`.
        """
        plan = self.plan(self.generation.owned_by(base_request, owner), x, y, z, options, limits)
        job = XyzJob(plan.base_request, x, y, z, options, limits)
        return self.generation.scheduler.submit(JobSpec(JOB_KIND, job, name_of(owner)), webhook_url)

    def job_kinds(self) -> list[JobKind]:
        return [JobKind(JOB_KIND, run=self._run, encode=_encode_job, decode=_decode_job,
                        model_key=lambda job: self.generation.models.model_key(job.base_request.checkpoint),
                        summary=lambda job: f"X/Y/Z plot: {describe_request(job.base_request)}",
                        result_record=lambda run: {"images": [str(path) for path in run.saved_paths],
                                                   "infotexts": [run.infotext], "interrupted": run.interrupted},
                        splitter=Splitter(self._split, self._gather, combined_cell_message))]

    def _run(self, worker: Worker, job: XyzJob | XyzPart, control: JobControl) -> XyzRun | XyzCells:
        if isinstance(job, XyzPart):  # some cells of a plot split over several workers
            return run_xyz_cells(self.generation, worker.resources, job.plan, job.cells, control)
        plan = self.plan(job.base_request, job.x, job.y, job.z, job.options, job.limits)
        return run_xyz(self.generation, worker.resources, plan, job.options, control)

    def _split(self, job: XyzJob, parts: int) -> tuple[XyzJob | XyzPart, ...]:
        plan = self.plan(job.base_request, job.x, job.y, job.z, job.options, job.limits)
        return split_plot(plan, parts) if plan.cell_count > 1 else (job,)

    def _gather(self, job: XyzJob, parts: list[XyzCells]) -> XyzRun:
        return finish_xyz(self.generation, job.options, gather_cells(parts[0].plan, parts))


def _encode_job(job: XyzJob) -> dict[str, Any]:
    def axis(spec: AxisSpec | None) -> dict[str, Any] | None:
        if spec is None:
            return None
        return {"label": spec.label, "values_text": spec.values_text,
                "values": list(spec.values) if spec.values is not None else None}

    return {"base_request": encode_request(job.base_request, Path("/nonexistent")), "x": axis(job.x),
            "y": axis(job.y), "z": axis(job.z), "options": dataclasses.asdict(job.options),
            "limits": dataclasses.asdict(job.limits)}


def _decode_job(data: dict[str, Any]) -> XyzJob:
    def axis(values: dict[str, Any] | None) -> AxisSpec | None:
        if values is None:
            return None
        listed = values.get("values")
        return AxisSpec(values["label"], values.get("values_text", ""), tuple(listed) if listed is not None else None)

    return XyzJob(decode_request(data["base_request"], Path("/nonexistent")), axis(data["x"]), axis(data["y"]),
                  axis(data["z"]), XyzOptions(**data["options"]), PlotLimits(**data["limits"]))


def run_xyz(generation: GenerationService, manager: ModelManager, plan: XYZPlan, options: XyzOptions,
            control: JobControl | None = None) -> XyzRun:
    """Generate every cell of a checked plan on the calling thread (a worker's job) with that worker's
    model manager, draw and save the grid."""
    return finish_xyz(generation, options, run_xyz_cells(generation, manager, plan, None, control), control)


def run_xyz_cells(generation: GenerationService, manager: ModelManager, plan: XYZPlan,
                  cells: tuple[int, ...] | None, control: JobControl | None = None) -> XyzCells:
    """Generate the plan's cells numbered in `cells` (all when None) on the calling thread with `manager`.

    The checkpoint loaded before the plot is loaded again afterwards when a cell changed it, also when
    the plot was interrupted or failed.
    """
    chosen = tuple(range(plan.cell_count)) if cells is None else cells
    changes_checkpoint = any(plan.cells[number].request.checkpoint for number in chosen)
    if changes_checkpoint and manager.current is None:
        manager.select()  # load the user's checkpoint first, so there is one to come back to
    users_checkpoint = manager.current
    cell_infotexts: dict[int, str] = {}
    warnings: list[str] = []
    running_cell = chosen[0] if chosen else 0  # plan index of the cell being generated, set by on_cell

    def on_cell(done: int, total: int) -> None:
        nonlocal running_cell
        running_cell = chosen[done]
        if control is not None:
            control.set_message(cell_message(done + 1, total))

    def generate(request: Txt2ImgRequest) -> list[Image.Image]:
        # One image file per cell as txt2img saves it; no per-cell grid on top of the plot's grid.
        generated = generation.generate_inline(manager, dataclasses.replace(request, save_grid=False), control)
        cell = plan.cells[running_cell]
        if generated.infotexts:
            cell_infotexts[plan.grid_index(cell.x_index, cell.y_index, cell.z_index)] = generated.infotexts[0]
        warnings.extend(warning for warning in generated.warnings if warning not in warnings)
        return generated.images

    try:
        images, interrupted = run_cells(plan, generate, chosen, on_cell=on_cell,
                                        should_stop=(lambda: control.interrupted) if control is not None else None)
    finally:
        if users_checkpoint is not None:
            current = manager.current
            if current is None or current.path != users_checkpoint.path:
                if control is not None:
                    control.set_message(f"Loading {users_checkpoint.name} again")
                manager.select(users_checkpoint.title)
    if control is not None and cells is not None:
        done = sum(image is not None for image in images)
        control.set_message(done_message(done, len(chosen), interrupted))
    return XyzCells(plan, images, cell_infotexts, warnings, interrupted)


def finish_xyz(generation: GenerationService, options: XyzOptions, cells: XyzCells,
               control: JobControl | None = None) -> XyzRun:
    """Draw and save the plot's grid from its cells' images (from one worker, or gathered from several)."""
    plan = cells.plan
    result = draw_plot(plan, cells.images, cells.interrupted, draw_legend=options.draw_legend,
                       include_sub_grids=options.include_sub_grids, margin=options.margin)
    cell_infotexts = cells.infotexts
    grid_text = grid_infotext(plan, result, cell_infotexts)
    images, infotexts = list(result.images), [grid_text] * len(result.images)
    if options.include_sub_images:
        for index, image in enumerate(result.cell_images):
            if image is not None:
                images.append(image)
                infotexts.append(cell_infotexts.get(index, grid_text))
    saved: list[Path] = []
    if options.save_grid and result.completed_cells:
        folder = dated_folder(generation.outputs_root_of(plan.base_request), GRIDS_FOLDER)
        seed = int(getattr(_first_done_cell(plan, result).request, "seed", 0))
        saved = [save_grid([image], folder, seed, grid_text) for image in result.images]
    if control is not None:
        control.set_message(done_message(result.completed_cells, plan.cell_count, result.interrupted))
    return XyzRun(result, images, infotexts, grid_text, saved, tuple(cells.warnings))


def done_message(done: int, total: int, interrupted: bool) -> str:
    return f"Done: {done} of {total} cells" + (" (interrupted)" if interrupted else "")


def split_plot(plan: XYZPlan, parts: int) -> tuple[XyzPart, ...]:
    """The plot's cells in `parts` runs of consecutive cells (the plan's order changes the costliest axis,
    such as the checkpoint, least often, so each part switches models as little as one worker would)."""
    parts = min(parts, plan.cell_count)
    per_part, extra = divmod(plan.cell_count, parts)
    chunks, start = [], 0
    for index in range(parts):
        stop = start + per_part + (1 if index < extra else 0)
        chunks.append(XyzPart(plan, tuple(range(start, stop))))
        start = stop
    return tuple(chunks)


def gather_cells(plan: XYZPlan, parts: list[XyzCells]) -> XyzCells:
    """The parts' cells as one run's (every cell was run by one part)."""
    images = [next((part.images[index] for part in parts if part.images[index] is not None), None)
              for index in range(plan.cell_count)]
    infotexts = {index: text for part in parts for index, text in part.infotexts.items()}
    warnings = list(dict.fromkeys(warning for part in parts for warning in part.warnings))
    return XyzCells(plan, images, infotexts, warnings, any(part.interrupted for part in parts))


def combined_cell_message(messages: list[str]) -> str:
    """The whole plot's `Cell i of N` from its parts' messages (`Cell i of n` while running, `Done: ...` at
    the end), and `Done: ...` once every part is done."""
    done = total = finished = 0
    for message in messages:
        match = _CELL_MESSAGE.fullmatch(message) or _DONE_MESSAGE.match(message)
        if match:
            finished += match.re is _DONE_MESSAGE
            done += int(match["index"]) - (1 if match.re is _CELL_MESSAGE else 0)
            total += int(match["total"])
    if finished == len(messages) and total:
        return done_message(done, total, any("interrupted" in message for message in messages))
    return cell_message(min(done + 1, total), total) if total else ""


def grid_infotext(plan: XYZPlan, result: XYZResult, cell_infotexts: dict[int, str]) -> str:
    """The first cell's infotext with the axes appended (A1111's layout), so PNG Info can restore the plot.

    Without any finished cell, the base request's prompts carry the axes alone.
    """
    axes = create_infotext("", "", plan.infotext_fields())  # just the rendered `Key: value` pairs
    done = [index for index, image in enumerate(result.cell_images) if image is not None and index in cell_infotexts]
    if not done:
        return create_infotext(plan.base_request.prompt, plan.base_request.negative_prompt, plan.infotext_fields())
    return f"{cell_infotexts[done[0]]}, {axes}"


def _first_done_cell(plan: XYZPlan, result: XYZResult) -> PlotCell:
    for cell in plan.cells:
        if result.cell_images[plan.grid_index(cell.x_index, cell.y_index, cell.z_index)] is not None:
            return cell
    return plan.cells[0]


def cell_message(index: int, total: int) -> str:
    """The progress message of the cell being generated (1-based)."""
    return f"Cell {index} of {total}"


def cell_progress(snapshot: ProgressSnapshot) -> tuple[int, int] | None:
    """(cell, cells) from a plot job's progress, or None before the first cell started."""
    match = _CELL_MESSAGE.fullmatch(snapshot.message)
    return (int(match["index"]), int(match["total"])) if match else None


def overall_fraction(snapshot: ProgressSnapshot) -> float:
    """How much of the whole plot is done: finished cells plus the running cell's step fraction."""
    progress = cell_progress(snapshot)
    if progress is None:
        return 1.0 if snapshot.state in ("done", "interrupted") else 0.0
    index, total = progress
    return min(1.0, (index - 1 + snapshot.fraction) / max(total, 1))


def _check_cells_with_app(generation: GenerationService, plan: XYZPlan) -> None:
    """Run the app's checks on every cell, naming the cell that fails.

    Limits are checked per cell; styles, checkpoint, LoRA tags, VAE (which read folders) and what the
    checkpoint's family allows (image sides, samplers) once per distinct combination, so a 1000-cell seed plot
    does not rescan the LoRA folder 1000 times.
    """
    seen: set[Hashable] = set()
    for cell in plan.cells:
        try:
            request: Txt2ImgRequest = cell.request.validate(generation.limits, tuple(generation.hooks.samplers()),
                                                            generation.model_upscalers_for(cell.request))
            key = (request.checkpoint, request.vae, request.prompt, request.negative_prompt, request.styles,
                   request.width, request.height, request.sampler_name, request.scheduler)
            if key in seen:
                continue
            seen.add(key)
            generation.validate_txt2img(request)
            generation.lora_uses(request)
            generation.models.resolve_vae(request.vae)
            _check_axes_apply(generation, plan, request.checkpoint)
        except (ValueError, LookupError) as error:
            message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
            raise AxisValueError(f"cell {_describe(plan, cell)}: {message}") from error


def _check_axes_apply(generation: GenerationService, plan: XYZPlan, checkpoint: str | None) -> None:
    """Refuse an axis that varies a setting the cell's checkpoint family lacks (Shift on an SD1 model):
    every cell would look the same and the plot would mislead."""
    family = generation.models.family_of(checkpoint)
    if family is None:
        return
    for axis in (plan.x, plan.y, plan.z):
        field_name = axis.option.request_field
        if not axis.is_nothing and field_name and not family_uses(family, field_name):
            shown = checkpoint or generation.models.current_checkpoint_title() or "the current checkpoint"
            raise AxisValueError(f"{axis.name} axis: {unused_field_message(family, field_name, shown)}")


def _describe(plan: XYZPlan, cell: PlotCell) -> str:
    legends = [
        axis.legends[index]
        for axis, index in zip((plan.x, plan.y, plan.z), (cell.x_index, cell.y_index, cell.z_index))
        if not axis.is_nothing
    ]
    return ", ".join(legends) if legends else "the only cell"
