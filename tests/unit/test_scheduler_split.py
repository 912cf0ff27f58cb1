"""One job split over several free workers (the scheduler's fan-out), with a fake "mural" kind whose tiles
are shared out among real worker threads and a real SQLite store: parts run at once and are gathered in
order, progress and interrupt cover all parts, a failing part fails the job with its reason, and the
split yields to waiting jobs, to the workers holding the checkpoint, and to the setting that turns it off."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from webui.jobs.events import EventLog
from webui.jobs.job import DONE, FAILED, INTERRUPTED, Job
from webui.jobs.lineup import Lineup
from webui.jobs.progress import JobControl
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKind, JobKinds, JobSpec, Splitter
from webui.jobs.store import JobRecord, JobStore
from webui.jobs.worker import Worker

WAIT = 10.0


@dataclass(frozen=True)
class Mural:
    """Paint every tile (2 steps each). `hold`: each part waits, once all `parts_at_once` parts have started,
    until the test releases it or it is interrupted; `fail`: the tile that raises."""

    tiles: tuple[str, ...]
    model: str | None = None
    hold: bool = False
    parts_at_once: int = 1
    fail: str | None = None


@dataclass(frozen=True)
class MuralPart:
    mural: Mural
    tiles: tuple[str, ...]


class Painters:
    """The kind's handler and the test's handles on it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.all_started = threading.Event()
        self._started = 0
        self._lock = threading.Lock()

    def run(self, worker: Worker, request: Mural | MuralPart, control: JobControl) -> list[str]:
        mural, tiles = (request.mural, request.tiles) if isinstance(request, MuralPart) else (request, request.tiles)
        control.start(len(tiles), 2)
        with self._lock:
            self._started += 1
            if self._started >= mural.parts_at_once:
                self.all_started.set()
        if mural.hold:
            deadline = time.monotonic() + WAIT
            while not (self.all_started.is_set() and self.release.wait(0.01)) and not control.interrupted:
                assert time.monotonic() < deadline, "never released"
        painted = []
        for index, tile in enumerate(tiles):
            if control.interrupted:
                break
            control.begin_batch(index)
            if tile == mural.fail:
                raise ValueError(f"no paint for tile {tile}")
            control.report_step(1)
            control.report_step(2)
            painted.append(f"{tile}@{worker.name}")
        return painted

    def kind(self) -> JobKind:
        def split(mural: Mural, parts: int) -> tuple[MuralPart, ...]:
            size = -(-len(mural.tiles) // parts)
            return tuple(MuralPart(mural, mural.tiles[start:start + size]) for start in range(0, len(mural.tiles), size))

        return JobKind("mural", run=self.run, encode=lambda mural: {"tiles": list(mural.tiles)},
                       decode=lambda data: Mural(tuple(data["tiles"])), model_key=lambda mural: mural.model,
                       result_record=lambda painted: {"painted": painted},
                       splitter=Splitter(split, lambda mural, results: [tile for part in results for tile in part]))


@pytest.fixture
def painters() -> Painters:
    return Painters()


@pytest.fixture
def make(tmp_path, painters):
    built: list[Scheduler] = []

    def build(workers: int, holds: tuple[str | None, ...] = (), **options) -> Scheduler:
        scheduler = Scheduler(JobKinds([painters.kind()]), JobStore(tmp_path / f"jobs{len(built)}.sqlite3"), **options)
        built.append(scheduler)
        for number in range(workers):
            model = holds[number] if number < len(holds) else None
            scheduler.add_worker(Worker(f"w{number}", "cpu", None, lambda model=model: model))
        assert scheduler.wait_until_idle(WAIT)
        return scheduler

    yield build
    for scheduler in built:
        scheduler.shutdown(interrupt_running=True, timeout=WAIT)


def workers_of(record: JobRecord) -> list[str]:
    return record.worker.split(", ")


def test_a_job_runs_in_parts_on_all_free_workers_at_once_and_is_gathered_in_order(make, painters):
    scheduler = make(3)
    job = scheduler.submit(JobSpec("mural", Mural(tuple("abcdef"), hold=True, parts_at_once=3)))
    assert painters.all_started.wait(WAIT)  # three parts started before any was released: they run at once
    progress = job.control.snapshot()
    assert (progress.batch_count, progress.total_steps) == (6, 2)  # the whole job's tiles, not one part's
    assert scheduler.position(job.job_id) == 0 and len(scheduler.jobs()) == 1  # one job in the queue
    painters.release.set()
    painted = job.result(WAIT)
    assert [tile.split("@")[0] for tile in painted] == list("abcdef")
    assert len({tile.split("@")[1] for tile in painted}) == 3
    record = scheduler.record(job.job_id)
    assert record.state == DONE and sorted(workers_of(record)) == ["w0", "w1", "w2"]
    assert record.result == {"painted": painted}
    assert job.control.snapshot().fraction == 1.0
    assert [event.type for event in job.events.after(0)].count("started") == 1


def test_a_failing_part_fails_the_job_with_its_reason_stops_the_others_and_the_workers_go_on(make, painters):
    scheduler = make(2)
    job = scheduler.submit(JobSpec("mural", Mural(tuple("abcd"), hold=True, parts_at_once=2, fail="c")))
    assert painters.all_started.wait(WAIT)
    painters.release.set()
    with pytest.raises(ValueError, match="no paint for tile c"):
        job.result(WAIT)
    record = scheduler.record(job.job_id)
    assert record.state == FAILED
    assert "no paint for tile c" in record.error and "part 2 of 2" in record.error
    again = scheduler.submit(JobSpec("mural", Mural(tuple("xy"))))
    assert [tile.split("@")[0] for tile in again.result(WAIT)] == ["x", "y"]


def test_interrupting_the_job_stops_every_part(make, painters):
    scheduler = make(2)
    job = scheduler.submit(JobSpec("mural", Mural(tuple("abcd"), hold=True, parts_at_once=2)))
    assert painters.all_started.wait(WAIT)
    assert scheduler.interrupt(job.job_id)  # never released: only the interrupt ends the parts
    assert job.result(WAIT) == []
    assert scheduler.record(job.job_id).state == INTERRUPTED


def test_free_workers_go_to_waiting_jobs_before_they_take_parts(painters):
    kind = painters.kind()
    free = [Worker(f"w{number}", "cpu", None) for number in range(3)]

    def job(label: str) -> Job:
        return Job(label, JobSpec("mural", Mural((label,))), kind, JobControl(), EventLog(), 0.0, 1.0)

    line = Lineup(None, None, 10)
    assert line.helpers_for(job("a"), free) == free
    line.waiting += [job("b"), job("c")]
    assert line.helpers_for(job("a"), free) == free[:1]  # two of the three free workers take b and c
    line.waiting.append(job("d"))
    assert line.helpers_for(job("a"), free) == []


class _RemoteWorker(Worker):
    """A worker of another process (like a Ray actor): it runs whole jobs, never parts."""

    @property
    def takes_parts(self) -> bool:
        return False


def test_a_worker_of_another_process_takes_no_parts(painters):
    kind = painters.kind()
    local, remote = Worker("local", "cpu", None), _RemoteWorker("remote", "cpu", None)
    whole = Job("a", JobSpec("mural", Mural(("a",))), kind, JobControl(), EventLog(), 0.0, 1.0)
    assert Lineup(None, None, 10).helpers_for(whole, [remote, local]) == [local]


def test_parts_go_to_the_workers_holding_the_checkpoint_first(make, painters):
    scheduler = make(3, holds=("m", None, "m"))
    job = scheduler.submit(JobSpec("mural", Mural(("a", "b"), model="m")))
    job.result(WAIT)
    assert sorted(workers_of(scheduler.record(job.job_id))) == ["w0", "w2"]


def test_splitting_can_be_turned_off(make, painters):
    scheduler = make(2, split_jobs=False)
    job = scheduler.submit(JobSpec("mural", Mural(tuple("abcd"))))
    assert len({tile.split("@")[1] for tile in job.result(WAIT)}) == 1
    assert len(workers_of(scheduler.record(job.job_id))) == 1
