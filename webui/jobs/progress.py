"""Progress, preview and interrupt/skip state shared between a running job and whoever watches it.

The engine only sees `JobControl`: it reports steps and checks the flags once per step (from diffusers'
`callback_on_step_end`), so the UI and the API can show progress and stop work without touching it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

MIN_PREVIEW_SECONDS = 0.5


@dataclass
class ProgressSnapshot:
    """A consistent copy of a job's progress for display (A1111's /progress fields)."""

    state: str
    step: int
    total_steps: int
    batch_index: int
    batch_count: int
    fraction: float
    eta_seconds: float | None
    elapsed_seconds: float
    preview: Any | None          # a PIL image of the latest live preview
    preview_serial: int
    message: str


@dataclass
class JobControl:
    """The engine-facing side of a job: report progress, honour interrupt and skip."""

    preview_every_n_steps: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _interrupted: bool = False
    _skipped: bool = False
    _step: int = 0
    _total_steps: int = 0
    _batch_index: int = 0
    _batch_count: int = 1
    _started: float | None = None
    _preview: Any = None
    _preview_serial: int = 0
    _message: str = ""
    _state: str = "queued"
    _last_preview_at: float = 0.0
    _listener: Callable[[], None] | None = field(default=None, repr=False)

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call `listener()` after each change of step, batch or preview (the scheduler turns these into
        the job's events). It runs on the engine's thread, so it must be quick and must not raise."""
        self._listener = listener

    def _notify(self) -> None:
        listener = self._listener
        if listener is not None:
            listener()

    # ---- called by the engine ----
    def start(self, batch_count: int, total_steps: int) -> None:
        with self._lock:
            self._state, self._started = "running", time.monotonic()
            self._batch_count, self._total_steps = max(1, batch_count), max(1, total_steps)
            self._batch_index = self._step = 0
        self._notify()

    def begin_batch(self, batch_index: int) -> None:
        with self._lock:
            self._batch_index, self._step, self._skipped = batch_index, 0, False
        self._notify()

    def report_step(self, step: int, total: int | None = None) -> None:
        """`total` corrects the step count for samplers that take two model calls per step (Heun, DPM2)."""
        with self._lock:
            self._step = step
            if total:
                self._total_steps = total
        self._notify()

    def wants_preview(self, step: int) -> bool:
        """Every N steps, but at most every `MIN_PREVIEW_SECONDS`: a preview copies latents to the CPU,
        which stalls the GPU's queue of launched kernels, so fast GPUs must not pay it every step."""
        if self.preview_every_n_steps <= 0 or step % self.preview_every_n_steps:
            return False
        now = time.monotonic()
        if now - self._last_preview_at < MIN_PREVIEW_SECONDS:
            return False
        self._last_preview_at = now
        return True

    def set_preview(self, image: Any) -> None:
        with self._lock:
            self._preview, self._preview_serial = image, self._preview_serial + 1
        self._notify()

    def set_message(self, message: str) -> None:
        with self._lock:
            self._message = message

    def show_combined(self, batch_index: int, step: int, total_steps: int, batch_count: int, message: str) -> None:
        """A split job's progress, made of its parts' (webui.jobs.fanout): the parts run at once, so their
        steps are added up and shown as batches of `total_steps` steps."""
        with self._lock:
            if self._started is None:
                self._started = time.monotonic()
            self._state = "running"
            self._batch_index, self._step = batch_index, step
            self._total_steps, self._batch_count = max(1, total_steps), max(1, batch_count)
            self._message = message
        self._notify()

    def finish(self, state: str) -> None:
        with self._lock:
            self._state = state

    @property
    def should_stop_batch(self) -> bool:
        """True when the current batch must end now (interrupt or skip)."""
        return self._interrupted or self._skipped

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    # ---- called by watchers ----
    def interrupt(self) -> None:
        self._interrupted = True

    def skip(self) -> None:
        self._skipped = True

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            done_steps = self._batch_index * self._total_steps + self._step
            total = self._batch_count * self._total_steps
            fraction = min(1.0, done_steps / total) if total else 0.0
            elapsed = time.monotonic() - self._started if self._started else 0.0
            eta = elapsed / fraction - elapsed if fraction > 0 else None
            return ProgressSnapshot(
                state=self._state, step=self._step, total_steps=self._total_steps,
                batch_index=self._batch_index, batch_count=self._batch_count, fraction=fraction,
                eta_seconds=eta, elapsed_seconds=elapsed, preview=self._preview,
                preview_serial=self._preview_serial, message=self._message,
            )
