"""The job queue's bounds, cancellation, owners and completion callbacks, on a real worker thread."""

from __future__ import annotations

import threading

import pytest

from webui.jobs.queue import JobCancelled, JobQueue, QueueFullError
from webui.security.identity import ADMIN, User


@pytest.fixture
def queue():
    jobs = JobQueue(preview_every_n_steps=0, max_jobs=4, max_jobs_per_owner=2)
    yield jobs
    jobs.shutdown()


def hold_worker(queue: JobQueue, owner: str | None = None):
    """Submit a job that keeps the worker busy until the returned event is set; waits until it runs."""
    release, started = threading.Event(), threading.Event()

    def work(control):
        started.set()
        release.wait(30)
        return "held"

    job = queue.submit("hold", work, owner)
    assert started.wait(10)
    return job, release


def test_each_owner_gets_a_share_and_the_server_a_total(queue):
    running, release = hold_worker(queue, "alice")
    queue.submit("txt2img", lambda control: None, "alice")
    with pytest.raises(QueueFullError, match="the most one user may have") as mine:
        queue.submit("txt2img", lambda control: None, "alice")
    assert mine.value.per_owner is True
    queue.submit("txt2img", lambda control: None, "bob")
    queue.submit("txt2img", lambda control: None, None)  # the app's own job counts towards the total only
    with pytest.raises(QueueFullError, match="queue is full") as everyone:
        queue.submit("txt2img", lambda control: None, "carol")
    assert everyone.value.per_owner is False
    release.set()
    assert running.result(10) == "held"
    queue.submit("probe", lambda control: None, "carol").result(10)  # room again once jobs finished


def test_a_cancelled_waiting_job_never_runs_and_its_place_is_freed(queue):
    running, release = hold_worker(queue, "alice")
    ran = []
    waiting = queue.submit("txt2img", lambda control: ran.append("yes"), "bob")
    later = queue.submit("txt2img", lambda control: "later", "carol")
    assert queue.position(running) == 0 and queue.position(waiting) == 1 and queue.position(later) == 2
    assert queue.first_position_of("carol") == 2 and queue.first_position_of("nobody") is None
    assert queue.cancel(waiting) is True
    assert waiting.done and waiting.cancelled and queue.position(later) == 1
    with pytest.raises(JobCancelled):
        waiting.result(0)
    release.set()
    assert later.result(10) == "later"
    assert ran == [] and queue.cancel(waiting) is False


def test_cancelling_the_running_job_interrupts_it(queue):
    seen = threading.Event()

    def work(control):
        while not control.interrupted:
            seen.wait(0.01)
        return "stopped"

    job = queue.submit("txt2img", work, "alice")
    while queue.position(job) != 0:
        seen.wait(0.01)
    assert queue.cancel(job) is True
    assert job.result(10) == "stopped" and job.control.snapshot().state == "interrupted"


def test_done_callbacks_run_once_also_when_added_late(queue):
    calls = []
    job = queue.submit("probe", lambda control: 7, "alice")
    job.add_done_callback(lambda finished: calls.append(("early", finished.result(0))))
    job.result(10)
    job.add_done_callback(lambda finished: calls.append(("late", finished.result(0))))
    assert sorted(calls) == [("early", 7), ("late", 7)]


def test_a_failing_callback_does_not_stop_the_worker(queue):
    job = queue.submit("probe", lambda control: 1)
    job.add_done_callback(lambda finished: 1 / 0)
    assert job.result(10) == 1
    assert queue.submit("probe", lambda control: 2).result(10) == 2


def test_only_the_owner_or_an_admin_stops_the_running_job(queue):
    running, release = hold_worker(queue, "alice")
    try:
        assert queue.interrupt_current(User("bob").may_act_on) is False
        assert queue.skip_current(User("bob").may_act_on) is False
        assert not running.control.interrupted
        assert queue.skip_current(User("alice").may_act_on) is True
        assert queue.interrupt_current(User("root", ADMIN).may_act_on) is True
        assert running.control.interrupted
    finally:
        release.set()
    running.result(10)
    assert queue.interrupt_current(User("alice").may_act_on) is False  # nothing runs any more


def test_jobs_record_their_owner_and_run_in_order(queue):
    order = []
    jobs = [queue.submit("probe", lambda control, n=n: order.append(n), owner) for n, owner in
            enumerate(("alice", "bob", None))]
    for job in jobs:
        job.result(10)
    assert order == [0, 1, 2] and [job.owner for job in jobs] == ["alice", "bob", None]
