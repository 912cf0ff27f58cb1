"""What a Train tab (or API client) needs to follow a training job it did not start or lost track of.

The training job runs on the queue worker; the browser polls. A reloaded browser tab reconnects by reading
the monitor the app context keeps for the latest run: progress, the whole loss history for the plot, the
latest samples, and the result or error once the job ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from webui.security.identity import User
from webui.training.config import TrainingConfig
from webui.training.loop import TrainingProgress, TrainingResult


class TrainingBusyError(RuntimeError):
    """A run is already queued or training; a second one would hide its progress."""


@dataclass
class TrainingMonitor:
    config: TrainingConfig
    owner: str | None = None  # who started the run (a user name; None: the app or the command line)
    user: User | None = None  # the same person with their role: it decides where the run's export goes
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _latest: TrainingProgress | None = None
    _losses: list[tuple[int, float, float]] = field(default_factory=list)  # step, loss, smoothed loss
    _validation_losses: list[tuple[int, float]] = field(default_factory=list)  # step, validation loss
    _samples: tuple[tuple[str, Any], ...] = ()
    _messages: list[str] = field(default_factory=list)
    result: TrainingResult | None = None
    error: str | None = None
    finished: bool = False

    def record(self, progress: TrainingProgress) -> None:
        """The training loop's on_progress callback (called on the worker thread)."""
        with self._lock:
            self._latest = progress
            if progress.loss is not None and (not self._losses or self._losses[-1][0] != progress.step):
                smoothed = progress.smoothed_loss if progress.smoothed_loss is not None else progress.loss
                self._losses.append((progress.step, progress.loss, smoothed))
            if progress.validation_loss is not None and (
                    not self._validation_losses or self._validation_losses[-1][0] != progress.step):
                self._validation_losses.append((progress.step, progress.validation_loss))
            if progress.samples:
                self._samples = progress.samples
            if progress.message and (not self._messages or self._messages[-1] != progress.message):
                self._messages.append(progress.message)

    def finish(self, result: TrainingResult | None = None, error: str | None = None) -> None:
        with self._lock:
            self.result, self.error, self.finished = result, error, True

    @property
    def latest(self) -> TrainingProgress | None:
        with self._lock:
            return self._latest

    def losses(self) -> list[tuple[int, float, float]]:
        with self._lock:
            return list(self._losses)

    def validation_losses(self) -> list[tuple[int, float]]:
        with self._lock:
            return list(self._validation_losses)

    def samples(self) -> tuple[tuple[str, Any], ...]:
        with self._lock:
            return self._samples

    def messages(self) -> list[str]:
        with self._lock:
            return list(self._messages)
