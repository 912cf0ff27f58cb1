"""Seconds per unit of work, measured per job kind, and the ETA of a waiting job derived from them.

A kind's `cost` (steps x pixels x images for a generation) scales with its run time, so the time of
finished jobs divided by their cost predicts any other job of that kind. A kind with no finished job
yet has no estimate: the scheduler answers None rather than a made-up number.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable, Mapping

SAMPLES_PER_KIND = 10


class SpeedBook:
    """The latest `SAMPLES_PER_KIND` measurements of each kind; the estimate is their mean."""

    def __init__(self, history: Mapping[str, Iterable[float]] | None = None):
        self._samples: dict[str, collections.deque[float]] = {}
        for kind, values in (history or {}).items():
            for value in reversed(list(values)):  # the store lists the newest first
                self.add(kind, value)

    def add(self, kind: str, seconds_per_unit: float) -> None:
        self._samples.setdefault(kind, collections.deque(maxlen=SAMPLES_PER_KIND)).append(max(0.0, seconds_per_unit))

    def seconds_per_unit(self, kind: str) -> float | None:
        samples = self._samples.get(kind)
        return sum(samples) / len(samples) if samples else None


def finish_time(busy_for: list[float], free_workers: int, ahead: list[float], own: float) -> float:
    """When a job ends if workers take waiting jobs in order: `busy_for` are the seconds left of the
    running jobs, `ahead` the run times of the jobs waiting before it, `own` its run time."""
    available = sorted(busy_for + [0.0] * free_workers) or [0.0]
    heapq.heapify(available)
    for seconds in ahead:
        heapq.heappush(available, heapq.heappop(available) + seconds)
    return available[0] + own
