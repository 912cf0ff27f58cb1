"""Output files: A1111 numbering, never overwriting, crash-safe writes, grids."""

from __future__ import annotations

import datetime
import errno
import os
from pathlib import Path

import pytest
from PIL import Image

from webui.generation import outputs
from webui.generation.outputs import (
    OutputWriteError,
    dated_folder,
    image_grid,
    next_image_number,
    save_grid,
    save_image,
)

CELL_COLORS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
    (0, 255, 255), (128, 64, 0), (64, 0, 128), (200, 200, 200),
]
# n -> (rows, columns) with A1111's default grid settings (n_rows = -1: rows = round(sqrt(n))).
A1111_GRID_SHAPES = {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2), 5: (2, 3), 6: (2, 3), 7: (3, 3), 8: (3, 3), 9: (3, 3)}


def test_next_image_number_empty_or_missing_folder(tmp_path: Path) -> None:
    assert next_image_number(tmp_path) == 0
    assert next_image_number(tmp_path / "missing") == 0


def test_next_image_number_uses_highest_leading_number(tmp_path: Path) -> None:
    for name in ("00002-111.png", "00007-123-suffix.jpg", "00003.png", "grid-0042.png", "notes.txt", ".ab12.partial"):
        (tmp_path / name).write_bytes(b"x")
    assert next_image_number(tmp_path) == 8


def test_save_image_continues_numbering(tmp_path: Path) -> None:
    (tmp_path / "00041-999.png").write_bytes(b"old")
    first = save_image(Image.new("RGB", (8, 8)), tmp_path, 1234, None)
    second = save_image(Image.new("RGB", (8, 8)), tmp_path, 1235, None, suffix="-hires", extension="jpg")

    assert first == tmp_path / "00042-1234.png"
    assert second == tmp_path / "00043-1235-hires.jpg"
    assert (tmp_path / "00041-999.png").read_bytes() == b"old"
    with Image.open(second) as reopened:
        assert reopened.format == "JPEG"


def test_save_image_creates_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "txt2img-images" / "2024-05-01"
    saved = save_image(Image.new("RGB", (8, 8)), folder, 7, "a cat\nSteps: 1, Seed: 7, Size: 8x8")
    assert saved == folder / "00000-7.png"


def test_save_image_never_overwrites_when_the_count_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer may take a number between counting and saving; the existing file must survive."""
    (tmp_path / "00000-5.png").write_bytes(b"someone else's image")
    monkeypatch.setattr(outputs, "next_image_number", lambda folder: 0)

    saved = save_image(Image.new("RGB", (8, 8)), tmp_path, 5, None)

    assert saved == tmp_path / "00001-5.png"
    assert (tmp_path / "00000-5.png").read_bytes() == b"someone else's image"


def test_disk_full_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "00000-1.png").write_bytes(b"existing")

    def save_until_disk_full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n half an image")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", save_until_disk_full)

    with pytest.raises(OutputWriteError) as caught:
        save_image(Image.new("RGB", (8, 8)), tmp_path, 2, "a cat\nSteps: 1, Seed: 2, CFG scale: 7")

    assert caught.value.errno == errno.ENOSPC
    assert str(tmp_path) in str(caught.value)
    assert isinstance(caught.value, OSError)
    assert sorted(os.listdir(tmp_path)) == ["00000-1.png"]
    assert (tmp_path / "00000-1.png").read_bytes() == b"existing"


def test_unwritable_folder_raises_output_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"")
    with pytest.raises(OutputWriteError, match="not_a_folder"):
        save_image(Image.new("RGB", (8, 8)), blocker / "images", 1, None)


def test_unsupported_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported image extension"):
        save_image(Image.new("RGB", (8, 8)), tmp_path, 1, None, extension="bmp")
    assert os.listdir(tmp_path) == []


def test_rgba_image_saves_as_jpeg(tmp_path: Path) -> None:
    saved = save_image(Image.new("RGBA", (8, 8), (10, 20, 30, 128)), tmp_path, 3, None, extension="jpg")
    with Image.open(saved) as reopened:
        assert reopened.mode == "RGB"


@pytest.mark.parametrize("count", range(1, 10))
def test_grid_geometry_matches_a1111(count: int) -> None:
    cell_width, cell_height = 6, 4
    images = [Image.new("RGB", (cell_width, cell_height), CELL_COLORS[i]) for i in range(count)]
    rows, columns = A1111_GRID_SHAPES[count]

    grid = image_grid(images)

    assert grid.size == (columns * cell_width, rows * cell_height)
    for cell in range(rows * columns):
        row, column = divmod(cell, columns)
        centre = (column * cell_width + cell_width // 2, row * cell_height + cell_height // 2)
        expected = CELL_COLORS[cell] if cell < count else (0, 0, 0)
        assert grid.getpixel(centre) == expected, f"cell {cell} of a {count}-image grid"


def test_grid_with_explicit_rows() -> None:
    images = [Image.new("RGB", (5, 5), CELL_COLORS[i]) for i in range(4)]
    assert image_grid(images, rows=1).size == (20, 5)
    assert image_grid(images, rows=4).size == (5, 20)
    assert image_grid(images, rows=9).size == (5, 20)  # more rows than images: one image per row


def test_save_grid_names_and_numbers_grids_separately(tmp_path: Path) -> None:
    (tmp_path / "grid-0004.png").write_bytes(b"old grid")
    (tmp_path / "00010-1.png").write_bytes(b"image")
    images = [Image.new("RGB", (8, 8), color) for color in CELL_COLORS[:4]]

    first = save_grid(images, tmp_path, 99, "a cat\nSteps: 1, Seed: 99, CFG scale: 7")
    second = save_grid(images, tmp_path, 99, None, extended_filename=True)

    assert first == tmp_path / "grid-0005.png"
    assert second == tmp_path / "grid-0006-99.png"
    with Image.open(first) as reopened:
        assert reopened.size == (16, 16)
        assert reopened.text["parameters"] == "a cat\nSteps: 1, Seed: 99, CFG scale: 7"
    assert next_image_number(tmp_path) == 11


def test_dated_folder() -> None:
    root = Path("/data/outputs")
    assert dated_folder(root, "txt2img-images", datetime.date(2024, 5, 1)) == root / "txt2img-images" / "2024-05-01"
    assert dated_folder(root, "img2img-grids").parent == root / "img2img-grids"
    with pytest.raises(ValueError):
        dated_folder(root, "../escape", datetime.date(2024, 5, 1))
