"""On the GPU machine: a job that runs the GPU out of memory fails with a message naming what to change, the
allocator's cache is emptied, and the next job on the same worker runs and draws what it drew before.

The memory is capped with `torch.cuda.set_per_process_memory_fraction` to what the model needs plus 1 GiB,
so a 2048x2048 batch of 8 on the embedded model cannot fit (as three ControlNet units or a big hires pass
would not on a small GPU). Run there with `python3 -m pytest tests/gpu -m gpu`; skipped without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import with_default_model
from webui.context import build_context
from webui.generation.requests import Txt2ImgRequest
from webui.jobs.out_of_memory import GpuOutOfMemory
from webui.settings import settings_from_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")

SMALL = dict(prompt="a red circle on a blue background", width=128, height=128, steps=8, seed=1, save_images=False)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("out-of-memory"), default_model_folder)
    context = build_context(settings_from_args(["--data-dir", str(data), "--device", "cuda"]))
    yield context
    context.close()


def test_an_out_of_memory_job_fails_with_advice_and_the_next_job_runs(ctx):
    before = np.asarray(ctx.generation.submit_txt2img(Txt2ImgRequest(**SMALL)).result(timeout=600).images[0])
    torch.cuda.synchronize()
    _, total = torch.cuda.mem_get_info()
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + 2**30) / total))
    try:
        job = ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, "width": 2048, "height": 2048,
                                                              "batch_size": 8, "steps": 2}))
        with pytest.raises(GpuOutOfMemory) as failed:
            job.result(timeout=600)
        message = str(failed.value)
        assert "ran out of memory" in message and "smaller width/height or batch size" in message
        assert "GiB in use after it ended" in message
        assert ctx.scheduler.record(job.job_id).state == "failed"

        after = np.asarray(ctx.generation.submit_txt2img(Txt2ImgRequest(**SMALL)).result(timeout=600).images[0])
        assert np.array_equal(after, before)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
