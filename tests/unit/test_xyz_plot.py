"""X/Y/Z plans and runs: validation before any image, cell order, seeds, grids, interrupts, infotext."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from webui.generation.infotext import create_infotext, parse_infotext
from webui.generation.requests import Txt2ImgRequest
from webui.xyz.axes import AxisChoices, default_axis_registry
from webui.xyz.grid import plan_grid_layout
from webui.xyz.plot import AxisSpec, PlotLimits, build_plan, parse_xyz_fields, run_plan
from webui.xyz.ranges import AxisValueError

CHOICES = AxisChoices(
    checkpoints=("alpha [0123456789]", "beta [abcdef0123]"),
    vaes=("clear.safetensors",),
    loras=("FolkCostume", "Sketchy"),
)
BASE = Txt2ImgRequest(prompt="a cat", width=64, height=64, seed=1234)


def plan_for(x=None, y=None, z=None, base=BASE, **options):
    return build_plan(base, x, y, z, default_axis_registry(), CHOICES, rng=random.Random(7), **options)


def colour_of(request: Txt2ImgRequest) -> tuple[int, int, int]:
    """Encode the values the tests vary into a colour, so each cell shows which request made it."""
    return (request.steps, int(request.cfg_scale * 10), request.seed % 256)


def render(request: Txt2ImgRequest) -> list[Image.Image]:
    return [Image.new("RGB", (request.width, request.height), colour_of(request))]


def test_cells_cover_every_combination_in_default_order() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"), AxisSpec("CFG Scale", "5, 7"), AxisSpec("Seed", "1, 2"))
    assert plan.shape == (2, 2, 2)
    assert plan.loop_order == ("Z", "Y", "X")
    positions = [(cell.x_index, cell.y_index, cell.z_index) for cell in plan.cells]
    assert positions == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    for cell in plan.cells:
        assert cell.request.steps == (10, 20)[cell.x_index]
        assert cell.request.cfg_scale == (5.0, 7.0)[cell.y_index]
        assert cell.request.seed == (1, 2)[cell.z_index]


def test_checkpoint_axis_is_the_outer_loop_wherever_it_is() -> None:
    plan = plan_for(AxisSpec("Checkpoint name", values=["alpha", "beta"]), AxisSpec("Steps", "10, 20, 30"))
    assert plan.loop_order[0] == "X"
    checkpoints = [cell.request.checkpoint for cell in plan.cells]
    assert checkpoints == ["alpha [0123456789]"] * 3 + ["beta [abcdef0123]"] * 3  # one switch only


def test_costlier_axes_go_outer_in_cost_order() -> None:
    plan = plan_for(AxisSpec("LoRA name", "Sketchy"), AxisSpec("VAE", "clear.safetensors, None"),
                    AxisSpec("Checkpoint name", "alpha, beta"))
    assert plan.loop_order == ("Z", "Y", "X")
    plan = plan_for(
        AxisSpec("Checkpoint name", "alpha, beta"), AxisSpec("Steps", "1, 2"), AxisSpec("VAE", "None, Automatic")
    )
    assert plan.loop_order == ("X", "Z", "Y")


def test_lora_name_is_applied_before_lora_weight_looks_for_the_tag() -> None:
    plan = plan_for(AxisSpec("LoRA weight", "0.5, 1"), AxisSpec("LoRA name", "FolkCostume, Sketchy"))
    prompts = {(cell.x_index, cell.y_index): cell.request.prompt for cell in plan.cells}
    assert prompts[(0, 0)] == "a cat <lora:FolkCostume:0.5>"
    assert prompts[(1, 1)] == "a cat <lora:Sketchy:1>"


def test_random_seed_is_fixed_once_for_the_whole_plot() -> None:
    base = BASE.with_changes(seed=-1, subseed=-1)
    plan = plan_for(AxisSpec("Steps", "1-4"), base=base)
    seeds = {cell.request.seed for cell in plan.cells}
    subseeds = {cell.request.subseed for cell in plan.cells}
    assert len(seeds) == 1 and len(subseeds) == 1
    assert -1 not in seeds and -1 not in subseeds
    assert plan.base_request.seed in seeds


def test_keep_seeds_leaves_minus_one_alone() -> None:
    base = BASE.with_changes(seed=-1)
    plan = plan_for(AxisSpec("Steps", "1-3"), AxisSpec("Seed", "-1, 5"), base=base, keep_seeds=True)
    assert [cell.request.seed for cell in plan.cells if cell.y_index == 0] == [-1, -1, -1]
    assert "Fixed Y Values" not in plan.infotext_fields()


def test_minus_one_on_a_seed_axis_becomes_a_recorded_random_seed() -> None:
    plan = plan_for(AxisSpec("Seed", "-1, 5, -1"))
    seeds = [cell.request.seed for cell in plan.cells]
    assert seeds[1] == 5 and -1 not in seeds and seeds[0] != seeds[2]
    fields = plan.infotext_fields()
    assert fields["X Values"] == "-1, 5, -1"
    assert fields["Fixed X Values"] == ", ".join(str(seed) for seed in seeds)


def test_every_value_is_checked_before_anything_runs() -> None:
    with pytest.raises(AxisValueError, match=r"Z axis \(CFG Scale\): '7x' is not"):
        plan_for(AxisSpec("Steps", "10"), None, AxisSpec("CFG Scale", "5, 7x"))
    with pytest.raises(AxisValueError, match="X axis: Prompt S/R: 'dog' is not in the prompt"):
        plan_for(AxisSpec("Prompt S/R", "dog, wolf"))
    with pytest.raises(AxisValueError, match="unknown value 'gamma'"):
        plan_for(AxisSpec("Steps", "10"), AxisSpec("Checkpoint name", values=["alpha", "gamma"]))


def test_cell_requests_are_validated_by_the_request_itself() -> None:
    with pytest.raises(AxisValueError, match=r"cell Size: 100x64: width 100 is not a multiple of 8"):
        plan_for(AxisSpec("Size", "64x64, 100x64"))
    with pytest.raises(AxisValueError, match="cannot use schedule type"):
        plan_for(AxisSpec("Sampler", "Euler a"), AxisSpec("Schedule type", "Karras"))


def test_empty_axis_and_repeated_axis_are_errors() -> None:
    with pytest.raises(AxisValueError, match=r"Y axis \(CFG Scale\) has no values"):
        plan_for(AxisSpec("Steps", "10"), AxisSpec("CFG Scale", "  "))
    with pytest.raises(AxisValueError, match="'Steps' is used on both the X and the Z axis"):
        plan_for(AxisSpec("Steps", "10"), None, AxisSpec("steps", "20"))
    with pytest.raises(AxisValueError, match="unknown X/Y/Z axis 'Warp'"):
        plan_for(AxisSpec("Warp", "1"))


def test_cell_limit() -> None:
    with pytest.raises(AxisValueError, match=r"10 x 10 x 2 = 200 cells; the limit is 100"):
        plan_for(AxisSpec("Steps", "1-10"), AxisSpec("Seed", "1-10"), AxisSpec("CFG Scale", "1, 2"),
                 limits=PlotLimits(max_cells=100))
    with pytest.raises(AxisValueError, match="at most 100"):
        plan_for(AxisSpec("Seed", "1-1000000"), limits=PlotLimits(max_cells=100))
    with pytest.raises(AxisValueError, match="more than 100 plot entries"):
        plan_for(AxisSpec("Prompt order", "a, b, c, d, e, f"), base=BASE.with_changes(prompt="a b c d e f"),
                 limits=PlotLimits(max_cells=100))


def test_grid_pixel_limit_counts_sizes_hires_and_batches() -> None:
    limits = PlotLimits(max_grid_pixels=100_000)
    with pytest.raises(AxisValueError, match=r"about 0\.1 megapixels \(4 cells\); the limit is 0\.1"):
        plan_for(AxisSpec("Size", "64x64, 256x256"), AxisSpec("Steps", "1, 2"), limits=limits)
    assert plan_for(AxisSpec("Steps", "1-4"), limits=limits).cell_count == 4  # 4 x 64 x 64 fits
    with pytest.raises(AxisValueError, match="megapixels"):
        plan_for(AxisSpec("Steps", "1-4"), base=BASE.with_changes(enable_hr=True, hr_scale=4.0), limits=limits)
    with pytest.raises(AxisValueError, match="megapixels"):
        plan_for(AxisSpec("Steps", "1-4"), base=BASE.with_changes(batch_size=8), limits=limits)


def test_run_puts_each_request_in_its_cell_and_reports_progress() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20, 30"), AxisSpec("CFG Scale", "5, 7"))
    progress: list[tuple[int, int]] = []
    result = run_plan(plan, render, on_cell=lambda done, total: progress.append((done, total)))
    assert progress == [(index, 6) for index in range(6)]
    assert not result.interrupted and result.completed_cells == 6
    assert len(result.grids) == 1 and result.combined is result.grids[0]

    layout = plan_grid_layout(3, 2, (64, 64), plan.x.legends, plan.y.legends)
    assert result.combined.size == (layout.width, layout.height)
    assert layout.top_band > 0 and layout.left_band > 0
    for y_index, cfg in enumerate((5.0, 7.0)):
        for x_index, steps in enumerate((10, 20, 30)):
            expected = colour_of(BASE.with_changes(steps=steps, cfg_scale=cfg))
            assert result.cell_images[x_index + 3 * y_index].getpixel((0, 0)) == expected
            x, y = layout.cell_origin(x_index, y_index)
            assert result.combined.getpixel((x + 32, y + 32)) == expected


def test_legend_off_and_margins() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"), AxisSpec("CFG Scale", "5, 7"))
    result = run_plan(plan, render, draw_legend=False, margin=4)
    assert result.combined.size == (2 * 64 + 4, 2 * 64 + 4)


def test_z_grids_side_by_side_with_titles() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"), None, AxisSpec("CFG Scale", "5, 6, 7"))
    result = run_plan(plan, render, include_sub_grids=True)
    assert len(result.grids) == 3
    sub_width, sub_height = result.grids[0].size
    assert all(grid.size == (sub_width, sub_height) for grid in result.grids)
    assert result.combined.width == 3 * sub_width
    assert result.combined.height > sub_height  # the Z titles
    title_band = result.combined.height - sub_height
    for z_index, cfg in enumerate((5.0, 6.0, 7.0)):
        left = z_index * sub_width
        assert result.combined.crop((left, 0, left + sub_width, title_band)).convert("L").getextrema()[0] < 100
        expected = colour_of(BASE.with_changes(steps=20, cfg_scale=cfg))
        assert result.grids[z_index].getpixel((sub_width - 5, sub_height - 5)) == expected
    assert result.images == [result.combined, *result.grids]


def test_sub_grids_are_only_listed_when_asked_for() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"), None, AxisSpec("CFG Scale", "5, 6"))
    result = run_plan(plan, render)
    assert result.images == [result.combined]


def test_interrupt_returns_the_partial_grid() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20, 30"), AxisSpec("CFG Scale", "5, 7"))
    generated: list[int] = []

    def generate(request: Txt2ImgRequest) -> list[Image.Image]:
        generated.append(request.steps)
        return render(request)

    result = run_plan(plan, generate, should_stop=lambda: len(generated) >= 4)
    assert result.interrupted
    assert len(generated) == 4 and result.completed_cells == 4
    assert result.cell_images[4] is None and result.cell_images[5] is None
    layout = plan_grid_layout(3, 2, (64, 64), plan.x.legends, plan.y.legends)
    assert result.combined.size == (layout.width, layout.height)
    x, y = layout.cell_origin(2, 1)
    assert result.combined.getpixel((x + 32, y + 32)) == (0, 0, 0)  # blank
    x, y = layout.cell_origin(0, 1)
    assert result.combined.getpixel((x + 32, y + 32)) == colour_of(BASE.with_changes(steps=10, cfg_scale=7.0))


def test_interrupt_during_a_cell_that_returns_nothing() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20, 30"))
    stopped = {"now": False}

    def generate(request: Txt2ImgRequest) -> list[Image.Image]:
        if request.steps == 20:
            stopped["now"] = True
            return []
        return render(request)

    result = run_plan(plan, generate, should_stop=lambda: stopped["now"])
    assert result.interrupted and result.completed_cells == 1


def test_stop_before_the_first_cell_still_draws_a_blank_grid() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"))
    result = run_plan(plan, render, should_stop=lambda: True, draw_legend=False)
    assert result.interrupted and result.completed_cells == 0
    assert result.combined.size == (128, 64)


def test_several_images_per_cell_become_one_grid_image() -> None:
    plan = plan_for(AxisSpec("Steps", "10, 20"), base=BASE.with_changes(batch_size=2))

    def two_images(request: Txt2ImgRequest) -> list[Image.Image]:
        return render(request) * 2

    result = run_plan(plan, two_images, draw_legend=False)
    assert result.cell_images[0].size == (128, 64)
    assert result.combined.size == (256, 64)


def test_infotext_round_trip_restores_the_axes() -> None:
    x = AxisSpec("Steps", "10-30 (+10)")
    y = AxisSpec("Checkpoint name", values=["alpha", "beta"])
    z = AxisSpec("Prompt S/R", 'cat, "dog, fluffy"')
    plan = plan_for(x, y, z)
    fields = plan.infotext_fields()
    assert fields == {
        "Script": "X/Y/Z plot",
        "X Type": "Steps", "X Values": "10-30 (+10)",
        "Y Type": "Checkpoint name", "Y Values": "alpha, beta",
        "Z Type": "Prompt S/R", "Z Values": 'cat, "dog, fluffy"',
    }
    infotext = create_infotext(BASE.prompt, "", {"Steps": 20, "Seed": 1234, **fields})
    restored = parse_xyz_fields(parse_infotext(infotext))
    assert restored == {"x": x, "y": AxisSpec("Checkpoint name", "alpha, beta"), "z": z}
    again = plan_for(restored["x"], restored["y"], restored["z"])
    assert [cell.request for cell in again.cells] == [cell.request for cell in plan.cells]


def test_infotext_round_trip_of_a_single_size_value_and_nothing_axes() -> None:
    plan = plan_for(None, AxisSpec("Size", "512x768"))
    fields = plan.infotext_fields()
    assert "X Type" not in fields and fields["Y Values"] == "512x768"
    params = parse_infotext(create_infotext("p", "", {"Steps": 20, "Seed": 1, **fields}))
    assert parse_xyz_fields(params) == {
        "x": AxisSpec("Nothing"), "y": AxisSpec("Size", "512x768"), "z": AxisSpec("Nothing"),
    }


def test_pasting_fixed_seeds_reproduces_the_same_seeds() -> None:
    plan = plan_for(AxisSpec("Seed", "-1, -1"))
    params = parse_infotext(create_infotext("p", "", {"Steps": 20, "Sampler": "Euler", **plan.infotext_fields()}))
    restored = parse_xyz_fields(params)
    again = build_plan(BASE, restored["x"], None, None, default_axis_registry(), CHOICES, rng=random.Random(99))
    assert [c.request.seed for c in again.cells] == [c.request.seed for c in plan.cells]


def test_params_without_a_plot_give_nothing() -> None:
    assert parse_xyz_fields({"Steps": "20", "Seed": "1"}) == {}
