"""Training datasets: captions (sidecar vs template), kohya folders, repeats, buckets, flips, summaries, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sdstudio_eval.toy_world import held_out_concept_images
from webui.training.config import TrainingConfig
from webui.training.dataset import (
    DatasetError,
    LatentCache,
    bucket_resolutions,
    nearest_bucket,
    unet_latents,
    scan_dataset,
)


def config_for(folder: Path, **changes) -> TrainingConfig:
    values = dict(output_name="hex", base_checkpoint="toy", dataset_dir=str(folder), trigger_word="hxgn",
                  class_word="shape", resolution=64, min_bucket_resolution=32, max_bucket_resolution=128, bucket_step=32)
    values.update(changes)
    return TrainingConfig(**values)


def write_images(folder: Path, count: int, size: tuple[int, int] = (64, 64), start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(held_out_concept_images("hexagon", count, seed=start)):
        path = folder / f"img_{start + index:02d}.png"
        image.resize(size).save(path)
        paths.append(path)
    return paths


def test_sidecar_captions_and_template_fallback_are_counted(tmp_path):
    paths = write_images(tmp_path, 5)
    paths[0].with_suffix(".txt").write_text("a large red hexagon on the left, blue background\n")
    paths[1].with_suffix(".txt").write_text("hxgn, a small hexagon")
    paths[2].with_suffix(".txt").write_text("HXGN in the center")
    paths[3].with_suffix(".txt").write_text("   \n")  # empty: falls back to the template

    dataset = scan_dataset(config_for(tmp_path))
    captions = {item.path.name: item.caption for item in dataset.items}
    assert captions["img_00.png"] == "hxgn, a large red hexagon on the left, blue background"
    assert captions["img_01.png"] == "hxgn, a small hexagon"  # already names the trigger: not repeated
    assert captions["img_02.png"] == "HXGN in the center"
    assert captions["img_03.png"] == captions["img_04.png"] == "hxgn, a shape"
    summary = dataset.summary()
    assert summary.caption_sources == {".txt": 3, "template": 2}
    assert "3 captions from .txt, 2 from template" in summary.describe()

    no_prepend = scan_dataset(config_for(tmp_path, prepend_trigger=False))
    assert {i.path.name: i.caption for i in no_prepend.items}["img_00.png"].startswith("a large red")


def test_caption_files_with_the_other_extension_are_used_and_reported(tmp_path):
    paths = write_images(tmp_path, 2)
    paths[0].with_suffix(".caption").write_text("a hexagon")
    dataset = scan_dataset(config_for(tmp_path, caption_extension=".txt"))
    assert dataset.summary().caption_sources == {".caption": 1, "template": 1}
    assert any("no .txt captions found" in note for note in dataset.notes)


def test_template_without_a_class_word_is_tidy(tmp_path):
    write_images(tmp_path, 1)
    dataset = scan_dataset(config_for(tmp_path, class_word=""))
    assert dataset.items[0].caption == "hxgn"


def test_kohya_folder_layout_gives_repeats_trigger_and_class(tmp_path):
    write_images(tmp_path / "10_nosnja girl", 3)
    write_images(tmp_path / "2_hxgn shape", 2, start=10)
    (tmp_path / "2_hxgn shape" / "img_10.txt").write_text("a blue hexagon, striped")
    write_images(tmp_path / "extras", 1, start=20)

    dataset = scan_dataset(config_for(tmp_path, trigger_word="", class_word="", repeats=3))
    by_folder = {item.folder: item for item in dataset.items}
    assert by_folder["10_nosnja girl"].repeats == 10 and by_folder["10_nosnja girl"].caption == "nosnja, a girl"
    assert by_folder["2_hxgn shape"].repeats == 2
    assert by_folder["extras"].repeats == 3  # no N_ prefix: the config's repeats, and a note saying so
    assert any("extras" in note and "10_extras" in note for note in dataset.notes)
    captions = sorted(item.caption for item in dataset.items if item.folder == "2_hxgn shape")
    assert captions == ["hxgn, a blue hexagon, striped", "hxgn, a shape"]

    summary = dataset.summary()
    assert summary.image_count == 6 and summary.samples_per_epoch == 3 * 10 + 2 * 2 + 1 * 3
    assert summary.repeats == {"10_nosnja girl": 10, "2_hxgn shape": 2, "extras": 3}
    assert summary.trigger_words == ["nosnja", "hxgn"]
    assert summary.tag_frequency["10_nosnja girl"] == {"nosnja": 3, "a girl": 3}
    assert summary.tag_frequency["2_hxgn shape"] == {"hxgn": 2, "a blue hexagon": 1, "striped": 1, "a shape": 1}


def test_the_dataset_folder_itself_may_be_a_kohya_folder(tmp_path):
    folder = tmp_path / "5_hxgn shape"
    write_images(folder, 2)
    dataset = scan_dataset(config_for(folder, trigger_word=""))
    assert {item.repeats for item in dataset.items} == {5}
    assert dataset.items[0].caption == "hxgn, a shape"


def test_embedding_methods_put_the_token_in_every_caption(tmp_path):
    paths = write_images(tmp_path / "4_nosnja girl", 2)
    paths[0].with_suffix(".txt").write_text("nosnja wearing a red dress")
    dataset = scan_dataset(config_for(tmp_path, method="textual_inversion", token="sks", trigger_word=""))
    captions = sorted(item.caption for item in dataset.items)
    assert captions == ["sks wearing a red dress", "sks, a girl"]
    assert dataset.summary().trigger_words == ["sks"]


def test_epochs_repeat_every_image_and_are_seeded(tmp_path):
    write_images(tmp_path / "3_hxgn shape", 4)
    dataset = scan_dataset(config_for(tmp_path))
    batches = dataset.epoch_batches(epoch=0, batch_size=5, seed=1)
    counts = Counter(sample.index for batch in batches for sample in batch)
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}
    assert sorted(len(batch) for batch in batches) == [2, 5, 5]
    assert len(batches) == dataset.batches_per_epoch(5) == 3
    again = dataset.epoch_batches(epoch=0, batch_size=5, seed=1)
    assert [[s.index for s in b] for b in again] == [[s.index for s in b] for b in batches]
    other_epoch = dataset.epoch_batches(epoch=1, batch_size=5, seed=1)
    assert [[s.index for s in b] for b in other_epoch] != [[s.index for s in b] for b in batches]


def test_buckets_respect_area_step_and_limits():
    buckets = bucket_resolutions(512, 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    for width, height in buckets:
        assert width * height <= 512 * 512
        assert width % 64 == 0 and height % 64 == 0
        assert 256 <= width <= 1024 and 256 <= height <= 1024
    assert nearest_bucket((1920, 1080), buckets) == (640, 384)
    assert nearest_bucket((1000, 1000), buckets) == (512, 512)
    assert (704, 320) in buckets and (320, 704) in buckets  # every landscape bucket has its portrait twin
    assert nearest_bucket((600, 1200), buckets) == (320, 704)


def test_mixed_aspect_images_go_to_their_buckets_and_batches_never_mix(tmp_path):
    write_images(tmp_path, 2, size=(128, 64))
    write_images(tmp_path, 2, size=(64, 128), start=2)
    write_images(tmp_path, 2, size=(90, 90), start=4)
    dataset = scan_dataset(config_for(tmp_path, max_bucket_resolution=128))
    buckets = {item.path.name: item.bucket for item in dataset.items}
    assert buckets["img_00.png"] == buckets["img_01.png"] and buckets["img_00.png"][0] > buckets["img_00.png"][1]
    assert buckets["img_02.png"][0] < buckets["img_02.png"][1]
    assert buckets["img_04.png"] == (64, 64)
    assert dataset.summary().bucket_counts == {f"{w}x{h}": 2 for w, h in {buckets["img_00.png"], buckets["img_02.png"], (64, 64)}}
    for index, item in enumerate(dataset.items):
        assert tuple(dataset.pixels(index).shape) == (3, item.bucket[1], item.bucket[0])
    for batch in dataset.epoch_batches(0, batch_size=4, seed=3):
        assert len({dataset.items[s.index].bucket for s in batch}) == 1

    square = scan_dataset(config_for(tmp_path, enable_bucketing=False))
    assert {item.bucket for item in square.items} == {(64, 64)}


def test_pixels_are_centre_cropped_and_scaled_to_minus_one_one(tmp_path):
    wide = Image.new("RGB", (128, 64), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 40, 64))  # the centre crop (x 32..96) keeps 8 of these 40 black columns
    wide.save(tmp_path / "wide.png")
    dataset = scan_dataset(config_for(tmp_path, enable_bucketing=False))
    pixels = dataset.pixels(0)
    assert tuple(pixels.shape) == (3, 64, 64)
    assert pixels.max() == 1.0 and pixels.min() == -1.0
    assert pixels[:, :, :8].max() == -1.0 and pixels[:, :, 8:].min() == 1.0
    assert dataset.crop_top_left(0) == (0, 32)


def test_flip_augmentation_mirrors_about_half_the_samples(tmp_path):
    write_images(tmp_path / "20_hxgn shape", 4)
    flipped = scan_dataset(config_for(tmp_path, flip_augment=True))
    samples = [s for batch in flipped.epoch_batches(0, 4, seed=0) for s in batch]
    share = sum(s.flip for s in samples) / len(samples)
    assert 0.3 < share < 0.7
    image = flipped.pixels(0, flip=False)
    assert torch.equal(flipped.pixels(0, flip=True), torch.flip(image, dims=[2]))
    plain = scan_dataset(config_for(tmp_path, flip_augment=False))
    assert not any(s.flip for batch in plain.epoch_batches(0, 4, seed=0) for s in batch)


def test_shuffle_captions_keeps_the_first_tags(tmp_path):
    paths = write_images(tmp_path / "30_hxgn shape", 1)
    paths[0].with_suffix(".txt").write_text("hxgn, red, large, left, blue background, solid")
    dataset = scan_dataset(config_for(tmp_path, shuffle_captions=True, keep_tokens=1))
    captions = {s.caption for batch in dataset.epoch_batches(0, 1, seed=0) for s in batch}
    assert len(captions) > 1 and all(caption.startswith("hxgn, ") for caption in captions)
    assert {frozenset(c.split(", ")) for c in captions} == {frozenset("hxgn, red, large, left, blue background, solid".split(", "))}


def test_unreadable_images_are_skipped_and_named(tmp_path):
    write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    truncated = (tmp_path / "img_00.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    dataset = scan_dataset(config_for(tmp_path))
    assert len(dataset) == 2
    assert sorted(s.name for s in dataset.summary().skipped) == ["broken.png", "truncated.png"]
    assert "skipped broken.png" in dataset.summary().describe()


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(config_for(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images in .*10_trigger class"):
        scan_dataset(config_for(tmp_path / "empty"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="none of the images .* a.jpg"):
        scan_dataset(config_for(tmp_path / "corrupt"))


def test_transparent_and_rotated_images_load_as_the_user_sees_them(tmp_path):
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    transparent.save(tmp_path / "a_transparent.png")
    portrait = Image.new("RGB", (96, 64), (0, 0, 255))
    exif = portrait.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    portrait.save(tmp_path / "b_rotated.jpg", exif=exif)
    dataset = scan_dataset(config_for(tmp_path))
    assert dataset.items[0].size == (64, 64) and dataset.pixels(0).min() == 1.0  # transparent -> white
    assert dataset.items[1].size == (64, 96)  # EXIF orientation applied
    assert np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "b_rotated.jpg"))).shape[:2] == (96, 64)


class _FakeVae(torch.nn.Module):
    """Stands in for AutoencoderKL: counts encodes, returns distribution parameters derived from the pixels."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def dtype(self):
        return torch.float32

    def encode(self, pixels):
        self.calls += 1
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)
        parameters = torch.cat([pooled, pooled[:, :1], torch.full_like(pooled, -40.0), torch.full_like(pooled[:, :1], -40.0)], 1)
        latent_dist = type("Dist", (), {"parameters": parameters})
        return type("Out", (), {"latent_dist": latent_dist})


def test_latent_cache_encodes_each_image_and_flip_once(tmp_path):
    write_images(tmp_path / "5_hxgn shape", 3)
    dataset = scan_dataset(config_for(tmp_path, flip_augment=True))
    vae = _FakeVae()
    cache = LatentCache.build(dataset, vae, torch.device("cpu"))
    assert vae.calls == 6 and len(cache) == 6  # 3 images, each plain and mirrored
    assert not torch.equal(cache.get(0, False), cache.get(0, True))
    parameters = cache.get(1, True).unsqueeze(0)
    latents = unet_latents(parameters, {"scaling_factor": 0.5, "shift_factor": 0.25})
    assert torch.equal(latents, (parameters[:, :4] - 0.25) * 0.5)  # the mean half, shifted and scaled
    stopped = LatentCache.build(dataset, _FakeVae(), torch.device("cpu"), should_stop=lambda: True)
    assert stopped is None


def test_missing_captions_are_written_per_folder_and_existing_ones_kept(tmp_path):
    from webui.training.dataset import caption_missing_images

    kept = write_images(tmp_path / "10_nosnja girl", 2)
    kept[0].with_suffix(".txt").write_text("nosnja, my own words")
    write_images(tmp_path / "3_hxgn shape", 1, start=5)
    written, notes = caption_missing_images(config_for(tmp_path, trigger_word="", class_word=""))
    assert sorted(p.name for p in written) == ["img_01.txt", "img_05.txt"]
    assert (tmp_path / "10_nosnja girl" / "img_00.txt").read_text() == "nosnja, my own words"
    assert (tmp_path / "10_nosnja girl" / "img_01.txt").read_text().strip() == "nosnja, a girl"
    assert (tmp_path / "3_hxgn shape" / "img_05.txt").read_text().strip() == "hxgn, a shape"
    assert any("from template" in note for note in notes)
    assert scan_dataset(config_for(tmp_path)).summary().caption_sources == {".txt": 3}
