"""Trainer features that need no model: caption dropout, EMA arithmetic, block-wise learning rates,
masked loss arithmetic, and the config checks each feature adds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sdstudio_eval.toy_world import held_out_concept_images
from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.dataset import DatasetError, DatasetItem, TrainingDataset, scan_dataset
from webui.training.ema import WeightAverage
from webui.models.families import family_named
from webui.training.objectives import per_sample_loss
from webui.training.optim import block_weighted_groups
from webui.training.validation import training_sets

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


# ---- masked loss ----

def write_masked_dataset(folder: Path, masks: dict[str, Image.Image | None], size: int = 64) -> list[Path]:
    """Hexagon renders named img_0.png...; `masks` maps an image name to the mask written beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(held_out_concept_images("hexagon", len(masks))):
        path = folder / f"img_{index}.png"
        image.resize((size, size)).save(path)
        paths.append(path)
    for name, mask in masks.items():
        if mask is not None:
            mask.save(folder / f"{Path(name).stem}_mask.png")
    return paths


def left_half_mask(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


def masked_config(folder: Path, **changes) -> TrainingConfig:
    values = dict(output_name="hex", base_checkpoint="toy", dataset_dir=str(folder), trigger_word="hxgn",
                  class_word="shape", resolution=64, min_bucket_resolution=32, max_bucket_resolution=128,
                  bucket_step=32, masked_loss=True)
    values.update(changes)
    return TrainingConfig(**values)


def test_masks_beside_images_are_found_and_are_not_training_images(tmp_path):
    write_masked_dataset(tmp_path, {"img_0.png": left_half_mask(64), "img_1.png": None})
    dataset = scan_dataset(masked_config(tmp_path))
    assert [item.path.name for item in dataset.items] == ["img_0.png", "img_1.png"]
    assert dataset.items[0].mask_path == tmp_path / "img_0_mask.png" and not dataset.items[1].has_mask
    assert any("img_1.png" in note and "whole picture" in note for note in dataset.notes)
    mask = dataset.mask(0)
    assert mask.shape == (1, 64, 64) and mask[0, :, :30].min() == 1.0 and mask[0, :, 34:].max() == 0.0
    assert torch.equal(dataset.mask(0, flip=True), torch.flip(mask, dims=[2]))
    # without masked loss the mask files are plain images of the dataset, as before
    assert len(scan_dataset(masked_config(tmp_path, masked_loss=False)).items) == 3


def test_a_mask_of_another_size_is_resized_with_a_note(tmp_path):
    write_masked_dataset(tmp_path, {"img_0.png": left_half_mask(32)})
    dataset = scan_dataset(masked_config(tmp_path))
    assert any("img_0_mask.png is 32x32" in note and "resized" in note for note in dataset.notes)
    assert dataset.mask(0).shape == (1, 64, 64)


@pytest.mark.parametrize(("value", "words"), [(0, "all black"), (255, "all white")])
def test_a_mask_that_covers_nothing_or_everything_is_refused_by_file_name(tmp_path, value, words):
    write_masked_dataset(tmp_path, {"img_0.png": left_half_mask(64), "img_1.png": Image.new("L", (64, 64), value)})
    with pytest.raises(DatasetError, match=f"img_1_mask.png .*{words}"):
        scan_dataset(masked_config(tmp_path))


def test_masks_folder_and_alpha_channel_are_mask_sources(tmp_path):
    dataset_dir, masks_dir = tmp_path / "data", tmp_path / "masks"
    paths = write_masked_dataset(dataset_dir, {"img_0.png": None, "img_1.png": None, "img_2.png": None})
    masks_dir.mkdir()
    left_half_mask(64).save(masks_dir / "img_0.png")
    rgba = Image.open(paths[1]).convert("RGBA")
    rgba.putalpha(left_half_mask(64))
    rgba.save(paths[1])
    opaque = Image.open(paths[2]).convert("RGBA")  # an alpha channel without transparency is no mask
    opaque.save(paths[2])
    dataset = scan_dataset(masked_config(dataset_dir, masks_dir=str(masks_dir)))
    assert dataset.items[0].mask_path == masks_dir / "img_0.png"
    assert dataset.items[1].mask_from_alpha and torch.equal(dataset.mask(1), dataset.mask(0))
    assert not dataset.items[2].has_mask


def test_masked_loss_without_any_mask_is_refused(tmp_path):
    write_masked_dataset(tmp_path, {"img_0.png": None})
    with pytest.raises(DatasetError, match="no image has a mask"):
        scan_dataset(masked_config(tmp_path))


def test_the_loss_sees_no_error_from_the_masked_region():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 8, 8, generator=generator)
    prediction = torch.randn(2, 4, 8, 8, generator=generator, requires_grad=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, :4] = 1.0
    loss = per_sample_loss(prediction, target, mask)
    loss.sum().backward()
    assert prediction.grad[..., 4:].abs().max() == 0.0 and prediction.grad[..., :4].abs().min() > 0.0
    # the loss is the plain error over the kept half; changing the masked half changes nothing
    assert torch.allclose(loss, ((prediction[..., :4] - target[..., :4]) ** 2).mean(dim=(1, 2, 3)))
    changed = prediction.detach().clone()
    changed[..., 4:] += 100.0
    assert torch.equal(per_sample_loss(changed, target, mask), loss.detach())
    assert torch.allclose(per_sample_loss(prediction, target), ((prediction - target) ** 2).mean(dim=(1, 2, 3)))


# ---- EMA ----

def test_ema_follows_the_closed_form_on_a_known_sequence():
    parameter = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    average = WeightAverage([parameter], decay=0.9)
    sequence = [torch.tensor([float(k), 10.0 - k]) for k in range(1, 8)]
    for values in sequence:
        with torch.no_grad():
            parameter.copy_(values)
        average.update()
    n, decay = len(sequence), 0.9
    expected = decay ** n * torch.tensor([2.0, -1.0]) + sum(
        (1 - decay) * decay ** (n - k) * values for k, values in enumerate(sequence, start=1))
    assert torch.allclose(average.averages[0], expected, atol=1e-6)
    # the average lags the raw weights: for the ramp 1..7 it sits (about decay/(1-decay) steps) behind 7
    assert average.averages[0][0] < parameter[0] - 2.0
    with average.applied():
        assert torch.allclose(parameter.detach(), expected, atol=1e-6)
    assert torch.equal(parameter.detach(), sequence[-1])  # the raw weights come back


def test_ema_decay_is_checked_only_when_ema_is_on():
    config = TrainingConfig(output_name="x", base_checkpoint="toy", dataset_dir="d", ema_decay=1.0)
    with pytest.raises(TrainingConfigError, match="ema_decay") as error:
        config.replace(use_ema=True).validate()
    assert error.value.field == "ema_decay"
    with pytest.raises(TrainingConfigError, match="ema_output"):
        config.replace(use_ema=True, ema_decay=0.99, ema_output="both").validate()


# ---- validation ----

def test_a_validation_folder_that_shares_images_with_the_dataset_is_refused_with_the_files(tmp_path):
    train = write_masked_dataset(tmp_path / "train", {f"img_{i}.png": None for i in range(3)})
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "copy_of_one.png").write_bytes(train[1].read_bytes())
    (held_out / "img_2.png").write_bytes(train[2].read_bytes())
    held_out_image = held_out_concept_images("hexagon", 1, seed=99)[0].resize((64, 64))
    held_out_image.save(held_out / "new.png")
    config = masked_config(tmp_path / "train", masked_loss=False, validation_dir=str(held_out))
    with pytest.raises(DatasetError, match=r"overlaps the training set \(2 image\(s\): copy_of_one.png = img_1.png, "
                                           r"img_2.png\)"):
        training_sets(config)
    (held_out / "copy_of_one.png").unlink()
    (held_out / "img_2.png").unlink()
    (held_out / "new.txt").write_text("hxgn, a held-out shape")
    dataset, validation = training_sets(config)
    assert len(dataset) == 3 and [item.caption for item in validation.items] == ["hxgn, a held-out shape"]


def test_a_validation_split_holds_out_a_seeded_share_of_the_images(tmp_path):
    write_masked_dataset(tmp_path, {f"img_{i}.png": None for i in range(6)})
    config = masked_config(tmp_path, masked_loss=False, validation_split=0.34, repeats=3)
    dataset, validation = training_sets(config)
    assert len(dataset) == 4 and len(validation) == 2 and all(item.repeats == 1 for item in validation.items)
    assert not {item.path for item in dataset.items} & {item.path for item in validation.items}
    again = training_sets(config)[1]
    assert [item.path for item in again.items] == [item.path for item in validation.items]
    other_seed = training_sets(config.replace(seed=1))[1]
    assert len(other_seed) == 2


@pytest.mark.parametrize(("changes", "field"), [
    ({"validation_every_n_steps": 5}, "validation_every_n_steps"),
    ({"validation_split": 0.2, "validation_dir": "held_out"}, "validation_split"),
    ({"validation_split": 0.8}, "validation_split"),
])
def test_validation_settings_that_cannot_work_are_refused_by_name(changes, field):
    config = TrainingConfig(output_name="x", base_checkpoint="toy", dataset_dir="d", **changes)
    with pytest.raises(TrainingConfigError) as error:
        config.validate()
    assert error.value.field == field


# ---- block-wise learning rates ----

def test_block_weights_scale_each_blocks_lr_and_a_weight_of_0_freezes_the_block():
    names = ["conv_in.weight", "down_blocks.0.attn.lora_A.weight", "down_blocks.1.attn.lora_A.weight",
             "mid_block.attn.lora_A.weight", "up_blocks.2.attn.lora_A.weight"]
    parameters = {name: torch.nn.Parameter(torch.zeros(2)) for name in names}
    groups = block_weighted_groups(parameters, 1e-3, {"down": 0.0, "mid": 2.0, "up": 0.5})
    lrs = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert lrs == {id(parameters["conv_in.weight"]): 1e-3, id(parameters["mid_block.attn.lora_A.weight"]): 2e-3,
                   id(parameters["up_blocks.2.attn.lora_A.weight"]): 5e-4}
    assert not parameters["down_blocks.0.attn.lora_A.weight"].requires_grad
    assert not parameters["down_blocks.1.attn.lora_A.weight"].requires_grad
    assert parameters["mid_block.attn.lora_A.weight"].requires_grad
    plain = block_weighted_groups(parameters, 1e-3, {"down": 1.0, "mid": 1.0, "up": 1.0})
    assert len(plain) == 1 and len(plain[0]["params"]) == 5  # no weights: one group, as before


def test_block_weights_are_refused_where_no_unet_blocks_train():
    config = TrainingConfig(output_name="x", base_checkpoint="toy", dataset_dir="d", mid_lr_weight=0.5)
    config.validate().check_family(family_named("sd1"))
    with pytest.raises(TrainingConfigError, match="mid_lr_weight: .*transformer, not a UNet"):
        config.check_family(family_named("sd3"))
    with pytest.raises(TrainingConfigError, match="mid_lr_weight: textual inversion trains no UNet"):
        config.replace(method="textual_inversion", trigger_word="hxgn", class_word="shape").validate()
    with pytest.raises(TrainingConfigError, match="down_lr_weight: .*nothing in the UNet trains"):
        config.replace(down_lr_weight=0.0, mid_lr_weight=0.0, up_lr_weight=0.0).validate()


def test_text_encoder_caching_is_refused_while_the_text_side_trains():
    config = TrainingConfig(output_name="x", base_checkpoint="toy", dataset_dir="d", cache_text_encoder_outputs=True,
                            trigger_word="hxgn", class_word="shape")
    config.validate()
    with pytest.raises(TrainingConfigError, match="cache_text_encoder_outputs: needs a frozen text encoder"):
        config.replace(train_text_encoder=True).validate()
    with pytest.raises(TrainingConfigError, match="cache_text_encoder_outputs: pivotal trains the new token"):
        config.replace(method="pivotal").validate()


def test_an_unreadable_mask_is_refused_by_file_name(tmp_path):
    write_masked_dataset(tmp_path, {"img_0.png": left_half_mask(64), "img_1.png": None})
    (tmp_path / "img_1_mask.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="mask img_1_mask.png \\(for img_1.png\\) cannot be read"):
        scan_dataset(masked_config(tmp_path))
