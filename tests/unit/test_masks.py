"""Inpaint masks: reading brush strokes, blur, only-masked crop, compositing, latent mask, masked-content fill."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.generation.masks import (
    MaskedContent,
    blur_mask,
    composite,
    crop_region,
    expand_to_aspect,
    fill_masked_area,
    latent_mask,
    mask_is_empty,
    prepare_mask,
)


def l_mask(size: tuple[int, int], boxes: list[tuple[int, int, int, int]], value: int = 255) -> Image.Image:
    mask = Image.new("L", size, 0)
    for box in boxes:
        mask.paste(value, box)
    return mask


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    generator = np.random.default_rng(seed)
    return Image.fromarray(generator.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- prepare_mask --------------------------------------------------------------------------------

def test_prepare_mask_binarises_at_half() -> None:
    grey_levels = Image.fromarray(np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8))
    mask, notes = prepare_mask(grey_levels, (6, 1))
    assert mask.mode == "L"
    assert np.asarray(mask).tolist() == [[0, 0, 0, 255, 255, 255]]
    assert notes == []


def test_prepare_mask_invert_is_inpaint_not_masked() -> None:
    grey_levels = Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8))
    mask, _ = prepare_mask(grey_levels, (4, 1), invert=True)
    assert np.asarray(mask).tolist() == [[255, 255, 0, 0]]


def test_prepare_mask_uses_alpha_of_a_transparent_brush_layer() -> None:
    # Browser brush layer: transparent PNG, strokes painted in black (dark colour must not matter).
    layer = np.zeros((8, 8, 4), dtype=np.uint8)
    layer[2:5, 3:6] = (0, 0, 0, 255)
    layer[6, 6] = (255, 255, 255, 60)  # faint stroke edge below 50 % coverage
    mask, _ = prepare_mask(Image.fromarray(layer, "RGBA"), (8, 8))
    expected = np.zeros((8, 8), dtype=np.uint8)
    expected[2:5, 3:6] = 255
    assert np.array_equal(np.asarray(mask), expected)


def test_prepare_mask_opaque_rgba_and_rgb_use_brightness() -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[:, 2:] = 255
    expected = [[0, 0, 255, 255]] * 4
    rgb_mask, _ = prepare_mask(Image.fromarray(pixels), (4, 4))
    assert np.asarray(rgb_mask).tolist() == expected
    opaque_rgba, _ = prepare_mask(Image.fromarray(pixels).convert("RGBA"), (4, 4))
    assert np.asarray(opaque_rgba).tolist() == expected


def test_prepare_mask_resizes_with_a_note() -> None:
    painted_right_half = l_mask((100, 50), [(50, 0, 100, 50)])
    mask, notes = prepare_mask(painted_right_half, (64, 64))
    assert mask.size == (64, 64)
    assert notes == ["mask resized from 100x50 to 64x64"]
    pixels = np.asarray(mask)
    assert set(np.unique(pixels).tolist()) == {0, 255}
    assert (pixels[:, :30] == 0).all() and (pixels[:, 34:] == 255).all()


# --- mask_is_empty -------------------------------------------------------------------------------

def test_mask_is_empty() -> None:
    assert mask_is_empty(Image.new("L", (16, 16), 0))
    assert mask_is_empty(Image.new("RGBA", (16, 16), (255, 255, 255, 0)))  # untouched brush layer
    assert not mask_is_empty(l_mask((16, 16), [(5, 5, 6, 6)]))
    stroke = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    stroke.putpixel((3, 4), (0, 0, 0, 255))
    assert not mask_is_empty(stroke)


# --- blur_mask -----------------------------------------------------------------------------------

def test_blur_radius_zero_is_identity() -> None:
    mask = l_mask((32, 32), [(8, 8, 20, 24)])
    assert np.array_equal(np.asarray(blur_mask(mask, 0)), np.asarray(mask))


def test_blur_softens_edges_only() -> None:
    mask = l_mask((64, 64), [(16, 16, 48, 48)])
    blurred = np.asarray(blur_mask(mask, 4))
    assert blurred[32, 32] == 255 and blurred[0, 0] == 0
    edge_row = blurred[32, 10:22]
    assert ((edge_row > 0) & (edge_row < 255)).any()
    assert (np.diff(edge_row.astype(int)) >= 0).all()  # ramps up smoothly into the mask
    with pytest.raises(ValueError):
        blur_mask(mask, -1)


# --- crop_region / expand_to_aspect --------------------------------------------------------------

def test_crop_region_pads_and_clamps() -> None:
    mask = l_mask((100, 80), [(40, 30, 50, 45)])
    assert crop_region(mask, 0) == (40, 30, 50, 45)
    assert crop_region(mask, 10) == (30, 20, 60, 55)
    corner = l_mask((100, 80), [(0, 70, 5, 80)])
    assert crop_region(corner, 32) == (0, 38, 37, 80)
    assert crop_region(Image.new("L", (10, 10)), 8) is None


def test_expand_to_aspect_grows_the_short_side_around_the_centre() -> None:
    assert expand_to_aspect((40, 40, 60, 50), 512, 512, (100, 100)) == (40, 35, 60, 55)
    assert expand_to_aspect((40, 40, 50, 60), 512, 512, (100, 100)) == (35, 40, 55, 60)
    assert expand_to_aspect((10, 10, 30, 30), 768, 512, (100, 100)) == (5, 10, 35, 30)


def test_expand_to_aspect_slides_inside_and_clamps_to_the_image() -> None:
    # Near the top edge: grows downwards instead of past the border.
    assert expand_to_aspect((0, 0, 40, 10), 1, 1, (100, 100)) == (0, 0, 40, 40)
    # Near the bottom-right edge.
    assert expand_to_aspect((80, 90, 100, 100), 1, 1, (100, 100)) == (80, 80, 100, 100)
    # The image is not tall enough for the aspect: the region takes its full height.
    assert expand_to_aspect((0, 10, 100, 20), 1, 1, (100, 30)) == (0, 0, 100, 30)
    # Already the right aspect: unchanged.
    assert expand_to_aspect((10, 10, 74, 42), 128, 64, (100, 100)) == (10, 10, 74, 42)
    with pytest.raises(ValueError):
        expand_to_aspect((10, 10, 10, 20), 512, 512, (100, 100))


# --- composite -----------------------------------------------------------------------------------

def test_composite_keeps_unmasked_pixels_bitwise_and_takes_masked_from_generated() -> None:
    original = random_image((64, 48), seed=1)
    generated = random_image((64, 48), seed=2)
    soft = blur_mask(l_mask((64, 48), [(20, 10, 44, 38)]), 3)
    result = np.asarray(composite(original, generated, soft))
    mask_values = np.asarray(soft)
    assert (mask_values == 0).any() and (mask_values == 255).any()
    assert np.array_equal(result[mask_values == 0], np.asarray(original)[mask_values == 0])
    assert np.array_equal(result[mask_values == 255], np.asarray(generated)[mask_values == 255])
    between = (mask_values > 60) & (mask_values < 200)
    low = np.minimum(np.asarray(original), np.asarray(generated))[between]
    high = np.maximum(np.asarray(original), np.asarray(generated))[between]
    assert ((result[between] >= low) & (result[between] <= high)).all()
    assert not np.array_equal(result[between], np.asarray(original)[between])


def test_composite_keeps_rgba_original_exact_and_checks_sizes() -> None:
    original = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA")
    mask = l_mask((16, 16), [(4, 4, 8, 8)])
    result = composite(original, random_image((16, 16), seed=4), mask)
    assert result.mode == "RGBA"
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(result)[outside], np.asarray(original)[outside])
    with pytest.raises(ValueError, match="sizes differ"):
        composite(random_image((16, 16), 0), random_image((16, 8), 0), mask)


# --- latent_mask ---------------------------------------------------------------------------------

def test_latent_mask_shape_dtype_and_any_pixel_rule() -> None:
    mask = Image.new("L", (64, 48), 0)
    mask.putpixel((21, 13), 255)  # one pixel inside latent cell (row 1, column 2)
    latent = latent_mask(mask, 8, 6)
    assert latent.shape == (6, 8) and latent.dtype == np.float32
    expected = np.zeros((6, 8), dtype=np.float32)
    expected[1, 2] = 1.0
    assert np.array_equal(latent, expected)


def test_latent_mask_keeps_soft_values_in_unit_range() -> None:
    soft = blur_mask(l_mask((64, 64), [(16, 16, 48, 48)]), 3)
    latent = latent_mask(soft, 8, 8)
    assert latent.min() >= 0.0 and latent.max() <= 1.0
    assert latent[4, 4] == 1.0 and latent[0, 0] == 0.0
    assert ((latent > 0) & (latent < 1)).any()
    # Non-multiple sizes still cover every pixel.
    assert latent_mask(l_mask((30, 20), [(29, 19, 30, 20)]), 4, 3)[2, 3] == 1.0


# --- fill_masked_area ----------------------------------------------------------------------------

def test_masked_content_labels() -> None:
    assert [content.label for content in MaskedContent] == ["fill", "original", "latent noise", "latent nothing"]
    assert MaskedContent.from_value("Latent Noise") is MaskedContent.LATENT_NOISE


def test_fill_replaces_masked_object_with_surrounding_colours() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (220, 40, 40)
    pixels[:, 32:] = (40, 40, 220)
    pixels[24:40, 24:40] = (0, 255, 0)  # the object to remove
    mask = l_mask((64, 64), [(20, 20, 44, 44)])
    result = np.asarray(fill_masked_area(Image.fromarray(pixels), mask, MaskedContent.FILL)).astype(int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], pixels[outside])
    inside = result[20:44, 20:44]
    assert inside[..., 1].max() < 80  # no trace of the green object
    assert inside[12, 0, 0] > inside[12, 0, 2]  # left of the hole continues red
    assert inside[12, -1, 2] > inside[12, -1, 0]  # right of the hole continues blue


def test_fill_with_a_full_mask_gives_a_neutral_start() -> None:
    result = fill_masked_area(Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("L", (8, 8), 255))
    assert np.asarray(result)[4, 4].tolist() == [128, 128, 128]


@pytest.mark.parametrize("content", ["original", "latent noise", MaskedContent.LATENT_NOTHING])
def test_non_fill_modes_leave_pixels_alone(content: str | MaskedContent) -> None:
    image = random_image((16, 16), seed=5)
    result = fill_masked_area(image, l_mask((16, 16), [(2, 2, 10, 10)]), content)
    assert np.array_equal(np.asarray(result), np.asarray(image))
