"""Timing and memory helpers shared by the speed suite's sections (bench/speed_suite.py).

Every figure is a wall time around work that ends with a device synchronize, so queued CUDA kernels are
counted; peak GPU memory is `torch.cuda.max_memory_allocated` reset right before the timed calls (None on
the CPU, where there is no such counter).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

MIB = 1024 * 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    """Peak allocated GPU memory since the last `reset_peak`, in MiB (None on the CPU)."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / MIB, 1)
    return None


def free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def timed(device: str, function: Callable[[], object]) -> float:
    """Seconds for one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - start


def measured(device: str, function: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Median seconds of `repeats` calls after `warmup` untimed ones, with the peak GPU memory of the timed calls."""
    for _ in range(warmup):
        function()
    reset_peak(device)
    samples = [timed(device, function) for _ in range(repeats)]
    return {"s": statistics.median(samples), "peak_gpu_mib": peak_mib(device)}


def drop_from_page_cache(paths: list[Path]) -> str:
    """Ask the kernel to forget the files' cached pages (fsync first: only clean pages are dropped).

    Returns how it went, for the report: "posix_fadvise(DONTNEED)" or why it could not be done."""
    if not hasattr(os, "posix_fadvise"):
        return "not dropped: os.posix_fadvise is not available here"
    try:
        for path in paths:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
    except OSError as error:
        return f"not dropped: {error}"
    return "posix_fadvise(DONTNEED)"


def files_of(path: Path) -> list[Path]:
    """A single-file checkpoint, or every file of a diffusers folder."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
