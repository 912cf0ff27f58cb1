"""Issue #18's speed figures in one run: SD Studio's real path against plain diffusers on the same shapes.

    python bench/speed_suite.py --device cuda --families sd1 sdxl --out speed.json   # the GPU machine
    python bench/speed_suite.py --smoke --out /tmp/smoke.json                        # every path, tiny, CPU

Per family (SD1.5 512, SDXL 1024; full-size random weights written as A1111 single files first, so loading
counts; `--smoke`: three copies of the embedded `sd-studio-toy`, 64x64, a few steps):
  - txt2img s/image and it/s at batch 1 (steps / s, end to end) and images/s at the best batch (1, 2, 4, 8,
    16 until an out-of-memory or no gain), SD Studio (queue -> worker -> manager -> run_txt2img) and plain
    diffusers (`StableDiffusion[XL]Pipeline` on the same weights), with their ratio;
  - time to first image of a fresh process, twice (the second a "restart" on the same data folder);
  - checkpoint switch: GPU-resident (reported "not supported" while the manager keeps one pipeline),
    pinned RAM, page cache, and cold from disk (the file dropped from the page cache first);
  - LoRA apply (first load and cached) / re-weight / remove of a random rank-32 kohya LoRA file, whether
    removal restores the weights bit for bit, and the cost of 1 and 3 active LoRAs per image;
  - LoRA training images/s at batch 1, 4 and the best batch through `webui.training.loop.run_training`
    (what the Train tab and `python -m webui.train` run) on random images written to disk.
Every measurement has its peak GPU memory (`torch.cuda.max_memory_allocated`, reset first; null on the CPU).
Prints each section's JSON as it ends, then the Markdown tables of docs/BENCHMARKS.md; writes all to --out.
On the GPU machine: `bash bench/speed_suite_on_device.sh` (the wheels it needs are listed there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.speed_suite_measure import (  # noqa: E402
    drop_from_page_cache, files_of, free_memory, measured, peak_mib, reset_peak, sync, timed)
from bench.speed_suite_models import (  # noqa: E402
    TRAIN_PRESETS, Subject, prepare_full, prepare_smoke, write_others, write_random_dataset, write_random_lora)
from bench.speed_suite_report import markdown_report  # noqa: E402
from webui.jobs.out_of_memory import is_out_of_memory  # noqa: E402

PROMPT, NEGATIVE = "a photo of a red circle", "blurry"
GPU_RESIDENT_SWITCH = ("not supported: the model manager keeps one resident pipeline per worker "
                       "(webui/models/manager.py); other checkpoints wait in pinned RAM")


SECTIONS = ("txt2img", "first_image", "switch", "lora", "training")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full GPU run, or `--smoke`'s tiny one that only exercises every code path."""

    steps: int = 30
    repeats: int = 3            # timed calls at batch 1 (the median is reported)
    batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    sweep_repeats: int = 1      # timed calls per batch above 1 (each after one untimed call)
    lora_rank: int = 32
    switch_rounds: int = 4
    train_batches: tuple[int, ...] = (1, 2, 4, 8, 16)
    train_steps: int = 20
    train_warmup: int = 5       # optimizer steps left out of images/s (allocation, cuDNN autotuning)
    train_images: int = 32


SMOKE = Plan(steps=3, repeats=1, batches=(1, 2), lora_rank=32, switch_rounds=1, train_batches=(1, 2, 4),
             train_steps=4, train_warmup=1, train_images=4)


def settings_argv(data_dir: Path, device: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--device", device] + (["--precision", "fp16"] if device.startswith("cuda") else [])


def open_context(subject: Subject, device: str):
    from webui.context import build_context
    from webui.settings import settings_from_args

    return build_context(settings_from_args(settings_argv(subject.data_dir, device)))


# ------------------------------------------------------------------------------------------------ txt2img

def plain_call(pipeline, size: int, steps: int, batch: int = 1) -> Callable[[], object]:
    return lambda: pipeline(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                            guidance_scale=7.0, num_images_per_prompt=batch,
                            generator=torch.Generator("cpu").manual_seed(1))


def studio_call(ctx, subject: Subject, steps: int, batch: int = 1, prompt: str = PROMPT) -> Callable[[], object]:
    from webui.generation.requests import Txt2ImgRequest

    request = Txt2ImgRequest(prompt=prompt, negative_prompt=NEGATIVE, width=subject.size, height=subject.size,
                             steps=steps, seed=1, sampler_name="DPM++ 2M", checkpoint=subject.names[0],
                             batch_size=batch, save_images=False)
    return lambda: ctx.generation.submit_txt2img(request).result()


def txt2img_row(device: str, call: Callable[[], object], steps: int, batch: int, repeats: int) -> dict:
    figures = measured(device, call, repeats)
    return {"batch": batch, "s_per_image": figures["s"] / batch, "it_per_s": steps / figures["s"],
            "images_per_s": batch / figures["s"], "peak_gpu_mib": figures["peak_gpu_mib"]}


def sweep(device: str, batches: tuple[int, ...], measure: Callable[[int], dict], at_least: int = 1) -> dict:
    """Measure growing batches until an out-of-memory, or (from `at_least` on) a batch with no gain."""
    rows: list[dict] = []
    best: dict | None = None
    for batch in batches:
        try:
            row = measure(batch)
        except Exception as error:  # noqa: BLE001 - only an out-of-memory ends the sweep quietly
            if not is_out_of_memory(error):
                raise
            rows.append({"batch": batch, "error": "out of memory"})
            break
        finally:
            free_memory(device)
        rows.append(row)
        if best is not None and row["images_per_s"] <= best["images_per_s"] and batch >= at_least:
            break
        if best is None or row["images_per_s"] > best["images_per_s"]:
            best = row
    return {"rows": rows, "best": best}


def plain_txt2img(pipeline, subject: Subject, device: str, plan: Plan) -> dict:
    call = lambda batch: plain_call(pipeline, subject.size, plan.steps, batch)  # noqa: E731
    return {"batch1": txt2img_row(device, call(1), plan.steps, 1, plan.repeats),
            "sweep": sweep(device, plan.batches, lambda b: txt2img_row(device, call(b), plan.steps, b, plan.sweep_repeats))}


def studio_txt2img(ctx, subject: Subject, device: str, plan: Plan) -> dict:
    call = lambda batch: studio_call(ctx, subject, plan.steps, batch)  # noqa: E731
    return {"batch1": txt2img_row(device, call(1), plan.steps, 1, plan.repeats),
            "sweep": sweep(device, plan.batches, lambda b: txt2img_row(device, call(b), plan.steps, b, plan.sweep_repeats))}


# ------------------------------------------------------------------------------------------------ first image

def first_image(subject: Subject, device: str, plan: Plan, mode: str) -> dict:
    """A fresh process that starts, builds what it needs and makes one image; run twice on the same data folder
    (the second is the "restart"). Seconds from just before the process is spawned to its image being done."""
    model = subject.names[0] if mode == "studio" else str(subject.plain_folder)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--device", device,
               "--child-dir", str(subject.data_dir), "--child-model", model, "--child-size", str(subject.size),
               "--child-steps", str(plan.steps)]
    runs: dict[str, dict] = {}
    for run in ("start", "restart"):
        started = time.time()
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        reports = [line for line in completed.stdout.splitlines() if line.startswith("FIRST_IMAGE ")]
        if completed.returncode != 0 or not reports:
            runs[run] = {"error": f"exit {completed.returncode}: {(completed.stderr or completed.stdout)[-600:]}"}
            continue
        report = json.loads(reports[-1].removeprefix("FIRST_IMAGE "))
        runs[run] = {"first_image_s": report["done"] - started, "process_s": time.time() - started,
                     "peak_gpu_mib": report["peak_gpu_mib"]}
    return runs


def child_first_image(args: argparse.Namespace) -> None:
    """The process `first_image` spawns: everything from imports to one finished image counts."""
    device = args.device
    if args.child == "studio":
        from webui.context import build_context
        from webui.generation.requests import Txt2ImgRequest
        from webui.settings import settings_from_args

        ctx = build_context(settings_from_args(settings_argv(args.child_dir, device)))
        ctx.generation.submit_txt2img(Txt2ImgRequest(
            prompt=PROMPT, negative_prompt=NEGATIVE, width=args.child_size, height=args.child_size,
            steps=args.child_steps, seed=1, sampler_name="DPM++ 2M", checkpoint=args.child_model,
            save_images=False)).result()
    else:
        from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        pipeline = DiffusionPipeline.from_pretrained(args.child_model, dtype=dtype).to(device)
        pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, use_karras_sigmas=True)
        pipeline.set_progress_bar_config(disable=True)
        plain_call(pipeline, args.child_size, args.child_steps)()
    sync(device)
    print("FIRST_IMAGE " + json.dumps({"done": time.time(), "peak_gpu_mib": peak_mib(device)}), flush=True)


# ------------------------------------------------------------------------------------------------ switch

def switch_times(ctx, subject: Subject, device: str, plan: Plan) -> dict:
    """Checkpoint a is loaded. b: read from the page cache (just written); a <-> b: copied from pinned RAM;
    c (not in the RAM cache): read cold from disk after dropping it from the page cache."""
    a, b, c = subject.names
    select = lambda name: timed(device, lambda: ctx.models.select_checkpoint(name))  # noqa: E731
    select(a)
    reset_peak(device)
    page_cache = select(b)
    pinned = sorted(select(name) for _ in range(plan.switch_rounds) for name in (a, b))
    dropped = drop_from_page_cache(files_of(subject.checkpoints[2]))
    cold = select(c)
    return {"gpu_resident_s": GPU_RESIDENT_SWITCH, "pinned_ram_s": pinned[len(pinned) // 2],
            "page_cache_s": page_cache, "cold_disk_s": cold, "cold_disk_method": dropped,
            "copied": ctx.manager.switch_count["copied"], "rebuilt": ctx.manager.switch_count["rebuilt"],
            "peak_gpu_mib": peak_mib(device)}


# ------------------------------------------------------------------------------------------------ LoRA

def lora_paths(subject: Subject) -> list[Path]:
    return [subject.data_dir / "models" / "Lora" / f"bench-lora-{index}.safetensors" for index in (1, 2, 3)]


def lora_cost(base_s: float, s: float) -> float:
    return 100 * (s / base_s - 1)


def plain_lora(pipeline, subject: Subject, device: str, plan: Plan) -> dict:
    """Plain diffusers (PEFT adapters, unfused) with 1 and 3 of the LoRA files active, against none."""
    call = plain_call(pipeline, subject.size, plan.steps)
    try:
        base = measured(device, call, plan.repeats)
        start = time.perf_counter()
        for index, path in enumerate(lora_paths(subject)):
            pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"bench{index}")
        load_s = (time.perf_counter() - start) / 3
        pipeline.set_adapters(["bench0"], [0.8])
        one = measured(device, call, plan.repeats)
        pipeline.set_adapters(["bench0", "bench1", "bench2"], [0.8, 0.8, 0.8])
        three = measured(device, call, plan.repeats)
        pipeline.unload_lora_weights()
    except Exception as error:  # noqa: BLE001 - reported: e.g. no peft wheel on the GPU machine
        return {"error": f"{type(error).__name__}: {error}"[:400]}
    return {"load_s": load_s, "s_per_image_0": base["s"], "s_per_image_1": one["s"], "s_per_image_3": three["s"],
            "cost_percent_1": lora_cost(base["s"], one["s"]), "cost_percent_3": lora_cost(base["s"], three["s"]),
            "peak_gpu_mib": three["peak_gpu_mib"]}


def resident_weights(ctx) -> dict[str, torch.Tensor]:
    """A CPU copy of every weight the LoRAs patch (UNet and text encoders), to check removal bit for bit."""
    with ctx.manager.checkout() as model:
        pipeline = model.pipeline
        modules = {"unet": pipeline.unet, "te": pipeline.text_encoder, "te2": getattr(pipeline, "text_encoder_2", None)}
        return {f"{name}.{key}": value.detach().to("cpu", copy=True)
                for name, module in modules.items() if module is not None
                for key, value in module.state_dict().items()}


def studio_lora(ctx, subject: Subject, device: str, plan: Plan) -> dict:
    """Apply / re-weight / remove through `ModelManager.checkout` (what every job does before it runs), and the
    per-image cost of LoRAs named in the prompt through the whole txt2img path."""
    from webui.models.lora_catalog import LoraUse

    manager = ctx.manager
    paths = lora_paths(subject)
    notes: list[str] = []

    def with_loras(*pairs: tuple[Path, float]) -> Callable[[], None]:
        def run() -> None:
            state = manager.state_for(None, [LoraUse(path.stem, path, weight, weight, "") for path, weight in pairs])
            with manager.checkout(state) as model:
                notes.extend(model.warnings)
        return run

    ctx.models.select_checkpoint(subject.names[0])
    before = resident_weights(ctx)
    reset_peak(device)
    first, removes = [], []
    for path in paths:  # each file's first use: read, parse, hash, merge
        first.append(timed(device, with_loras((path, 1.0))))
        removes.append(timed(device, with_loras()))
    cached = []
    for _ in range(plan.switch_rounds):
        cached.append(timed(device, with_loras((paths[0], 1.0))))
        removes.append(timed(device, with_loras()))
    timed(device, with_loras((paths[0], 1.0)))
    reweights = [timed(device, with_loras((paths[0], 0.5 + 0.1 * index))) for index in range(plan.switch_rounds)]
    removes.append(timed(device, with_loras()))
    after = resident_weights(ctx)
    exact = before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    del before, after
    peak = peak_mib(device)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    base = measured(device, studio_call(ctx, subject, plan.steps), plan.repeats)
    tags = [f"<lora:{path.stem}:0.8>" for path in paths]
    one = measured(device, studio_call(ctx, subject, plan.steps, prompt=f"{PROMPT} {tags[0]}"), plan.repeats)
    with_three = studio_call(ctx, subject, plan.steps, prompt=f"{PROMPT} {' '.join(tags)}")
    three = measured(device, with_three, plan.repeats)
    applied = with_three().infotexts[0]  # the job names every LoRA it merged in its infotext
    return {"first_load_s": median(first), "apply_cached_s": median(cached), "reweight_s": median(reweights),
            "remove_s": median(removes), "removal_exact": exact, "lora_reads": manager.lora_reads,
            "peak_gpu_mib": peak, "notes": sorted(set(notes))[:5],
            "s_per_image_0": base["s"], "s_per_image_1": one["s"], "s_per_image_3": three["s"],
            "cost_percent_1": lora_cost(base["s"], one["s"]), "cost_percent_3": lora_cost(base["s"], three["s"]),
            "generation_peak_gpu_mib": three["peak_gpu_mib"],
            "all_three_in_infotext": all(path.stem in applied.partition("Lora hashes")[2] for path in paths)}


# ------------------------------------------------------------------------------------------------ training

def training_speed(subject: Subject, device: str, plan: Plan) -> dict:
    """LoRA training images/s through `run_training` with the family's shipped preset (its precision, rank and
    gradient checkpointing), batch 1, 4 and up to the best; the first `train_warmup` steps are not counted."""
    from webui.training.config import load_preset
    from webui.training.loop import TrainingPaths, run_training

    ctx = open_context(subject, device)
    try:  # as `python -m webui.train` does: the base weights through the app's catalog and RAM cache
        weights = ctx.manager.weights_of(ctx.catalog.find(subject.names[0]))
    finally:
        ctx.close()
        del ctx
        free_memory(device)
    dataset = write_random_dataset(subject.data_dir / "datasets" / "bench", plan.train_images, subject.size)
    paths = TrainingPaths(lora_dir=subject.data_dir / "trained" / "Lora", embeddings_dir=subject.data_dir / "trained" / "emb",
                          checkpoints_dir=subject.data_dir / "trained" / "ckpt", work_dir=subject.data_dir / "training")
    preset = load_preset(TRAIN_PRESETS[subject.label])

    def measure(batch: int) -> dict:
        repeats = -(-plan.train_steps * batch // plan.train_images) + 1
        config = preset.replace(
            dataset_dir=str(dataset), base_checkpoint=subject.names[0], output_name=f"bench-b{batch}",
            trigger_word="bnch", class_word="thing", resolution=subject.size,
            min_bucket_resolution=min(subject.size, preset.min_bucket_resolution), train_batch_size=batch,
            repeats=repeats, max_train_steps=plan.train_steps, save_every_n_epochs=0, save_state=False,
            sample_every_n_steps=0)
        marks: list[tuple[int, float]] = []

        def on_progress(progress) -> None:
            if not progress.message and progress.step > 0:
                marks.append((progress.step, time.perf_counter()))

        reset_peak(device)
        started = time.perf_counter()
        result = run_training(config, weights, paths, torch.device(device), on_progress=on_progress)
        wall = time.perf_counter() - started
        (first_step, first_time), (last_step, last_time) = marks[plan.train_warmup - 1], marks[-1]
        return {"batch": batch, "images_per_s": (last_step - first_step) * batch / (last_time - first_time),
                "steps": result.steps_done, "wall_s": wall, "peak_gpu_mib": peak_mib(device),
                "mixed_precision": config.mixed_precision, "rank": config.rank}

    found = sweep(device, plan.train_batches, measure, at_least=4)
    by_batch = {row["batch"]: row for row in found["rows"]}
    return {"preset": TRAIN_PRESETS[subject.label], "resolution": subject.size, "batch1": by_batch.get(1),
            "batch4": by_batch.get(4), "best": found["best"], "rows": found["rows"]}


# ------------------------------------------------------------------------------------------------ the run

def bench_subject(subject: Subject, holder: list, device: str, plan: Plan, sections: set[str], emit, result: dict) -> None:
    """Every section for one family: plain diffusers first (its pipeline, the one item of `holder`, is
    dropped before SD Studio loads, so the two never share the GPU). Fills `result` section by section."""
    plain_pipeline = holder.pop()
    result.update(size=subject.size, steps=plan.steps)
    if "lora" in sections:
        for index, path in enumerate(lora_paths(subject)):
            result["lora_modules"] = write_random_lora(plain_pipeline, path, plan.lora_rank, seed=index + 1)
    if "txt2img" in sections:
        result["txt2img"] = {"plain": plain_txt2img(plain_pipeline, subject, device, plan)}
    if "lora" in sections:
        result["lora"] = {"plain": plain_lora(plain_pipeline, subject, device, plan)}
    del plain_pipeline
    free_memory(device)
    write_others(subject, device)
    emit(subject.label, "plain diffusers", result)
    if "first_image" in sections:
        result["first_image"] = {mode: first_image(subject, device, plan, mode) for mode in ("studio", "plain")}
        emit(subject.label, "first_image", result["first_image"])
    if sections & {"txt2img", "lora", "switch"}:
        ctx = open_context(subject, device)
        try:
            if "txt2img" in sections:
                result["txt2img"]["studio"] = studio_txt2img(ctx, subject, device, plan)
                emit(subject.label, "txt2img", result["txt2img"])
            if "lora" in sections:
                result["lora"]["studio"] = studio_lora(ctx, subject, device, plan)
                emit(subject.label, "lora", result["lora"])
            if "switch" in sections:
                result["switch"] = switch_times(ctx, subject, device, plan)
                emit(subject.label, "switch", result["switch"])
        finally:
            ctx.close()
            del ctx
            free_memory(device)
    if "training" in sections:
        result["training"] = training_speed(subject, device, plan)
        emit(subject.label, "training", result["training"])


def environment(device: str, smoke: bool) -> dict:
    import diffusers
    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "smoke": smoke}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda (default) or cpu; --smoke defaults to cpu")
    parser.add_argument("--families", nargs="+", default=["sd1", "sdxl"], choices=("sd1", "sdxl"))
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--smoke", action="store_true", help="the embedded toy model, tiny sizes: exercise every path")
    parser.add_argument("--work-dir", type=Path, default=None, help="where models are written (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (and the Markdown beside it, .md)")
    for flag, kind in (("--child", str), ("--child-dir", Path), ("--child-model", str), ("--child-size", int),
                       ("--child-steps", int)):
        parser.add_argument(flag, type=kind, default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_arg_parser().parse_args()
    device = args.device or ("cpu" if args.smoke else "cuda")
    if args.child:
        child_first_image(args)
        return
    plan = SMOKE if args.smoke else Plan()
    results = {"environment": environment(device, args.smoke), "plan": plan.__dict__, "families": {}}

    def emit(label: str, section: str, value) -> None:
        print(json.dumps({label: {section: value}}, default=str), flush=True)
        if args.out:  # after each section, so a run cut short keeps what it measured
            args.out.write_text(json.dumps(results, indent=1, default=str))

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        for family in (["toy"] if args.smoke else args.families):
            data_dir = Path(tmp) / family
            subject, pipeline = (prepare_smoke(device, data_dir) if args.smoke
                                 else prepare_full(family, device, data_dir))
            holder = [pipeline]
            del pipeline
            try:
                results["families"][family] = {}
                bench_subject(subject, holder, device, plan, set(args.sections), emit, results["families"][family])
            finally:
                holder.clear()
                subject.cleanup()
    report = markdown_report(results)
    print(report)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
        args.out.with_suffix(".md").write_text(report)


if __name__ == "__main__":
    main()
