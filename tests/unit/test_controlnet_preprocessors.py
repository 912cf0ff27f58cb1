"""The controlnet extension's weightless preprocessors, its sd-webui-controlnet request reader and infotext
lines, loaded through the real extension loader (as the app imports them)."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.extensions import api
from webui.extensions.loader import ExtensionSwitches, load_extensions, module_name
from webui.extensions.registry import LOADED, ExtensionRegistry

BUILTIN = Path(__file__).resolve().parents[2] / "extensions-builtin"
SIZE = 64


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cn-ext")
    registry = ExtensionRegistry(api.API_VERSION)
    load_extensions(registry, [(BUILTIN, True)], ExtensionSwitches(tmp / "extensions.json"),
                    lambda record: api.ExtensionSetup(registry, record, tmp / "extension-data"))
    assert registry.records["controlnet"].state == LOADED, registry.records["controlnet"].problem
    package = module_name("controlnet")
    return registry, sys.modules[f"{package}.preprocessors"], sys.modules[f"{package}.units"]


@pytest.fixture(scope="module")
def pre(loaded):
    return loaded[1]


@pytest.fixture(scope="module")
def units(loaded):
    return loaded[2]


def square(fill="white", background="black", box=(16, 16, 48, 48)) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    return image


def gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.int16)


def test_none_keeps_the_image(pre):
    image = square("red", "blue")
    assert np.array_equal(np.asarray(pre.run_module("none", image, 512)), np.asarray(image))


def test_canny_draws_thin_edges_on_the_square_outline_only(pre):
    edges = gray(pre.run_module("canny", square(), SIZE, 100, 200))
    assert edges[32, 32] == 0 and edges[4, 4] == 0          # flat inside and outside: no edge
    ring = edges[12:53, 12:53].copy()
    ring[8:33, 8:33] = 0
    assert (edges > 127).sum() == (ring > 127).sum() > 60   # every edge pixel sits on the outline
    assert (gray(pre.run_module("canny", square(fill=(20, 20, 20)), SIZE, 100, 200)) > 0).sum() == 0  # too weak


def test_canny_finds_the_edge_between_colours_of_equal_brightness(pre):
    """sd-webui-controlnet's canny runs on the colour image: red on blue has an outline (in grey it has none)."""
    assert np.ptp(gray(square((100, 0, 0), (0, 0, 255)))) < 3             # nearly the same grey
    edges = gray(pre.run_module("canny", square((100, 0, 0), (0, 0, 255)), SIZE, 100, 200))
    assert edges[32, 32] == 0 and (edges[15:17, 20:44] == 255).any(axis=0).all() and (edges > 127).sum() > 60


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    small = Image.fromarray(rng.integers(0, 256, (12, 15, 3), dtype=np.uint8))
    return np.asarray(small.resize(size, Image.Resampling.BICUBIC))


@pytest.mark.parametrize("low, high", [(100, 200), (50, 100), (10, 30), (200, 100)])
def test_canny_gives_opencvs_canny_of_the_colour_image_pixel_for_pixel(pre, low, high):
    """The map is what sd-webui-controlnet's `cv2.Canny(rgb, low, high)` gives, for pictures, noise, odd sizes
    and swapped thresholds (at the image's own size, so no resizing is involved)."""
    import cv2

    from sdstudio_eval import toy_world

    rng = np.random.default_rng(4)
    pictures = [np.asarray(toy_world.render(scene, size=128, seed=index))
                for index, scene in enumerate(toy_world.dataset_scenes(12, seed=3))]
    pictures += [rng.integers(0, 256, (67, 83, 3), dtype=np.uint8), _smooth_noise(rng, (97, 131)),
                 np.asarray(square((100, 0, 0), (0, 0, 255)))]
    for picture in pictures:
        expected = cv2.Canny(picture, low, high) > 0
        got = gray(pre.run_module("canny", Image.fromarray(picture), min(picture.shape[:2]), low, high)) > 127
        assert np.array_equal(got, expected), f"{(got != expected).sum()} pixels differ of {expected.sum()} edges"


def test_invert_scribble_and_threshold_turn_dark_strokes_white(pre):
    drawing = square(fill="black", background="white")
    inverted = gray(pre.run_module("invert", drawing, 512))
    assert inverted[32, 32] == 255 and inverted[2, 2] == 0
    scribble = gray(pre.run_module("scribble_threshold", square(fill=(100, 100, 100), background="white"), 512, 128))
    assert scribble[32, 32] == 255 and scribble[2, 2] == 0
    binary = gray(pre.run_module("threshold", square(fill=(200, 200, 200), background=(50, 50, 50)), 512, 127))
    assert set(np.unique(binary)) == {0, 255} and binary[32, 32] == 255


def test_tile_and_blur_remove_detail_but_keep_the_colours(pre):
    checker = Image.fromarray(((np.indices((SIZE, SIZE)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    for name, parameter in (("tile_resample", 8), ("blur_gaussian", 3)):
        smooth = gray(pre.run_module(name, checker, 512, parameter))
        assert smooth.std() < gray(checker).std() / 4 and abs(smooth.mean() - 127.5) < 20


def test_shuffle_keeps_the_colours_moves_pixels_and_is_reproducible(pre):
    image = square("red", "blue")
    first, again = pre.run_module("shuffle", image, 512, seed=1), pre.run_module("shuffle", image, 512, seed=1)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(pre.run_module("shuffle", image, 512, seed=2)))
    assert not np.array_equal(np.asarray(first), np.asarray(image))
    colours = np.asarray(first).reshape(-1, 3)
    assert colours[:, 1].max() < 40    # only red, blue and their blends: no green appears


def test_colour_segmentation_makes_flat_regions(pre):
    noisy = np.clip(np.asarray(square("red", "blue"), dtype=np.int16)
                    + np.random.default_rng(0).integers(-20, 21, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    segments = np.asarray(pre.run_module("seg_color_quantize", Image.fromarray(noisy), 512, 2))
    assert len(np.unique(segments.reshape(-1, 3), axis=0)) == 2
    assert not np.array_equal(segments[32, 32], segments[2, 2])


def test_inpaint_mask_marks_the_masked_pixels_minus_one(pre, units):
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    control = pre.control_tensor(pre.run_module("inpaint_only", units.with_mask(square("red", "blue"), mask), 512))
    assert control.shape == (3, SIZE, SIZE)
    assert (control[:, :, : SIZE // 2] == -1).all() and (control[:, :, SIZE // 2:] >= 0).all()


def test_annotators_that_need_weights_name_the_folder_and_unknown_names_list_the_modules(pre):
    with pytest.raises(pre.UnknownModuleError, match="models/ControlNet/annotators"):
        pre.run_module("depth_midas", square(), 512)
    with pytest.raises(pre.UnknownModuleError) as unknown:
        pre.run_module("magic", square(), 512)
    assert "canny" in str(unknown.value) and "shuffle" in str(unknown.value) and "depth_midas" in str(unknown.value)


def test_a_weight_annotator_names_exactly_what_is_missing_package_or_file(loaded, tmp_path):
    """controlnet_aux cannot import on this machine (no torchvision): the reason says so with the import
    error; a missing weight file is named with its source and folder, and no longer once it is there (also in
    sd-webui-controlnet's downloads/<annotator>/ layout)."""
    annotators = sys.modules[f"{module_name('controlnet')}.annotators"]
    folder, downloads = tmp_path / "annotators", tmp_path / "downloads"
    found = annotators.Annotators(folder, (downloads,))
    reason = found.reason("depth_midas")
    assert "controlnet_aux==0.0.10 package, which does not import here (ModuleNotFoundError" in reason
    assert f"dpt_hybrid-midas-501f0c75.pt (from https://huggingface.co/lllyasviel/Annotators) in {folder}" in reason
    folder.mkdir()
    (folder / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"")
    (downloads / "openpose").mkdir(parents=True)
    (downloads / "openpose" / "body_pose_model.pth").write_bytes(b"")
    for name in ("depth_midas", "openpose"):
        assert "controlnet_aux" in found.reason(name) and "Annotators" not in found.reason(name)
    assert "netG.pth" in found.reason("lineart_anime") and found.usable() == []
    assert set(found.unavailable()) == {*annotators.ANNOTATORS, *annotators.NOT_RUN}
    with pytest.raises(annotators.AnnotatorUnavailable, match="controlnet_aux"):
        found.run("openpose", square(), 512, -1, -1, torch.device("cpu"))
    assert "torch.hub" in found.reason("depth_zoe")


def test_annotator_files_are_read_weights_only(loaded, tmp_path):
    """A .pth that would unpickle anything but tensors and plain containers is refused, naming the file."""
    annotators = sys.modules[f"{module_name('controlnet')}.annotators"]
    torch.save({"conv.weight": torch.ones(2, 2)}, tmp_path / "ControlNetHED.pth")
    assert torch.equal(annotators.read_weights(tmp_path / "ControlNetHED.pth")["conv.weight"], torch.ones(2, 2))
    torch.save({"conv.weight": torch.ones(2, 2), "where": tmp_path}, tmp_path / "netG.pth")   # a pickled Path
    with pytest.raises(annotators.AnnotatorUnavailable, match=f"netG.pth in {tmp_path} holds more than weights"):
        annotators.read_weights(tmp_path / "netG.pth")


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_sd_webui_controlnet_units_are_read_and_bad_ones_refused_with_the_reason(units):
    titles = lambda: ["control_v11p_sd15_canny [d14c016b]"]  # noqa: E731
    read = units.read_args([{"enabled": True, "input_image": _b64(square()), "module": "invert (from white bg & "
                             "black line)", "model": "control_v11p_sd15_canny [d14c016b]", "control_mode": 2,
                             "resize_mode": "Inner Fit (Scale to Fit)", "lowvram": False, "weight": 0.5,
                             "hr_option": 1}, {"model": "control_v11p_sd15_canny", "hr_option": "high res only"}], titles)
    assert read["unit0_module"] == "invert" and read["unit0_control_mode"] == "ControlNet is more important"
    assert read["unit0_resize_mode"] == "Crop and Resize" and read["unit0_weight"] == 0.5
    assert read["unit0_hr_option"] == "Low res only" and read["unit1_hr_option"] == "High res only"
    for bad, reason in (([{"model": "nope"}], "unknown; models: control_v11p_sd15_canny"),
                        ([{"module": "depth_midas", "model": "control_v11p_sd15_canny"}], "annotators"),
                        ([{"model": "control_v11p_sd15_canny", "control_mode": 7}], "control_mode 7"),
                        ([{"model": "control_v11p_sd15_canny", "image": "aGVsbG8="}], "not an image"),
                        ([{"model": "control_v11p_sd15_canny", "hr_option": "Later"}], "hr_option 'Later' is unknown"),
                        ([{}] * 4, "at most 3"), ([{"enabled": True}], "names no model")):
        with pytest.raises(ValueError, match=reason):
            units.read_args(bad, titles)


def test_infotext_lines_read_back_into_the_same_unit(units):
    values = units.with_unit(units.ControlNetValues(), 1, enabled=True, module="canny",
                             model="control_v11p_sd15_canny [d14c016b]", weight=0.75, guidance_end=0.5,
                             control_mode="My prompt is more important", pixel_perfect=True)
    lines = units.infotext_lines(values)
    assert list(lines) == ["ControlNet 1"]
    assert lines["ControlNet 1"].startswith("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.75,")
    read = units.from_infotext(lines)
    for name in ("enabled", "module", "model", "weight", "guidance_end", "control_mode", "pixel_perfect"):
        assert read[f"unit1_{name}"] == getattr(values, f"unit1_{name}")
    assert read["unit1_hr_option"] == "Both" and "Hr Option" not in lines["ControlNet 1"]
    low = units.infotext_lines(units.with_unit(values, 1, hr_option="Low res only"))
    assert low["ControlNet 1"].endswith(", Hr Option: Low res only")
    assert units.from_infotext(low)["unit1_hr_option"] == "Low res only"
    assert read["unit1_union_mode"] == "" and "Union Control Type" not in lines["ControlNet 1"]
    union = units.infotext_lines(units.with_unit(values, 1, union_mode="depth"))
    assert union["ControlNet 1"].endswith(", Union Control Type: depth")
    assert units.from_infotext(union)["unit1_union_mode"] == "depth"
    read_back = units.read_args([{"model": "control_v11p_sd15_canny", "union_control_type": 2}],
                                lambda: ["control_v11p_sd15_canny [d14c016b]"])
    assert read_back["unit0_union_mode"] == "2"


def test_resize_modes_fill_the_generation_size_their_way(units):
    wide = Image.new("RGB", (200, 100), "white")
    for mode in units.RESIZE_MODES:
        assert units.resized(wide, 64, 64, mode).size == (64, 64)
    filled = gray(units.resized(wide, 64, 64, "Resize and Fill"))
    assert filled[0, 32] == 0 and filled[32, 32] == 255          # padded above and below
    assert gray(units.resized(wide, 64, 64, "Crop and Resize")).min() == 255


def test_png_info_of_a_controlnet_image_pastes_back_into_the_units_fields(loaded, units):
    from webui.generation.infotext import create_infotext, parse_infotext

    registry, _, _ = loaded
    [definition] = [row.payload for row in registry.rows(api.SCRIPT) if row.payload.title == "ControlNet"]
    values = units.with_unit(units.ControlNetValues(), 0, enabled=True, module="canny", model="cn [12345678]",
                             weight=1.25, guidance_start=0.2, resize_mode="Resize and Fill")
    text = create_infotext("a red circle", "", {"Steps": 4, "Sampler": "Euler", "Seed": 1, **definition.infotext_pairs(values)})
    pasted = definition.values_from_infotext(parse_infotext(text))
    assert pasted["unit0_enabled"] is True and pasted["unit0_weight"] == 1.25 and pasted["unit0_guidance_start"] == 0.2
    assert pasted["unit0_model"] == "cn [12345678]" and pasted["unit0_resize_mode"] == "Resize and Fill"
    assert "unit1_enabled" not in pasted and "unit0_image" not in pasted


def test_edges_found_at_a_higher_processor_resolution_stay_white_lines_at_the_image_size(pre):
    edges = gray(pre.run_module("canny", square(), 512, 100, 200))
    assert edges.shape == (SIZE, SIZE) and set(np.unique(edges)) == {0, 255}
    assert edges[32, 32] == 0 and (edges[14:18, 20:44] == 255).any(axis=0).mean() > 0.9   # the top side
