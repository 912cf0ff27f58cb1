"""What the Train tab shows about a run: progress bar, loss curve data, sample gallery, the final message.

Pure functions of `training_status(service)` and the run's monitor, so a reloaded page renders the same view
as the page that started the run, and the timer only sends what changed since the last tick.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from webui.training.monitor import TrainingMonitor

LOSS_SERIES = "loss"
SMOOTHED_SERIES = "smoothed loss"
VALIDATION_SERIES = "validation loss"
LOG_LINES = 12
STATE_WORDS = {"queued": "Waiting for the GPU worker", "running": "Training", "done": "Finished",
               "saved_with_warnings": "Saved with warnings", "cancelled": "Cancelled", "failed": "Failed"}
ENDED_SAVED = ("done", "saved_with_warnings")  # the run trained to its end and saved its files


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def progress_html(status: dict[str, Any]) -> str:
    """A bar like txt2img's: percentage, step/total, epoch, ETA and loss of the latest run."""
    if status["state"] == "idle":
        return '<div class="sd-progress-text" data-state="idle">No training run yet.</div>'
    if status["state"] == "busy":  # another user's run: only that the trainer is taken
        return f'<div class="sd-progress-text" data-state="busy">{html.escape(" ".join(status["messages"]))}</div>'
    total = max(int(status["total"] or 0), 0)
    percent = 100 if status["state"] in ENDED_SAVED else int(100 * status["step"] / total) if total else 0
    parts = [f"{STATE_WORDS.get(status['state'], status['state'])} {status['name']}"]
    if total:
        parts.append(f"step {status['step']}/{total}")
    if status["total_epochs"]:
        parts.append(f"epoch {status['epoch']}/{status['total_epochs']}")
    if status["state"] == "running" and status["eta"] is not None:
        parts.append(f"ETA {_duration(status['eta'])}")
    if status["loss"] is not None:
        parts.append(f"loss {status['loss']:.4f}")
    if status["smoothed_loss"] is not None:
        parts.append(f"avg {status['smoothed_loss']:.4f}")
    if status.get("validation_losses"):
        parts.append(f"validation {status['validation_losses'][-1][1]:.4f}")
    if status["state"] in ("queued", "running") and status["messages"] and not total:
        parts.append(status["messages"][-1])
    label = " · ".join(parts)
    return (
        f'<div class="sd-progress" data-state="{status["state"]}" data-percent="{percent}">'
        f'<div class="sd-progress-bar" style="width:{percent}%"></div>'
        f'<span class="sd-progress-text">{percent}% - {html.escape(label)}</span></div>'
    )


def loss_frame(monitor: TrainingMonitor | None) -> pd.DataFrame:
    """Long-format rows (step, loss, series) for a LinePlot with one line per series."""
    rows = []
    for step, loss, smoothed in (monitor.losses() if monitor is not None else []):
        rows.append({"step": step, "loss": loss, "series": LOSS_SERIES})
        rows.append({"step": step, "loss": smoothed, "series": SMOOTHED_SERIES})
    for step, loss in (monitor.validation_losses() if monitor is not None else []):
        rows.append({"step": step, "loss": loss, "series": VALIDATION_SERIES})
    # Typed columns even when empty: the plot picks its axis types from them (object dtype = categories).
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64",
                                                                         "series": "str"})


def sample_gallery(monitor: TrainingMonitor | None) -> list[tuple[Any, str]]:
    """The latest sample images with their prompts as captions."""
    return [(image, prompt) for prompt, image in (monitor.samples() if monitor is not None else ())]


def result_markdown(status: dict[str, Any]) -> str:
    """The end of a run in words: what was written and how to use it, or why it stopped."""
    state = status["state"]
    if state in ("idle", "busy", "queued", "running"):
        return ""
    if state == "failed":
        saved = _file_list(status["files"])
        return (f"⚠️ **Training {status['name']} failed:** {status['error']}"
                + (f"\n\nKept the epochs saved before the failure:\n{saved}" if saved else ""))
    files = _file_list(status["files"])
    if state == "cancelled":
        text = f"**Training {status['name']} was cancelled** at step {status['step']}."
        return text + (f" Kept:\n{files}" if files else " No epoch had been saved yet.")
    if state == "saved_with_warnings":
        text = (f"⚠️ **Training {status['name']} saved with warnings**: {status['step']} steps, "
                f"{status['total_epochs']} epoch(s); some keys of its files would be ignored by a loader.")
    else:
        text = f"**Training {status['name']} finished**: {status['step']} steps, {status['total_epochs']} epoch(s)."
    text += _key_check_text(status)
    if status["usage"]:
        text += f"\n\nUse it in a prompt: `{status['usage']}`"
    if files:
        text += f"\n\nFiles written:\n{files}"
    if status["warnings"]:
        text += "\n\nNotes:\n" + "\n".join(f"- {html.escape(w)}" for w in status["warnings"])
    return text


def _key_check_text(status: dict[str, Any]) -> str:
    """Per saved file, which loaders read how many of its keys; then every key some loader would ignore."""
    checks = status.get("key_checks") or []
    if not checks:
        return ""
    text = "\n\nKeys that load:\n" + "\n".join(f"- {html.escape(check['summary'])}" for check in checks)
    notes = [f"{check['file']}: {note}" for check in checks for note in check.get("notes", [])]
    if notes:
        text += "\n\nLoads differently:\n" + "\n".join(f"- {html.escape(note)}" for note in notes)
    problems = status.get("key_problems") or []
    if problems:
        text += "\n\nIgnored keys:\n" + "\n".join(f"- {html.escape(line)}" for line in problems)
    return text


def _file_list(files: list[str]) -> str:
    return "\n".join(f"- `{Path(file).name}` ({Path(file).parent})" for file in files)


def log_text(status: dict[str, Any]) -> str:
    return "\n".join(status["messages"][-LOG_LINES:])
