"""The scheduler with fake "paint" jobs on real worker threads and a real SQLite store: order, positions,
ETA, cancel, interrupt, bounds, failures, events, restart recovery, retention, two workers and affinity."""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading

import pytest

from tests.support.fake_jobs import WAIT, FakeClock, Studio, paint
from webui.jobs.events import EventLog
from webui.jobs.errors import JobCancelled, QueueFullError, SchedulerClosed, UnknownJob, UnknownJobKind
from webui.jobs.job import Job
from webui.jobs.lineup import Lineup
from webui.jobs.progress import JobControl
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobSpec
from webui.jobs.store import INTERRUPTED_BY_RESTART, JobStore
from webui.jobs.worker import Worker


@pytest.fixture
def studio() -> Studio:
    return Studio()


@pytest.fixture
def make(tmp_path, studio):
    """Build schedulers on `tmp_path/jobs.sqlite3` (or another file) and shut them all down afterwards."""
    built: list[Scheduler] = []

    def build(workers: int = 1, path=None, clock=None, holds: tuple[str | None, ...] = (),
              controls: tuple[frozenset[str], ...] = (), probes: tuple = (), **options) -> Scheduler:
        store = JobStore(path or tmp_path / "jobs.sqlite3", clock=clock or FakeClock(),
                         keep_finished=options.pop("keep_finished", 1000))
        scheduler = Scheduler(studio.kinds(), store, clock=clock or FakeClock(), **options)
        built.append(scheduler)
        for number in range(workers):
            model = holds[number] if number < len(holds) else None
            built_controls = controls[number] if number < len(controls) else frozenset()
            scheduler.add_worker(Worker(f"w{number}", "cpu", f"manager{number}", lambda model=model: model,
                                        lambda built=built_controls: built,
                                        probe=probes[number] if number < len(probes) else None))
        return scheduler

    yield build
    for scheduler in built:
        scheduler.shutdown(interrupt_running=True, timeout=WAIT)


def hold(scheduler: Scheduler, studio: Studio, label: str, owner: str | None = None, **options):
    """Submit a job that keeps its worker busy until `studio.release(label)` is set; waits until it runs."""
    job = scheduler.submit(paint(label, owner, hold=True, **options))
    assert studio.started(label).wait(WAIT)
    return job


def test_jobs_run_in_submission_order_with_positions_and_url_safe_ids(make, studio):
    scheduler = make()
    first = hold(scheduler, studio, "first")
    waiting = [scheduler.submit(paint(label)) for label in ("second", "third", "fourth")]
    ids = [job.job_id for job in [first, *waiting]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", job_id) for job_id in ids) and len(set(ids)) == 4
    assert [scheduler.position(job_id) for job_id in ids] == [0, 1, 2, 3]
    assert [job.state for job in scheduler.jobs()] == ["running", "queued", "queued", "queued"]
    assert scheduler.current is first and scheduler.pending == 3
    studio.release("first").set()
    assert [job.result(WAIT) for job in waiting] == [f"painted {label} on manager0" for label in ("second", "third", "fourth")]
    assert [label for label, _ in studio.ran] == ["first", "second", "third", "fourth"]
    assert scheduler.position(ids[0]) is None and first.state == "done"
    record = scheduler.record(ids[1])
    assert (record.state, record.result, record.summary, record.worker) == (
        "done", {"text": "painted second on manager0"}, "paint second", "w0")
    assert record.progress == "step 4/4"


def test_eta_appears_once_a_job_of_the_kind_has_finished(make, studio):
    clock = FakeClock(1000.0)
    scheduler = make(clock=clock)
    measured = hold(scheduler, studio, "measured", units=2)  # starts at t=1000
    waiting = scheduler.submit(paint("waiting", units=3))
    assert scheduler.eta(measured.job_id) is None and scheduler.eta(waiting.job_id) is None
    clock.now = 1010.0
    studio.release("measured").set()
    measured.result(WAIT)  # 10 s for 2 units: 5 s per unit
    assert waiting.result(WAIT)  # finished at once on the frozen clock: 0 s per unit, the mean is 2.5
    busy = hold(scheduler, studio, "busy", units=4)  # starts at t=1010
    queued = scheduler.submit(paint("queued", units=2))
    clock.now = 1012.0
    assert scheduler.eta(busy.job_id) == pytest.approx(2.5 * 4 - 2)
    assert scheduler.eta(queued.job_id) == pytest.approx(8 + 2.5 * 2)
    studio.release("busy").set()
    queued.result(WAIT)
    assert scheduler.eta(queued.job_id) is None  # finished jobs have no ETA


def test_the_measured_speed_survives_a_restart(make, studio):
    clock = FakeClock(0.0)
    first = make(clock=clock)
    measured = hold(first, studio, "measured", units=4)
    clock.now = 8.0
    studio.release("measured").set()
    measured.result(WAIT)  # 2 s per unit, kept in its record
    first.shutdown()
    second = make(workers=0, clock=clock)
    queued = second.submit(paint("next", units=3))
    assert second.eta(queued.job_id) == pytest.approx(6.0)


def test_a_cancelled_waiting_job_never_runs_and_its_place_is_freed(make, studio):
    scheduler = make()
    running = hold(scheduler, studio, "running")
    doomed = scheduler.submit(paint("doomed"))
    later = scheduler.submit(paint("later"))
    assert scheduler.cancel(doomed.job_id) is True
    assert doomed.done and doomed.cancelled and doomed.state == "cancelled"
    assert scheduler.position(later.job_id) == 1
    with pytest.raises(JobCancelled):
        doomed.result(0)
    assert scheduler.cancel(running.job_id) is False  # running: cancel does not touch it
    with pytest.raises(UnknownJob, match="no job with id 'nope'"):
        scheduler.cancel("nope")
    studio.release("running").set()
    assert later.result(WAIT) and running.state == "done"
    assert [label for label, _ in studio.ran] == ["running", "later"]
    assert scheduler.cancel(doomed.job_id) is False and scheduler.record(doomed.job_id).state == "cancelled"
    assert [event.type for event in scheduler.events(doomed.job_id)] == ["queued", "finished"]


def test_interrupt_and_skip_reach_the_running_job_by_id(make, studio):
    scheduler = make()
    job = hold(scheduler, studio, "long")
    waiting = scheduler.submit(paint("next"))
    assert scheduler.interrupt(waiting.job_id) is False  # not running yet
    assert scheduler.skip(job.job_id) is True and job.control.should_stop_batch
    assert scheduler.interrupt(job.job_id) is True  # the held handler stops waiting, as at a step
    assert job.result(WAIT) == "painted long on manager0"  # an interrupted job keeps what it made
    assert job.state == "interrupted" and scheduler.record(job.job_id).state == "interrupted"
    assert job.control.snapshot().step == 0  # it stopped before its first step
    assert waiting.result(WAIT) and waiting.state == "done"  # the next job is not affected
    assert scheduler.stop(waiting.job_id) is None  # finished: nothing to stop
    with pytest.raises(UnknownJob):
        scheduler.interrupt("missing")


def test_each_owner_gets_a_share_and_the_server_a_total(make, studio):
    scheduler = make(max_jobs=4, max_jobs_per_owner=2)
    running = hold(scheduler, studio, "held", "alice")
    scheduler.submit(paint("a2", "alice"))
    with pytest.raises(QueueFullError, match="the most one user may have") as mine:
        scheduler.submit(paint("a3", "alice"))
    assert mine.value.per_owner is True
    scheduler.submit(paint("b1", "bob"))
    scheduler.submit(paint("app", None))  # the app's own job counts towards the total only
    with pytest.raises(QueueFullError, match="queue is full") as everyone:
        scheduler.submit(paint("c1", "carol"))
    assert everyone.value.per_owner is False
    assert scheduler.first_position_of("alice") == 0 and scheduler.first_position_of("bob") == 2
    assert len(scheduler.history()) == 4  # the refused ones were never stored
    studio.release("held").set()
    running.result(WAIT)
    assert scheduler.submit(paint("c2", "carol")).result(WAIT)  # room again once jobs finished


def test_unknown_kinds_and_unstorable_requests_are_refused_before_queueing(make, studio):
    scheduler = make()
    with pytest.raises(UnknownJobKind, match="unknown job kind 'sculpt'; known kinds: paint"):
        scheduler.submit(JobSpec("sculpt", "clay"))
    with pytest.raises(ValueError, match="must be frozen"):
        JobSpec("paint", {"label": "mutable"})
    assert scheduler.history() == [] and scheduler.pending == 0


def test_a_failed_job_records_its_error_and_the_scheduler_keeps_running(make, studio):
    scheduler = make()
    broken = scheduler.submit(paint("broken", fail=True))
    with pytest.raises(ValueError, match="no paint for broken"):
        broken.result(WAIT)
    assert broken.state == "failed"
    record = scheduler.record(broken.job_id)
    assert record.state == "failed" and record.error == "ValueError: no paint for broken" and record.result is None
    assert scheduler.events(broken.job_id)[-1].data == {"state": "failed", "error": "ValueError: no paint for broken"}
    assert scheduler.run(paint("fine"), WAIT) == "painted fine on manager0"


def test_events_come_in_order_and_watchers_can_wait_for_new_ones(make, studio):
    scheduler = make()
    job = hold(scheduler, studio, "watched")
    notified: list[int] = []
    scheduler.subscribe(job.job_id, lambda: notified.append(job.events.last_seq))
    scheduler.subscribe(job.job_id, lambda: notified.append(-1))()  # unsubscribed at once: never called
    seen = scheduler.wait_events(job.job_id, 0, WAIT)
    assert [event.type for event in seen] == ["queued", "started"] and seen[1].data == {"worker": "w0"}
    assert scheduler.wait_events(job.job_id, seen[-1].seq, 0.05) == []  # nothing new while it is held
    woke: list = []
    waiter = threading.Thread(target=lambda: woke.extend(scheduler.wait_events(job.job_id, seen[-1].seq, WAIT)))
    waiter.start()
    studio.release("watched").set()
    waiter.join(WAIT)
    assert woke and woke[0].seq == seen[-1].seq + 1
    while not seen or seen[-1].type != "finished":
        new = scheduler.wait_events(job.job_id, seen[-1].seq, WAIT)
        assert new, "the job stopped sending events before it finished"
        seen += new
    assert [event.seq for event in seen] == list(range(1, len(seen) + 1))
    steps = [(event.data["step"], event.data["total"]) for event in seen if event.type == "progress"]
    assert steps == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    kinds = [event.type for event in seen]
    assert kinds.index("preview") == kinds.index("progress") + 3  # right after step 2
    assert seen[-1].data == {"state": "done", "error": None}
    assert notified == [event.seq for event in seen[2:]]  # one call per event after subscribing
    assert scheduler.wait_events(job.job_id, seen[-1].seq, WAIT) == []  # closed: returns at once


def test_a_handler_cannot_submit_a_job_it_must_run_its_sub_steps_inline(make, studio):
    scheduler = make()
    studio.scheduler = scheduler
    nested = scheduler.submit(paint("outer", nest=True))
    with pytest.raises(RuntimeError, match="a job cannot submit another job"):
        nested.result(WAIT)
    assert [record.summary for record in scheduler.history()] == ["paint outer"]
    assert scheduler.run(paint("after"), WAIT)  # and the worker carries on


def test_a_job_keeps_a_bounded_number_of_events_and_always_its_start_and_end(make, studio):
    scheduler = make(max_events_per_job=6)
    job = scheduler.submit(paint("long", steps=50))
    job.result(WAIT)
    events = scheduler.events(job.job_id)
    assert len(events) == 6
    assert [events[0].type, events[1].type, events[-1].type] == ["queued", "started", "finished"]
    assert [event.data["step"] for event in events[2:-1]] == [48, 49, 50]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(events))


def test_queued_jobs_survive_a_restart_and_a_running_one_becomes_interrupted(make, studio, tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = make(path=path)
    running = hold(first, studio, "running")
    queued = first.submit(paint("queued", "alice", units=2))
    crashed = tmp_path / "crashed.sqlite3"  # the file as a process that died now would leave it
    with sqlite3.connect(path) as source, sqlite3.connect(crashed) as target:
        source.backup(target)
    first.shutdown(timeout=0.1)  # a clean stop: the running job finishes later, the queued one stays queued
    studio.release("running").set()
    assert running.result(WAIT) and not queued.done

    reborn = make(path=crashed)
    assert reborn.record(running.job_id).state == "interrupted"
    assert reborn.record(running.job_id).error == INTERRUPTED_BY_RESTART
    restored = reborn.get(queued.job_id)
    assert restored.owner == "alice" and restored.request.units == 2
    assert restored.result(WAIT) == "painted queued on manager0"
    assert reborn.record(queued.job_id).state == "done"

    after_clean_stop = make(path=path)
    assert after_clean_stop.get(queued.job_id).result(WAIT) == "painted queued on manager0"
    assert after_clean_stop.record(running.job_id).state == "done"


def test_retention_prunes_old_records_and_lets_the_kind_forget_them(make, studio):
    scheduler = make(keep_finished=2)
    jobs = [scheduler.run(paint(label), WAIT) for label in ("one", "two", "three")]
    assert len(jobs) == 3
    assert [record.summary for record in scheduler.history()] == ["paint three", "paint two"]
    assert studio.forgotten == [{"label": "one", "units": 1.0, "model": None, "hold": False, "meet": None,
                                 "fail": False, "gpu_fault": False, "steps": 4, "nest": False, "controls": []}]


def test_two_workers_run_two_jobs_at_the_same_time(make, studio):
    scheduler = make(workers=2)
    left = scheduler.submit(paint("left", meet="right"))
    right = scheduler.submit(paint("right", meet="left"))
    # Each handler only finishes once the other has started, so both results prove the overlap.
    assert left.result(WAIT) and right.result(WAIT)
    assert {left.worker_name, right.worker_name} == {"w0", "w1"}
    for job, other in ((left, right), (right, left)):
        started = next(event for event in scheduler.events(job.job_id) if event.type == "started")
        assert started.data["worker"] == job.worker_name != other.worker_name


def test_the_free_worker_holding_the_wanted_model_gets_the_job(make, studio):
    scheduler = make(workers=2, holds=("model-b", "model-a"))
    for round_ in range(8):
        assert scheduler.wait_until_idle(WAIT)
        model = "model-a" if round_ % 2 == 0 else "model-b"
        job = scheduler.submit(paint(f"job{round_}", model=model))
        job.result(WAIT)
        assert job.worker_name == {"model-a": "w1", "model-b": "w0"}[model], f"round {round_}"


def test_among_workers_holding_the_checkpoint_the_one_holding_the_jobs_controlnets_gets_it(make, studio):
    # w0 and w1 hold model-a with different ControlNets built; w2 holds model-b with both of them.
    scheduler = make(workers=3, holds=("model-a", "model-a", "model-b"),
                     controls=(frozenset({"canny"}), frozenset({"depth", "openpose"}), frozenset({"canny", "depth"})))
    expected = [(("model-a", ("canny",)), "w0"), (("model-a", ("depth",)), "w1"),
                (("model-a", ("openpose", "canny")), None),  # one each: w0 or w1 (holding model-a), never w2
                (("model-a", ("depth", "openpose")), "w1"), (("model-b", ("canny",)), "w2"),
                (("model-b", ()), "w2"), ((None, ("depth", "canny")), "w2")]
    for round_ in range(2):
        for number, ((model, controls), worker) in enumerate(expected):
            assert scheduler.wait_until_idle(WAIT)
            job = scheduler.submit(paint(f"job{round_}-{number}", model=model, controls=list(controls)))
            job.result(WAIT)
            if worker is None:
                assert job.worker_name in ("w0", "w1"), (model, controls)
            else:
                assert job.worker_name == worker, (model, controls)


def test_the_lineup_picks_by_checkpoint_first_then_by_the_control_models_held(studio):
    line = Lineup(None, None, 10)
    kind = studio.kind()

    def job(label: str, model: str | None, *controls: str) -> Job:
        return Job(label, paint(label, model=model, controls=list(controls)), kind, JobControl(), EventLog(), 0.0, 1.0)

    def worker(name: str, model: str | None, *controls: str) -> Worker:
        return Worker(name, "cpu", None, lambda: model, lambda: frozenset(controls))

    plain, canny = worker("plain", "model-a"), worker("canny", "model-a", "canny.safetensors")
    elsewhere = worker("elsewhere", "model-b", "canny.safetensors", "depth.safetensors")
    line.waiting = [job("wants-canny", "model-a", "canny.safetensors"), job("plain-job", "model-a")]
    idle = [plain, canny, elsewhere]
    assert line.pick(plain, idle).job_id == "plain-job"  # the ControlNet job waits for the worker holding it
    assert line.pick(canny, idle).job_id == "wants-canny"
    assert line.pick(elsewhere, idle) is None  # both jobs have a worker holding their checkpoint
    assert line.pick(plain, [plain, elsewhere]).job_id == "wants-canny"  # the worker with it is busy
    line.waiting = [job("any-checkpoint", None, "depth.safetensors")]
    assert line.pick(canny, idle) is None and line.pick(elsewhere, idle).job_id == "any-checkpoint"


def test_with_one_worker_busy_the_free_one_takes_the_next_job_whatever_it_holds(make, studio):
    scheduler = make(workers=2, holds=("model-a", "model-b"))
    busy = hold(scheduler, studio, "busy", model="model-a")
    other = scheduler.submit(paint("other", model="model-a"))
    assert other.result(WAIT) and other.worker_name != busy.worker_name
    studio.release("busy").set()
    busy.result(WAIT)


def test_shutdown_interrupts_the_running_job_on_request_and_joins_the_workers(make, studio):
    scheduler = make(workers=2)
    job = hold(scheduler, studio, "endless")
    scheduler.shutdown(interrupt_running=True, timeout=WAIT)
    assert job.done and job.state == "interrupted"
    assert all(worker.join(0) for worker in scheduler.workers)
    with pytest.raises(SchedulerClosed):
        scheduler.submit(paint("too late"))


def test_a_worker_that_cannot_tell_its_model_still_takes_jobs(tmp_path, studio):
    def broken_key() -> str:
        raise OSError("the manager is gone")

    scheduler = Scheduler(studio.kinds(), JobStore(tmp_path / "jobs.sqlite3"))
    scheduler.add_worker(Worker("w0", "cpu", "manager", broken_key))
    scheduler.add_worker(Worker("w1", "cpu", "manager", broken_key))
    try:
        assert scheduler.run(paint("anyway", model="model-a"), WAIT) == "painted anyway on manager"
    finally:
        scheduler.shutdown()
