"""txt2img on the embedded default model, through AppContext and the queue, as the UI uses it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from webui.context import build_context
from webui.generation.conditioning import PromptEncoder, build_conditioning, tokenize_weighted
from webui.generation.infotext import parse_infotext, read_infotext
from webui.generation.requests import RequestError, Txt2ImgRequest
from webui.settings import settings_from_args

SMALL = dict(width=64, height=64, steps=4)


@pytest.fixture
def ctx(data_dir):
    context = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    yield context
    context.close()


def generate(ctx, **fields) -> object:
    return ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, **fields})).result(timeout=300)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_request_and_seed_give_bitwise_identical_images(ctx):
    first = generate(ctx, prompt="a red circle", seed=1234, sampler_name="Euler a")
    second = generate(ctx, prompt="a red circle", seed=1234, sampler_name="Euler a")
    assert first.images[0].tobytes() == second.images[0].tobytes()
    other_seed = generate(ctx, prompt="a red circle", seed=1235, sampler_name="Euler a")
    assert first.images[0].tobytes() != other_seed.images[0].tobytes()


def test_batch_uses_consecutive_seeds_and_saves_images_grid_and_infotext(ctx, data_dir):
    result = generate(ctx, prompt="blue square", negative_prompt="blurry", seed=40, batch_count=2, batch_size=2)
    assert result.seeds == [40, 41, 42, 43]
    assert len(result.images) == 4 and len(result.saved_paths) == 4
    for path, seed in zip(result.saved_paths, result.seeds):
        assert path.parent.parent.name == "txt2img-images"
        assert path.name.endswith(f"-{seed}.png")
        params = parse_infotext(read_infotext(Image.open(path)))
        assert params["Prompt"] == "blue square" and params["Negative prompt"] == "blurry"
        assert params["Seed"] == str(seed) and params["Steps"] == "4" and params["Size-1"] == "64"
        assert params["Model"] == "sd-studio-toy" and len(params["Model hash"]) == 10
    assert result.grid_path is not None and result.grid_path.parent.parent.name == "txt2img-grids"
    assert Image.open(result.grid_path).size == (128, 128)
    # An image of the batch equals the same seed generated alone: seeds, not batch position, decide.
    alone = generate(ctx, prompt="blue square", negative_prompt="blurry", seed=42)
    assert np.abs(pixels(alone.images[0]) - pixels(result.images[2])).max() <= 1


def test_variation_seed_moves_the_image_gradually(ctx):
    base = pixels(generate(ctx, prompt="x", seed=7, subseed=99, subseed_strength=0.0).images[0])
    slight = pixels(generate(ctx, prompt="x", seed=7, subseed=99, subseed_strength=0.1).images[0])
    strong = pixels(generate(ctx, prompt="x", seed=7, subseed=99, subseed_strength=0.9).images[0])
    assert 0 < np.abs(base - slight).mean() < np.abs(base - strong).mean()


@pytest.mark.parametrize("sampler,schedule", [
    ("Euler", "Karras"), ("Euler a", "Automatic"), ("DPM++ 2M", "Karras"), ("DPM++ 2M SDE", "Exponential"),
    ("DPM++ SDE", "Automatic"), ("DPM2", "Automatic"), ("DPM2 a", "Automatic"), ("Heun", "Automatic"),
    ("LMS", "Karras"), ("DDIM", "Automatic"), ("PLMS", "Automatic"), ("UniPC", "SGM Uniform"),
    ("LCM", "Automatic"), ("Euler", "Uniform"),
])
def test_every_required_sampler_generates_a_finite_image(ctx, sampler, schedule):
    result = generate(ctx, prompt="circle", seed=3, sampler_name=sampler, scheduler=schedule, steps=3)
    array = pixels(result.images[0])
    assert array.shape == (64, 64, 3) and array.std() > 0
    assert f"Sampler: {sampler}" in result.infotexts[0]


def test_prompt_features_change_the_conditioning(ctx):
    with ctx.manager.checkout() as model:
        encoder = PromptEncoder(model.pipeline, model.family)
        plain = encoder.encode("a red circle").hidden
        weighted = encoder.encode("a (red:1.5) circle").hidden
        assert plain.shape == weighted.shape == (1, 77, 64)
        assert not torch.allclose(plain, weighted)
        # BREAK starts a new 77-token chunk; >75 tokens also spill into a second chunk.
        assert encoder.encode("a red circle BREAK blue").hidden.shape[1] == 154
        long_prompt = ", ".join(["red circle"] * 40)
        assert len(tokenize_weighted(model.pipeline.tokenizer, long_prompt)) == 2
        assert encoder.encode(long_prompt).hidden.shape[1] == 154
        clip_skip = PromptEncoder(model.pipeline, model.family, clip_skip=2).encode("a red circle").hidden
        assert not torch.allclose(plain, clip_skip)
        # [from:to:when] gives a different embedding after the switch step; negatives are padded to match.
        schedule = build_conditioning(encoder, "[a cat:a dog:2] BREAK x", "", steps=4)
        assert schedule.positive[0] is not schedule.positive[3]
        assert schedule.negative[0].hidden.shape == schedule.positive[0].hidden.shape


def test_prompt_schedule_and_alternation_change_the_image(ctx):
    still = generate(ctx, prompt="a cat", seed=5, sampler_name="Euler")
    edited = generate(ctx, prompt="[a cat:a dog:2]", seed=5, sampler_name="Euler")
    alternating = generate(ctx, prompt="[a cat|a dog]", seed=5, sampler_name="Euler")
    assert still.images[0].tobytes() != edited.images[0].tobytes()
    assert still.images[0].tobytes() != alternating.images[0].tobytes()


def test_styles_are_applied_and_unknown_styles_rejected(ctx, data_dir):
    (data_dir / "styles.csv").write_text('name,prompt,negative_prompt\nvivid,"{prompt}, vivid colors",dull\n')
    result = generate(ctx, prompt="a circle", styles=("vivid",), seed=1)
    assert result.infotexts[0].startswith("a circle, vivid colors\nNegative prompt: dull\n")
    with pytest.raises(RequestError, match="unknown style"):
        ctx.generation.submit_txt2img(Txt2ImgRequest(**SMALL, styles=("nope",)))


@pytest.mark.parametrize("change,message", [
    ({"width": 100}, "multiple of 8"), ({"steps": 0}, "steps 0"), ({"sampler_name": "Bogus"}, "Bogus"),
    ({"scheduler": "Weird"}, "schedule type"), ({"cfg_scale": float("nan")}, "cfg_scale"),
    ({"batch_count": 50, "batch_size": 2}, "exceeds the limit"),
])
def test_bad_values_are_rejected_before_queueing(ctx, change, message):
    with pytest.raises(ValueError, match=message):
        ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, **change}))
    assert ctx.scheduler.pending == 0


def test_interrupt_stops_within_a_step_and_returns_what_is_finished(ctx):
    job = ctx.generation.submit_txt2img(Txt2ImgRequest(width=64, height=64, steps=40, batch_count=5, seed=1, sampler_name="Euler"))
    stopped_at = threading.Event()

    def interrupt_after_first_batch():
        while job.control.snapshot().batch_index < 1 and not job.done:
            time.sleep(0.01)  # a busy loop would starve the worker of the GIL
        ctx.scheduler.interrupt_current()
        stopped_at.set()

    watcher = threading.Thread(target=interrupt_after_first_batch)
    watcher.start()
    result = job.result(timeout=300)
    watcher.join()
    assert stopped_at.is_set() and result.interrupted
    assert 1 <= len(result.images) <= 2  # the finished batch, plus the one cut short
    assert job.control.snapshot().state == "interrupted"
    # The worker is free again afterwards.
    assert len(generate(ctx, prompt="after", seed=2).images) == 1
