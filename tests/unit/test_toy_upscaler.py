"""The shipped toy 2x upscaler: spandrel takes it for what it is, and it really beats Lanczos on unseen renders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file

from tools.upscaler import quality
from tools.upscaler.toy_pairs import AREA, SOFT, TEST_START, VALIDATION_START, held_out_pair, scene_render
from tools.upscaler.train_toy_upscaler import DEFAULT_OUTPUT, build_model, start_as_interpolator
from tools.upscaler.train_toy_upscaler import main as train
from webui.upscaling.spandrel_architectures import load_architectures

HELD_OUT_IMAGES = 4  # 256 px renders; every one of them must clear the margin, not just their mean
PSNR_MARGIN_DB = 2.0  # the shipped model gained 5.3 to 14.9 dB over Lanczos on each of the first 12 (2026-12-06)


@pytest.fixture(scope="module")
def shipped():
    return load_architectures().load(load_file(str(DEFAULT_OUTPUT)))


def test_the_shipped_file_is_a_small_real_esrgan_compact_2x_model(shipped):
    assert DEFAULT_OUTPUT.suffix == ".safetensors" and DEFAULT_OUTPUT.stat().st_size <= 5 * 1024 * 1024
    assert (shipped.architecture.id, shipped.architecture.name) == ("Compact", "RealESRGAN Compact")
    assert shipped.scale == 2 and shipped.input_channels == 3 and shipped.output_channels == 3
    keys = load_file(str(DEFAULT_OUTPUT)).keys()
    assert all(key.startswith("body.") for key in keys)  # Real-ESRGAN's own layout, no prefix or wrapper
    assert shipped(torch.rand(1, 3, 20, 24)).shape == (1, 3, 40, 48)


@pytest.mark.parametrize("softening", [AREA, SOFT], ids=["area", "soft"])
def test_the_shipped_model_beats_lanczos_on_held_out_renders(shipped, softening):
    shipped.model.eval()
    gains = []
    for index in range(HELD_OUT_IMAGES):
        low, high = held_out_pair(index, 256, softening)
        model_psnr = quality.psnr(quality.model_upscale(shipped, low), high)
        lanczos_psnr = quality.psnr(quality.LANCZOS(low, 2), high)
        gains.append(model_psnr - lanczos_psnr)
    assert min(gains) > PSNR_MARGIN_DB, gains


def test_held_out_scenes_are_not_training_scenes():
    assert TEST_START > VALIDATION_START > 100_000  # training draws scenes 0..--images-1 (1200 by default)
    assert not np.array_equal(np.asarray(scene_render(0, 128)), np.asarray(scene_render(TEST_START, 128)))


def test_the_area_input_is_a_box_downscale_of_the_render():
    low, high = held_out_pair(3, 128, AREA)
    box = np.asarray(high.reduce(2), dtype=int)
    assert low.size == (64, 64) and np.abs(np.asarray(low, dtype=int) - box).max() <= 1


def test_psnr_and_ssim_rank_a_blurred_copy_below_the_image_itself():
    image = scene_render(TEST_START + 1, 128)
    blurred = image.filter(ImageFilter.GaussianBlur(1.5))
    assert quality.psnr(image, image) == math.inf and quality.ssim(image, image) == pytest.approx(1.0)
    assert 15 < quality.psnr(blurred, image) < 40
    assert 0.5 < quality.ssim(blurred, image) < 0.99
    with pytest.raises(ValueError, match="sizes differ"):
        quality.ssim(image, image.resize((64, 64), Image.Resampling.BOX))


def test_the_training_script_writes_a_file_spandrel_loads(tmp_path):
    out, report = tmp_path / "tiny.safetensors", tmp_path / "tiny.json"
    train(["--steps", "3", "--images", "4", "--sizes", "96", "--batch", "2", "--patch", "16", "--num-feat", "8",
           "--num-conv", "2", "--validation-images", "1", "--validate-every", "3", "--out", str(out),
           "--report", str(report)])
    descriptor = load_architectures().load(load_file(str(out)))
    assert descriptor.architecture.id == "Compact" and descriptor.scale == 2 and "8nf" in descriptor.tags
    assert '"step": 3' in report.read_text()


def test_the_interpolator_start_already_upscales_about_as_well_as_bicubic():
    model = build_model(8, 2)
    start_as_interpolator(model)
    model.eval()
    flat = quality.model_upscale(model, Image.new("RGB", (16, 16), (90, 160, 210)))
    assert np.array_equal(np.unique(np.asarray(flat)[2:-2, 2:-2].reshape(-1, 3), axis=0), [[90, 160, 210]])
    low, high = held_out_pair(0, 256, AREA)
    started = quality.psnr(quality.model_upscale(model, low), high)
    assert started > quality.psnr(quality.BICUBIC(low, 2), high) - 1.5
    assert started > quality.psnr(quality.resampler(Image.Resampling.NEAREST)(low, 2), high) + 1.0
