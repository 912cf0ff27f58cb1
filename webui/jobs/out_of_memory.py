"""A job that runs the GPU out of memory fails with a message the user can act on, and the worker recovers.

torch raises `torch.cuda.OutOfMemoryError` ("CUDA out of memory. Tried to allocate 2.50 GiB ...") from deep
inside a pipeline; some libraries wrap it in their own error. Left alone, the message tells a user little
and the allocator keeps the failed job's cached blocks, so the next job on that GPU may fail too. This is
the one place that recognises the error, frees what the failed job left in the allocator's cache, and
words the message. The worker calls it for every failed job; everything else passes through unchanged.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

ADVICE = ("Try a smaller width/height or batch size, hires fix at a lower scale, fewer ControlNet units, or "
          "tiled upscaling with a smaller tile (Settings: ESRGAN_tile). The server goes on; the next job runs.")


class GpuOutOfMemory(RuntimeError):
    """The job needed more GPU memory than was free. Not the server's fault and not a bug: the same
    request fits with smaller sizes; the message says which knobs matter."""


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what caused it (or was being handled when it was raised), and so on; each once. Libraries
    wrap CUDA's errors in their own, so the rules here and in webui.jobs.device_faults look down the chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_out_of_memory(error: BaseException | None) -> bool:
    """True for torch's out-of-memory error, also when a library wrapped it (its cause or message says so)."""
    return any(type(link).__name__ == "OutOfMemoryError" or "out of memory" in str(link).lower()
               for link in error_chain(error))


def explain_out_of_memory(error: BaseException, device: Any) -> BaseException:
    """`error` itself unless it is an out-of-memory; then the allocator's cache on `device` is emptied
    and a GpuOutOfMemory (caused by the original, for the log) says what happened and what to change."""
    if isinstance(error, GpuOutOfMemory) or not is_out_of_memory(error):
        return error
    freed_note = _release_cached_memory(device)
    explained = GpuOutOfMemory(f"The GPU ran out of memory during this job{freed_note}. {ADVICE}")
    explained.__cause__ = error
    return explained


def _release_cached_memory(device: Any) -> str:
    """Drop the failed job's garbage and the allocator's cached blocks; say how much memory is in use after."""
    import torch  # only reached after a job failed with an out-of-memory error

    gc.collect()
    torch_device = torch.device(device) if not isinstance(device, torch.device) else device
    if torch_device.type != "cuda" or not torch.cuda.is_available():
        return ""
    with torch.cuda.device(torch_device):
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
    return f" ({(total - free) / 2**30:.1f} of {total / 2**30:.1f} GiB in use after it ended)"
