"""img2img, inpaint, outpaint and hires fix on the embedded default model, through the app's queue."""

from __future__ import annotations

import numpy as np
import psutil
import pytest
from PIL import Image

from tests.engine.helpers import inpainting_copy
from webui.context import build_context
from sdstudio_eval.toy_world import render, scene_from_attributes
from webui.generation.denoise import pipeline_for
from webui.generation.image_ops import ImageInputError
from webui.generation.infotext import parse_infotext, read_infotext
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.security.paths import PathRefused
from webui.settings import settings_from_args

SIZE = 64
SMALL = dict(prompt="a large blue square in the center, white background", width=SIZE, height=SIZE, steps=6,
             seed=11, save_images=False)


@pytest.fixture
def ctx(data_dir):
    context = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    yield context
    context.close()


@pytest.fixture(scope="module")
def source() -> Image.Image:
    scene = scene_from_attributes(shape="circle", color="red", background="yellow", size="large")
    return render(scene, size=SIZE)


def left_half_mask(size: int = SIZE) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


def img2img(ctx, source, **fields):
    return ctx.generation.submit_img2img(Img2ImgRequest(init_images=(source,), **{**SMALL, **fields})).result(timeout=300)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_fewer_than_one_step_of_denoising_still_runs_one_step(ctx, source):
    """2 steps at strength 0.3 is 0.6 of a step: diffusers would schedule none and fail; A1111 runs one,
    at the smallest noise level, so the image changes only a little."""
    result = img2img(ctx, source, steps=2, denoising_strength=0.3)
    change = np.abs(pixels(result.images[0]) - pixels(source)).mean()
    assert 0 < change < np.abs(pixels(img2img(ctx, source, steps=2, denoising_strength=1.0).images[0])
                               - pixels(source)).mean()
    assert parse_infotext(result.infotexts[0])["Denoising strength"] == "0.3"


def test_img2img_redraws_the_image_reproducibly_and_strength_zero_keeps_it(ctx, source):
    first = img2img(ctx, source, denoising_strength=0.6)
    again = img2img(ctx, source, denoising_strength=0.6)
    assert first.images[0].size == (SIZE, SIZE)
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(first.images[0]) - pixels(source)).mean() > 3
    untouched = img2img(ctx, source, denoising_strength=0.0)
    assert np.array_equal(pixels(untouched.images[0]), pixels(source))
    fields = parse_infotext(first.infotexts[0])
    assert fields["Denoising strength"] == "0.6"


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_inpaint_changes_only_the_masked_area(ctx, source, fill):
    result = img2img(ctx, source, mask=left_half_mask(), mask_blur=4, inpainting_fill=fill, denoising_strength=0.9)
    out, original = pixels(result.images[0]), pixels(source)
    untouched = slice(SIZE // 2 + 3 * 4, SIZE)  # right of the mask edge plus three blur radii
    assert np.array_equal(out[:, untouched], original[:, untouched])
    assert np.abs(out[:, : SIZE // 2 - 8] - original[:, : SIZE // 2 - 8]).mean() > 2
    fields = parse_infotext(result.infotexts[0])
    assert fields["Mask blur"] == "4"


def test_only_masked_inpaint_works_on_a_crop_and_keeps_the_rest(ctx, source):
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 24, 24))
    result = img2img(ctx, source, mask=mask, mask_blur=2, inpaint_full_res=True, inpaint_full_res_padding=4,
                     denoising_strength=1.0, inpainting_fill=2)
    out, original = pixels(result.images[0]), pixels(source)
    assert np.array_equal(out[40:, :], original[40:, :])
    assert np.array_equal(out[:, 40:], original[:, 40:])
    assert np.abs(out[10:22, 10:22] - original[10:22, 10:22]).mean() > 2
    assert parse_infotext(result.infotexts[0])["Inpaint area"] == "Only masked"


def test_inverted_mask_inpaints_the_unpainted_area(ctx, source):
    result = img2img(ctx, source, mask=left_half_mask(), mask_blur=0, inpainting_mask_invert=1, denoising_strength=0.9)
    out, original = pixels(result.images[0]), pixels(source)
    assert np.array_equal(out[:, : SIZE // 2], original[:, : SIZE // 2])


def test_mask_problems_are_explained_not_fatal(ctx, source):
    resized = img2img(ctx, source, mask=left_half_mask(32), denoising_strength=0.5)
    assert any("mask resized from 32x32 to 64x64" in note for note in resized.warnings)
    empty = img2img(ctx, source, mask=Image.new("L", (SIZE, SIZE), 0), denoising_strength=0.5)
    assert any("mask is empty" in note for note in empty.warnings)
    transparent = source.convert("RGBA")
    transparent.putalpha(Image.new("L", source.size, 0).point(lambda _: 0).resize(source.size))
    see_through = img2img(ctx, transparent, denoising_strength=0.5)
    assert see_through.warnings and any("transparen" in note for note in see_through.warnings)


def test_bad_images_are_refused_before_queueing(ctx, source):
    with pytest.raises(ImageInputError, match="limit is 2048"):
        ctx.generation.submit_img2img(Img2ImgRequest(init_images=(Image.new("RGB", (4096, 64)),), **SMALL))
    with pytest.raises(RequestError, match="input image"):
        ctx.generation.submit_img2img(Img2ImgRequest(**SMALL))
    with pytest.raises(RequestError, match="denoising_strength"):
        ctx.generation.submit_img2img(Img2ImgRequest(init_images=(source,), denoising_strength=1.5, **SMALL))
    assert ctx.scheduler.pending == 0


def test_outpainting_extends_the_canvas_and_keeps_the_original(ctx, source):
    result = img2img(ctx, source, outpaint_right=32, inpainting_fill=0, denoising_strength=0.9, mask_blur=2)
    out = pixels(result.images[0])
    assert out.shape[:2] == (SIZE, SIZE + 32)
    assert np.array_equal(out[:, : SIZE - 8 - 6], pixels(source)[:, : SIZE - 8 - 6])


def test_hires_fix_upscales_in_latent_and_pixel_space(ctx):
    for upscaler in ("Latent", "Lanczos"):
        result = ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, "enable_hr": True, "hr_scale": 1.5,
                                                      "hr_upscaler": upscaler, "hr_second_pass_steps": 4,
                                                      "denoising_strength": 0.5})).result(timeout=300)
        assert result.images[0].size == (96, 96)
        fields = parse_infotext(result.infotexts[0])
        assert fields["Hires upscaler"] == upscaler and fields["Hires upscale"] == "1.5"
    resized = ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, "enable_hr": True, "hr_resize_x": 128,
                                                   "hr_resize_y": 96})).result(timeout=300)
    assert resized.images[0].size == (128, 96)
    with pytest.raises(RequestError, match="hires upscaler"):
        ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, "enable_hr": True, "hr_upscaler": "ESRGAN_4x"}))


def test_modes_share_one_copy_of_the_model(ctx, source):
    img2img(ctx, source, denoising_strength=0.5)  # warm every path once
    process = psutil.Process()
    before = process.memory_info().rss
    for _ in range(3):
        ctx.generation.submit_txt2img(Txt2ImgRequest(**SMALL)).result(timeout=300)
        img2img(ctx, source, denoising_strength=0.5)
        img2img(ctx, source, mask=left_half_mask(), denoising_strength=0.5)
    grown = process.memory_info().rss - before
    with ctx.manager.checkout() as model:
        for mode in ("img2img", "inpaint"):
            wrapper = pipeline_for(model, mode)
            assert wrapper.unet is model.pipeline.unet and wrapper.vae is model.pipeline.vae
            assert wrapper.text_encoder is model.pipeline.text_encoder
    assert grown < 30 * 2**20, f"memory grew by {grown / 2**20:.0f} MiB while switching modes"


def test_inpainting_checkpoint_is_detected_and_used(data_dir, default_model_folder, source):
    inpainting_copy(default_model_folder, data_dir / "models" / "Stable-diffusion" / "toy-inpainting")
    context = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    try:
        record = context.catalog.find("toy-inpainting")
        assert record.architecture.unet_in_channels == 9
        request = Img2ImgRequest(init_images=(source,), mask=left_half_mask(), checkpoint=record.title,
                                 denoising_strength=1.0, mask_blur=0, **SMALL)
        result = context.generation.submit_img2img(request).result(timeout=300)
        out, original = pixels(result.images[0]), pixels(source)
        assert np.array_equal(out[:, SIZE // 2:], original[:, SIZE // 2:])
        assert np.abs(out[:, : SIZE // 2] - original[:, : SIZE // 2]).mean() > 2
        plain = context.generation.submit_txt2img(Txt2ImgRequest(checkpoint=record.title, **SMALL)).result(timeout=300)
        assert plain.images[0].size == (SIZE, SIZE)
    finally:
        context.close()


def test_batch_folder_processes_every_image_with_same_named_masks(ctx, source, data_dir):
    # Batch folders live in the data folder's datasets/ and outputs/ (a plain name means datasets/<name>).
    inputs, masks, outputs = data_dir / "datasets" / "in", data_dir / "datasets" / "masks", data_dir / "outputs" / "out"
    inputs.mkdir()
    masks.mkdir()
    source.save(inputs / "first.png")
    source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(inputs / "second.png")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.png").write_bytes(b"\x89PNG truncated")
    left_half_mask().save(masks / "first.png")
    template = Img2ImgRequest(denoising_strength=0.9, mask_blur=0, **SMALL)
    result = ctx.generation.submit_img2img_batch(template, "in", str(outputs), "masks").result(timeout=300)
    assert sorted(p.name for p in outputs.iterdir()) == ["first.png", "second.png"]
    assert any("broken.png" in note for note in result.warnings)
    first = pixels(Image.open(outputs / "first.png"))
    assert np.array_equal(first[:, SIZE // 2:], pixels(source)[:, SIZE // 2:])  # masked: right half kept
    assert parse_infotext(read_infotext(Image.open(outputs / "second.png")))["Denoising strength"] == "0.9"
    with pytest.raises(RequestError, match="does not exist"):
        ctx.generation.submit_img2img_batch(template, "missing", str(outputs))


def test_batch_folders_outside_datasets_and_outputs_are_refused_before_anything_runs(ctx, source, data_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    source.save(outside / "private.png")
    (data_dir / "datasets" / "in").mkdir(parents=True)
    source.save(data_dir / "datasets" / "in" / "mine.png")
    (data_dir / "datasets" / "leads-out").symlink_to(outside, target_is_directory=True)
    template = Img2ImgRequest(denoising_strength=0.0, **SMALL)
    for folder in (str(outside), str(data_dir), "../outside", str(data_dir / "datasets" / "leads-out"), "~", "%2e%2e%2f"):
        with pytest.raises(PathRefused, match="datasets/, outputs/"):
            ctx.generation.submit_img2img_batch(template, folder, "")
        with pytest.raises(PathRefused, match="outputs/, datasets/"):
            ctx.generation.submit_img2img_batch(template, "in", folder)
        with pytest.raises(PathRefused, match="datasets/, outputs/"):
            ctx.generation.submit_img2img_batch(template, "in", "", folder)
    assert ctx.scheduler.pending == 0 and sorted(path.name for path in outside.iterdir()) == ["private.png"]
    assert not (data_dir / "models" / "mine.png").exists()
