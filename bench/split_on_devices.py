"""One request on several GPUs (issue #22 item 2): CFG split latency and batch-split throughput, 1 vs N workers.

    python bench/split_on_devices.py --checkpoint /models/sd_xl_base_1.0.safetensors --device-ids 0,1 \
        [--size 1024 --steps 30 --repeats 3 --batch 8]
    python bench/split_on_devices.py --checkpoint random:sdxl --workers-on-one-gpu 2   # a machine of one GPU

`random:sd1` / `random:sdxl` write a full-size checkpoint of random weights first (bench/txt2img_speed.py's
builders; timing does not depend on the weights, and no checkpoint can be downloaded on the lent machine).
`--workers-on-one-gpu N` runs the N workers on GPU 0 (`--device cuda --workers N`) instead of one per GPU: it
checks on CUDA that split and CFG-split images equal the one-worker images, which is what a machine of one GPU
can show; its speeds say nothing about N GPUs.

Builds the app's engine (`webui.context.build_context`, no server) three times over a data folder whose
`models/Stable-diffusion` holds a link to the checkpoint:

* one worker (`--device-ids 0`): one image, then a batch of `--batch` images (the baseline);
* N workers with `--cfg-split`: one image, its two classifier-free-guidance halves on GPUs 0 and 1 in
  lockstep (goal for SDXL: at least 1.8x faster than one worker);
* N workers: the batch split over all of them (goal: at least 0.95 x N images/s).

Every image is compared with the one-worker image of the same seed (largest pixel difference, out of 255;
fp16 rounding allows a few levels). Prints one JSON object; nothing is written. Each configuration warms up
with one image first, which is not timed. Needs CUDA and as many GPUs as `--device-ids` lists; the CFG split
uses the first two. Export NCCL_NVLS_ENABLE=0 is not needed here: no NCCL is used (the workers are threads
of one process; tensors move between the GPUs through torch's device copies).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webui.context import build_context  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402


def run(data: Path, flags: list[str], request: Txt2ImgRequest, repeats: int) -> tuple[float, list[np.ndarray], str]:
    """Seconds per job (median of `repeats`), the last job's images, and its workers."""
    context = build_context(settings_from_args(["--data-dir", str(data), *flags]))
    try:
        for manager in context.models.managers:  # load one after the other (and warm every device)
            manager.select(request.checkpoint)
        context.generation.submit_txt2img(request.with_changes(batch_size=1, seed=1)).result(timeout=3600)
        times, images, workers = [], [], ""
        for _ in range(repeats):
            start = time.perf_counter()
            job = context.generation.submit_txt2img(request)
            result = job.result(timeout=3600)
            times.append(time.perf_counter() - start)
            images = [np.asarray(image, dtype=np.int16) for image in result.images]
            workers = context.scheduler.record(job.job_id).worker or ""
        return float(np.median(times)), images, workers
    finally:
        context.close()


def largest_difference(images: list[np.ndarray], reference: list[np.ndarray]) -> int:
    return int(max(np.abs(a - b).max() for a, b in zip(images, reference)))


def checkpoint_file(name: str, folder: Path) -> Path:
    """The checkpoint in the data folder: a link to the user's file, or a random full-size one written there."""
    if name.startswith("random:"):
        from bench.txt2img_speed import random_components, write_single_file

        family = name.split(":", 1)[1]
        path = folder / f"random_{family}.safetensors"
        write_single_file(random_components(family, "cpu", seed=0), family, path)
        return path
    source = Path(name)
    (folder / source.name).symlink_to(source.resolve())
    return folder / source.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="an SD1/SDXL .safetensors file, or random:sd1 / random:sdxl (random weights, full size)")
    parser.add_argument("--device-ids", default="0,1", help="the GPUs (at least two)")
    parser.add_argument("--workers-on-one-gpu", type=int, default=0,
                        help="N workers sharing GPU 0 instead of one worker per GPU of --device-ids")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="images of the batch-split test")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    devices = [item for item in args.device_ids.split(",") if item]
    if args.workers_on_one_gpu:
        if args.workers_on_one_gpu < 2:
            parser.error("--workers-on-one-gpu must be at least 2")
        devices = ["0"] * args.workers_on_one_gpu
        one_worker, two_workers = ["--device", "cuda"], ["--device", "cuda", "--workers", "2"]
        all_workers = ["--device", "cuda", "--workers", str(len(devices))]
    elif len(devices) < 2:
        parser.error("--device-ids must list at least two GPUs")
    else:
        one_worker, all_workers, two_workers = (["--device-ids", devices[0]], ["--device-ids", ",".join(devices)],
                                                ["--device-ids", ",".join(devices[:2])])
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        checkpoints = data / "models" / "Stable-diffusion"
        checkpoints.mkdir(parents=True)
        checkpoint = checkpoint_file(args.checkpoint, checkpoints)
        one = Txt2ImgRequest(prompt="a lighthouse on a cliff at sunset, photograph", width=args.size, height=args.size,
                             steps=args.steps, seed=7, sampler_name="DPM++ 2M", checkpoint=checkpoint.stem,
                             save_images=False, save_grid=False)
        batch = one.with_changes(batch_size=1, batch_count=args.batch)
        alone_one, alone_one_images, _ = run(data, one_worker, one, args.repeats)
        alone_batch, alone_batch_images, _ = run(data, one_worker, batch, args.repeats)
        cfg_one, cfg_images, cfg_workers = run(data, [*two_workers, "--cfg-split"], one, args.repeats)
        split_batch, split_images, split_workers = run(data, all_workers, batch, args.repeats)
    print(json.dumps({
        "checkpoint": args.checkpoint, "size": args.size, "steps": args.steps, "gpus": devices,
        "one_image": {"one_worker_s": alone_one, "cfg_split_s": cfg_one, "speedup": alone_one / cfg_one,
                      "workers": cfg_workers, "largest_difference": largest_difference(cfg_images, alone_one_images)},
        "batch": {"images": args.batch, "one_worker_images_per_s": args.batch / alone_batch,
                  "split_images_per_s": args.batch / split_batch,
                  "scaling": alone_batch / split_batch / len(devices), "workers": split_workers,
                  "largest_difference": largest_difference(split_images, alone_batch_images)},
    }, indent=2))


if __name__ == "__main__":
    main()
