"""Annotated X/Y/Z grids: predictable geometry, legends where they belong, blank cells, Z titles."""

from __future__ import annotations

import pytest
from PIL import Image

from webui.xyz.grid import (
    BLANK_CELL_COLOR,
    LEGEND_BACKGROUND,
    TextMetrics,
    combine_side_by_side,
    draw_grid,
    legend_font_size,
    plan_grid_layout,
    title_band_height,
    wrap_text,
)

CELL = (64, 48)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200)]


def solid(color: tuple[int, int, int], size: tuple[int, int] = CELL) -> Image.Image:
    return Image.new("RGB", size, color)


def has_dark_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """True when the region holds legend text (black on white)."""
    region = image.crop(box).convert("L")
    return region.getextrema()[0] < 100


def test_without_legends_the_grid_is_exactly_the_cells() -> None:
    cells = [solid(color) for color in COLORS]
    grid = draw_grid(cells, 3, 2, CELL, ["a", "b", "c"], ["r1", "r2"], draw_legend=False)
    assert grid.size == (3 * 64, 2 * 48)
    for index, color in enumerate(COLORS):
        row, column = divmod(index, 3)
        assert grid.getpixel((column * 64 + 32, row * 48 + 24)) == color


def test_margins_separate_cells_in_both_directions() -> None:
    cells = [solid(color) for color in COLORS]
    grid = draw_grid(cells, 3, 2, CELL, ["", "", ""], ["", ""], margin=10, draw_legend=False)
    assert grid.size == (3 * 64 + 2 * 10, 2 * 48 + 10)
    assert grid.getpixel((64 + 5, 10)) == (255, 255, 255)     # gap between columns
    assert grid.getpixel((10, 48 + 5)) == (255, 255, 255)     # gap between rows
    assert grid.getpixel((64 + 10 + 1, 48 + 10 + 1)) == COLORS[4]


def test_legends_add_a_top_band_and_a_left_band_with_text() -> None:
    cells = [solid(color) for color in COLORS]
    column_labels = ["Steps: 10", "Steps: 20", "Steps: 30"]
    row_labels = ["CFG Scale: 5", "CFG Scale: 7"]
    layout = plan_grid_layout(3, 2, CELL, column_labels, row_labels)
    grid = draw_grid(cells, 3, 2, CELL, column_labels, row_labels)

    assert layout.top_band > 0 and layout.left_band > 0
    assert grid.size == (layout.left_band + 3 * 64, layout.top_band + 2 * 48) == (layout.width, layout.height)
    # Each column label is drawn above its own column, each row label beside its row.
    for column in range(3):
        x, _ = layout.cell_origin(column, 0)
        assert has_dark_pixels(grid, (x, 0, x + 64, layout.top_band))
    for row in range(2):
        _, y = layout.cell_origin(0, row)
        assert has_dark_pixels(grid, (0, y, layout.left_band, y + 48))
    # The corner stays empty and the cells are where the layout says.
    assert not has_dark_pixels(grid, (0, 0, layout.left_band, layout.top_band))
    for index, color in enumerate(COLORS):
        row, column = divmod(index, 3)
        x, y = layout.cell_origin(column, row)
        assert grid.getpixel((x + 32, y + 24)) == color


def test_empty_labels_on_one_axis_give_no_band_for_it() -> None:
    cells = [solid(color) for color in COLORS[:3]]
    grid = draw_grid(cells, 3, 1, CELL, ["x: 1", "x: 2", "x: 3"], [""])
    layout = plan_grid_layout(3, 1, CELL, ["x: 1", "x: 2", "x: 3"], [""])
    assert layout.left_band == 0 and layout.top_band > 0
    assert grid.size == (3 * 64, layout.top_band + 48)


def test_long_labels_wrap_and_make_the_band_taller() -> None:
    short = plan_grid_layout(2, 1, CELL, ["a", "b"], [""])
    long_label = "Prompt S/R: a very long replacement text that cannot fit"
    tall = plan_grid_layout(2, 1, CELL, ["a", long_label], [""])
    metrics = TextMetrics.for_size(legend_font_size(*CELL))
    lines = wrap_text(long_label, metrics, CELL[0] - 2 * metrics.padding)
    assert len(lines) > 2
    assert all(metrics.text_width(line) <= CELL[0] - 2 * metrics.padding for line in lines)
    assert tall.top_band == metrics.block_height(len(lines)) > short.top_band


def test_wrapped_label_is_drawn_on_several_lines() -> None:
    long_label = "Prompt S/R: a very long replacement text that cannot fit"
    layout = plan_grid_layout(1, 1, CELL, [long_label], [""])
    grid = draw_grid([solid(COLORS[0])], 1, 1, CELL, [long_label], [""])
    metrics = TextMetrics.for_size(legend_font_size(*CELL))
    band = grid.crop((0, 0, CELL[0], layout.top_band)).convert("L")
    rows_with_text = [y for y in range(band.height) if band.crop((0, y, band.width, y + 1)).getextrema()[0] < 100]
    assert rows_with_text[-1] - rows_with_text[0] > 2 * metrics.line_height


def test_wrap_breaks_a_word_wider_than_the_box() -> None:
    metrics = TextMetrics.for_size(16)
    lines = wrap_text("supercalifragilistic", metrics, 40)
    assert "".join(lines) == "supercalifragilistic" and len(lines) > 1


def test_missing_cells_are_blank() -> None:
    cells = [solid(COLORS[0]), None, solid(COLORS[2]), None]
    grid = draw_grid(cells, 2, 2, CELL, ["", ""], ["", ""], draw_legend=False)
    blank = Image.new("RGB", (1, 1), BLANK_CELL_COLOR).getpixel((0, 0))
    assert grid.getpixel((64 + 32, 24)) == blank
    assert grid.getpixel((32, 48 + 24)) == COLORS[2]


def test_smaller_images_are_centred_in_their_cell() -> None:
    cells = [solid(COLORS[0], (32, 24)), solid(COLORS[1])]
    grid = draw_grid(cells, 2, 1, CELL, ["", ""], [""], draw_legend=False)
    assert grid.size == (128, 48)
    assert grid.getpixel((32, 24)) == COLORS[0]
    assert grid.getpixel((2, 2)) == Image.new("RGB", (1, 1), LEGEND_BACKGROUND).getpixel((0, 0))


def test_cell_count_must_match_the_shape() -> None:
    with pytest.raises(ValueError, match="needs 4 cells"):
        draw_grid([solid(COLORS[0])] * 3, 2, 2, CELL, ["", ""], ["", ""])


def test_sub_grids_side_by_side_under_their_titles() -> None:
    first = draw_grid([solid(COLORS[0])] * 2, 2, 1, CELL, ["", ""], [""], draw_legend=False)
    second = draw_grid([solid(COLORS[1])] * 2, 2, 1, CELL, ["", ""], [""], draw_legend=False)
    font_size = legend_font_size(*CELL)
    combined = combine_side_by_side([first, second], ["Sampler: Euler", "Sampler: DDIM"], font_size=font_size, margin=6)
    band = title_band_height(["Sampler: Euler", "Sampler: DDIM"], first.width, font_size)
    assert band > 0
    assert combined.size == (2 * 128 + 6, band + 48)
    assert has_dark_pixels(combined, (0, 0, 128, band))
    assert has_dark_pixels(combined, (128 + 6, 0, 2 * 128 + 6, band))
    assert combined.getpixel((10, band + 10)) == COLORS[0]
    assert combined.getpixel((128 + 6 + 10, band + 10)) == COLORS[1]

    untitled = combine_side_by_side([first, second], ["a", "b"], font_size=font_size, draw_titles=False)
    assert untitled.size == (256, 48)
