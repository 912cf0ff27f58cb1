"""X/Y/Z plots through the real AppContext on the default model: grid, checkpoint restore, interrupt, checks,
and the Hires upscaler axis over the model upscalers in the folders."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.upscaler_files import write_compact
from webui.context import build_context
from webui.generation.infotext import parse_infotext, read_infotext
from webui.generation.requests import Txt2ImgRequest
from webui.settings import settings_from_args
from webui.xyz.grid import plan_grid_layout
from webui.xyz.service import XyzOptions, XyzRun, cell_progress
from webui.xyz.plot import AxisSpec, parse_xyz_fields
from webui.xyz.ranges import AxisValueError

BASE = Txt2ImgRequest(prompt="a red circle", width=64, height=64, steps=2, seed=3, sampler_name="Euler")
NATIVE = dataclasses.replace(BASE, width=128, height=128)
TWIN = "toy-twin"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    """One context for the module (building it and loading the model is most of the cost)."""
    data = tmp_path_factory.mktemp("xyz-data")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    shutil.copytree(default_model_folder, checkpoints / TWIN)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context
    context.close()


def run(ctx, x=None, y=None, z=None, base=BASE, **options) -> XyzRun:
    return ctx.xyz.submit(base, x, y, z, XyzOptions(**options)).result(timeout=300)


def test_seed_by_steps_plot_gives_a_labelled_2x2_grid_of_different_cells(ctx):
    # At the model's native size: at 64 px, 3 steps, the default model draws near-blank pictures for any seed.
    plot = run(ctx, AxisSpec("Seed", "1, 2"), AxisSpec("Steps", "2, 3"), base=NATIVE, include_sub_images=True)
    result = plot.result
    assert not plot.interrupted and result.completed_cells == 4
    layout = plan_grid_layout(2, 2, (128, 128), ["Seed: 1", "Seed: 2"], ["Steps: 2", "Steps: 3"])
    assert layout.top_band > 0 and layout.left_band > 0
    assert plot.grid.size == (layout.width, layout.height)
    assert plot.grid.width > 256 and plot.grid.height > 256

    cells = [np.asarray(image, dtype=np.int16) for image in result.cell_images]
    assert all(cell.shape == (128, 128, 3) for cell in cells)
    for first in range(4):
        for second in range(first + 1, 4):
            assert np.abs(cells[first] - cells[second]).mean() > 0.5, (first, second)
    # The grid holds the cells below and right of the legend bands, which are white with dark text.
    grid = np.asarray(plot.grid, dtype=np.int16)
    top, left = layout.top_band, layout.left_band
    assert np.array_equal(grid[top:top + 128, left:left + 128], cells[0])
    assert np.array_equal(grid[top + 128:top + 256, left + 128:left + 256], cells[3])
    band = grid[:top, left:]
    assert band.max() == 255 and band.min() < 128

    # Gallery: the grid, then the four cell images, each with its own infotext.
    assert len(plot.images) == 5 and plot.images[0] is plot.grid
    assert "Seed: 2" in plot.infotexts[2] and "Steps: 2" in plot.infotexts[2]
    assert "Seed: 1" in plot.infotexts[3] and "Steps: 3" in plot.infotexts[3]
    assert len(plot.saved_paths) == 1 and plot.saved_paths[0].parent.parent.name == "txt2img-grids"
    assert Image.open(plot.saved_paths[0]).size == plot.grid.size


def test_saved_grid_infotext_round_trips_to_the_axes(ctx):
    x = AxisSpec("Sampler", values=["Euler", "euler a"])
    y = AxisSpec("Seed", "-1, 5")
    plot = run(ctx, x, y)
    params = parse_infotext(read_infotext(Image.open(plot.saved_paths[0])))
    assert params["Script"] == "X/Y/Z plot" and params["Prompt"] == "a red circle"
    specs = parse_xyz_fields(params)
    assert specs["x"] == AxisSpec("Sampler", "Euler, euler a")
    assert specs["z"] == AxisSpec("Nothing")
    assert specs["y"].label == "Seed"
    fixed = [int(value) for value in specs["y"].values_text.split(",")]
    assert fixed[1] == 5 and fixed[0] != -1  # the random seed was fixed and recorded
    # Pasting the axes back plans exactly the requests that made the grid.
    replanned = ctx.xyz.plan(BASE, specs["x"], specs["y"], specs["z"])
    def made(plan) -> list[tuple[str, int]]:
        return [(cell.request.sampler_name, cell.request.seed) for cell in plan.cells]

    assert made(replanned) == made(plot.result.plan)
    assert made(replanned)[0] == ("Euler", fixed[0]) and made(replanned)[-1] == ("Euler a", 5)


def test_checkpoint_axis_restores_the_checkpoint_the_user_had_loaded(ctx):
    original = ctx.models.select_checkpoint("sd-studio-toy")
    assert any(title.startswith(TWIN) for title in ctx.xyz.axis_choices().checkpoints)
    plot = run(ctx, AxisSpec("Checkpoint name", f"sd-studio-toy, {TWIN}"), include_sub_images=True)
    assert plot.result.completed_cells == 2
    assert "Model: sd-studio-toy," in plot.infotexts[1] and f"Model: {TWIN}," in plot.infotexts[2]
    assert ctx.manager.current.path == original.path
    assert ctx.models.current_checkpoint_title() == original.title


def test_interrupt_mid_plot_returns_the_partial_grid(ctx):
    job = ctx.xyz.submit(BASE.with_changes(steps=6), AxisSpec("Seed", "1-6"), None, None, XyzOptions())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = cell_progress(job.control.snapshot())
        if progress is not None and progress[0] >= 2:
            break
        time.sleep(0.02)
    assert progress is not None and progress[0] >= 2, "the plot never reached its second cell"
    assert ctx.scheduler.interrupt_current()
    plot = job.result(timeout=300)
    assert plot.interrupted
    assert 1 <= plot.result.completed_cells < 6
    assert plot.result.cell_images[-1] is None
    # The grid keeps its full size; missing cells are blank.
    layout = plan_grid_layout(6, 1, (64, 64), [f"Seed: {seed}" for seed in range(1, 7)], [""])
    assert plot.grid.size == (layout.width, layout.height)
    last_cell = np.asarray(plot.grid)[layout.top_band:, -64:]
    assert last_cell.max() == 0
    assert "interrupted" in job.control.snapshot().message


@pytest.mark.parametrize("x, y, base, expected", [
    (AxisSpec("Sampler", "Euler, Eular a"), None, BASE, "unknown value 'Eular a'"),
    (AxisSpec("Checkpoint name", "sd-studio-toy, nowhere"), None, BASE, "unknown value 'nowhere'"),
    (AxisSpec("Steps", "1-5 (+0)"), None, BASE, "increment of 0"),
    (AxisSpec("Steps", "1-"), None, BASE, "is not a whole number or a range"),
    (AxisSpec("Seed", "1-40"), AxisSpec("Steps", "1-40"), BASE, "the limit is 1000"),
    (AxisSpec("Seed", "  "), None, BASE, "has no values"),
    (AxisSpec("Size", "64x64, 4096x64"), None, BASE, "width 4096 is outside"),
    (AxisSpec("LoRA weight", "0.5, 1"), None, BASE.with_changes(prompt="cat <lora:missing:1>"), "missing"),
])
def test_bad_axes_raise_before_anything_is_queued(ctx, x, y, base, expected):
    recorded = len(ctx.scheduler.history(limit=10_000))
    with pytest.raises(AxisValueError) as raised:
        ctx.xyz.submit(base, x, y, None, XyzOptions())
    assert expected in str(raised.value)
    assert ctx.scheduler.pending == 0 and ctx.scheduler.current is None
    assert len(ctx.scheduler.history(limit=10_000)) == recorded  # no job was created


def test_bad_option_is_refused_before_queueing(ctx):
    with pytest.raises(AxisValueError, match="margin"):
        ctx.xyz.submit(BASE, AxisSpec("Seed", "1, 2"), None, None, XyzOptions(margin=-4))
    assert ctx.scheduler.pending == 0


def test_progress_reports_cell_i_of_n_while_running(ctx):
    job = ctx.xyz.submit(BASE, AxisSpec("CFG Scale", "5, 7, 9"), None, None, XyzOptions(save_grid=False))
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            progress = cell_progress(job.control.snapshot())
            if progress is not None:
                seen.add(progress)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    plot = job.result(timeout=300)
    stop.set()
    watcher.join()
    assert plot.saved_paths == []
    assert seen and all(total == 3 for _, total in seen) and max(index for index, _ in seen) == 3
    assert job.control.snapshot().message == "Done: 3 of 3 cells"


def test_compare_epochs_fills_axes_that_plot_every_epoch_at_every_weight(ctx, default_model_folder):
    from diffusers import UNet2DConditionModel

    from tests.engine.test_lora_generation import write_kohya_lora
    from webui.ui.xyz_tab import epoch_comparison_updates

    unet = UNet2DConditionModel.from_pretrained(default_model_folder / "unet")
    ctx.settings.lora_folder.mkdir(parents=True, exist_ok=True)
    for epoch in (1, 2):
        write_kohya_lora(ctx.settings.lora_folder / f"folk-{epoch:06d}.safetensors", unet, seed=epoch)
    updates = epoch_comparison_updates("a dancer", ["folk-000001", "folk-000002"], [0.5, 1.0])
    prompt, x_type, x_values, y_type, y_values = (update["value"] for update in updates)
    assert (prompt, x_type, y_type) == ("a dancer", "LoRA name", "LoRA weight")
    plan = ctx.xyz.plan(BASE.with_changes(prompt=prompt), AxisSpec(x_type, x_values), AxisSpec(y_type, y_values), None)
    assert plan.shape == (2, 2, 1)
    prompts = {(cell.x_index, cell.y_index): cell.request.prompt for cell in plan.cells}
    assert prompts[(0, 0)] == "a dancer <lora:folk-000001:0.5>"
    assert prompts[(1, 1)] == "a dancer <lora:folk-000002:1>"


def test_the_hires_upscaler_axis_offers_and_checks_the_model_upscalers_in_the_folders(ctx):
    folder = ctx.settings.upscaler_folders[0]  # models/ESRGAN
    folder.mkdir(parents=True, exist_ok=True)
    write_compact(folder / "2x-axis-compact.safetensors", scale=2)
    ctx.upscalers.refresh()
    assert "2x-axis-compact" in ctx.xyz.axis_choices().hires_upscalers
    plan = ctx.xyz.plan(BASE, AxisSpec("Hires upscaler", "2X-AXIS-COMPACT, Latent"), None, None)
    assert sorted(cell.request.hr_upscaler for cell in plan.cells) == ["2x-axis-compact", "Latent"]
    assert all(cell.request.enable_hr for cell in plan.cells)
    with pytest.raises(AxisValueError, match="unknown value '4x-nowhere'"):
        ctx.xyz.plan(BASE, AxisSpec("Hires upscaler", "Latent, 4x-nowhere"), None, None)
