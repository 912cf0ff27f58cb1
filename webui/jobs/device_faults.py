"""A GPU that fails during a job (a CUDA error other than running out of memory) takes its worker out of the
line until the GPU answers again; the other workers go on (issue #22: "a worker whose GPU fails ... the
scheduler stops sending it jobs until it recovers").

A CUDA fault ("an illegal memory access was encountered", "unspecified launch failure", an ECC error, a
device-side assert) usually leaves the process's context on that GPU unusable, so every later job there would
fail the same way. This is the one place that recognises such an error, words it for the user, and probes
the device; the worker (webui.jobs.worker) waits between probes, backing off, without taking jobs.
"""

from __future__ import annotations

from typing import Any

from webui.jobs.out_of_memory import GpuOutOfMemory, error_chain, is_out_of_memory

# Lower-case pieces of the messages CUDA, cuDNN, cuBLAS and NCCL errors carry when the GPU failed (torch wraps
# them in RuntimeError or, from 2.8, torch.AcceleratorError). cuDNN/cuBLAS "not supported" statuses are left
# out: they refuse one call on a healthy GPU. A CUDA error that was the program's, not the GPU's, costs the
# worker one probe (a second).
FAULT_MARKERS = ("cuda error", "illegal memory access", "device-side assert", "unspecified launch failure",
                 "uncorrectable ecc", "nccl error", "cuda driver error", "cublas_status_execution_failed",
                 "cudnn_status_execution_failed", "cudnn_status_internal_error")


class GpuFault(RuntimeError):
    """The GPU failed during the job. Not the request's fault: its worker takes no jobs until the GPU answers
    a probe again, and the request can be sent again (another worker takes it)."""


def is_device_fault(error: BaseException | None) -> bool:
    """True for a CUDA-side failure that is not an out-of-memory, also when a library wrapped it."""
    if error is None or isinstance(error, GpuOutOfMemory) or is_out_of_memory(error):
        return False
    return any(type(link).__name__ == "AcceleratorError" or any(marker in str(link).lower() for marker in FAULT_MARKERS)
               for link in error_chain(error))


def explain_device_fault(error: BaseException, device: Any) -> BaseException:
    """`error` itself unless it is a device fault; then a GpuFault (caused by the original, for the log)."""
    if isinstance(error, GpuFault) or not is_device_fault(error):
        return error
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    explained = GpuFault(f"The GPU ({device}) failed during this job: {first_line}. Its worker takes no jobs until "
                         "the GPU answers again; the other workers go on, so the request can be sent again.")
    explained.__cause__ = error
    return explained


def probe_device(device: Any) -> str | None:
    """None if `device` computes a tiny sum correctly (and synchronises); else what went wrong."""
    import torch  # only reached after a job failed on the GPU

    torch_device = torch.device(device) if not isinstance(device, torch.device) else device
    try:
        value = torch.ones(4, device=torch_device).sum().item()
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
    except Exception as error:  # any failure means "not yet"
        return f"{type(error).__name__}: {error}"
    return None if value == 4.0 else f"the device computed 1+1+1+1 = {value}"
