"""The out-of-memory rule on the CPU: which failures count, the message a user gets, and what passes through.
The real thing (a capped GPU, the next job running) is tests/gpu/test_out_of_memory_gpu.py."""

from __future__ import annotations

import torch

from webui.errors import user_error
from webui.jobs.out_of_memory import GpuOutOfMemory, explain_out_of_memory, is_out_of_memory


def _wrapped_out_of_memory() -> RuntimeError:
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB")
        except torch.cuda.OutOfMemoryError as error:
            raise RuntimeError("the VAE decode failed") from error
    except RuntimeError as wrapped:
        return wrapped


def test_a_wrapped_out_of_memory_becomes_a_message_with_advice():
    original = _wrapped_out_of_memory()
    assert is_out_of_memory(original)
    explained = explain_out_of_memory(original, "cpu")
    assert isinstance(explained, GpuOutOfMemory) and explained.__cause__ is original
    message = user_error(explained)
    assert message.startswith("The GPU ran out of memory during this job.")
    assert "smaller width/height or batch size" in message and "Generation failed" not in message
    assert explain_out_of_memory(explained, "cpu") is explained  # explained once, not twice


def test_other_failures_pass_through_unchanged():
    for error in (ValueError("width must be a multiple of 8"), MemoryError(), RuntimeError("shape mismatch")):
        assert not is_out_of_memory(error)
        assert explain_out_of_memory(error, "cpu") is error
