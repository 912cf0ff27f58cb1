"""Annotated X/Y/Z grids drawn with Pillow.

Layout of one sub grid (one Z value), all sizes in pixels and fully determined by the cell size, the
number of cells, the margin and the label texts, so tests and the UI can predict them:

    +-----------+---------------------------------------+
    |           | column labels (X), wrapped to a cell  |   top band
    +-----------+---------------------------------------+
    | row label | cell | margin | cell | margin | cell  |
    |   (Y)     |------+        +------+        +-------|   margin between rows too
    |           | cell |        | cell |        | cell  |
    +-----------+---------------------------------------+
      left band

A band is only drawn when legends are on and at least one of its labels is non-empty (a Nothing axis
has empty labels). Several sub grids are combined side by side with the Z label as a title above each.
The font is Pillow's bundled scalable font, sized from the cell like A1111's legends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

LEGEND_BACKGROUND = "white"
LEGEND_TEXT_COLOR = "black"
BLANK_CELL_COLOR = "black"
MIN_FONT_SIZE = 12
# The row label band fits the longest label on one line, but is never wider than this fraction of the
# cell width (A1111's fixed band) or ROW_LABEL_MIN_CAP_EMS font sizes, whichever is wider; longer labels wrap.
ROW_LABEL_BAND_FRACTION = 0.75
ROW_LABEL_MIN_CAP_EMS = 10

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


def legend_font_size(cell_width: int, cell_height: int) -> int:
    """A1111 sizes legend text from the cell: (width + height) / 25, here never below MIN_FONT_SIZE."""
    return max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)


def load_legend_font(size: int) -> FontType:
    """Pillow's bundled font at `size` (scalable with FreeType; Pillow >= 10.1)."""
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class TextMetrics:
    """Line geometry for one font, so band heights follow from the number of wrapped lines."""

    font: FontType
    size: int
    line_height: int
    line_gap: int
    padding: int

    @classmethod
    def for_size(cls, size: int) -> "TextMetrics":
        font = load_legend_font(size)
        if isinstance(font, ImageFont.FreeTypeFont):
            ascent, descent = font.getmetrics()
            line_height = ascent + descent
        else:  # bitmap fallback without FreeType
            line_height = font.getbbox("Ag")[3]
        return cls(font=font, size=size, line_height=line_height, line_gap=max(1, size // 4), padding=max(2, size // 2))

    def text_width(self, text: str) -> float:
        return self.font.getlength(text)

    def block_height(self, line_count: int) -> int:
        """Height of `line_count` lines plus the padding above and below."""
        if line_count == 0:
            return 0
        return line_count * self.line_height + (line_count - 1) * self.line_gap + 2 * self.padding


def wrap_text(text: str, metrics: TextMetrics, max_width: int) -> list[str]:
    """Greedy word wrap to `max_width` pixels; a word wider than that is broken between characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if metrics.text_width(candidate) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            for character in word:
                if current and metrics.text_width(current + character) > max_width:
                    lines.append(current)
                    current = ""
                current += character
        if current:
            lines.append(current)
    return lines


@dataclass(frozen=True)
class GridLayout:
    """Where everything of one sub grid goes."""

    columns: int
    rows: int
    cell_width: int
    cell_height: int
    margin: int
    left_band: int
    top_band: int

    @property
    def body_width(self) -> int:
        return self.columns * self.cell_width + (self.columns - 1) * self.margin

    @property
    def body_height(self) -> int:
        return self.rows * self.cell_height + (self.rows - 1) * self.margin

    @property
    def width(self) -> int:
        return self.left_band + self.body_width

    @property
    def height(self) -> int:
        return self.top_band + self.body_height

    def cell_origin(self, column: int, row: int) -> tuple[int, int]:
        """Top-left corner of a cell."""
        return (
            self.left_band + column * (self.cell_width + self.margin),
            self.top_band + row * (self.cell_height + self.margin),
        )


def _has_text(labels: Sequence[str]) -> bool:
    return any(label.strip() for label in labels)


def plan_grid_layout(
    columns: int,
    rows: int,
    cell_size: tuple[int, int],
    column_labels: Sequence[str],
    row_labels: Sequence[str],
    *,
    margin: int = 0,
    draw_legend: bool = True,
) -> GridLayout:
    """The layout `draw_grid` will use (sizes only; nothing is drawn)."""
    if columns < 1 or rows < 1:
        raise ValueError(f"a grid needs at least one column and one row, got {columns}x{rows}")
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    cell_width, cell_height = cell_size
    left_band = top_band = 0
    if draw_legend:
        metrics = TextMetrics.for_size(legend_font_size(cell_width, cell_height))
        if _has_text(column_labels):
            wrap_width = max(1, cell_width - 2 * metrics.padding)
            top_band = max(metrics.block_height(len(wrap_text(label, metrics, wrap_width))) for label in column_labels)
        if _has_text(row_labels):
            longest = max(metrics.text_width(label) for label in row_labels)
            cap = max(int(cell_width * ROW_LABEL_BAND_FRACTION), ROW_LABEL_MIN_CAP_EMS * metrics.size)
            left_band = min(math.ceil(longest) + 2 * metrics.padding, cap)
    return GridLayout(columns, rows, cell_width, cell_height, margin, left_band, top_band)


def _draw_centered_lines(
    draw: ImageDraw.ImageDraw, lines: Sequence[str], metrics: TextMetrics, box: tuple[int, int, int, int]
) -> None:
    """Draw lines centred horizontally and vertically in box (left, top, right, bottom)."""
    left, top, right, bottom = box
    block = metrics.block_height(len(lines)) - 2 * metrics.padding
    y = top + max(0, (bottom - top - block) // 2)
    for line in lines:
        x = left + max(0.0, (right - left - metrics.text_width(line)) / 2)
        draw.text((x, y), line, fill=LEGEND_TEXT_COLOR, font=metrics.font)
        y += metrics.line_height + metrics.line_gap


def _paste_centered(
    canvas: Image.Image, image: Image.Image, origin: tuple[int, int], cell_size: tuple[int, int]
) -> None:
    """Paste an image centred in its cell (cells of a Size plot differ; the cell is the largest)."""
    x = origin[0] + (cell_size[0] - image.width) // 2
    y = origin[1] + (cell_size[1] - image.height) // 2
    canvas.paste(image.convert("RGB"), (x, y))


def draw_grid(
    cells: Sequence[Image.Image | None],
    columns: int,
    rows: int,
    cell_size: tuple[int, int],
    column_labels: Sequence[str],
    row_labels: Sequence[str],
    *,
    margin: int = 0,
    draw_legend: bool = True,
) -> Image.Image:
    """One annotated grid; `cells` go left to right, top to bottom, and None draws a blank cell."""
    if len(cells) != columns * rows:
        raise ValueError(f"{columns}x{rows} grid needs {columns * rows} cells, got {len(cells)}")
    if len(column_labels) != columns or len(row_labels) != rows:
        raise ValueError("one label per column and one per row are needed")
    layout = plan_grid_layout(
        columns, rows, cell_size, column_labels, row_labels, margin=margin, draw_legend=draw_legend
    )
    canvas = Image.new("RGB", (layout.width, layout.height), LEGEND_BACKGROUND)
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        origin = layout.cell_origin(column, row)
        if cell is None:
            canvas.paste(BLANK_CELL_COLOR, (*origin, origin[0] + layout.cell_width, origin[1] + layout.cell_height))
        else:
            _paste_centered(canvas, cell, origin, cell_size)

    if layout.top_band or layout.left_band:
        metrics = TextMetrics.for_size(legend_font_size(*cell_size))
        draw = ImageDraw.Draw(canvas)
        for column, label in enumerate(column_labels if layout.top_band else ()):
            x, _ = layout.cell_origin(column, 0)
            lines = wrap_text(label, metrics, max(1, layout.cell_width - 2 * metrics.padding))
            _draw_centered_lines(draw, lines, metrics, (x, 0, x + layout.cell_width, layout.top_band))
        for row, label in enumerate(row_labels if layout.left_band else ()):
            _, y = layout.cell_origin(0, row)
            lines = wrap_text(label, metrics, max(1, layout.left_band - 2 * metrics.padding))
            _draw_centered_lines(draw, lines, metrics, (0, y, layout.left_band, y + layout.cell_height))
    return canvas


def title_band_height(titles: Sequence[str], width: int, font_size: int) -> int:
    """Height of the band that holds the tallest of `titles` wrapped to `width` (0 when all are empty)."""
    if not _has_text(titles):
        return 0
    metrics = TextMetrics.for_size(font_size)
    wrap_width = max(1, width - 2 * metrics.padding)
    return max(metrics.block_height(len(wrap_text(title, metrics, wrap_width))) for title in titles)


def combine_side_by_side(
    grids: Sequence[Image.Image],
    titles: Sequence[str],
    *,
    font_size: int,
    margin: int = 0,
    draw_titles: bool = True,
) -> Image.Image:
    """Sub grids left to right, `margin` apart, each under its title (one title band height for all)."""
    if not grids:
        raise ValueError("nothing to combine")
    if len(titles) != len(grids):
        raise ValueError("one title per grid is needed")
    widest = max(grid.width for grid in grids)
    band = title_band_height(titles, widest, font_size) if draw_titles else 0
    width = sum(grid.width for grid in grids) + margin * (len(grids) - 1)
    height = band + max(grid.height for grid in grids)
    canvas = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    metrics = TextMetrics.for_size(font_size)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for grid, title in zip(grids, titles):
        canvas.paste(grid, (x, band))
        if band:
            lines = wrap_text(title, metrics, max(1, grid.width - 2 * metrics.padding))
            _draw_centered_lines(draw, lines, metrics, (x, 0, x + grid.width, band))
        x += grid.width + margin
    return canvas
