"""The embedded default checkpoint, so the app runs offline with an empty models folder.

SD Studio ships a small model of the SD1.x architecture trained from scratch on the toy world
(`sdstudio_eval/toy_world.py`; model card in `models/default/sd-studio-toy/README.md`). When the
checkpoint folder holds no model it is copied there, so it is listed and loaded by the ordinary
catalog/loading path like any downloaded model. This module is the one place that decides what the
default is.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from webui.settings import PROJECT_ROOT

DEFAULT_MODEL_NAME = "sd-studio-toy"
SHIPPED_DEFAULT_MODEL = PROJECT_ROOT / "models" / "default" / DEFAULT_MODEL_NAME
# The txt2img prompt box starts with this prompt, so a newcomer's first Generate shows what the default model
# does; and the README's example. The fidelity report checks both on 10 seeds (`sdstudio_eval.prompt_sets`).
EXAMPLE_PROMPT = "a red circle on a blue background"
README_EXAMPLE_PROMPT = "two large striped red squares on the left, blue background"
# How the default model was made; they describe that model only, so copies, merges and trained results drop them.
TRAINING_RECORD_FILES = ("training_report.json", "decoder_finetune_report.json")


def ensure_default_model(checkpoint_folder: Path) -> Path | None:
    """Copy the default model into an empty checkpoint folder; return its path if it was copied."""
    from webui.models.catalog import SINGLE_FILE_SUFFIXES, is_diffusers_folder

    checkpoint_folder.mkdir(parents=True, exist_ok=True)
    has_models = any(
        is_diffusers_folder(path) or (path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES)
        for path in checkpoint_folder.rglob("*")
    )
    if has_models:
        return None
    if not (SHIPPED_DEFAULT_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped default model is missing from {SHIPPED_DEFAULT_MODEL}")
    target = checkpoint_folder / DEFAULT_MODEL_NAME
    with tempfile.TemporaryDirectory(dir=checkpoint_folder, prefix=".copying-") as staging:
        staged = Path(staging) / DEFAULT_MODEL_NAME
        shutil.copytree(SHIPPED_DEFAULT_MODEL, staged, ignore=shutil.ignore_patterns(*TRAINING_RECORD_FILES))
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier copy
        staged.rename(target)
    return target
