"""Trainer features that need no model: caption dropout, EMA arithmetic, block-wise learning rates,
masked loss arithmetic, and the config checks each feature adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.dataset import DatasetItem, TrainingDataset

TAGS = ("hxgn", "red", "blue", "large", "small", "left", "right", "top", "bottom", "shape")


def tagged_dataset(images: int = 10, repeats: int = 200, **options) -> TrainingDataset:
    caption = ", ".join(TAGS)
    items = [DatasetItem(Path(f"img_{index}.png"), caption, ".txt", "10_hxgn", repeats, (64, 64), (64, 64))
             for index in range(images)]
    return TrainingDataset(items, **options)


def epoch_captions(dataset: TrainingDataset, epoch: int = 0) -> list[str]:
    return [sample.caption for batch in dataset.epoch_batches(epoch, 4, seed=3) for sample in batch]


def test_caption_dropout_empties_the_configured_share_of_captions():
    captions = epoch_captions(tagged_dataset(caption_dropout_rate=0.2))
    empty = sum(caption == "" for caption in captions) / len(captions)
    assert len(captions) == 2000 and abs(empty - 0.2) < 0.03
    assert all(caption in ("", ", ".join(TAGS)) for caption in captions)


def test_tag_dropout_keeps_the_first_tags_and_drops_the_rate_of_the_others():
    captions = epoch_captions(tagged_dataset(keep_tokens=2, caption_tag_dropout_rate=0.3))
    kept_tail = 0
    for caption in captions:
        tags = caption.split(", ")
        assert tags[:2] == ["hxgn", "red"]  # keep_tokens: never dropped
        assert all(tag in TAGS[2:] for tag in tags[2:]) and tags[2:] == sorted(tags[2:], key=TAGS.index)
        kept_tail += len(tags) - 2
    dropped = 1 - kept_tail / (len(captions) * (len(TAGS) - 2))
    assert abs(dropped - 0.3) < 0.02


def test_zero_dropout_changes_nothing_not_even_the_data_order():
    plain = tagged_dataset(shuffle_captions=True).epoch_batches(1, 4, seed=3)
    zero = tagged_dataset(shuffle_captions=True, caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0)
    assert zero.epoch_batches(1, 4, seed=3) == plain


@pytest.mark.parametrize("field", ["caption_dropout_rate", "caption_tag_dropout_rate"])
def test_a_dropout_rate_outside_0_to_1_is_refused_by_name(field):
    config = TrainingConfig(output_name="x", base_checkpoint="toy", dataset_dir="d", **{field: 1.5})
    with pytest.raises(TrainingConfigError, match=field):
        config.validate()
