"""Workers on other machines through Ray (`--ray-address`): each GPU of the cluster becomes a Ray actor
running the app's own engine (webui.jobs.ray_actor), and a `RayWorker` stands for it in the scheduler.

Why Ray: it already starts processes on the machines of a cluster, places them by GPU, moves bytes and
reports a process's death; SD Studio adds nothing of its own for that. The scheduler treats a `RayWorker`
like any worker (the lineup prefers the worker holding a job's checkpoint), except that it takes only the
kinds that can travel (`RemoteKind`: txt2img and img2img), leaving the rest (training, merges, folders of
this machine) to the local workers. Requests go out as data, images and infotexts come back as bytes and
are saved here; progress is polled and mirrored into the job's `JobControl`, and an interrupt or skip on it
is passed on. An actor that dies fails its job with the reason, and its worker leaves the scheduler.

Ray is an optional dependency: it is imported only when `--ray-address` is given.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from webui.jobs.device_faults import GpuFault
from webui.jobs.errors import WorkerLost, WorkerStartError
from webui.jobs.job import Job
from webui.jobs.progress import JobControl
from webui.jobs.ray_actor import RemoteWorker
from webui.jobs.remote import RemoteKind, WorkerEngine
from webui.jobs.scheduler import Scheduler
from webui.jobs.worker import Worker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0   # an address that does not answer within this is refused at start
ACTOR_START_TIMEOUT_S = 600.0  # each actor imports torch and builds its engine; a cold machine is slow
POLL_S = 0.25              # how often a running remote job's progress is read
LOCAL = "local"


class RayNotInstalled(WorkerStartError):
    """--ray-address was given but the `ray` package is not installed."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayNotInstalled("--ray-address needs Ray: install it with `pip install ray` "
                              "(or `pip install -e .[ray]` in the SD Studio folder)") from None
    return ray


def probe_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address that does not answer within `timeout` with a clear message (ray.init would retry
    for a long time first). 'auto' and 'local' have nothing to probe: Ray answers those itself at once."""
    if address in ("auto", LOCAL):
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname or parts.port is None:
        raise WorkerStartError(f"--ray-address {address!r} must be 'auto', 'local', HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as error:
        reason = (f"no answer within {timeout:.0f} s" if isinstance(error, TimeoutError)
                  else (error.strerror or str(error)).lower())
        raise WorkerStartError(f"the Ray cluster at {address} does not answer ({reason}); is `ray start --head` "
                               f"running there, and is the port reachable from here?") from None


def check_ray_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """What the start-up checks before anything slow: Ray is installed and the address answers."""
    import_ray()
    probe_address(address, timeout)


def connect(address: str, cpu_workers: int, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """Connect this process to the cluster (or start a local instance for 'local'); returns the ray module."""
    probe_address(address, timeout)
    ray = import_ray()
    options: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
    try:
        if address == LOCAL:
            import os

            ray.init(num_cpus=max(os.cpu_count() or 1, cpu_workers), **options)
        else:
            ray.init(address=address, **options)
    except Exception as error:  # ConnectionError, a version mismatch, a refused client connection
        hint = ("" if address in ("auto", LOCAL) else "; if the cluster uses Ray's token authentication (`ray start` "
                "turns it on in Ray 2.60), start SD Studio with RAY_AUTH_MODE=token and the cluster's token "
                "(docs/MULTI_GPU.md)")
        raise WorkerStartError(f"could not connect to the Ray cluster at {address}: {_first_line(error)}{hint}") from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """One actor to start: its worker name's stem, its device on its machine, and the Ray resources it takes."""

    label: str
    device: str
    num_gpus: int
    num_cpus: int


def plan_actors(cluster_gpus: int, cpu_workers: int) -> list[ActorPlan]:
    """One actor per GPU of the cluster, then `cpu_workers` CPU actors; refused when that makes none."""
    plans = [ActorPlan(f"ray-gpu{index}", "cuda", 1, 1) for index in range(cluster_gpus)]
    plans += [ActorPlan(f"ray-cpu{index}", "cpu", 0, 1) for index in range(cpu_workers)]
    if not plans:
        raise WorkerStartError("the Ray cluster has no GPUs; start CPU workers on it with --ray-cpu-workers N")
    return plans


def remote_settings(settings: Any, device: str) -> Any:
    """The settings an actor builds its engine from: one worker on its device, its machine's data folder,
    no Ray of its own, and none of the head's secrets (logins, the webhook key)."""
    data_dir = settings.ray_data_dir or settings.data_dir
    return dataclasses.replace(settings, device=device, device_ids=(), workers=1, ray_address="", ray_cpu_workers=0,
                               ray_data_dir=None, data_dir=Path(data_dir), auth=(), webhook_secret="",
                               allow_webhooks=False)


class RayWorker(Worker):
    """A worker whose jobs run in a Ray actor. `resources` is the actor handle; its thread on the head
    sends each job, mirrors progress and passes interrupts on. `key_of` maps the checkpoint title the
    actor holds to this machine's model key, so the lineup's affinity compares like with like."""

    def __init__(self, name: str, device: str, actor: Any, ray: Any, kinds: dict[str, RemoteKind], host: str,
                 key_of: Callable[[str | None], str | None], held: str | None = None):
        super().__init__(name, device, actor, current_model_key=lambda: key_of(self._held), probe=self._remote_fault)
        self.actor = actor
        self.host = host
        self._ray = ray
        self._kinds = kinds
        self._held = held
        self._lost = False

    def __repr__(self) -> str:
        return f"RayWorker({self.name!r}, host={self.host!r}, device={self.device!r})"

    def accepts(self, job: Job) -> bool:
        return not self._lost and job.kind in self._kinds

    @property
    def takes_parts(self) -> bool:
        return False  # a split job's part requests hold in-process objects; they do not travel

    @property
    def lost(self) -> bool:
        return self._lost

    def run_job(self, job: Job) -> Any:
        codec = self._kinds[job.kind]
        where = f"worker {self.name} on machine {self.host}"
        try:
            answer = self._follow(self.actor.run.remote(job.kind, codec.request_to_wire(job.request)), job.control)
        except self._ray.exceptions.RayActorError as error:
            self._lost = True
            raise WorkerLost(f"{where} died while running the job: {_first_line(error)}") from None
        finally:
            self._forget_job()
        self._held = answer.get("checkpoint")
        if "error" in answer:
            kind, _, message = answer["error"].partition(": ")
            if kind == GpuFault.__name__:  # the actor's GPU failed: this worker waits for it (`_remote_fault`)
                raise GpuFault(f"{where}: {message}")
            raise RuntimeError(f"{where}: {answer['error']}")
        return codec.result_from_wire(job.request, answer["result"])

    def _remote_fault(self) -> str | None:
        """The probe after a GPU fault: the actor's own worker probes its GPU; this asks whether it still waits."""
        try:
            return self._ray.get(self.actor.device_fault.remote(), timeout=30)
        except Exception as error:  # an actor that does not answer has not recovered
            return f"the actor did not answer: {_first_line(error)}"

    def _follow(self, pending: Any, control: JobControl) -> dict[str, Any]:
        """Wait for the actor's answer, mirroring its progress into `control` and passing stops on."""
        mirror = _ProgressMirror(control)
        while True:
            done, _ = self._ray.wait([pending], timeout=POLL_S)
            if control.interrupted:  # sent again each poll: it may arrive before the actor started the job
                self.actor.interrupt.remote()
            elif control.should_stop_batch and not mirror.skip_sent:
                self.actor.skip.remote()
                mirror.skip_sent = True
            if done:
                return self._ray.get(pending)
            mirror.apply(self._ray.get(self.actor.progress.remote(mirror.preview_serial)))

    def _forget_job(self) -> None:
        if not self._lost:
            try:
                self.actor.finish.remote()
            except Exception:  # the actor may have gone: the next job finds out
                log.debug("could not tell %s its job ended", self.name, exc_info=True)


class _ProgressMirror:
    """Replays an actor's progress snapshots into the head's JobControl (which emits the job's events)."""

    def __init__(self, control: JobControl):
        self._control = control
        self._shape: tuple[int, int] | None = None
        self._batch = 0
        self._step = 0
        self._message = ""
        self.preview_serial = 0
        self.skip_sent = False

    def apply(self, snapshot: dict[str, Any] | None) -> None:
        if snapshot is None or snapshot["state"] == "queued":
            return
        control = self._control
        shape = (snapshot["batch_count"], snapshot["total_steps"])
        if self._shape is None:
            control.start(*shape)
            self._shape = shape
        if snapshot["batch_index"] != self._batch:
            self._batch, self._step, self.skip_sent = snapshot["batch_index"], 0, False
            control.begin_batch(self._batch)
        if snapshot["step"] != self._step or shape != self._shape:
            self._step, self._shape = snapshot["step"], shape
            control.report_step(self._step, snapshot["total_steps"])
        if snapshot["message"] != self._message:
            self._message = snapshot["message"]
            control.set_message(self._message)
        if snapshot["preview"] is not None:
            self.preview_serial = snapshot["preview_serial"]
            with Image.open(io.BytesIO(snapshot["preview"])) as preview:
                control.set_preview(preview.copy())


class RayWorkers:
    """The actors started on the cluster and their workers; `close` ends them (and a local instance)."""

    def __init__(self, ray: Any, workers: list[RayWorker]):
        self._ray = ray
        self.workers = workers

    def close(self) -> None:
        for worker in self.workers:
            if not worker.lost:
                try:
                    self._ray.kill(worker.actor)
                except Exception:
                    log.debug("could not stop %s", worker.name, exc_info=True)
        self._ray.shutdown()


def start_ray_workers(settings: Any, scheduler: Scheduler, kinds: dict[str, RemoteKind],
                      build_engine: Callable[[Any], WorkerEngine],
                      key_of: Callable[[str | None], str | None]) -> RayWorkers:
    """Connect to `settings.ray_address`, start one actor per planned GPU/CPU worker, wait until each has
    built its engine, and add their workers to `scheduler`. WorkerStartError with the reason otherwise."""
    ray = connect(settings.ray_address, settings.ray_cpu_workers)
    try:
        plans = plan_actors(int(ray.cluster_resources().get("GPU", 0)), settings.ray_cpu_workers)
        actor_class = ray.remote(RemoteWorker)
        actors = [actor_class.options(num_gpus=plan.num_gpus, num_cpus=plan.num_cpus, max_concurrency=4)
                  .remote(build_engine, remote_settings(settings, plan.device), plan.label) for plan in plans]
        descriptions = _wait_ready(ray, actors, plans)
    except BaseException:
        ray.shutdown()
        raise
    workers = [RayWorker(f"{plan.label}@{info['host']}", info["device"], actor, ray, kinds, info["host"], key_of,
                         info["checkpoint"])
               for plan, actor, info in zip(plans, actors, descriptions)]
    for worker, info in zip(workers, descriptions):
        scheduler.add_worker(worker)
        log.info("Ray worker %s (pid %s, %s) takes %s jobs", worker.name, info["pid"], worker.device,
                 ", ".join(sorted(kinds)))
    return RayWorkers(ray, workers)


def _wait_ready(ray: Any, actors: list[Any], plans: list[ActorPlan]) -> list[dict[str, Any]]:
    pending = {actor.describe.remote(): index for index, actor in enumerate(actors)}
    answers: list[dict[str, Any] | None] = [None] * len(actors)
    deadline = time.monotonic() + ACTOR_START_TIMEOUT_S
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            missing = ", ".join(plans[index].label for index in pending.values())
            raise WorkerStartError(f"the Ray workers {missing} did not start within {ACTOR_START_TIMEOUT_S:.0f} s "
                                   f"(does the cluster have the CPUs/GPUs free?)")
        index = pending.pop(done[0])
        try:
            answers[index] = ray.get(done[0])
        except Exception as error:
            raise WorkerStartError(f"the Ray worker {plans[index].label} could not start: {_first_line(error)}") from None
    return [answer for answer in answers if answer is not None]


def _first_line(error: BaseException) -> str:
    """Ray's errors carry the remote traceback; the job's message keeps its last meaningful line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
