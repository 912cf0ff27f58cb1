"""LoRA files matched to the loaded model, and exact, reversible merging of their updates.

:func:`read_lora` turns a file in any format of :mod:`webui.models.lora_formats` into one
:class:`LoraPatch` per layer, each naming a module of the *installed* pipeline. kohya's underscore
names are ambiguous (module names contain underscores), so they are looked up in the set of the
model's own module names written the kohya way, including the LDM spelling SDXL LoRAs use
(``input_blocks_4_1_...``) and the ``text_model_`` level that transformers 5 removed from
``CLIPTextModel``. Transformer (DiT) families name their files' key prefixes and their original module
names themselves (``ModelFamily.lora_key_prefixes`` / ``lora_original_names``); an original fused layer
(SD3's ``qkv``, Flux's ``linear1``) becomes one patch per installed module with that module's rows. A file
for another architecture is refused with the reason (naming the family its layer names are from) rather than
applied in part; keys that match no layer are reported, never silently dropped.

:class:`LoraApplier` caches parsed files per pipeline and turns the requested uses into weight
patches; :mod:`webui.models.patches` merges them in place (no per-step cost while generating) and
keeps a copy of every weight it touched, so :meth:`LoraApplier.restore` gives back the bitwise
original however often LoRAs are switched or re-weighted.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from webui.models.checkpoint_files import CheckpointReadError, read_metadata, read_state_dict
from webui.models.formats.dit_lora import RowPart
from webui.models.families import FAMILIES, ModelFamily, families_of_lora_names, family_named, family_of_lora_metadata
from webui.models.lora_formats import (
    COMPONENT_TE,
    COMPONENT_TE2,
    COMPONENT_UNET,
    ForeignLoraError,
    LoraFileError,
    LoraPatch,
    RawLayer,
    classify,
    describe_non_lora,
    dora_magnitude,
    group_layers,
    index_module_names,
    is_dora,
    patch_delta,
    patch_scale,
    peft_alpha,
    rows_of,
    update_shape,
)
from webui.models.patches import WeightPatch, WeightPatcher, weight_patches

__all__ = ["ForeignLoraError", "LoraApplier", "LoraFile", "LoraFileError", "LoraPatch", "patch_delta", "read_lora"]

# Cross-attention key/value input width -> the family whose text encoder produces it.
_CROSS_ATTENTION_WIDTHS = {family.cross_attention_width: family.label for family in FAMILIES}


# --------------------------------------------------------------------------------------------
# The parsed file
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LoraFile:
    """A LoRA read against one loaded model: its patches plus what the UI shows about it."""

    path: Path
    name: str
    family: str
    patches: list[LoraPatch]
    unmatched_keys: list[str]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)  # why layers were skipped, for the user
    source: str = ""  # the file version read (`file_version`); part of its patches' keys

    @property
    def base_model(self) -> str | None:
        """What the file says it was trained on (kohya ``ss_base_model_version`` or modelspec)."""
        return self.metadata.get("ss_base_model_version") or self.metadata.get("modelspec.architecture")

    @property
    def network_rank(self) -> int | None:
        value = self.metadata.get("ss_network_dim")
        if value is not None and value.strip().isdigit():
            return int(value)
        ranks = Counter(patch.rank for patch in self.patches if patch.rank > 0)
        return ranks.most_common(1)[0][0] if ranks else None

    @property
    def network_alpha(self) -> float | None:
        value = self.metadata.get("ss_network_alpha")
        try:
            return float(value) if value is not None else None
        except ValueError:  # e.g. "Dynamic"
            return None

    def top_tags(self, limit: int = 10) -> list[str]:
        """The most frequent caption tags of the training set (``ss_tag_frequency``), most used first."""
        try:
            frequencies = json.loads(self.metadata.get("ss_tag_frequency", "{}"))
        except json.JSONDecodeError:
            return []
        counts: Counter[str] = Counter()
        if isinstance(frequencies, dict):
            for tags in frequencies.values():
                if isinstance(tags, dict):
                    for tag, count in tags.items():
                        if isinstance(count, (int, float)):
                            counts[str(tag).strip()] += count
        return [tag for tag, _ in counts.most_common(limit) if tag]

    @property
    def trigger_words(self) -> list[str]:
        """The author's trigger phrase when given, else the most common training tags."""
        phrase = self.metadata.get("modelspec.trigger_phrase", "")
        words = [word.strip() for word in phrase.split(",") if word.strip()]
        return words or self.top_tags()


def declared_family(metadata: Mapping[str, str]) -> str | None:
    """The family a file's training metadata names, if it names one of ours."""
    family = family_of_lora_metadata(metadata.get("ss_base_model_version", "").lower(),
                                     metadata.get("modelspec.architecture", "").lower())
    return family.name if family is not None else None


def _family(family: str) -> ModelFamily | None:
    try:
        return family_named(family)
    except ValueError:
        return None


def _label(family: str) -> str:
    model_family = _family(family)
    return model_family.label if model_family is not None else family


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _shape_mismatch_reason(mismatches: list[tuple[str, tuple[int, int], torch.Size]], family: str) -> str:
    guess = ""
    for target, (_, in_features), _ in mismatches:
        if target.endswith(("attn2.to_k", "attn2.to_v")) and in_features in _CROSS_ATTENTION_WIDTHS:
            family_guess = _CROSS_ATTENTION_WIDTHS[in_features]
            guess = f" (its cross-attention takes {in_features}-wide text features: {family_guess})"
            break
    target, (out_features, in_features), shape = mismatches[0]
    return (
        f"made for a different architecture{guess}; {len(mismatches)} layer(s) differ in shape from the "
        f"loaded {_label(family)} model, e.g. {target} is {tuple(shape)} here but "
        f"{out_features}x{in_features} in the file"
    )


def _layer_label(layer: RawLayer) -> str:
    return f"{layer.component}:{layer.name}"


def _named_by_other_families(layers: list[RawLayer], family: str) -> str:
    """" (its layer names are those of X)" when the file's layer names say which other family it is for."""
    named = families_of_lora_names([layer.name for layer in layers])
    if not named or any(other.name == family for other in named):
        return ""
    return f" (its layer names are those of {' or '.join(other.label for other in named)})"


def _part_patches(whole: LoraPatch, parts: Sequence[RowPart], targets: Sequence[str]) -> list[LoraPatch]:
    """One layer's update as patches of the installed modules it maps to: itself for a plain module, each
    module's rows of it for an original fused layer (`formats/dit_lora.py`)."""
    patches = []
    for part, target in zip(parts, targets):
        if part.rows is None:
            patches.append(LoraPatch(target=target, kind=whole.kind, tensors=whole.tensors, alpha=whole.alpha,
                                     rank=whole.rank))
            continue
        kind, tensors = rows_of(whole.kind, whole.tensors, part.rows, patch_scale(whole))
        patches.append(LoraPatch(target=target, kind=kind, tensors=tensors,
                                 alpha=whole.alpha if kind == whole.kind else None, rank=whole.rank))
    return patches


def _readable(family: ModelFamily | None, state_dict: Mapping[str, torch.Tensor],
              path: Path) -> Mapping[str, torch.Tensor]:
    """The file's tensors as `family`'s tables name them (`ModelFamily.readable_lora_state`)."""
    if family is None:
        return state_dict
    try:
        return family.readable_lora_state(state_dict)
    except (AssertionError, ValueError, KeyError, AttributeError, RuntimeError) as error:  # diffusers asserts too
        raise LoraFileError(path, f"its {family.label} layout could not be converted: {error}") from error


def read_lora(path: Path, pipeline_modules: Mapping[str, nn.Module], family: str) -> LoraFile:
    """Parse a LoRA / LyCORIS file and match every layer to a module of the loaded pipeline.

    ``pipeline_modules`` maps the family's denoiser ("unet" or "transformer") and text encoders to the
    loaded modules. Raises :class:`LoraFileError` for unreadable files, files that are no LoRA and files
    made for another architecture.
    """
    path = Path(path)
    label = _label(family)
    model_family = _family(family)
    try:
        source = file_version(path)
    except OSError as error:
        raise LoraFileError(path, "file does not exist") from error
    try:
        state_dict = read_state_dict(path)
        metadata = read_metadata(path)
    except CheckpointReadError as error:
        raise LoraFileError(path, error.reason) from error
    own_prefixes = model_family.lora_key_prefixes if model_family else ()
    layers, unmatched = group_layers(_readable(model_family, state_dict, path), own_prefixes)
    if not layers:
        # Named as another family's files are (e.g. diffusion_model.double_blocks... on an SD1 model), or no LoRA.
        foreign = [layer for other in FAMILIES if other.name != family
                   for layer in group_layers(_readable(other, state_dict, path), other.lora_key_prefixes)[0]]
        if foreign:
            raise ForeignLoraError(
                path, f"none of its layers is named as {label} LoRAs name them (e.g. {next(iter(state_dict))}); it "
                      f"was made for another architecture" + _named_by_other_families(foreign, family))
        raise LoraFileError(path, describe_non_lora(list(state_dict)))
    declared = declared_family(metadata)
    if declared is not None and declared != family:
        source = metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture")
        raise ForeignLoraError(
            path, f"made for {_label(declared)} (metadata: {source}); the loaded model is {label}"
        )
    if any(layer.component == COMPONENT_TE2 for layer in layers) and COMPONENT_TE2 not in pipeline_modules:
        raise ForeignLoraError(
            path,
            f"made for SDXL: it changes a second text encoder, which the loaded {label} model does not have",
        )
    denoiser = model_family.denoiser if model_family else COMPONENT_UNET
    indexes = {
        component: index_module_names(component, module, model_family.lora_original_names(module)
                                      if model_family and component == denoiser else None)
        for component, module in pipeline_modules.items()
        if component in (denoiser, *(model_family.text_encoders if model_family else (COMPONENT_TE, COMPONENT_TE2)))
    }
    patches: list[LoraPatch] = []
    notes: list[str] = []
    missing_layers: list[RawLayer] = []
    mismatches: list[tuple[str, tuple[int, int], torch.Size]] = []
    targets: set[str] = set()
    matched = 0  # layers of the file that update the model (a fused one gives several patches)
    for layer in layers:
        classified = classify(layer.tensors)
        if isinstance(classified, str):
            unmatched.extend(layer.keys)
            notes.append(f"{_layer_label(layer)}: {classified}")
            continue
        kind, rank = classified
        index = indexes.get(layer.component)
        resolved = index.resolve(layer) if index is not None else None
        if index is None or resolved is None:
            unmatched.extend(layer.keys)
            missing_layers.append(layer)
            continue
        parts = index.parts(resolved)
        layer_targets = [f"{layer.component}.{part.path}" for part in parts]
        if targets.intersection(layer_targets):
            unmatched.extend(layer.keys)
            notes.append(f"{_layer_label(layer)}: a second update of {', '.join(layer_targets)}, ignored")
            continue
        targets.update(layer_targets)
        try:
            update = update_shape(kind, layer.tensors)
        except ValueError as error:
            raise LoraFileError(path, f"layer {_layer_label(layer)} is malformed: {error}") from error
        expected = index.update_shape(resolved)
        bias = layer.tensors.get("diff_b")
        if update != expected or (bias is not None and bias.numel() != expected[0]):
            shape = torch.Size(expected) if resolved in index.fused else index.shapes[resolved]
            mismatches.append((f"{layer.component}.{resolved}", update, shape))
            continue
        if is_dora(layer.tensors):
            weight_shape = torch.Size(expected) if resolved in index.fused else index.shapes[resolved]
            try:
                dora_magnitude(layer.tensors, weight_shape)
            except ValueError as error:
                raise LoraFileError(path, f"layer {_layer_label(layer)} is malformed: {error}") from error
        alpha_tensor = layer.tensors.get("alpha")
        alpha = float(alpha_tensor.item()) if alpha_tensor is not None else peft_alpha(metadata, layer)
        tensors = {role: tensor for role, tensor in layer.tensors.items() if role != "alpha"}
        matched += 1
        whole = LoraPatch(target="", kind=kind, tensors=tensors, alpha=alpha, rank=rank)
        try:
            patches.extend(_part_patches(whole, parts, layer_targets))
        except ValueError as error:
            raise LoraFileError(path, f"layer {_layer_label(layer)} cannot be applied: {error}") from error
    if mismatches:
        raise ForeignLoraError(path, _shape_mismatch_reason(mismatches, family) + _named_by_other_families(layers, family))
    if missing_layers and len(missing_layers) >= matched:
        example = _layer_label(missing_layers[0])
        raise ForeignLoraError(
            path,
            f"{len(missing_layers)} of its {len(missing_layers) + matched} layers do not exist in the "
            f"loaded {label} model (e.g. {example}); it was probably made for another architecture"
            + _named_by_other_families(layers, family),
        )
    if not patches:
        raise LoraFileError(path, "no usable layer: " + "; ".join(notes[:3]))
    if missing_layers:
        notes.append(f"{len(missing_layers)} layer(s) match no module of the model, e.g. "
                     f"{_layer_label(missing_layers[0])}")
    return LoraFile(path=path, name=path.stem, family=family, patches=patches,
                    unmatched_keys=unmatched, metadata=metadata, notes=notes, source=source)


# --------------------------------------------------------------------------------------------
# Applying
# --------------------------------------------------------------------------------------------

ActiveLora = tuple[LoraFile, float, float]  # (file, text encoder weight, UNet weight)


def file_version(path: Path) -> str:
    """Which version of a file was read: its resolved path, modification time and size."""
    stat = path.stat()
    return f"{path.resolve()}@{stat.st_mtime_ns}:{stat.st_size}"


class LoraApplier:
    """Reads LoRA files for one loaded pipeline (each file version once) and keeps exactly the requested
    LoRAs merged, as :class:`~webui.models.patches.WeightPatch` es on a
    :class:`~webui.models.patches.WeightPatcher` that owns the merging and the exact restore.

    Re-weighting builds new patches from the parsed file in memory; ``reads`` counts the files parsed.
    Thread-safe.
    """

    def __init__(
        self,
        pipeline_modules: Mapping[str, nn.Module],
        family: str,
        *,
        reader: Callable[[Path, Mapping[str, nn.Module], str], LoraFile] = read_lora,
        backup_device: str = "cpu",
        max_cached_files: int = 16,
    ) -> None:
        self._modules = dict(pipeline_modules)
        self._family = family
        self._reader = reader
        self._patcher = WeightPatcher(self._modules, backup_device=backup_device)
        self._max_cached_files = max(1, max_cached_files)
        self._cache: OrderedDict[tuple[str, int, int], LoraFile] = OrderedDict()
        self._active: tuple[ActiveLora, ...] = ()
        self._lock = threading.RLock()
        self.reads = 0

    @property
    def active(self) -> tuple[ActiveLora, ...]:
        return self._active

    def read(self, path: Path) -> LoraFile:
        """The parsed file, re-read only when its path, size or modification time changed."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError as error:
            raise LoraFileError(path, "file does not exist") from error
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        lora = self._reader(path, self._modules, self._family)
        with self._lock:
            self.reads += 1
            self._cache[key] = lora
            while len(self._cache) > self._max_cached_files:
                self._cache.popitem(last=False)
        return lora

    def patches(self, loras: Sequence[ActiveLora]) -> tuple[WeightPatch, ...]:
        """The weight patches of these (file, text encoder weight, UNet weight) uses, in order."""
        patches: list[WeightPatch] = []
        for lora, te_weight, unet_weight in loras:
            if lora.family != self._family:
                raise ValueError(
                    f"LoRA '{lora.name}' was read for a {lora.family} model, this one is {self._family}"
                )
            # A file built in memory has no version; its identity tells it apart while it is active.
            source = lora.source or f"object:{id(lora)}"
            patches.extend(weight_patches(lora.patches, te_weight, unet_weight, source))
        return tuple(patches)

    def set_active(self, loras: Sequence[ActiveLora]) -> None:
        """Make exactly ``loras`` merged into the model; a no-op when that is already the case.

        On any failure the model is left with its original weights and no LoRA active.
        """
        requested = tuple((lora, float(te_weight), float(unet_weight)) for lora, te_weight, unet_weight in loras)
        patches = self.patches(requested)
        with self._lock:
            self._active = ()
            self._patcher.apply(patches)
            self._active = requested

    def restore(self) -> None:
        """Put every touched weight back to its bitwise original."""
        with self._lock:
            self._patcher.restore()
            self._active = ()

    def forget(self) -> None:
        """Drop the kept originals without writing them back (the weights were replaced elsewhere)."""
        with self._lock:
            self._patcher.forget()
            self._active = ()

    @property
    def patcher(self) -> WeightPatcher:
        """The patcher that merges this applier's patches (shared with token patches by the manager)."""
        return self._patcher
