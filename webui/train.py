"""Headless training: `python -m webui.train config.json [--data-dir DIR]`.

Runs the same code path as the Train tab: the base checkpoint is found and read through the app's own
catalog and model manager (built by `webui.context.build_context` from the same Settings and folder
flags as `launch.py`), results land in the app's LoRA / embeddings / checkpoint folders, and progress
is printed one line per step. Ctrl+C stops after the current step and keeps the files saved so far.

Exit codes: 0 done, 1 training failed, 2 bad config / dataset / checkpoint, 130 cancelled.

Started by `accelerate launch -m webui.train config.json` or `torchrun --nproc_per_node N -m webui.train ...`,
every process trains its share of each batch (see `webui.training.distributed` and docs/MULTI_GPU.md); only the
first process prints progress and writes files.

This command is run by the machine's owner, so its `dataset_dir`, `resume_from` and `--caption-model`
may be any folder: it is deliberately not confined by `webui.security.paths` (configs that arrive from
a request, through the Train tab or `POST /sdapi/v1/train`, are; see `webui.training.service.confine_config`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m webui.train",
        description="Train a LoRA, DreamBooth model, embedding or pivotal-tuning pair from a JSON config "
                    "(the Train tab's settings). Relative paths in the config are read relative to the config file.",
    )
    parser.add_argument("config", type=Path, help="training config JSON (see webui/training/presets/)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the app's data folder (models/, outputs/ ...)")
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoint folder (default models/Stable-diffusion)")
    parser.add_argument("--lora-dir", type=Path, default=None, help="LoRA folder (default models/Lora)")
    parser.add_argument("--embeddings-dir", type=Path, default=None, help="embeddings folder (default models/embeddings)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="training state, class images and samples (default <data-dir>/training)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto", help="training device")
    parser.add_argument("--collective-timeout", type=int, default=1800, metavar="SECONDS",
                        help="with several training processes: how long one waits for another that stopped "
                             "answering before the run fails")
    parser.add_argument("--progress-file", type=Path, default=None,
                        help="also append each progress report and the result as JSON lines to this file "
                             "(how the app follows a multi-GPU run it started)")
    parser.add_argument("--stop-file", type=Path, default=None,
                        help="stop after the current step once this file exists (how the app cancels such a run)")
    parser.add_argument("--caption-model", type=Path, default=None,
                        help="a local BLIP captioning model folder: write captions for images that have none first")
    return parser


def _settings_argv(args: argparse.Namespace) -> list[str]:
    """The launch.py flags that locate the app's folders, so Settings resolves them exactly as the app does."""
    argv = ["--device", args.device]
    for flag, value in (("--data-dir", args.data_dir), ("--ckpt-dir", args.ckpt_dir), ("--lora-dir", args.lora_dir),
                        ("--embeddings-dir", args.embeddings_dir)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _resolve_relative(value: str, config_folder: Path) -> str:
    """A relative path in the config means relative to the config file (then to the working directory)."""
    if not value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    beside_config = config_folder / path
    return str(beside_config if beside_config.exists() else path.resolve())


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_progress(progress) -> str:
    """One log line per report: a phase message, or the step's numbers."""
    if progress.message:
        return progress.message
    loss = f"{progress.loss:.4f}" if progress.loss is not None else "-"
    smoothed = f"{progress.smoothed_loss:.4f}" if progress.smoothed_loss is not None else "-"
    lr = f"{progress.lr:.2e}" if progress.lr is not None else "-"
    return (f"step {progress.step}/{progress.total_steps} epoch {progress.epoch}/{progress.total_epochs} "
            f"loss {loss} (avg {smoothed}) lr {lr} elapsed {_format_seconds(progress.elapsed_s)} "
            f"eta {_format_seconds(progress.eta_s)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    from webui.training.config import TrainingConfig, TrainingConfigError

    try:
        config = TrainingConfig.load(args.config)
        folder = args.config.resolve().parent
        config = config.replace(dataset_dir=_resolve_relative(config.dataset_dir, folder),
                                masks_dir=_resolve_relative(config.masks_dir, folder),
                                validation_dir=_resolve_relative(config.validation_dir, folder),
                                resume_from=_resolve_relative(config.resume_from, folder)).validate()
    except TrainingConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


    from webui.context import build_context
    from webui.models.catalog import UnknownCheckpointError
    from webui.models.checkpoint_loading import CheckpointLoadError
    from webui.settings import SettingsError, settings_from_args
    from webui.training.distributed import ProcessGroup, RankFailure, launched_processes

    try:
        settings = settings_from_args(_settings_argv(args))
        context = build_context(settings)
        record = context.catalog.find(config.base_checkpoint)
        if not record.usable:
            raise CheckpointLoadError(f"checkpoint {record.name} cannot be loaded: {record.error}")
    except (SettingsError, UnknownCheckpointError, CheckpointLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    device = context.manager.device
    group = ProcessGroup.single()
    if launched_processes(os.environ) > 1:
        group = ProcessGroup.from_launcher(device.type, args.collective_timeout)
        device = group.device
    try:
        return _train(args, config, context, settings, record, device, group)
    except RankFailure as error:
        print(f"training failed: {error}; files saved before are kept", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        group.close()


def _train(args, config, context, settings, record, device, group) -> int:
    """One process's run (the only one, or one of several), from reading the weights to the summary."""
    import torch

    from webui.models.checkpoint_loading import CheckpointLoadError
    from webui.training.config import TrainingConfigError
    from webui.training.dataset import DatasetError
    from webui.training.loop import TrainingError, TrainingPaths, run_training

    say = print if group.is_main else (lambda *a, **k: None)  # the other processes stay quiet
    try:
        say(f"reading {record.title}", flush=True)
        if group.distributed:
            say(f"training on {group.size} processes ({device.type})", flush=True)
        weights = context.manager.weights_of(record)
    except CheckpointLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.caption_model is not None and group.is_main:
        from webui.training.dataset import caption_missing_images

        try:
            written, notes = caption_missing_images(config, model_dir=args.caption_model,
                                                    device=str(device))
        except DatasetError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        for line in notes + [f"wrote {path}" for path in written]:
            print(line, flush=True)
    group.wait_for_everyone()  # the captions are written before any process reads the dataset
    paths = TrainingPaths(
        lora_dir=settings.lora_folder, embeddings_dir=settings.embeddings_folder,
        checkpoints_dir=settings.checkpoint_folder, work_dir=args.work_dir or settings.data_dir / "training",
    )
    stop = threading.Event()
    writer = None
    if args.progress_file is not None and group.is_main:
        from webui.training.progress_stream import ProgressWriter

        writer = ProgressWriter(args.progress_file)

    def report(progress) -> None:
        print(format_progress(progress), flush=True)
        if writer is not None:
            writer.progress(progress)

    def should_stop() -> bool:
        return stop.is_set() or (args.stop_file is not None and args.stop_file.exists())

    def request_stop(signum, frame) -> None:
        print("stopping after the current step (Ctrl+C again to abort at once)", file=sys.stderr, flush=True)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    on_main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous_handler = signal.signal(signal.SIGINT, request_stop) if on_main_thread else None
    try:
        result = run_training(config, weights, paths, device, on_progress=report, should_stop=should_stop,
                              group=group)
    except (TrainingConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingError, torch.cuda.OutOfMemoryError) as error:
        print(f"training failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    if writer is not None:
        writer.result(result)
        writer.close()
    for warning in result.warnings:
        say(f"warning: {warning}", flush=True)
    for path in result.files:
        say(f"wrote {path}", flush=True)
    for check in result.key_checks:
        say(f"keys: {check.summary()}", flush=True)
    for problem in result.key_problems:
        say(f"warning: {problem}", flush=True)
    if result.cancelled:
        say(f"cancelled after {result.steps_done} step(s)", flush=True)
        return EXIT_CANCELLED
    final_loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
    ended = "saved with warnings" if result.key_problems else "done"  # some loader would ignore keys
    say(f"{ended}: {result.steps_done} steps, {result.epochs_done} epoch(s), final loss {final_loss}", flush=True)
    if result.usage:
        say(f"use it with: {result.usage}", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
