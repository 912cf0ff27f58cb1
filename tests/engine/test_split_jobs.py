"""One request on two CPU workers (`--workers 2 --cfg-split`): a txt2img/img2img job of several images and
an X/Y/Z plot are split over both workers and give what one worker gives: the same seeds, infotexts, grid
and images (bitwise when the parts draw whole batches; within one level of 255 when a batch is cut, since
the UNet then sees a smaller batch), with the images saved in order. A one-image job runs the two CFG halves
of its UNet calls on the two workers, each with its own copy of the model, and gives one worker's image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.engine.helpers import perturbed_copy
from webui.context import build_context
from webui.generation.infotext import read_infotext
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.settings import settings_from_args
from webui.xyz.plot import AxisSpec
from webui.xyz.service import XyzOptions, run_xyz

OTHER = "toy-other"  # held by no worker until the CFG split test (the module's last) loads it
REQUEST = dict(prompt="a red circle on a blue background", width=64, height=64, steps=6, seed=21)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    from tests.conftest import with_default_model

    data = with_default_model(tmp_path_factory.mktemp("split-jobs"), default_model_folder)
    perturbed_copy(default_model_folder, data / "models" / "Stable-diffusion" / OTHER, seed=3)
    context = build_context(settings_from_args(["--data-dir", str(data), "--workers", "2", "--cfg-split"]))
    yield context
    context.close()


def one_worker(ctx, request):
    """What the first worker alone makes of the request (generated inline, nothing saved)."""
    request = ctx.generation.prepare(request.with_changes(save_images=False))
    return ctx.generation.generate_inline(ctx.models.managers[0], request)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def workers_of(ctx, job) -> list[str]:
    return ctx.scheduler.record(job.job_id).worker.split(", ")


def test_a_txt2img_batch_is_split_over_both_workers_and_equals_one_workers_images(ctx):
    request = Txt2ImgRequest(**REQUEST, batch_size=2, batch_count=2)
    job = ctx.generation.submit_txt2img(request)
    result = job.result(timeout=600)
    assert sorted(workers_of(ctx, job)) == ["cpu#0", "cpu#1"]
    reference = one_worker(ctx, request)
    assert result.seeds == reference.seeds == [21, 22, 23, 24]
    assert result.infotexts == reference.infotexts
    for split, alone in zip(result.images, reference.images):  # whole batches per worker: bitwise equal
        assert np.array_equal(pixels(split), pixels(alone))
    assert np.array_equal(pixels(result.grid), pixels(reference.grid))
    names = [path.name for path in result.saved_paths]
    assert [name.split("-", 1)[1] for name in names] == ["21.png", "22.png", "23.png", "24.png"]
    assert names == sorted(names)  # numbered in image order, as one worker numbers them
    assert [read_infotext(Image.open(path)) for path in result.saved_paths] == result.infotexts
    assert result.grid_path is not None and result.grid_path.is_file()


def test_an_img2img_batch_cut_in_two_matches_one_worker_within_a_level(ctx):
    source = Image.new("RGB", (64, 64), (200, 40, 40))
    request = Img2ImgRequest(**REQUEST, batch_size=3, init_images=(source,), denoising_strength=0.6,
                             save_images=False)
    job = ctx.generation.submit_img2img(request)
    result = job.result(timeout=600)
    assert len(workers_of(ctx, job)) == 2
    reference = one_worker(ctx, request)
    assert result.seeds == reference.seeds == [21, 22, 23]
    assert result.infotexts == reference.infotexts
    assert len(result.images) == 3
    for split, alone in zip(result.images, reference.images):
        assert np.abs(pixels(split) - pixels(alone)).max() <= 1


def test_xyz_cells_run_on_both_workers_and_the_grid_is_one_workers_grid(ctx):
    base = Txt2ImgRequest(**{**REQUEST, "steps": 3}, save_images=False)
    options = XyzOptions(include_sub_images=True, save_grid=False)
    job = ctx.xyz.submit(base, AxisSpec("Seed", "1, 2, -1"), AxisSpec("Steps", "2, 3"), None, options)
    plot = job.result(timeout=600)
    assert sorted(workers_of(ctx, job)) == ["cpu#0", "cpu#1"]
    assert plot.result.completed_cells == 6 and not plot.interrupted
    alone = run_xyz(ctx.generation, ctx.models.managers[0], plot.result.plan, options)
    assert np.array_equal(pixels(plot.grid), pixels(alone.grid))
    assert plot.infotexts == alone.infotexts and "Fixed X Values" in plot.infotext
    assert len({image.tobytes() for image in plot.images[1:]}) == 6  # six different cells
    assert job.control.snapshot().message == "Done: 6 of 6 cells"  # what one worker says at the end


def test_one_image_runs_its_cfg_halves_on_both_workers_and_equals_one_workers_image(ctx):
    # Neither worker holds OTHER: the partner loads its own copy when the first half-call reaches it.
    request = Txt2ImgRequest(**REQUEST, checkpoint=OTHER, sampler_name="Euler a", save_images=False)
    job = ctx.generation.submit_txt2img(request)
    result = job.result(timeout=600)
    assert sorted(workers_of(ctx, job)) == ["cpu#0", "cpu#1"]
    assert [manager.current.name for manager in ctx.models.managers] == [OTHER, OTHER]
    reference = one_worker(ctx, request)
    assert result.seeds == reference.seeds == [21] and result.infotexts == reference.infotexts
    assert np.abs(pixels(result.images[0]) - pixels(reference.images[0])).max() <= 1
