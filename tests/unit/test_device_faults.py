"""A GPU that fails during a job: the job fails with a message saying so, its worker takes no jobs until a
probe of its device succeeds, and the other workers go on (issue #22's bad input). The failing GPU is played
by a handler that raises CUDA's own error text and a probe the test controls."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tests.support.fake_jobs import WAIT, paint
from tests.unit.test_scheduler import make, studio  # noqa: F401  (fixtures)
from webui.errors import user_error
from webui.jobs.device_faults import GpuFault, explain_device_fault, is_device_fault, probe_device
from webui.jobs.out_of_memory import explain_out_of_memory

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


def _wrapped(inner: BaseException) -> RuntimeError:
    try:
        try:
            raise inner
        except type(inner) as error:
            raise RuntimeError("the UNet call failed") from error
    except RuntimeError as wrapped:
        return wrapped


def test_a_wrapped_cuda_error_becomes_a_gpu_fault_and_other_errors_pass_through():
    original = _wrapped(RuntimeError(ILLEGAL_ACCESS))
    explained = explain_device_fault(original, "cuda:1")
    assert isinstance(explained, GpuFault) and explained.__cause__ is original
    assert user_error(explained).startswith("The GPU (cuda:1) failed during this job: the UNet call failed.")
    assert "other workers go on" in user_error(explained) and "Generation failed" not in user_error(explained)
    assert explain_device_fault(explained, "cuda:1") is explained
    out_of_memory = explain_out_of_memory(_wrapped(torch.cuda.OutOfMemoryError("CUDA out of memory.")), "cpu")
    for error in (ValueError("width must be a multiple of 8"), RuntimeError("shape mismatch"), out_of_memory,
                  RuntimeError("CUDA error: out of memory"),
                  RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
                               "non-contiguous input.")):
        assert not is_device_fault(error)
        assert explain_device_fault(error, "cuda:0") is error


def test_a_healthy_device_passes_the_probe():
    assert probe_device("cpu") is None


class ControlledProbe:
    """The failed GPU's probe: fails until the test heals it; counts the probes."""

    def __init__(self) -> None:
        self.healed = threading.Event()
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return None if self.healed.is_set() else "RuntimeError: CUDA error: unspecified launch failure"


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 3 * WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def test_a_worker_whose_gpu_fails_takes_no_jobs_until_its_probe_succeeds(make, studio):  # noqa: F811
    probe = ControlledProbe()
    scheduler = make(workers=2, holds=("m0", None), probes=(probe, None))
    faulty = scheduler.workers[0]
    broken = scheduler.submit(paint("broken", model="m0", gpu_fault=True))
    with pytest.raises(GpuFault, match="The GPU \\(cpu\\) failed during this job: CUDA error: an illegal memory access"):
        broken.result(WAIT)
    assert ("broken", "w0") in studio.ran
    _wait_until(lambda: faulty.fault is not None, "the worker knows its GPU failed")
    # w0 still holds m0, but while its GPU fails the jobs that want m0 go to w1, also after a failed probe
    assert scheduler.run(paint("after 1", model="m0"), WAIT) == "painted after 1 on manager1"
    _wait_until(lambda: probe.calls >= 1, "the first probe")
    assert scheduler.run(paint("after 2", model="m0"), WAIT) == "painted after 2 on manager1"
    assert not scheduler.wait_until_idle(0.1)   # w0 is not a free worker while it waits for its GPU
    probe.healed.set()
    assert scheduler.wait_until_idle(3 * WAIT)  # the next probe succeeds: w0 is free again
    assert faulty.fault is None
    assert scheduler.run(paint("healed", model="m0"), WAIT) == "painted healed on manager0"


def test_a_worker_waiting_for_its_gpu_stops_when_the_scheduler_shuts_down(make, studio):  # noqa: F811
    probe = ControlledProbe()
    scheduler = make(workers=1, probes=(probe,))
    worker = scheduler.workers[0]
    with pytest.raises(GpuFault):
        scheduler.submit(paint("broken", gpu_fault=True)).result(WAIT)
    _wait_until(lambda: worker.fault is not None, "the worker knows its GPU failed")
    started = time.monotonic()
    scheduler.shutdown(timeout=WAIT)
    assert worker.join(0) and time.monotonic() - started < WAIT / 2


@pytest.mark.parametrize("error, status", [
    (explain_device_fault(RuntimeError(ILLEGAL_ACCESS), "cuda:1"), 503),
    (explain_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."), "cpu"), 507),
])
def test_the_api_answers_a_gpu_failure_with_its_status_and_the_message(error, status):
    from fastapi import HTTPException

    from webui.api.common import translate_errors

    @translate_errors
    def route():
        raise error

    with pytest.raises(HTTPException) as answer:
        route()
    assert answer.value.status_code == status and answer.value.detail == str(error)
