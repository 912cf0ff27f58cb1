"""Run a training config on several GPUs from the app: one process per GPU, started by torch's own launcher.

The app's queue worker calls `run_on_processes`; it writes the config into the run's work folder, starts
`python -m torch.distributed.run --nproc_per_node N -m webui.train config.json ...` (the same command a user
types, see docs/MULTI_GPU.md) with CUDA_VISIBLE_DEVICES set to the chosen GPUs, and follows the run through its
progress file (`webui.training.progress_stream`), calling the same `on_progress` an in-process run calls.
Cancelling creates the run's stop file: every process stops after the current step and saved files stay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.loop import TrainingError, TrainingPaths, TrainingProgress, TrainingResult
from webui.training.progress_stream import ProgressReader

POLL_S = 0.5
LOG_TAIL_CHARACTERS = 2000


def cuda_device_count() -> int:
    """CUDA devices this machine has (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(config: TrainingConfig, available: int) -> None:
    """Refuse GPUs that do not exist, naming the ones that do."""
    missing = [index for index in config.gpu_ids if index >= available]
    if not missing:
        return
    have = f"GPUs {', '.join(map(str, range(available)))}" if available else "no CUDA GPU"
    raise TrainingConfigError("gpus", f"GPU {', '.join(map(str, missing))} does not exist: this machine has {have}")


def uses_several_processes(config: TrainingConfig) -> bool:
    return len(config.gpu_ids) > 1


@dataclass(frozen=True)
class LaunchPlan:
    """Where one multi-process run keeps its files, and the command that starts it."""

    folder: Path

    @property
    def config_file(self) -> Path:
        return self.folder / "config.json"

    @property
    def progress_file(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def stop_file(self) -> Path:
        return self.folder / "stop"

    @property
    def log_file(self) -> Path:
        return self.folder / "log.txt"

    def command(self, processes: int, data_dir: Path, paths: TrainingPaths, device: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "webui.train", str(self.config_file), "--data-dir", str(data_dir),
                "--ckpt-dir", str(paths.checkpoints_dir), "--lora-dir", str(paths.lora_dir),
                "--embeddings-dir", str(paths.embeddings_dir), "--work-dir", str(paths.work_dir),
                "--device", device, "--progress-file", str(self.progress_file), "--stop-file", str(self.stop_file)]


def run_on_processes(config: TrainingConfig, paths: TrainingPaths, data_dir: Path, *,
                     on_progress: Callable[[TrainingProgress], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, device: str = "cuda",
                     processes: int | None = None, environment: Mapping[str, str] | None = None) -> TrainingResult:
    """Train `config` on one process per GPU of `config.gpus` (or `processes` CPU processes with device "cpu",
    how it is tested without GPUs); returns the first process's result, raises `TrainingError` when the run
    failed (with the end of its log)."""
    count = processes or len(config.gpu_ids)
    plan = LaunchPlan(Path(paths.work_dir) / "runs" / config.output_name)
    plan.folder.mkdir(parents=True, exist_ok=True)
    for stale in (plan.progress_file, plan.stop_file):
        stale.unlink(missing_ok=True)
    config.replace(gpus="").save(plan.config_file)  # the processes train; which GPUs is the launcher's business
    env = dict(environment if environment is not None else os.environ)
    env.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (docs/MULTI_GPU.md)
    if device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, config.gpu_ids))
    reader = ProgressReader(plan.progress_file)
    with plan.log_file.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(plan.command(count, data_dir, paths, device), stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[2])
        while True:
            finished = process.poll() is not None
            for progress in reader.new_progress():
                if on_progress is not None:
                    on_progress(progress)
            if finished:
                break
            if should_stop is not None and should_stop() and not plan.stop_file.exists():
                plan.stop_file.touch()
            time.sleep(POLL_S)
    if reader.result is not None and (process.returncode == 0 or reader.result.cancelled):
        return reader.result  # a cancelled run exits 130 in each process, which the launcher reports as 1
    tail = plan.log_file.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARACTERS:]
    raise TrainingError(f"the {count}-process run stopped with exit code {process.returncode}; "
                        f"files saved before are kept. End of its log ({plan.log_file}):\n{tail}")
