"""The RAM cache that model managers (one per worker) share: one read per file and dtype, LRU bound."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import torch

from webui.models.manager import CheckpointRamCache


def _record(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(name.encode())
    return SimpleNamespace(path=path)


def _weights(tag: str):
    return SimpleNamespace(tag=tag, state_dicts={})


def test_two_workers_asking_together_read_the_file_once_and_share_the_weights(tmp_path):
    cache = CheckpointRamCache(capacity=2, pin_memory=False)
    record = _record(tmp_path, "a.safetensors")
    reads, release, started = [], threading.Event(), threading.Event()

    def slow_read():
        reads.append(1)
        started.set()
        release.wait(5)
        return _weights("a")

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load(record, torch.float32, slow_read)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    assert started.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(reads) == 1 and len(results) == 2 and results[0] is results[1]


def test_a_different_dtype_is_a_different_entry_and_the_oldest_is_dropped(tmp_path):
    cache = CheckpointRamCache(capacity=2, pin_memory=False)
    a, b = _record(tmp_path, "a.safetensors"), _record(tmp_path, "b.safetensors")
    first = cache.get_or_load(a, torch.float32, lambda: _weights("a32"))
    assert cache.get_or_load(a, torch.float16, lambda: _weights("a16")).tag == "a16"
    assert cache.get_or_load(a, torch.float32, lambda: _weights("again")) is first
    cache.get_or_load(b, torch.float32, lambda: _weights("b32"))  # evicts a16, the least recently used
    assert len(cache) == 2
    assert cache.get_or_load(a, torch.float16, lambda: _weights("reread")).tag == "reread"


def test_a_failed_read_caches_nothing(tmp_path):
    cache = CheckpointRamCache(capacity=2, pin_memory=False)
    record = _record(tmp_path, "broken.safetensors")

    def fail():
        raise OSError("truncated file")

    try:
        cache.get_or_load(record, torch.float32, fail)
    except OSError:
        pass
    assert len(cache) == 0
    assert cache.get_or_load(record, torch.float32, lambda: _weights("ok")).tag == "ok"
