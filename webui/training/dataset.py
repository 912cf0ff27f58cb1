"""Training images and captions: folder layouts, trigger words, aspect-ratio buckets, latent caching.

A dataset is a folder of images with optional caption sidecars (`image.txt` beside `image.png`). The
kohya layout is understood too: subfolders named `N_trigger class` (e.g. `10_nosnja girl`) give their
images N repeats, a trigger word and a class word. Captions never go missing silently: each image's
caption source is counted, so the UI can say "12 captions from .txt, 3 from template".

Images keep their aspect ratio through bucketing: every bucket has an area of at most resolution^2 and
sides that are multiples of the bucket step; each image goes to the bucket with the nearest aspect
ratio, is scaled to cover it and centre-cropped. A batch only ever holds one bucket's images.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from webui.security.network import NetworkPolicy
from webui.security.paths import is_within
from webui.training.config import CAPTION_EXTENSIONS, IMAGE_SUFFIXES, TrainingConfig

KOHYA_FOLDER_PATTERN = re.compile(r"^(\d+)_(.+)$")
SIDECAR_EXTENSIONS = CAPTION_EXTENSIONS
MASK_SUFFIX = "_mask"  # `photo_mask.png` is the mask of `photo.png`
TEMPLATE_SOURCE = "template"
CLASS_SOURCE = "class prompt"


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says what to fix."""


@dataclass(frozen=True)
class DatasetItem:
    """One training image and everything decided about it at scan time."""

    path: Path
    caption: str
    caption_source: str             # the sidecar's extension (".txt"), "template" or "class prompt"
    folder: str                     # the folder it came from (ss_tag_frequency key)
    repeats: int
    size: tuple[int, int]           # (width, height) after EXIF orientation
    bucket: tuple[int, int]         # (width, height) it is trained at
    mask_path: Path | None = None   # masked loss: a mask file for this image
    mask_from_alpha: bool = False   # masked loss: the image's own alpha channel is its mask

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or self.mask_from_alpha


@dataclass(frozen=True)
class SkippedImage:
    name: str
    reason: str


@dataclass(frozen=True)
class BatchSample:
    """One image in one batch of one epoch: which image, flipped or not, and its caption this time."""

    index: int
    flip: bool
    caption: str


@dataclass(frozen=True)
class DatasetSummary:
    """What the UI shows before training starts."""

    image_count: int
    samples_per_epoch: int
    repeats: dict[str, int]
    bucket_counts: dict[str, int]
    caption_sources: dict[str, int]
    tag_frequency: dict[str, dict[str, int]]
    trigger_words: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One readable paragraph, e.g. '15 images (150 per epoch); 12 captions from .txt, 3 from template'."""
        sources = ", ".join(
            f"{count} from {source}" if source in (TEMPLATE_SOURCE, CLASS_SOURCE) else f"{count} captions from {source}"
            for source, count in sorted(self.caption_sources.items(), key=lambda pair: -pair[1])
        )
        buckets = ", ".join(f"{name}: {count}" for name, count in self.bucket_counts.items())
        text = f"{self.image_count} images ({self.samples_per_epoch} per epoch); {sources}; buckets {buckets}"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{s.name} ({s.reason})" for s in self.skipped)
        return text


# --------------------------------------------------------------------------------------------
# Buckets and image preparation
# --------------------------------------------------------------------------------------------


def bucket_resolutions(resolution: int, min_side: int, max_side: int, step: int) -> list[tuple[int, int]]:
    """All (width, height) buckets: area <= resolution^2, sides multiples of `step` within [min_side, max_side].

    For each width the tallest fitting height is kept, so every aspect ratio gets as many pixels as the
    area budget allows; every landscape bucket has its portrait twin, and the square bucket
    resolution x resolution is always included.
    """
    max_area = resolution * resolution
    buckets = {(resolution, resolution)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            buckets.update({(width, height), (height, width)})
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int], buckets: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log space) to the image's; larger area wins ties."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda bucket: (round(abs(math.log(bucket[0] / bucket[1]) - aspect), 9), -bucket[0] * bucket[1]))


def cover_and_crop(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Scale the image to cover the bucket, centre-crop it; also return the crop's (top, left)."""
    width, height = image.size
    target_width, target_height = bucket
    scale = max(target_width / width, target_height / height)
    resized_width = max(target_width, round(width * scale))
    resized_height = max(target_height, round(height * scale))
    if (resized_width, resized_height) != (width, height):
        image = image.resize((resized_width, resized_height), Image.Resampling.LANCZOS)
    left = (resized_width - target_width) // 2
    top = (resized_height - target_height) // 2
    return image.crop((left, top, left + target_width, top + target_height)), (top, left)


def open_rgb(path: Path) -> Image.Image:
    """Decode fully (so truncated files fail here), honour EXIF rotation, flatten alpha onto white."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return image.convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------
# Loss masks
# --------------------------------------------------------------------------------------------


def is_mask_file(path: Path) -> bool:
    return path.stem.endswith(MASK_SUFFIX)


def find_mask_file(image_path: Path, masks_dir: Path | None) -> Path | None:
    """`<stem>_mask.<ext>` beside the image, else `<stem>.<ext>` or `<stem>_mask.<ext>` in `masks_dir`."""
    stem = image_path.stem
    candidates = [(image_path.with_name(f"{stem}{MASK_SUFFIX}{ext}"), image_path.parent) for ext in IMAGE_SUFFIXES]
    if masks_dir is not None:
        candidates += [(masks_dir / f"{name}{ext}", masks_dir) for name in (stem, f"{stem}{MASK_SUFFIX}")
                       for ext in IMAGE_SUFFIXES]
    return next((path for path, folder in candidates if path.is_file() and is_within(path, folder)), None)


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def read_mask(item: DatasetItem) -> Image.Image:
    """The item's mask as 8-bit grey at the image's own (EXIF-oriented) size: 255 learns, 0 is ignored."""
    if item.mask_from_alpha:
        with Image.open(item.path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
    if item.mask_path is None:
        raise ValueError(f"{item.path.name} has no mask")
    with Image.open(item.mask_path) as mask:
        mask.load()
        mask = ImageOps.exif_transpose(mask).convert("L")
    return mask if mask.size == item.size else mask.resize(item.size, Image.Resampling.BILINEAR)


def check_mask(mask: Image.Image, description: str) -> None:
    """Refuse a mask that leaves nothing to learn (all black) or leaves nothing out (all white)."""
    low, high = mask.getextrema()
    if high == 0:
        raise DatasetError(f"{description} is all black: it leaves nothing of the image to learn; paint the "
                           "parts to learn white, or remove the mask")
    if low == 255:
        raise DatasetError(f"{description} is all white: it leaves nothing out, so masked loss would do nothing; "
                           "paint the parts to ignore black, or remove the mask")


def _mask_for(path: Path, size: tuple[int, int], masks_dir: Path | None, notes: list[str]) -> tuple[Path | None, bool]:
    """(mask file, whether the alpha channel is the mask) for one image, checked; (None, False) when it has none.

    An alpha channel that is fully opaque is no mask (many editors save RGBA without any transparency).
    """
    mask_path = find_mask_file(path, masks_dir)
    if mask_path is not None:
        try:
            with Image.open(mask_path) as mask:
                mask_size = ImageOps.exif_transpose(mask).size
                mask.load()
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            raise DatasetError(f"mask {mask_path.name} (for {path.name}) cannot be read: "
                               f"{str(error).splitlines()[0][:120] or type(error).__name__}") from None
        if mask_size != size:
            notes.append(f"mask {mask_path.name} is {mask_size[0]}x{mask_size[1]} but {path.name} is "
                         f"{size[0]}x{size[1]}: the mask was resized to the image")
        probe = DatasetItem(path, "", "", "", 1, size, size, mask_path=mask_path)
        check_mask(read_mask(probe), f"mask {mask_path.name} (for {path.name})")
        return mask_path, False
    with Image.open(path) as image:
        alpha = has_alpha(image)
    if not alpha:
        return None, False
    channel = read_mask(DatasetItem(path, "", "", "", 1, size, size, mask_from_alpha=True))
    if channel.getextrema()[0] == 255:
        return None, False
    check_mask(channel, f"the alpha channel of {path.name}")
    return None, True


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def fill_template(template: str, trigger: str, class_word: str) -> str:
    """The template with {trigger} and {class}; dangling separators from empty words are removed."""
    text = template.replace("{trigger}", trigger.strip()).replace("{class}", class_word.strip())
    text = re.sub(r"\b(a|an|the)\s*$", "", text.strip()).strip()
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"^[\s,]+|[\s,]+$", "", text)


def contains_word(text: str, word: str) -> bool:
    return bool(word) and re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text, flags=re.IGNORECASE) is not None


def with_trigger(caption: str, trigger: str) -> str:
    """kohya/A1111 habit: the trigger word first, unless the caption already names it."""
    if not trigger or contains_word(caption, trigger):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def caption_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def shuffled_caption(caption: str, keep_tokens: int, rng: np.random.Generator) -> str:
    """Shuffle comma-separated tags except the first `keep_tokens` (kohya's shuffle_caption)."""
    tags = caption_tags(caption)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    return ", ".join(head + [tail[i] for i in rng.permutation(len(tail))])


def dropped_caption(caption: str, keep_tokens: int, caption_rate: float, tag_rate: float,
                    rng: np.random.Generator) -> str:
    """kohya's caption dropout: the whole caption becomes empty with probability `caption_rate`, else each tag
    after the first `keep_tokens` is left out with probability `tag_rate`.

    Draws from `rng` only for a rate above 0, so a run without dropout sees the same data order as before.
    """
    if caption_rate and rng.random() < caption_rate:
        return ""
    if not tag_rate:
        return caption
    tags = caption_tags(caption)
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    draws = rng.random(len(tail))
    return ", ".join(head + [tag for tag, draw in zip(tail, draws) if draw >= tag_rate])


def read_sidecar(image_path: Path, preferred_extension: str) -> tuple[str, str] | None:
    """(caption, extension) from the preferred sidecar, else from another known caption extension.

    Only the fixed caption extensions are ever read, whatever `preferred_extension` says.
    """
    extensions = sorted(SIDECAR_EXTENSIONS, key=lambda extension: extension != preferred_extension)
    for extension in extensions:
        sidecar = image_path.with_suffix(extension)
        if sidecar.is_file() and is_within(sidecar, image_path.parent):
            text = sidecar.read_text(encoding="utf-8", errors="replace")
            text = " ".join(line.strip() for line in text.splitlines() if line.strip())
            if text:
                return text, extension
    return None


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ImageGroup:
    """Images of one folder with the words and repeats that folder implies."""

    folder: Path
    label: str
    repeats: int
    trigger: str
    class_word: str


class TrainingDataset:
    """Scanned, captioned, bucketed images; produces seeded epoch plans and pixel/latent tensors."""

    def __init__(self, items: Sequence[DatasetItem], *, skipped: Sequence[SkippedImage] = (),
                 notes: Sequence[str] = (), trigger_words: Sequence[str] = (), flip_augment: bool = False,
                 shuffle_captions: bool = False, keep_tokens: int = 1, caption_dropout_rate: float = 0.0,
                 caption_tag_dropout_rate: float = 0.0):
        if not items:
            raise DatasetError("the dataset has no usable images")
        self.items: tuple[DatasetItem, ...] = tuple(items)
        self.skipped = list(skipped)
        self.notes = list(notes)
        self.trigger_words = list(trigger_words)
        self.flip_augment = flip_augment
        self.shuffle_captions = shuffle_captions
        self.keep_tokens = keep_tokens
        self.caption_dropout_rate = caption_dropout_rate
        self.caption_tag_dropout_rate = caption_tag_dropout_rate

    def __len__(self) -> int:
        return len(self.items)

    @property
    def buckets(self) -> list[tuple[int, int]]:
        return sorted({item.bucket for item in self.items})

    def summary(self) -> DatasetSummary:
        repeats = {item.folder: item.repeats for item in self.items}
        bucket_counts = Counter(f"{item.bucket[0]}x{item.bucket[1]}" for item in self.items)
        tag_frequency: dict[str, Counter[str]] = defaultdict(Counter)
        for item in self.items:
            tag_frequency[item.folder].update(caption_tags(item.caption))
        return DatasetSummary(
            image_count=len(self.items),
            samples_per_epoch=sum(item.repeats for item in self.items),
            repeats=repeats,
            bucket_counts=dict(sorted(bucket_counts.items())),
            caption_sources=dict(Counter(item.caption_source for item in self.items)),
            tag_frequency={folder: dict(counts) for folder, counts in tag_frequency.items()},
            trigger_words=list(self.trigger_words),
            skipped=list(self.skipped),
            notes=list(self.notes),
        )

    def batches_per_epoch(self, batch_size: int) -> int:
        per_bucket = Counter()
        for item in self.items:
            per_bucket[item.bucket] += item.repeats
        return sum(math.ceil(count / batch_size) for count in per_bucket.values())

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> list[list[BatchSample]]:
        """The batches of one epoch: every image `repeats` times, shuffled, one bucket per batch.

        Depends only on (seed, epoch), so a resumed run sees the same data order as an uninterrupted one.
        """
        rng = np.random.default_rng([seed, epoch, 0xDA7A])
        expanded = [index for index, item in enumerate(self.items) for _ in range(item.repeats)]
        order = [expanded[i] for i in rng.permutation(len(expanded))]
        flips = rng.random(len(order)) < 0.5 if self.flip_augment else np.zeros(len(order), dtype=bool)
        by_bucket: dict[tuple[int, int], list[BatchSample]] = defaultdict(list)
        for position, index in enumerate(order):
            caption = self.items[index].caption
            if self.shuffle_captions:
                caption = shuffled_caption(caption, self.keep_tokens, rng)
            if self.caption_dropout_rate or self.caption_tag_dropout_rate:
                caption = dropped_caption(caption, self.keep_tokens, self.caption_dropout_rate,
                                          self.caption_tag_dropout_rate, rng)
            by_bucket[self.items[index].bucket].append(BatchSample(index, bool(flips[position]), caption))
        batches = [samples[start:start + batch_size] for _, samples in sorted(by_bucket.items())
                   for start in range(0, len(samples), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def pixels(self, index: int, flip: bool = False) -> torch.Tensor:
        """The image as the model sees it: bucket-sized, [-1, 1], [3, H, W]."""
        item = self.items[index]
        image, _ = cover_and_crop(open_rgb(item.path), item.bucket)
        if flip:
            image = ImageOps.mirror(image)
        return image_to_tensor(image)

    def mask(self, index: int, flip: bool = False) -> torch.Tensor | None:
        """The loss mask as the model sees the image: bucket-sized [1, H, W] in [0, 1]; None without one."""
        item = self.items[index]
        if not item.has_mask:
            return None
        mask, _ = cover_and_crop(read_mask(item), item.bucket)
        if flip:
            mask = ImageOps.mirror(mask)
        return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0).unsqueeze(0)

    def crop_top_left(self, index: int) -> tuple[int, int]:
        """Where the bucket crop starts in the scaled image (SDXL's crop conditioning)."""
        item = self.items[index]
        width, height = item.size
        scale = max(item.bucket[0] / width, item.bucket[1] / height)
        return ((max(item.bucket[1], round(height * scale)) - item.bucket[1]) // 2,
                (max(item.bucket[0], round(width * scale)) - item.bucket[0]) // 2)


def _group_for(folder: Path, config: TrainingConfig) -> _ImageGroup:
    """Words and repeats for one folder: from a kohya `N_trigger class` name, else from the config."""
    match = KOHYA_FOLDER_PATTERN.match(folder.name)
    if match and int(match.group(1)) > 0:
        words = match.group(2).split()
        trigger = words[0] if words else ""
        class_word = " ".join(words[1:]) or config.class_word
        return _ImageGroup(folder, folder.name, int(match.group(1)), trigger, class_word)
    return _ImageGroup(folder, folder.name, config.repeats, config.trigger_word.strip(), config.class_word)


def _image_files(folder: Path, root: Path, skip_masks: bool = False) -> list[Path]:
    """Images directly in `folder`; a symlink leading out of the dataset `root` is not part of the dataset,
    and with masked loss neither are the `_mask` files beside the images."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith(".") and is_within(p, root) and not (skip_masks and is_mask_file(p)))


def dataset_subfolders(root: Path) -> list[Path]:
    """The kohya-style subfolders of a dataset (hidden ones and symlinks leading out of it are skipped)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_within(p, root))


def _image_groups(root: Path, config: TrainingConfig) -> tuple[list[tuple[_ImageGroup, list[Path]]], list[str]]:
    notes = []
    groups = []
    skip_masks = config.masked_loss
    masks_dir = Path(config.masks_dir).expanduser().resolve() if config.masked_loss and config.masks_dir.strip() else None
    root_images = _image_files(root, root, skip_masks)
    if root_images:
        groups.append((_group_for(root, config), root_images))
    for sub in dataset_subfolders(root):
        if masks_dir is not None and sub.resolve() == masks_dir:
            continue  # the masks folder inside the dataset holds masks, not training images
        images = _image_files(sub, root, skip_masks)
        if not images:
            continue
        group = _group_for(sub, config)
        if not KOHYA_FOLDER_PATTERN.match(sub.name):
            notes.append(f"folder {sub.name!r} has no 'N_' repeats prefix (kohya layout, e.g. 10_{sub.name}); "
                         f"its images use {config.repeats} repeat(s)")
        groups.append((group, images))
    return groups, notes


def scan_dataset(config: TrainingConfig, folder: Path | None = None) -> TrainingDataset:
    """Read the dataset folder of `config` (or `folder`): captions, triggers, repeats and buckets."""
    root = Path(folder if folder is not None else config.dataset_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    groups, notes = _image_groups(root, config)
    if not groups:
        raise DatasetError(
            f"no images in {root} (looked for {', '.join(IMAGE_SUFFIXES)} in it and in its subfolders, "
            "e.g. the kohya layout 10_trigger class/)"
        )
    if config.enable_bucketing:
        buckets = bucket_resolutions(config.resolution, config.min_bucket_resolution,
                                     config.max_bucket_resolution, config.bucket_step)
    else:
        buckets = [(config.resolution, config.resolution)]
    items: list[DatasetItem] = []
    skipped: list[SkippedImage] = []
    trigger_words: list[str] = []
    masks_dir = _masks_folder(config)
    for group, paths in groups:
        trigger = config.effective_token if config.uses_embedding else group.trigger
        if trigger and trigger not in trigger_words:
            trigger_words.append(trigger)
        for path in paths:
            try:
                with open_rgb(path) as image:
                    size = image.size
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
                skipped.append(SkippedImage(path.name, f"unreadable: {str(error).splitlines()[0][:120] or type(error).__name__}"))
                continue
            sidecar = read_sidecar(path, config.caption_extension)
            if sidecar is not None:
                caption, source = sidecar
                if config.uses_embedding and group.trigger and group.trigger.lower() != trigger:
                    caption = re.sub(rf"(?<![\w]){re.escape(group.trigger)}(?![\w])", trigger, caption, flags=re.IGNORECASE)
            else:
                caption, source = fill_template(config.caption_template, trigger, group.class_word), TEMPLATE_SOURCE
            if config.prepend_trigger or config.uses_embedding:
                caption = with_trigger(caption, trigger)
            mask_path, from_alpha = _mask_for(path, size, masks_dir, notes) if config.masked_loss else (None, False)
            items.append(DatasetItem(path, caption, source, group.label, group.repeats, size,
                                     nearest_bucket(size, buckets), mask_path, from_alpha))
    if not items:
        names = ", ".join(f"{s.name} ({s.reason})" for s in skipped)
        raise DatasetError(f"none of the images in {root} could be read: {names}")
    if config.masked_loss:
        notes += _mask_notes(items, masks_dir)
    if config.caption_extension not in {item.caption_source for item in items} and any(
            item.caption_source in SIDECAR_EXTENSIONS for item in items):
        notes.append(f"no {config.caption_extension} captions found; used the {', '.join(sorted({i.caption_source for i in items if i.caption_source in SIDECAR_EXTENSIONS}))} files instead")
    return TrainingDataset(items, skipped=skipped, notes=notes, trigger_words=trigger_words,
                           flip_augment=config.flip_augment, shuffle_captions=config.shuffle_captions,
                           keep_tokens=config.keep_tokens, caption_dropout_rate=config.caption_dropout_rate,
                           caption_tag_dropout_rate=config.caption_tag_dropout_rate)


def _masks_folder(config: TrainingConfig) -> Path | None:
    if not (config.masked_loss and config.masks_dir.strip()):
        return None
    folder = Path(config.masks_dir).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"masks folder {folder} does not exist or is not a folder")
    return folder


def _mask_notes(items: list[DatasetItem], masks_dir: Path | None) -> list[str]:
    """Masked loss without any mask is refused; images without one train on the whole picture (said once)."""
    unmasked = [item.path.name for item in items if not item.has_mask]
    if len(unmasked) == len(items):
        where = f", or <image>.png in {masks_dir}" if masks_dir is not None else ""
        raise DatasetError(f"masked_loss is on but no image has a mask: put <image>{MASK_SUFFIX}.png beside an "
                           f"image{where}, or use images with transparent parts (alpha channel)")
    if not unmasked:
        return []
    shown = ", ".join(unmasked[:8]) + (f" and {len(unmasked) - 8} more" if len(unmasked) > 8 else "")
    return [f"{len(unmasked)} image(s) have no mask and train on the whole picture: {shown}"]


def caption_missing_images(config: TrainingConfig, *, model_dir: Path | None = None, model_id: str | None = None,
                           device: str = "cpu", network: NetworkPolicy = NetworkPolicy()) -> tuple[list[Path], list[str]]:
    """Write a caption sidecar for every dataset image that has none (BLIP when available, else the template).

    Existing sidecars are never touched (users hand-edit them). Each kohya folder is captioned with its own
    trigger and class word. Returns the sidecars written and notes saying which captioner was used and why.
    """
    from webui.training.captioning import caption_images, check_model_allowed, write_caption_files

    check_model_allowed(model_dir, model_id, network)  # a Hub id without --allow-hub fails before any work
    root = Path(config.dataset_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    groups, _ = _image_groups(root, config)
    written: list[Path] = []
    notes: list[str] = []
    for group, paths in groups:
        missing = [path for path in paths if read_sidecar(path, config.caption_extension) is None]
        if not missing:
            continue
        trigger = config.effective_token if config.uses_embedding else group.trigger
        result = caption_images(missing, trigger=trigger, class_word=group.class_word,
                                template=config.caption_template, model_dir=model_dir, model_id=model_id, device=device,
                                network=network)
        written += write_caption_files(result.captions, extension=config.caption_extension)
        notes.append(f"{group.label}: {len(missing)} caption(s) from {result.source}")
        notes += result.notes
    return written, notes


def class_image_dataset(paths: list[Path], prompt: str, resolution: int) -> TrainingDataset:
    """Prior-preservation images: square, all captioned with the class prompt, never flipped."""
    items = [DatasetItem(path, prompt, CLASS_SOURCE, "class", 1, (resolution, resolution), (resolution, resolution))
             for path in paths]
    return TrainingDataset(items)


# --------------------------------------------------------------------------------------------
# Latents
# --------------------------------------------------------------------------------------------


class LatentCache:
    """The VAE's latent distribution of every (image, flip) pair, encoded once on the training device.

    Distribution parameters (mean and log-variance) are cached rather than one sample, so each step still
    draws a fresh seeded sample, exactly as training without a cache does.
    """

    def __init__(self, parameters: dict[tuple[int, bool], torch.Tensor]):
        self._parameters = parameters

    def __len__(self) -> int:
        return len(self._parameters)

    @classmethod
    @torch.no_grad()
    def build(cls, dataset: TrainingDataset, vae: torch.nn.Module, device: torch.device,
              on_progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, share: tuple[int, int] = (0, 1)) -> LatentCache | None:
        """Encode everything, or with `share` (rank, processes) every processes-th image from rank (the ranks'
        caches are then joined); returns None if `should_stop` asked to stop part-way."""
        flips = (False, True) if dataset.flip_augment else (False,)
        rank, processes = share
        keys = [(index, flip) for index in range(len(dataset)) for flip in flips][rank::processes]
        parameters = {}
        for done, (index, flip) in enumerate(keys, start=1):
            if should_stop is not None and should_stop():
                return None
            pixels = dataset.pixels(index, flip).unsqueeze(0).to(device=device, dtype=vae.dtype)
            parameters[(index, flip)] = vae.encode(pixels).latent_dist.parameters[0]
            if on_progress is not None:
                on_progress(done, len(keys))
        return cls(parameters)

    def get(self, index: int, flip: bool) -> torch.Tensor:
        return self._parameters[(index, flip)]

    def entries(self) -> list[tuple[tuple[int, bool], torch.Tensor]]:
        """(key, parameters on the CPU) pairs, to send to the other training processes."""
        return [(key, value.cpu()) for key, value in self._parameters.items()]

    @classmethod
    def joined(cls, entries: list[tuple[tuple[int, bool], torch.Tensor]], device: torch.device) -> LatentCache:
        """The cache made of every process's share."""
        return cls({tuple(key): value.to(device) for key, value in entries})


def unet_latents(parameters: torch.Tensor, vae_config: dict) -> torch.Tensor:
    """The posterior means of cached/encoded distribution parameters [B, 2C, h, w], scaled for the UNet.

    Means, not draws: a model is fine-tuned on the latents it was pretrained on. SD's VAE posterior is so
    narrow that a draw is the mean for practical purposes, but the toy default model's VAE has a standard
    deviation of about 0.6 against latents spread 0.77 (its UNet was trained on means); draws taught LoRAs
    to paint speckled, lumpy shapes and drowned the concept (subject fidelity 0.03 instead of learning it).
    """
    latents = torch.chunk(parameters, 2, dim=1)[0]
    shift = vae_config.get("shift_factor") or 0.0
    return (latents - shift) * vae_config.get("scaling_factor", 0.18215)
