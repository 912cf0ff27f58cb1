"""Workers on a Ray cluster (`--ray-address local --ray-cpu-workers 2`): a local Ray instance with two CPU
actors beside the app's own CPU worker, one instance for the module. The actors read their models from
their own data folder (`--ray-data-dir`), which lacks one checkpoint the head has."""

from __future__ import annotations

import shutil
import socket
import time

import numpy as np
import pytest
import ray
from PIL import Image

from webui.context import build_context
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.settings import settings_from_args

QUICK = dict(prompt="a red circle on a blue background", width=64, height=64, steps=8, seed=11,
             checkpoint="sd-studio-toy")
LONG = dict(QUICK, steps=150, batch_count=4)  # minutes if nothing stops it
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    head, remote = tmp_path_factory.mktemp("ray-head"), tmp_path_factory.mktemp("ray-machines")
    for data, names in ((head, ("sd-studio-toy", "head-only")), (remote, ("sd-studio-toy",))):
        for name in names:
            shutil.copytree(default_model_folder, data / "models" / "Stable-diffusion" / name)
    context = build_context(settings_from_args([
        "--data-dir", str(head), "--ray-address", "local", "--ray-cpu-workers", "2", "--ray-data-dir", str(remote)]))
    yield context
    context.close()


def ray_workers(ctx) -> list:
    return [worker for worker in ctx.scheduler.workers if worker.name.startswith("ray-")]


def submit_one_per_worker(ctx, **request):
    """As many jobs as workers, submitted while all are idle: each worker takes one of them."""
    assert ctx.scheduler.wait_until_idle(timeout=120)
    jobs = [ctx.generation.submit_txt2img(Txt2ImgRequest(**request)) for _ in ctx.scheduler.workers]
    wait_for(lambda: all(job.worker_name is not None for job in jobs), 60, "every worker to take a job")
    return jobs


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_actors_generate_at_once_like_a_local_worker_and_the_head_saves_their_images(ctx):
    assert sorted(worker.name for worker in ray_workers(ctx)) == [f"ray-cpu0@{HOST}", f"ray-cpu1@{HOST}"]
    # The probe a Ray worker runs after a GPU fault asks its actor, whose own worker serves: no fault.
    assert [worker.probe() for worker in ray_workers(ctx)] == [None, None]
    jobs = submit_one_per_worker(ctx, **QUICK)
    finished = [(job.result(timeout=300), ctx.scheduler.record(job.job_id)) for job in jobs]
    results = {record.worker: result for result, record in finished}
    records = {record.worker: record for _, record in finished}
    assert set(results) == {"cpu#0", f"ray-cpu0@{HOST}", f"ray-cpu1@{HOST}"}
    first, second = records[f"ray-cpu0@{HOST}"], records[f"ray-cpu1@{HOST}"]
    assert first.started_at < second.finished_at and second.started_at < first.finished_at  # at the same time
    local = np.asarray(results["cpu#0"].images[0]).astype(int)
    for name in (f"ray-cpu0@{HOST}", f"ray-cpu1@{HOST}"):
        remote = results[name]
        # Same seed, same model: the same picture. Pixels may differ by one step of 255 (the actors run
        # torch on one thread, the head on two; float sums round differently), never more.
        assert np.abs(np.asarray(remote.images[0]).astype(int) - local).max() <= 1
        assert remote.infotexts == results["cpu#0"].infotexts
        # Saved here, by the head, in its outputs folder, with the infotext inside.
        (saved,) = remote.saved_paths
        assert saved.is_relative_to(ctx.settings.outputs_folder / "txt2img-images")
        with Image.open(saved) as image:
            assert image.info["parameters"] == remote.infotexts[0]
            assert np.array_equal(np.asarray(image), np.asarray(remote.images[0]))
        assert records[name].result["images"] == [str(saved)]

    # img2img travels with its source image.
    source = Image.fromarray(np.asarray(results["cpu#0"].images[0])[:, ::-1].copy())
    jobs = [ctx.generation.submit_img2img(Img2ImgRequest(**QUICK, init_images=(source,), denoising_strength=0.5))
            for _ in ctx.scheduler.workers]
    finished = [(job.result(timeout=300), ctx.scheduler.record(job.job_id).worker) for job in jobs]
    assert {worker for _, worker in finished} == {"cpu#0", f"ray-cpu0@{HOST}", f"ray-cpu1@{HOST}"}
    local = next(np.asarray(result.images[0]).astype(int) for result, worker in finished if worker == "cpu#0")
    for result, _ in finished:
        assert np.abs(np.asarray(result.images[0]).astype(int) - local).max() <= 1
        assert result.saved_paths[0].is_relative_to(ctx.settings.outputs_folder / "img2img-images")


def test_progress_and_previews_come_back_and_skip_and_interrupt_reach_the_actor(ctx):
    jobs = submit_one_per_worker(ctx, **LONG)
    remote_jobs = [job for job in jobs if job.worker_name.startswith("ray-")]
    assert len(remote_jobs) == 2
    wait_for(lambda: all(job.control.snapshot().step >= 2 and job.control.snapshot().preview is not None
                         for job in remote_jobs), 120, "steps and a live preview from each actor")
    for job in remote_jobs:
        ctx.scheduler.skip(job.job_id)
    wait_for(lambda: all(job.control.snapshot().batch_index >= 1 for job in remote_jobs), 120, "the next batch")
    for job in jobs:
        ctx.scheduler.interrupt(job.job_id)
    for job in remote_jobs:
        result = job.result(timeout=60)
        record = ctx.scheduler.record(job.job_id)
        assert record.state == "interrupted" and result.interrupted
        assert len(result.images) < 4 and record.progress.startswith("step ")
        first_batch = [event.data["step"] for event in job.events.after(0)
                       if event.type == "progress" and event.data["batch_index"] == 0]
        assert 2 <= max(first_batch) < LONG["steps"]  # the skip ended the first batch early
    for job in jobs:
        job.wait(timeout=60)


def test_a_checkpoint_missing_on_the_ray_machines_fails_there_with_the_machine_named(ctx):
    jobs = submit_one_per_worker(ctx, **dict(QUICK, checkpoint="head-only"))
    for job in jobs:
        job.wait(timeout=300)
    outcomes = {ctx.scheduler.record(job.job_id).worker: ctx.scheduler.record(job.job_id) for job in jobs}
    assert outcomes["cpu#0"].state == "done"
    for name in (f"ray-cpu0@{HOST}", f"ray-cpu1@{HOST}"):
        assert outcomes[name].state == "failed"
        assert f"worker {name} on machine {HOST}" in outcomes[name].error
        assert "head-only" in outcomes[name].error


def test_an_actor_that_dies_mid_job_fails_its_job_and_gets_no_more(ctx):
    jobs = submit_one_per_worker(ctx, **LONG)
    wait_for(lambda: all(job.control.snapshot().step >= 1 for job in jobs), 120, "every job to start")
    victim = next(worker for worker in ray_workers(ctx) if worker.name == f"ray-cpu0@{HOST}")
    victims_job = next(job for job in jobs if job.worker_name == victim.name)
    ray.kill(victim.actor)
    with pytest.raises(RuntimeError, match=f"worker ray-cpu0@{HOST} on machine {HOST} died while running the job"):
        victims_job.result(timeout=60)
    assert ctx.scheduler.record(victims_job.job_id).state == "failed"
    for job in jobs:
        if job is not victims_job:
            ctx.scheduler.interrupt(job.job_id)
            job.result(timeout=60)
    assert [worker.name for worker in ctx.scheduler.workers] == ["cpu#0", f"ray-cpu1@{HOST}"]
    after = submit_one_per_worker(ctx, **QUICK)
    for job in after:
        job.result(timeout=300)
    assert {ctx.scheduler.record(job.job_id).worker for job in after} == {"cpu#0", f"ray-cpu1@{HOST}"}
