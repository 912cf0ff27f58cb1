"""Training on two processes (torch.distributed's launcher, gloo on the CPU) as a user runs it from the shell.

Two CPU processes stand in for two GPUs: the same code path with NCCL swapped for gloo. Each run is the
shipped toy model at 64 px for a few steps. Checked the way a user would: the command's output and exit code,
the files in the LoRA folder, the LoRA's metadata, the run's per-process image log, the loss lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from sdstudio_eval.toy_world import held_out_concept_images
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import build_pipeline, read_checkpoint_weights
from webui.models.default_model import SHIPPED_DEFAULT_MODEL
from webui.models.hashing import HashCache
from webui.models.lora import read_lora
from webui.training.config import TrainingConfig
from webui.training.launcher import run_on_processes
from webui.training.loop import TrainingPaths, TrainingProgress

ROOT = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^step (\d+)/\d+ .*? loss ([0-9.]+) ", re.MULTILINE)


@pytest.fixture(scope="module")
def hexagons(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hexagons")
    for index, image in enumerate(held_out_concept_images("hexagon", 8)):
        image.save(folder / f"hexagon_{index}.png")
    return folder


@pytest.fixture(scope="module")
def app_modules(tmp_path_factory):
    """The default model's modules, as the app loads them, to read the trained LoRAs against."""
    import torch

    catalog = CheckpointCatalog(SHIPPED_DEFAULT_MODEL.parent, HashCache(tmp_path_factory.mktemp("hashes") / "h.json"))
    record = next(r for r in catalog.refresh() if r.name == SHIPPED_DEFAULT_MODEL.name)
    pipeline = build_pipeline(read_checkpoint_weights(record, torch.float32), torch.device("cpu"), torch.float32)
    return {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder}


def app_reads(path: Path, modules) -> bool:
    lora = read_lora(path, modules, "sd1")
    return bool(lora.patches) and lora.unmatched_keys == []


def config_file(folder: Path, dataset: Path, name: str, **changes) -> Path:
    values = dict(method="lora", output_name=name, base_checkpoint="sd-studio-toy", dataset_dir=str(dataset),
                  trigger_word="hxgn", class_word="shape", resolution=64, min_bucket_resolution=32,
                  max_bucket_resolution=128, bucket_step=32, rank=4, alpha=4.0, unet_lr=1e-3, train_batch_size=1,
                  max_train_steps=4, sample_steps=2, seed=7, cache_latents=True)
    values.update(changes)
    return TrainingConfig(**values).save(folder / f"{name}.json")


def train_command(config: Path, data_dir: Path, processes: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    return [*launcher, "-m", "webui.train", str(config), "--data-dir", str(data_dir), "--device", "cpu",
            "--collective-timeout", "60"]


def environment() -> dict[str, str]:
    """The worktree's `webui` first (the venv may hold another checkout), one thread per process."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run_training(config: Path, data_dir: Path, processes: int) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, data_dir, processes), cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=300)


def step_losses(output: str) -> dict[int, float]:
    return {int(step): float(loss) for step, loss in STEP_LINE.findall(output)}


def test_two_processes_split_the_images_and_train_the_one_process_step(data_dir, hexagons, app_modules, tmp_path,
                                                                     capsys):
    two = run_training(config_file(tmp_path, hexagons, "two", train_batch_size=1), data_dir, 2)
    assert two.returncode == 0, two.stdout + two.stderr
    output = two.stdout
    assert "training on 2 processes (cpu)" in output
    assert "effective batch 2 = 1 per process x 2 process(es) x 1 accumulation step(s)" in output
    assert output.count("step 4/4 ") == 1, output  # the second process prints nothing
    loras = sorted(path.name for path in (data_dir / "models" / "Lora").iterdir())
    assert loras == ["two.safetensors"]
    lora_file = data_dir / "models" / "Lora" / "two.safetensors"
    assert app_reads(lora_file, app_modules)  # the app's own LoRA reader takes it
    with safe_open(str(lora_file), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["ss_num_processes"], metadata["ss_total_batch_size"]) == ("2", "2")

    log = json.loads((data_dir / "training" / "logs" / "two-processes.json").read_text())
    first, second = log["epochs"]["0"]["0"], log["epochs"]["0"]["1"]
    assert len(first) == len(second) == 4  # 4 steps x 1 image each
    assert not set(first) & set(second)
    assert set(first) | set(second) == {f"hexagon_{index}.png" for index in range(8)}

    # One process at the same effective batch: the same global batches, noise and update, so the same losses
    from webui.train import main  # in this process: the same command without a second start-up

    assert main(train_command(config_file(tmp_path, hexagons, "one", train_batch_size=2), data_dir, 1)[3:]) == 0
    losses_two, losses_one = step_losses(output), step_losses(capsys.readouterr().out)
    assert sorted(losses_two) == sorted(losses_one) == [1, 2, 3, 4]
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], abs=2e-4), (losses_two, losses_one)
    trained_two, trained_one = load_file(lora_file), load_file(data_dir / "models" / "Lora" / "one.safetensors")
    up_keys = [key for key in trained_one if key.endswith("lora_up.weight")]  # start at zero: all of it is training
    moved = max(float(trained_one[key].abs().max()) for key in up_keys)
    differs = max(float((trained_two[key] - trained_one[key]).abs().max()) for key in up_keys)
    assert moved > 1e-4 and differs < 0.01 * moved, (moved, differs)


def rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "webui.train" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_process_fails_the_run_cleanly_and_keeps_the_saved_epoch(data_dir, hexagons, app_modules, tmp_path):
    config = config_file(tmp_path, hexagons, "killed", max_train_steps=0, max_train_epochs=200,
                         save_every_n_epochs=1, save_state=True)
    process = subprocess.Popen(train_command(config, data_dir, 2), cwd=ROOT, env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lora_dir = data_dir / "models" / "Lora"
    saved = lora_dir / "killed-000001.safetensors"
    state = data_dir / "training" / "states" / "killed-000001-state"
    deadline = time.monotonic() + 180
    while not (saved.is_file() and state.is_dir()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert saved.is_file(), "the first epoch was never saved"
    victim = rank_process(psutil.Process(process.pid), 1)
    assert victim is not None
    victim.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=180)
    assert process.returncode != 0
    assert "killed" not in [path.stem for path in lora_dir.iterdir()]  # the run never got to its final file
    assert "lost contact with the others" in output or "Signal 9 (SIGKILL)" in output, output
    assert app_reads(saved, app_modules) and (state / "state.json").is_file()  # what was saved before stays

    # Resume from that epoch's state on two processes, started the way the app starts a multi-GPU run: both
    # processes load rank 0's state; the app sees the steps and the result through the same progress objects
    reports: list[TrainingProgress] = []
    paths = TrainingPaths(lora_dir=lora_dir, embeddings_dir=data_dir / "models" / "embeddings",
                          checkpoints_dir=data_dir / "models" / "Stable-diffusion", work_dir=data_dir / "training")
    resumed = TrainingConfig.load(config_file(tmp_path, hexagons, "resumed", max_train_steps=6, resume_from=str(state)))
    result = run_on_processes(resumed, paths, data_dir, on_progress=reports.append, device="cpu", processes=2,
                              environment=environment())
    assert [report.step for report in reports if report.loss is not None and not report.message] == [5, 6]
    assert any(report.message == "resumed at step 4" for report in reports)
    assert not result.cancelled and result.steps_done == 6 and result.files == [lora_dir / "resumed.safetensors"]
    assert result.key_checks[0].file == "resumed.safetensors" and result.key_checks[0].complete
    assert app_reads(lora_dir / "resumed.safetensors", app_modules)
