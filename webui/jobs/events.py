"""A job's ordered, bounded event log that watchers can block on (the source of server-sent events).

Polling a snapshot loses what happened between two polls and says nothing about order; an SSE client
instead asks for "everything after the last sequence number I saw" and waits for more. The log is
bounded so that a job with thousands of steps cannot grow memory without limit: when full, the oldest
progress events go first, while `queued`, `started` and `finished` are always kept; a reader that fell
behind sees a gap in the sequence numbers, never a reordering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

QUEUED, STARTED, PROGRESS, PREVIEW, FINISHED = "queued", "started", "progress", "preview", "finished"
_KEPT_TYPES = (QUEUED, STARTED, FINISHED)


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened to a job; `seq` starts at 1 and grows by one per event of that job."""

    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0


class EventLog:
    """The events of one job. `append` is called by the scheduler; `after` and `wait_after` by watchers."""

    def __init__(self, max_events: int = 256, clock: Callable[[], float] = time.time):
        if max_events < len(_KEPT_TYPES) + 1:
            raise ValueError(f"max_events must be at least {len(_KEPT_TYPES) + 1}")
        self._max = max_events
        self._clock = clock
        self._events: list[JobEvent] = []
        self._next_seq = 1
        self._closed = False
        self._changed = threading.Condition()
        self._subscribers: list[Callable[[], None]] = []

    def append(self, type_: str, **data: Any) -> JobEvent:
        """Record an event; `finished` closes the log (nothing follows it)."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the job has finished; its event log is closed")
            event = JobEvent(self._next_seq, type_, data, self._clock())
            self._next_seq += 1
            self._events.append(event)
            if len(self._events) > self._max:
                self._drop_oldest_droppable()
            self._closed = type_ == FINISHED
            self._changed.notify_all()
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber()
            except Exception:  # a watcher's bug must not break the job that reports
                log.exception("an event subscriber failed")
        return event

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback()` after every new event, on the thread that appended it; returns the function
        that unsubscribes. For async watchers (an SSE endpoint): the callback only hands the news to
        the event loop (`loop.call_soon_threadsafe`), so no thread is held while a client waits."""
        with self._changed:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._changed:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _drop_oldest_droppable(self) -> None:
        for index, event in enumerate(self._events):
            if event.type not in _KEPT_TYPES:
                del self._events[index]
                return

    def after(self, seq: int) -> list[JobEvent]:
        """The retained events with a sequence number above `seq`, in order."""
        with self._changed:
            return [event for event in self._events if event.seq > seq]

    def wait_after(self, seq: int, timeout: float | None) -> list[JobEvent]:
        """Like `after`, but block up to `timeout` seconds until there is at least one such event; an
        empty list means nothing new happened (an SSE endpoint then sends a keep-alive). It returns at
        once when the log is closed, since nothing can follow `finished`."""
        with self._changed:
            self._changed.wait_for(lambda: self._next_seq - 1 > seq or self._closed, timeout)
            return [event for event in self._events if event.seq > seq]

    @property
    def closed(self) -> bool:
        """True once the `finished` event was appended."""
        with self._changed:
            return self._closed

    @property
    def last_seq(self) -> int:
        with self._changed:
            return self._next_seq - 1
