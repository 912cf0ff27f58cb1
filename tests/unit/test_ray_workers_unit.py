"""The parts of the Ray workers that need no cluster: flags, the address check, the plan of actors, the
settings an actor gets, how requests and results travel, and how the scheduler treats a worker that takes
only some kinds or is lost. (With a local Ray instance: tests/engine/test_ray_workers.py.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.fake_jobs import WAIT, FakeClock, Studio, paint
from webui.generation.remote import request_from_wire, request_to_wire, result_from_data, result_to_wire, save_returned
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.txt2img import GenerationResult
from webui.jobs.errors import WorkerStartError
from webui.jobs.events import EventLog
from webui.jobs.job import Job
from webui.jobs.lineup import Lineup
from webui.jobs.progress import JobControl
from webui.jobs.ray_workers import plan_actors, probe_address, remote_settings
from webui.jobs.scheduler import Scheduler
from webui.jobs.store import JobStore
from webui.jobs.worker import Worker
from webui.settings import SettingsError, settings_from_args


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_the_ray_flags_are_parsed_and_refused_without_an_address(tmp_path):
    settings = settings_from_args(["--data-dir", str(tmp_path), "--ray-address", "ray://head:10001",
                                   "--ray-cpu-workers", "2", "--ray-data-dir", "/mnt/sdstudio"])
    assert (settings.ray_address, settings.ray_cpu_workers, settings.ray_data_dir) == (
        "ray://head:10001", 2, Path("/mnt/sdstudio"))
    assert settings_from_args(["--data-dir", str(tmp_path)]).ray_address == ""
    with pytest.raises(SettingsError, match="need --ray-address"):
        settings_from_args(["--data-dir", str(tmp_path), "--ray-cpu-workers", "2"])
    with pytest.raises(SettingsError, match="--ray-cpu-workers must be 0 or more"):
        settings_from_args(["--data-dir", str(tmp_path), "--ray-address", "auto", "--ray-cpu-workers", "-1"])


def test_an_address_that_does_not_answer_is_refused_at_once_with_the_reason():
    port = closed_port()
    started = time.monotonic()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(WorkerStartError, match=rf"the Ray cluster at {address} does not answer \(.*refused"):
            probe_address(address, timeout=2)
    assert time.monotonic() - started < 10
    with pytest.raises(WorkerStartError, match="must be 'auto', 'local', HOST:PORT or ray://HOST:PORT"):
        probe_address("head-without-port")
    probe_address("auto")  # Ray answers these itself
    probe_address("local")


def test_each_gpu_of_the_cluster_becomes_an_actor_and_a_cpu_cluster_needs_cpu_workers():
    plans = plan_actors(cluster_gpus=2, cpu_workers=1)
    assert [(plan.label, plan.device, plan.num_gpus) for plan in plans] == [
        ("ray-gpu0", "cuda", 1), ("ray-gpu1", "cuda", 1), ("ray-cpu0", "cpu", 0)]
    with pytest.raises(WorkerStartError, match="has no GPUs; start CPU workers on it with --ray-cpu-workers"):
        plan_actors(cluster_gpus=0, cpu_workers=0)


def test_an_actor_gets_one_worker_its_machines_folder_and_none_of_the_heads_secrets(tmp_path):
    settings = settings_from_args(["--data-dir", str(tmp_path), "--ray-address", "auto", "--ray-data-dir", "/mnt/s",
                                   "--auth", "admin:secret", "--workers", "3"], environ={"SDSTUDIO_WEBHOOK_SECRET": "k"})
    remote = remote_settings(settings, "cuda")
    assert (remote.data_dir, remote.device, remote.workers, remote.ray_address) == (Path("/mnt/s"), "cuda", 1, "")
    assert remote.auth == () and remote.webhook_secret == ""
    assert remote_settings(settings_from_args(["--data-dir", str(tmp_path)]), "cpu").data_dir == tmp_path.resolve()


def test_an_img2img_request_travels_as_data_with_its_images_and_saving_left_to_the_head():
    source = Image.fromarray(np.arange(48 * 32 * 3, dtype=np.uint8).reshape(32, 48, 3))
    request = Img2ImgRequest(prompt="a cat", width=48, height=32, seed=5, init_images=(source,),
                             mask=Image.new("L", (48, 32), 255), styles=("one",))
    wire = request_to_wire(request)
    assert sorted(wire["files"]) == ["init-0.png", "mask.png"]
    back = request_from_wire(wire)
    assert isinstance(back, Img2ImgRequest) and back.save_images is False
    assert back.with_changes(init_images=(), mask=None) == request.with_changes(init_images=(), mask=None,
                                                                                save_images=False)
    assert np.array_equal(np.asarray(back.init_images[0]), np.asarray(source))
    with pytest.raises(ValueError, match="not a plain name"):
        request_from_wire({**wire, "files": {"../escape.png": b""}})


def test_returned_images_are_saved_by_the_head_where_a_local_run_saves_them(tmp_path):
    images = [Image.new("RGB", (16, 16), color) for color in ("red", "blue")]
    result = GenerationResult(images, ["first, Seed: 7", "second, Seed: 8"], [7, 8], [7, 8], "p", "n",
                              warnings=("careful",), model_name="toy")
    returned = result_from_data(result_to_wire(result))
    saved = save_returned(Txt2ImgRequest(prompt="p", batch_size=2), returned, tmp_path)
    assert [path.name for path in saved.saved_paths] == ["00000-7.png", "00001-8.png"]
    assert all(path.parent.parent == tmp_path / "txt2img-images" for path in saved.saved_paths)
    with Image.open(saved.saved_paths[1]) as image:
        assert image.info["parameters"] == "second, Seed: 8"
        assert image.getpixel((0, 0)) == (0, 0, 255)
    assert saved.grid is not None and saved.grid_path.parent.parent == tmp_path / "txt2img-grids"
    assert (saved.warnings, saved.model_name) == (("careful",), "toy")
    unsaved = save_returned(Txt2ImgRequest(prompt="p", save_images=False), result_from_data(result_to_wire(result)),
                            tmp_path / "elsewhere")
    assert unsaved.saved_paths == [] and not (tmp_path / "elsewhere").exists()


class Picky(Worker):
    """A worker that takes only the jobs whose label starts with `prefix`, and is lost after `lives` jobs."""

    def __init__(self, name: str, prefix: str, model: str | None = None, lives: int | None = None):
        super().__init__(name, "remote", None, lambda: model)
        self.prefix, self.lives = prefix, lives

    def accepts(self, job: Job) -> bool:
        return job.request.label.startswith(self.prefix) and not self.lost

    @property
    def lost(self) -> bool:
        return self.lives == 0

    def run_job(self, job: Job):
        try:
            return super().run_job(job)
        finally:
            if self.lives is not None:
                self.lives -= 1


def test_the_lineup_gives_a_worker_only_the_kinds_it_accepts_and_ignores_others_for_the_rest():
    studio = Studio()
    line = Lineup(None, None, 10)

    def job(label: str, model: str | None) -> Job:
        return Job(label, paint(label, model=model), studio.kind(), JobControl(), EventLog(), 0.0, 1.0)

    remote = Picky("remote", "gen", model="model-a")
    local = Worker("local", "cpu", None, lambda: None)
    line.waiting = [job("train", "model-a"), job("gen-1", "model-b")]
    assert line.pick(remote, [remote, local]).job_id == "gen-1"  # "train" is not its kind
    assert line.pick(local, [remote, local]).job_id == "train"  # the remote one holds model-a but cannot take it


def test_a_lost_worker_leaves_the_scheduler_and_the_others_take_the_jobs(tmp_path):
    studio = Studio()
    scheduler = Scheduler(studio.kinds(), JobStore(tmp_path / "jobs.sqlite3", clock=FakeClock()), clock=FakeClock())
    try:
        mortal = Picky("mortal", "", lives=1)
        scheduler.add_worker(Worker("local", "cpu", "manager", lambda: None))
        scheduler.add_worker(mortal)
        first = scheduler.submit(paint("first", hold=True))
        second = scheduler.submit(paint("second", hold=True))
        assert studio.started("first").wait(WAIT) and studio.started("second").wait(WAIT)
        studio.release("first").set()
        studio.release("second").set()
        first.result(WAIT), second.result(WAIT)
        assert mortal.join(WAIT)  # its thread ended after its one job
        assert [worker.name for worker in scheduler.workers] == ["local"]
        assert scheduler.wait_until_idle(WAIT)
        later = [scheduler.submit(paint(f"later-{number}")) for number in range(3)]
        assert {job.result(WAIT) and job.worker_name for job in later} == {"local"}
    finally:
        scheduler.shutdown(interrupt_running=True, timeout=WAIT)
