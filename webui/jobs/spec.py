"""Jobs as data: a `JobSpec` says what to do, a `JobKind` says how, and `JobKinds` is the table of kinds.

A job used to be a closure over the one model manager, so it could not be stored, listed, shown in a
queue tab or handed to another worker. A spec is a kind name plus a frozen request: it can be encoded
to JSON and kept in the job store (queued jobs survive a restart), and any worker can run it through
the kind's handler, which receives that worker's resources (its model manager).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from webui.jobs.errors import UnknownJobKind
from webui.jobs.progress import JobControl

if TYPE_CHECKING:
    from webui.jobs.worker import Worker

_MUTABLE_TYPES = (dict, list, set, bytearray)


@dataclass(frozen=True)
class JobSpec:
    """What to run: the kind's name, its request (frozen, so nobody changes a job after it was queued),
    and the user it belongs to (None for the app's own jobs)."""

    kind: str
    request: Any
    owner: str | None = None

    def __post_init__(self) -> None:
        request = self.request
        mutable_dataclass = (dataclasses.is_dataclass(request) and not isinstance(request, type)
                             and not type(request).__dataclass_params__.frozen)  # type: ignore[attr-defined]
        if mutable_dataclass or isinstance(request, _MUTABLE_TYPES):
            raise ValueError(f"a job's request must be frozen (a frozen dataclass, a tuple or a scalar), "
                             f"not a {type(request).__name__}")


def _no_model(request: Any) -> str | None:
    return None


def _no_controls(request: Any) -> tuple[str, ...]:
    return ()


def _unit_cost(request: Any) -> float:
    return 1.0


def _no_result_record(result: Any) -> Any:
    return None


def _nothing_to_forget(encoded_request: dict[str, Any]) -> None:
    return None


def _first_message(messages: list[str]) -> str:
    return next((message for message in messages if message), "")


def _reports_progress(part_request: Any) -> bool:
    return True


@dataclass(frozen=True)
class Splitter:
    """How a kind's job is split into parts that run at once on several free workers (`webui.jobs.fanout`).

    `split(request, n)` returns at most n part requests that together do the request's work (one, or the
    request itself alone: not worth splitting); a part request is data like any request, and the kind's `run`
    must accept it. `gather(request, part_results)` turns the parts' results, in part order, into the result
    one worker would have returned for `request`. `message(part_messages)` makes the whole job's progress
    message from the parts' (by default the first part's that says anything). `reports(part_request)` says
    whether a part's progress is part of the job's (a part that only serves another part reports none).
    """

    split: Callable[[Any, int], tuple[Any, ...]]
    gather: Callable[[Any, list[Any]], Any]
    message: Callable[[list[str]], str] = _first_message
    reports: Callable[[Any], bool] = _reports_progress


@dataclass(frozen=True)
class JobKind:
    """One row of the kinds table: how to run, store and describe a kind of job.

    `run(worker, request, control)` does the work on the worker's thread with the worker's resources and
    reports progress through `control`; sub-steps (X/Y/Z cells, batch folders) run inline there.
    `encode`/`decode` turn a request into a JSON-able dict and back (images inside a request are the
    kind's business, e.g. PNG files it writes next to the store; `forget` removes them when the record is
    pruned). `model_key` names the checkpoint the job wants, so the worker already holding it gets the
    job; `control_keys` name the control models (ControlNet files) it wants, so among the workers holding
    its checkpoint (or when none does) the one that holds the most of them gets it. `summary` is the
    one-line text of the Queue tab. `cost` is the job's work in units that scale with its run time
    (steps x pixels x images), so one measured job of a kind gives the ETA of others.
    `result_record` turns a result into JSON for the history (file names, infotexts). `splitter` (None: never
    split) lets the scheduler run one job on several free workers at once.
    """

    name: str
    run: Callable[[Worker, Any, JobControl], Any]
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[dict[str, Any]], Any]
    model_key: Callable[[Any], str | None] = _no_model
    control_keys: Callable[[Any], tuple[str, ...]] = _no_controls
    summary: Callable[[Any], str] = repr
    cost: Callable[[Any], float] = _unit_cost
    result_record: Callable[[Any], Any] = _no_result_record
    forget: Callable[[dict[str, Any]], None] = _nothing_to_forget
    splitter: Splitter | None = None


class JobKinds:
    """The table of kinds the scheduler can run; a spec with any other kind is refused with the list."""

    def __init__(self, kinds: Iterable[JobKind] = ()):
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind) -> None:
        """Add a kind; a second kind under the same name is an error (it would silently replace the first)."""
        if kind.name in self._kinds:
            raise ValueError(f"a job kind named {kind.name!r} is registered already")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise UnknownJobKind(f"unknown job kind {name!r}; known kinds: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds
