"""A1111 compatibility pieces without a server: the X/Y/Z axis table, script_args reading, extras sizes."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from PIL import Image

from webui.api.sdapi_scripts import script_call
from webui.generation.extras import ExtrasRequest, upscale_image
from webui.generation.image_ops import ImageTooLargeError
from webui.generation.requests import RequestError
from webui.upscaling.catalog import UpscalerCatalog
from webui.upscaling.service import UpscalerService
from webui.xyz.a1111_axes import A1111_AXES, a1111_axis_list, resolve_a1111_axis
from webui.xyz.axes import default_axis_registry
from webui.xyz.ranges import AxisValueError


def test_the_axis_table_gives_a1111s_indices_per_tab():
    txt2img = [label for label, _ in a1111_axis_list(False)]
    img2img = [label for label, _ in a1111_axis_list(True)]
    assert len(txt2img) == 38 and len(img2img) == 37
    assert (txt2img[4], txt2img[5], txt2img[7], txt2img[9], txt2img[11], txt2img[27]) == (
        "Steps", "Hires steps", "Prompt S/R", "Sampler", "Checkpoint name", "VAE")
    assert (img2img[5], img2img[6], img2img[10], img2img[26]) == ("CFG Scale", "Image CFG Scale", "Checkpoint name", "VAE")
    registry = default_axis_registry()
    assert all(ours is None or ours in registry for _, _, ours in A1111_AXES)


def test_axis_types_resolve_by_index_or_label_and_unsupported_ones_are_named():
    registry = default_axis_registry()
    assert resolve_a1111_axis(11, False, registry, "X axis") == "Checkpoint name"
    assert resolve_a1111_axis(10, True, registry, "X axis") == "Checkpoint name"
    assert resolve_a1111_axis("cfg scale", False, registry, "X axis") == "CFG Scale"
    assert resolve_a1111_axis("Size", False, registry, "X axis") == "Size"  # one of ours A1111 lacks
    with pytest.raises(AxisValueError, match="'Eta'.*not supported"):
        resolve_a1111_axis(21, False, registry, "X axis")
    with pytest.raises(AxisValueError, match="0..37"):
        resolve_a1111_axis(38, False, registry, "Y axis")
    with pytest.raises(AxisValueError, match="'Wobble' is unknown"):
        resolve_a1111_axis("Wobble", False, registry, "Z axis")


def test_script_args_in_both_a1111_layouts():
    v110 = [4, "1-3", [], 9, "", ["Euler", "Euler a"], 0, "", [], False, True, False, True, 10, False, False]
    call = script_call("X/Y/Z plot", v110, {}, False, save_grid=False)
    assert (call.x.label, call.x.values_text, call.y.label, tuple(call.y.values)) == (
        "Steps", "1-3", "Sampler", ("Euler", "Euler a"))
    assert (call.options.draw_legend, call.options.include_sub_images, call.options.keep_seeds,
            call.options.margin) == (False, True, True, 10)
    v17 = [4, "1-3", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 6, True]
    assert script_call("x/y/z plot", v17, {}, False, save_grid=True).options.margin == 6
    csv = [9, "Euler, DDIM", ["Heun"], 0, "", [], 0, "", [], True, False, False, False, 0, True, False]
    assert script_call("x/y/z plot", csv, {}, False, save_grid=True).x.values_text == "Euler, DDIM"
    assert script_call(None, [], {}, False, save_grid=True) is None
    for args, reason in (([4, "1"] + [None] * 7 + [True, False, False, False, True, False, False, 0, False], "vary_seeds_x"),
                         ([4, "1", [], 0, "", [], 0, "", [], "yes"], "draw_legend"),
                         ([4, 5], "X values must be text")):
        with pytest.raises(HTTPException, match=reason):
            script_call("x/y/z plot", args, {}, False, save_grid=True)


def test_extras_sizes_follow_a1111(tmp_path):
    upscalers = UpscalerService(UpscalerCatalog([tmp_path / "none-here"]))  # the built-ins only

    def upscale(image, request, max_pixels=None):
        return upscale_image(image, request, upscalers, max_pixels)

    image = Image.new("RGB", (30, 10), (9, 9, 9))
    assert upscale(image, ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=2.5).validate(upscalers))[0].size == (75, 25)
    cover = ExtrasRequest(resize_mode=1, upscaler_1="Nearest", upscaling_resize_w=20, upscaling_resize_h=20,
                          upscaling_crop=False).validate(upscalers)
    assert upscale(image, cover)[0].size == (60, 20)
    crop = ExtrasRequest(resize_mode=1, upscaler_1="Nearest", upscaling_resize_w=20, upscaling_resize_h=20).validate(upscalers)
    assert upscale(image, crop)[0].size == (20, 20)
    blended = ExtrasRequest(upscaler_1="Nearest", upscaler_2="Lanczos", extras_upscaler_2_visibility=0.5).validate(upscalers)
    result, info = upscale(image, blended)
    assert result.size == (60, 20) and "Postprocess upscaler 2: Lanczos" in info
    assert upscale(image, ExtrasRequest().validate(upscalers))[0].size == (30, 10)  # "None" keeps the image
    with pytest.raises(ImageTooLargeError):
        upscale(image, ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=8).validate(upscalers), 1000)
    with pytest.raises(RequestError, match="None, Lanczos, Nearest"):
        ExtrasRequest(upscaler_1="R-ESRGAN 4x+").validate(upscalers)
