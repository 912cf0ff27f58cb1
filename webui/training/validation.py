"""Held-out validation images: which images they are, that none of them is also a training image.

A validation set is a folder of images with captions (read with the training set's own caption rules) or a
seeded share of the training images. A validation loss is only worth watching when the model never trained
on those pictures, so a validation image whose bytes equal a training image's is refused with both names.
The loss itself is measured by the training loop at fixed noise levels and fixed noise
(`VALIDATION_LEVELS`, `VALIDATION_NOISE_SEED`), so two measurements differ only because the weights did.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from webui.training.config import TrainingConfig
from webui.training.dataset import DatasetError, TrainingDataset, scan_dataset

# Noise levels as fractions of the schedule (timestep / 1000, or flow sigma before the shift): one per
# region of the schedule, so the validation loss sees coarse shapes and fine detail alike.
VALIDATION_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)
VALIDATION_NOISE_SEED = 0x7A11
MAX_VALIDATION_IMAGES = 4  # validation images generated per round (the first captions)


def _content_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_no_overlap(training: TrainingDataset, validation: TrainingDataset) -> None:
    """Refuse validation images that are training images (the same file, or the same bytes under another name)."""
    by_hash: dict[str, Path] = {}
    for item in training.items:
        by_hash.setdefault(_content_hash(item.path), item.path)
    overlaps = []
    for item in validation.items:
        twin = by_hash.get(_content_hash(item.path))
        if twin is not None:
            overlaps.append(f"{item.path.name} = {twin.name}" if twin.name != item.path.name else str(item.path.name))
    if overlaps:
        shown = ", ".join(overlaps[:10]) + (f" and {len(overlaps) - 10} more" if len(overlaps) > 10 else "")
        raise DatasetError(f"the validation set overlaps the training set ({len(overlaps)} image(s): {shown}); "
                           "validation images must be pictures the model does not train on")


def _subset(dataset: TrainingDataset, indices: list[int], *, for_validation: bool) -> TrainingDataset:
    """Some items of a dataset; validation items are seen once, unflipped, with their captions as written."""
    items = [dataset.items[index] for index in indices]
    if for_validation:
        items = [dataclasses.replace(item, repeats=1) for item in items]
        return TrainingDataset(items, trigger_words=dataset.trigger_words)
    return TrainingDataset(items, skipped=dataset.skipped, notes=dataset.notes, trigger_words=dataset.trigger_words,
                           flip_augment=dataset.flip_augment, shuffle_captions=dataset.shuffle_captions,
                           keep_tokens=dataset.keep_tokens, caption_dropout_rate=dataset.caption_dropout_rate,
                           caption_tag_dropout_rate=dataset.caption_tag_dropout_rate)


def training_sets(config: TrainingConfig) -> tuple[TrainingDataset, TrainingDataset | None]:
    """(training images, validation images or None) for a run, checked: a split leaves images on both sides,
    and a validation folder shares no image with the training set."""
    dataset = scan_dataset(config)
    if config.validation_dir.strip():
        validation = scan_dataset(config, Path(config.validation_dir))
        check_no_overlap(dataset, validation)
        return dataset, _subset(validation, list(range(len(validation))), for_validation=True)
    if not config.validation_split:
        return dataset, None
    count = len(dataset)
    held_out = max(1, round(count * config.validation_split))
    if held_out >= count:
        raise DatasetError(f"validation_split {config.validation_split:g} of {count} image(s) leaves no image to "
                           "train on; add images or lower the split")
    rng = np.random.default_rng([config.seed, VALIDATION_NOISE_SEED])
    chosen = sorted(int(index) for index in rng.choice(count, size=held_out, replace=False))
    rest = [index for index in range(count) if index not in chosen]
    return _subset(dataset, rest, for_validation=False), _subset(dataset, chosen, for_validation=True)
