"""CPU speed of the embedded default model: 20 steps at its native 128x128, SD Studio vs plain diffusers,
and the cost of changing a LoRA's weight between two generations.

    python bench/cpu_default_model_speed.py [--repeats 5]

Both run the same weights on the CPU with DPM++ 2M (Karras), CFG 7, batch 1; the SD Studio figure goes
through the queue, the model manager and run_txt2img, like a click on Generate. The LoRA figure times
`manager.checkout` alone when only the weight of a rank-16 LoRA on every attention projection changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webui.context import build_context  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.models.default_model import SHIPPED_DEFAULT_MODEL  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402

PROMPT = "two small striped red triangles on the left, blue background"


def timed(function, repeats: int) -> float:
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    plain = StableDiffusionPipeline.from_pretrained(SHIPPED_DEFAULT_MODEL, dtype=torch.float32, safety_checker=None)
    plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True)
    plain.set_progress_bar_config(disable=True)
    plain_seconds = timed(lambda: plain(PROMPT, negative_prompt="", num_inference_steps=20, guidance_scale=7.0,
                                        height=128, width=128, generator=torch.Generator().manual_seed(1)), args.repeats)
    with tempfile.TemporaryDirectory() as data_dir:
        ctx = build_context(settings_from_args(["--data-dir", data_dir, "--device", "cpu"]))
        request = Txt2ImgRequest(prompt=PROMPT, width=128, height=128, steps=20, seed=1, save_images=False)
        studio_seconds = timed(lambda: ctx.generation.submit_txt2img(request).result(), args.repeats)
        reweight_seconds = lora_reweight_seconds(ctx, Path(data_dir), args.repeats)
        ctx.close()
    print(json.dumps({"threads": torch.get_num_threads(), "plain_diffusers_s": round(plain_seconds, 3),
                      "sd_studio_s": round(studio_seconds, 3), "lora_reweight_s": round(reweight_seconds, 4)}))


def lora_reweight_seconds(ctx, data_dir: Path, repeats: int) -> float:
    from safetensors.torch import save_file

    from webui.models.lora_catalog import LoraUse

    with ctx.manager.checkout() as model:
        tensors = {}
        for name, module in model.pipeline.unet.named_modules():
            if isinstance(module, torch.nn.Linear) and ".attn" in name:
                key = "lora_unet_" + name.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = torch.randn(16, module.in_features) * 0.1
                tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 16) * 0.1
    path = data_dir / "models" / "Lora" / "bench.safetensors"
    save_file(tensors, str(path))
    weights = iter(0.1 * (i + 1) for i in range(10 * repeats + 10))

    def reweight() -> None:
        weight = next(weights)
        with ctx.manager.checkout(ctx.manager.state_for(None, [LoraUse("bench", path, weight, weight, "")])):
            pass

    return timed(reweight, repeats)


if __name__ == "__main__":
    main()
