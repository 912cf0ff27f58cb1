"""Image preparation for img2img/outpaint: resize modes, colour modes, upload errors, outpaint canvas."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.generation.image_ops import (
    SIZE_MULTIPLE,
    ImageInputError,
    ResizeMode,
    check_image_size,
    open_user_image,
    outpaint_canvas,
    resize_image,
    to_rgb,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def striped(size: tuple[int, int], stripes: list[tuple[int, int, int]], vertical: bool = True) -> Image.Image:
    """Equal-width stripes (left to right when vertical, else top to bottom)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for index, colour in enumerate(stripes):
        if vertical:
            pixels[:, index * width // len(stripes):(index + 1) * width // len(stripes)] = colour
        else:
            pixels[index * height // len(stripes):(index + 1) * height // len(stripes)] = colour
    return Image.fromarray(pixels)


def random_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    generator = np.random.default_rng(seed)
    return Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_close(pixel: tuple[int, ...] | np.ndarray, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    assert np.abs(np.asarray(pixel[:3], dtype=int) - np.asarray(expected)).max() <= tolerance, (pixel, expected)


# --- ResizeMode -----------------------------------------------------------------------------------

def test_resize_mode_values_and_a1111_labels() -> None:
    assert [(mode.value, mode.label) for mode in ResizeMode] == [
        (0, "Just resize"), (1, "Crop and resize"), (2, "Resize and fill"), (3, "Just resize (latent upscale)"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, ResizeMode.CROP_AND_RESIZE), ("Resize and fill", ResizeMode.RESIZE_AND_FILL),
     ("just resize (LATENT upscale)", ResizeMode.LATENT_UPSCALE), ("0", ResizeMode.JUST_RESIZE),
     (ResizeMode.CROP_AND_RESIZE, ResizeMode.CROP_AND_RESIZE)],
)
def test_resize_mode_from_value_accepts_index_or_label(value: int | str, expected: ResizeMode) -> None:
    assert ResizeMode.from_value(value) is expected


@pytest.mark.parametrize("bad", [4, -1, "Stretch", True])
def test_resize_mode_from_value_error_lists_valid_modes(bad: object) -> None:
    with pytest.raises(ValueError) as caught:
        ResizeMode.from_value(bad)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "Crop and resize" in message and "Just resize (latent upscale)" in message and "3" in message


# --- resize_image -----------------------------------------------------------------------------------

def test_just_resize_stretches_ignoring_aspect() -> None:
    result = resize_image(striped((100, 50), [RED, BLUE]), 64, 96, ResizeMode.JUST_RESIZE)
    assert result.size == (64, 96)
    pixels = np.asarray(result)
    assert_close(pixels[48, 2], RED)
    assert_close(pixels[48, 29], RED)
    assert_close(pixels[48, 34], BLUE)
    assert_close(pixels[0, 61], BLUE)


def test_latent_upscale_mode_is_a_plain_stretch_in_pixel_space() -> None:
    source = random_image((80, 48))
    stretched = resize_image(source, 64, 64, ResizeMode.JUST_RESIZE)
    assert np.array_equal(np.asarray(resize_image(source, 64, 64, ResizeMode.LATENT_UPSCALE)), np.asarray(stretched))


def test_crop_and_resize_wide_source_keeps_the_centre() -> None:
    # 200x100 source, square target: the outer quarters (red/blue) are cropped away.
    result = resize_image(striped((200, 100), [RED, GREEN, GREEN, BLUE]), 64, 64, ResizeMode.CROP_AND_RESIZE)
    assert result.size == (64, 64)
    pixels = np.asarray(result)
    for x, y in ((0, 0), (63, 0), (0, 63), (63, 63), (32, 32)):
        assert_close(pixels[y, x], GREEN, tolerance=20)


def test_crop_and_resize_tall_source_crops_top_and_bottom() -> None:
    source = striped((100, 200), [RED, GREEN, GREEN, BLUE], vertical=False)
    result = resize_image(source, 96, 48, ResizeMode.CROP_AND_RESIZE)
    assert result.size == (96, 48)
    pixels = np.asarray(result).astype(int)
    assert (np.abs(pixels - np.array(GREEN)).max(axis=-1) <= 20).all()


def test_crop_and_resize_with_matching_aspect_equals_just_resize() -> None:
    source = random_image((120, 60))
    assert np.array_equal(
        np.asarray(resize_image(source, 64, 32, ResizeMode.CROP_AND_RESIZE)),
        np.asarray(resize_image(source, 64, 32, ResizeMode.JUST_RESIZE)),
    )


def test_resize_and_fill_wide_source_puts_content_in_the_middle_and_stretches_edge_rows() -> None:
    source = random_image((100, 50))
    result = resize_image(source, 64, 64, ResizeMode.RESIZE_AND_FILL)
    assert result.size == (64, 64)
    pixels = np.asarray(result)
    fitted = np.asarray(source.resize((64, 32), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels[16:48], fitted)
    assert (pixels[:16] == fitted[0]).all()  # top band = first content row, repeated
    assert (pixels[48:] == fitted[-1]).all()  # bottom band = last content row


def test_resize_and_fill_tall_source_fills_left_and_right_bands_with_edge_columns() -> None:
    source = striped((50, 100), [RED, GREEN, BLUE])
    result = resize_image(source, 64, 64, ResizeMode.RESIZE_AND_FILL)
    pixels = np.asarray(result)
    fitted = np.asarray(source.resize((32, 64), Image.Resampling.LANCZOS))
    assert np.array_equal(pixels[:, 16:48], fitted)
    assert (pixels[:, :16] == fitted[:, :1]).all()
    assert (pixels[:, 48:] == fitted[:, -1:]).all()
    assert_close(pixels[30, 0], RED)
    assert_close(pixels[30, 63], BLUE)


def test_resize_and_fill_odd_band_split_leaves_no_gap() -> None:
    # 100x40 -> 64x64: content is 64x26, bands of 19 rows each; no unfilled (black) row anywhere.
    source = Image.new("RGB", (100, 40), (200, 150, 100))
    result = np.asarray(resize_image(source, 64, 64, ResizeMode.RESIZE_AND_FILL)).astype(int)
    assert (np.abs(result - np.array([200, 150, 100])).max(axis=-1) <= 2).all()


def test_resize_handles_palette_images_smoothly() -> None:
    palette_image = striped((40, 40), [RED, BLUE]).convert("P")
    result = resize_image(palette_image, 17, 17, ResizeMode.JUST_RESIZE)
    assert result.mode == "RGB" and result.size == (17, 17)


def test_resize_rejects_non_positive_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        resize_image(random_image((8, 8)), 0, 64)


# --- to_rgb -----------------------------------------------------------------------------------------

def test_to_rgb_flattens_transparency_onto_white_with_a_note() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[:, :2, 3] = 255  # left half opaque, right half fully transparent
    rgba[0, 3, 3] = 128  # one half-transparent pixel
    result, note = to_rgb(Image.fromarray(rgba, "RGBA"))
    pixels = np.asarray(result)
    assert result.mode == "RGB"
    assert tuple(pixels[1, 0]) == RED
    assert tuple(pixels[1, 3]) == (255, 255, 255)
    assert_close(pixels[0, 3], (255, 127, 127), tolerance=2)
    assert note is not None and "transparent" in note and "#ffffff" in note


def test_to_rgb_custom_background_and_la_mode() -> None:
    image = Image.new("LA", (2, 2), (0, 0))
    result, note = to_rgb(image, background=(10, 20, 30))
    assert np.asarray(result)[0, 0].tolist() == [10, 20, 30]
    assert note is not None and "#0a141e" in note


def test_to_rgb_opaque_alpha_gives_no_note() -> None:
    result, note = to_rgb(Image.new("RGBA", (3, 3), (1, 2, 3, 255)))
    assert note is None
    assert np.asarray(result)[0, 0].tolist() == [1, 2, 3]


def test_to_rgb_palette_with_transparency_index() -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    palette_image.info["transparency"] = 0
    result, note = to_rgb(palette_image)
    assert np.asarray(result).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    assert note is not None


def test_to_rgb_scales_16_bit_grayscale_instead_of_clipping() -> None:
    sixteen_bit = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert sixteen_bit.mode.startswith("I;16")
    result, note = to_rgb(sixteen_bit)
    assert note is None
    assert np.asarray(result)[0, :, 0].tolist() == [0, 128, 255]


def test_to_rgb_converts_cmyk_and_grayscale() -> None:
    cmyk, _ = to_rgb(Image.new("CMYK", (2, 2), (0, 255, 255, 0)))
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[0, 0].tolist() == [255, 0, 0]
    gray, _ = to_rgb(Image.new("L", (2, 2), 77))
    assert np.asarray(gray)[0, 0].tolist() == [77, 77, 77]


# --- open_user_image / check_image_size -----------------------------------------------------------

def test_open_user_image_from_bytes_and_path(tmp_path: Path) -> None:
    source = random_image((12, 9))
    from_bytes = open_user_image(png_bytes(source))
    assert np.array_equal(np.asarray(from_bytes), np.asarray(source))
    path = tmp_path / "input.png"
    path.write_bytes(png_bytes(source))
    assert np.array_equal(np.asarray(open_user_image(path)), np.asarray(source))
    assert np.array_equal(np.asarray(open_user_image(str(path))), np.asarray(source))


def test_open_user_image_keeps_alpha_for_masks() -> None:
    brush = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert open_user_image(png_bytes(brush)).mode == "RGBA"


@pytest.mark.parametrize("data", [b"definitely not an image", b"%PDF-1.4 fake", b"\x00" * 64])
def test_non_image_bytes_raise_image_input_error(data: bytes) -> None:
    with pytest.raises(ImageInputError, match="not an image"):
        open_user_image(data)


def test_truncated_png_raises_image_input_error() -> None:
    data = png_bytes(random_image((64, 64)))
    with pytest.raises(ImageInputError, match="damaged or truncated"):
        open_user_image(data[: len(data) // 2])


def test_empty_upload_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError, match="empty"):
        open_user_image(b"")
    with pytest.raises(ImageInputError, match="not found"):
        open_user_image(tmp_path / "missing.png")


def test_image_input_error_is_a_value_error() -> None:
    assert issubclass(ImageInputError, ValueError)


def test_open_user_image_applies_exif_rotation() -> None:
    portrait_stored_sideways = Image.new("RGB", (40, 20), (90, 90, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    portrait_stored_sideways.save(buffer, format="JPEG", exif=exif.tobytes())
    assert open_user_image(buffer.getvalue()).size == (20, 40)


def test_check_image_size_names_the_limit() -> None:
    check_image_size(Image.new("RGB", (2048, 1024)), 2048)  # exactly at the limit is fine
    with pytest.raises(ImageInputError) as caught:
        check_image_size(Image.new("RGB", (3000, 1000)), 2048)
    assert "2048" in str(caught.value) and "3000x1000" in str(caught.value)


# --- outpaint_canvas ----------------------------------------------------------------------------------

def test_outpaint_canvas_size_keeps_original_and_marks_new_area() -> None:
    source = random_image((64, 48))
    canvas, mask = outpaint_canvas(source, left=32, up=16, fill="edge", overlap=8)
    assert canvas.size == mask.size == (96, 64)
    assert canvas.mode == "RGB" and mask.mode == "L"
    pixels, mask_pixels = np.asarray(canvas), np.asarray(mask)
    assert np.array_equal(pixels[16:, 32:], np.asarray(source))
    assert set(np.unique(mask_pixels).tolist()) == {0, 255}
    assert (mask_pixels[:16] == 255).all() and (mask_pixels[:, :32] == 255).all()
    # overlap: 8 pixels into the original on the extended sides only
    assert (mask_pixels[16:24, 32:] == 255).all() and (mask_pixels[16:, 32:40] == 255).all()
    assert (mask_pixels[24:, 40:] == 0).all()


def test_outpaint_edge_fill_stretches_the_border_pixels() -> None:
    source = random_image((16, 16))
    canvas, _ = outpaint_canvas(source, right=16, down=8, fill="edge")
    pixels, original = np.asarray(canvas), np.asarray(source)
    assert (pixels[:16, 16:] == original[:, -1:]).all()
    assert (pixels[16:, :16] == original[-1]).all()
    assert (pixels[16:, 16:] == original[-1, -1]).all()  # corner takes the corner pixel


def test_outpaint_noise_is_seeded_and_starts_from_edge_colours() -> None:
    source = Image.new("RGB", (32, 32), (200, 60, 20))
    first, _ = outpaint_canvas(source, right=64, seed=7)
    again, _ = outpaint_canvas(source, right=64, seed=7)
    other, _ = outpaint_canvas(source, right=64, seed=8)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    pixels = np.asarray(first).astype(int)
    assert np.array_equal(pixels[:, :32], np.asarray(source))
    assert_close(pixels[:, 32].mean(axis=0).round().astype(int), (200, 60, 20), tolerance=3)  # seam: edge colour
    assert pixels[:, 80:].std() > 5  # far side: textured, not flat streaks


@pytest.mark.parametrize(
    ("size", "sides", "expected_size"),
    [((50, 30), {"left": 5}, (56, 32)), ((64, 64), {"right": 3, "left": 2}, (72, 64)),
     ((60, 60), {"down": 64}, (64, 128))],
)
def test_outpaint_sizes_round_up_to_multiples_of_8(
    size: tuple[int, int], sides: dict[str, int], expected_size: tuple[int, int]
) -> None:
    canvas, mask = outpaint_canvas(random_image(size), fill="edge", overlap=0, **sides)
    assert canvas.size == mask.size == expected_size
    assert canvas.width % SIZE_MULTIPLE == 0 and canvas.height % SIZE_MULTIPLE == 0
    original_pixels = size[0] * size[1]
    assert int((np.asarray(mask) == 0).sum()) == original_pixels  # only new pixels are generated


def test_outpaint_rounding_goes_to_the_requested_side() -> None:
    source = random_image((50, 32))
    canvas, mask = outpaint_canvas(source, left=5, fill="edge", overlap=0)
    # 50 + 5 -> 56: the extra pixel extends the left side too, the image sits at the right edge
    assert np.array_equal(np.asarray(canvas)[:, 6:], np.asarray(source))
    assert (np.asarray(mask)[:, :6] == 255).all() and (np.asarray(mask)[:, 6:] == 0).all()


def test_outpaint_rejects_nothing_to_do_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one side"):
        outpaint_canvas(random_image((16, 16)))
    with pytest.raises(ValueError, match="negative"):
        outpaint_canvas(random_image((16, 16)), left=-8)
    with pytest.raises(ValueError, match="fill"):
        outpaint_canvas(random_image((16, 16)), left=8, fill="mirror")  # type: ignore[arg-type]
