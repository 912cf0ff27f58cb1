"""Model manager: hot-swap by weight copy, rebuild on a new layout, bounded memory, serialization."""

from __future__ import annotations

import gc
import threading
import time

import psutil
import pytest
import torch

from tests.engine.helpers import different_layout_copy, perturbed_copy
from webui.context import build_context
from webui.generation.requests import Txt2ImgRequest
from webui.models.checkpoint_loading import CheckpointLoadError
from webui.security.network import HubDisabled
from webui.settings import settings_from_args

REQUEST = dict(prompt="a circle", width=64, height=64, steps=3, seed=11, sampler_name="Euler")


@pytest.fixture
def ctx(data_dir, default_model_folder):
    checkpoints = data_dir / "models" / "Stable-diffusion"
    perturbed_copy(default_model_folder, checkpoints / "variant-b", seed=1)
    different_layout_copy(default_model_folder, checkpoints / "wide-c")
    (checkpoints / "truncated.safetensors").write_bytes(b"\x00" * 7)
    context = build_context(settings_from_args(["--data-dir", str(data_dir), "--checkpoints-in-ram", "2"]))
    yield context
    context.close()


def unet_state(ctx) -> dict[str, torch.Tensor]:
    with ctx.manager.checkout() as model:
        return {k: v.clone() for k, v in model.pipeline.unet.state_dict().items()}


def image_bytes(ctx, checkpoint: str) -> bytes:
    return ctx.generation.submit_txt2img(Txt2ImgRequest(**REQUEST, checkpoint=checkpoint)).result(300).images[0].tobytes()


def test_catalog_lists_usable_models_and_explains_the_broken_one(ctx):
    names = {record.name: record for record in ctx.catalog.records()}
    assert {"sd-studio-toy", "variant-b", "wide-c", "truncated"} <= set(names)
    assert names["truncated"].error and "truncated" in names["truncated"].error.lower() or "cannot read" in names["truncated"].error.lower()
    assert all(names[n].usable for n in ("sd-studio-toy", "variant-b", "wide-c"))
    assert names["sd-studio-toy"].architecture.family == "sd1"


def test_same_layout_switch_copies_weights_and_matches_a_fresh_load(ctx, data_dir):
    image_a = image_bytes(ctx, "sd-studio-toy")
    image_b = image_bytes(ctx, "variant-b")
    assert ctx.manager.switch_count == {"rebuilt": 1, "copied": 1}
    assert image_a != image_b
    # The copied-in weights give exactly what loading B from scratch gives.
    fresh = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    try:
        assert fresh.generation.submit_txt2img(Txt2ImgRequest(**REQUEST, checkpoint="variant-b")).result(300).images[0].tobytes() == image_b
    finally:
        fresh.close()
    assert image_bytes(ctx, "sd-studio-toy") == image_a
    assert ctx.manager.switch_count == {"rebuilt": 1, "copied": 2}


def test_different_layout_rebuilds(ctx):
    ctx.models.select_checkpoint("sd-studio-toy")
    ctx.models.select_checkpoint("wide-c")
    assert ctx.manager.switch_count["rebuilt"] == 2
    with ctx.manager.checkout() as model:
        assert model.pipeline.unet.config.layers_per_block == 2
    assert len(image_bytes(ctx, "wide-c")) > 0


def test_switching_back_and_forth_twenty_times_keeps_memory_flat(ctx):
    process = psutil.Process()
    for _ in range(5):  # warm-up: first reads fill the RAM cache and the allocator's pools
        ctx.models.select_checkpoint("sd-studio-toy")
        ctx.models.select_checkpoint("variant-b")
    gc.collect()
    baseline = process.memory_info().rss
    device_baseline = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    for _ in range(20):
        ctx.models.select_checkpoint("sd-studio-toy")
        ctx.models.select_checkpoint("variant-b")
    gc.collect()
    growth = process.memory_info().rss - baseline
    model_bytes = ctx.manager.weights_of(ctx.manager.current).nbytes()
    assert ctx.manager.switch_count["copied"] == 49 and ctx.manager.switch_count["rebuilt"] == 1
    # A leaked copy per switch would grow RSS by 40 models; allocator noise stays within a few.
    assert growth < 5 * model_bytes, f"RSS grew {growth / 1e6:.1f} MB over 40 switches (model {model_bytes / 1e6:.1f} MB)"
    if torch.cuda.is_available():
        assert torch.cuda.memory_allocated() == device_baseline


def test_corrupt_checkpoint_is_refused_and_the_loaded_model_keeps_working(ctx):
    ctx.models.select_checkpoint("variant-b")
    before = unet_state(ctx)
    with pytest.raises(ValueError, match="truncated"):
        ctx.models.select_checkpoint("truncated")
    with pytest.raises(LookupError, match="not found"):
        ctx.models.select_checkpoint("no-such-model")
    assert ctx.manager.current.name == "variant-b"
    after = unet_state(ctx)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(image_bytes(ctx, "variant-b")) > 0


def test_switch_requested_during_generation_waits_for_it(ctx):
    ctx.models.select_checkpoint("sd-studio-toy")
    job = ctx.generation.submit_txt2img(Txt2ImgRequest(**{**REQUEST, "steps": 30}))
    while job.control.snapshot().step < 2 and not job.done:
        time.sleep(0.01)
    switched_at: list[float] = []

    def switch():
        ctx.manager.select("variant-b")
        switched_at.append(time.monotonic())

    thread = threading.Thread(target=switch)
    thread.start()
    result = job.result(300)
    finished_at = time.monotonic()
    thread.join(60)
    assert switched_at and switched_at[0] >= finished_at - 0.5
    assert "Model: sd-studio-toy" in result.infotexts[0]
    assert ctx.manager.current.name == "variant-b"


def test_unusable_records_cannot_be_loaded_directly(ctx):
    record = ctx.catalog.find("truncated")
    from webui.models.checkpoint_loading import read_checkpoint_weights

    with pytest.raises(CheckpointLoadError, match="truncated"):
        read_checkpoint_weights(record, torch.float32)


def test_hub_repo_id_is_refused_without_allow_hub_and_keeps_the_model(ctx, data_dir):
    ctx.models.select_checkpoint("variant-b")
    for attempt in (lambda: ctx.models.select_checkpoint("someone/some-model"),
                    lambda: ctx.generation.submit_txt2img(Txt2ImgRequest(**REQUEST, checkpoint="someone/some-model"))):
        with pytest.raises(HubDisabled, match="--allow-hub") as refused:
            attempt()
        assert "models/Stable-diffusion" in str(refused.value)
    assert ctx.scheduler.pending == 0 and ctx.manager.current.name == "variant-b"
    assert not (data_dir / "models" / "Stable-diffusion" / "someone--some-model").exists()


def test_hub_repo_id_offline_with_allow_hub_gives_a_clear_error_and_keeps_the_model(data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = build_context(settings_from_args(["--data-dir", str(data_dir), "--allow-hub"]))
    try:
        ctx.models.select_checkpoint("sd-studio-toy")
        with pytest.raises(LookupError, match="could not be downloaded from the Hugging Face Hub"):
            ctx.models.select_checkpoint("someone/some-model")
        assert ctx.manager.current.name == "sd-studio-toy"
    finally:
        ctx.close()
