"""A fake job kind for scheduler tests: "paint" requests whose handler a test can hold, fail or pair up.

The handler does no real work; it reports four steps and a preview through the JobControl as a
generation does, and it blocks on `threading.Event`s the test controls, so tests synchronise on events
instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from webui.jobs.progress import JobControl
from webui.jobs.spec import JobKind, JobKinds, JobSpec
from webui.jobs.worker import Worker

WAIT = 10.0  # seconds a handler waits for the test before it gives up (only reached when a test fails)


@dataclass(frozen=True)
class Paint:
    """A request: `hold` waits for `studio.release(label)` (or an interrupt); `meet` waits until job `meet` has started too;
    `fail` raises; `gpu_fault` raises the error a failing GPU gives; `units` is the cost; `model` the checkpoint it wants, `controls` its control models;
    `nest` submits a job from inside the handler (through `studio.scheduler`), which the scheduler must
    refuse."""

    label: str
    units: float = 1.0
    model: str | None = None
    hold: bool = False
    meet: str | None = None
    fail: bool = False
    gpu_fault: bool = False
    steps: int = 4
    nest: bool = False
    controls: tuple[str, ...] = ()


class Studio:
    """The handler's side of the test: which labels ran on which worker, and the events to hold them."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []
        self.forgotten: list[dict[str, Any]] = []
        self.scheduler: Any = None  # set by a test that needs a handler to reach its scheduler
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def started(self, label: str) -> threading.Event:
        return self._event(f"started:{label}")

    def release(self, label: str) -> threading.Event:
        return self._event(f"release:{label}")

    def run(self, worker: Worker, request: Paint, control: JobControl) -> str:
        with self._lock:
            self.ran.append((request.label, worker.name))
        self.started(request.label).set()
        if request.hold:
            self._hold(request.label, control)
        if request.nest:
            self.scheduler.submit(paint(f"inside {request.label}"))
        if request.meet is not None and not self.started(request.meet).wait(WAIT):
            raise TimeoutError(f"{request.label} never ran at the same time as {request.meet}")
        control.start(1, request.steps)
        for step in range(1, request.steps + 1):
            if control.should_stop_batch:
                break
            control.report_step(step)
            if step == 2:
                control.set_preview(f"preview of {request.label}")
        if request.fail:
            raise ValueError(f"no paint for {request.label}")
        if request.gpu_fault:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                               "asynchronously reported at some other API call")
        return f"painted {request.label} on {worker.resources}"

    def _hold(self, label: str, control: JobControl) -> None:
        """Wait for the test's release, checking the interrupt flag as a generation does at each step."""
        deadline = time.monotonic() + WAIT
        while not self.release(label).wait(0.01) and not control.interrupted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label} was never released")

    def kind(self) -> JobKind:
        return JobKind(
            name="paint", run=self.run, encode=dataclasses.asdict,
            decode=lambda data: Paint(**{**data, "controls": tuple(data.get("controls", ()))}),
            model_key=lambda request: request.model, control_keys=lambda request: request.controls,
            summary=lambda request: f"paint {request.label}",
            cost=lambda request: request.units, result_record=lambda result: {"text": result},
            forget=self.forgotten.append,
        )

    def kinds(self) -> JobKinds:
        return JobKinds([self.kind()])


def paint(label: str, owner: str | None = None, **options: Any) -> JobSpec:
    if isinstance(options.get("controls"), list):  # a request is frozen: its controls are a tuple
        options["controls"] = tuple(options["controls"])
    return JobSpec("paint", Paint(label, **options), owner)


class FakeClock:
    """A wall clock the test moves by hand, for timings, ETA and retention."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
