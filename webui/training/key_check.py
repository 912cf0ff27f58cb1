"""Which keys of a saved LoRA or embedding each loader users run would consume, and which it would ignore.

A LoRA that another UI silently skips in part ("lora key not loaded") is the most common complaint about
trained files, so every file the trainer writes is checked against:

* this app's own reader (`webui.models.lora.read_lora`, `webui.models.embeddings.read_embedding`);
* diffusers: its own `lora_state_dict` conversion (kohya -> diffusers names) of the family's pipeline class,
  then the converted names matched against the model's modules as `load_lora_weights` places them (PEFT on
  the module path; a text encoder's `text_model.` level dropped where transformers has none), text encoders
  included, after diffusers' own text-encoder conversion, which fails on some kohya files;
* ComfyUI (and Forge, whose LoRA loader uses ComfyUI's key maps) and A1111: the layer names each maps for
  the family and the tensor suffixes each reads, tables written from their source-visible naming
  (`webui.models.formats.lora_loader_names`).

Names are matched against the model's modules, so the check runs on weightless (meta-device) modules built
from the base model's configs: no weights are copied and nothing is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from webui.models.checkpoint_files import CheckpointReadError, read_state_dict
from webui.models.checkpoint_loading import CheckpointWeights
from webui.models.families import ModelFamily, family_named
from webui.models.formats.kohya import targetable_module_paths
from webui.models.formats.lora_loader_names import (
    A1111_SUFFIXES,
    COMFYUI_PROCESSOR_SUFFIXES,
    COMFYUI_SUFFIXES,
    a1111_layer_names,
    comfyui_layer_names,
    keys_read,
)

LOADER_OWN = "SD Studio"
LOADER_DIFFUSERS = "diffusers"
LOADER_COMFYUI = "ComfyUI"
LOADER_A1111 = "A1111"
LOADER_FORGE = "Forge"
KIND_LORA = "lora"
KIND_EMBEDDING = "embedding"
LISTED_KEYS = 12  # ignored keys named per loader in messages (the record keeps them all)


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderKeys:
    """How many of a file's keys one loader consumes; `ignored` lists the others, `note` says why when the
    loader refuses the whole file."""

    loader: str
    loaded: int
    total: int
    ignored: tuple[str, ...] = ()
    note: str = ""

    @property
    def complete(self) -> bool:
        return self.loaded == self.total and not self.ignored and not self.note

    def to_dict(self) -> dict[str, Any]:
        return {"loader": self.loader, "loaded": self.loaded, "total": self.total, "ignored": list(self.ignored),
                "note": self.note}


@dataclass(frozen=True)
class KeyCheck:
    """One saved file checked against every loader of its family."""

    file: str          # the file's name
    kind: str          # KIND_LORA or KIND_EMBEDDING
    total: int         # keys (tensors) in the file
    loaders: tuple[LoaderKeys, ...]
    not_checked: str = ""  # a loader left out, and why (A1111 cannot load a non-standard base model at all)
    notes: tuple[str, ...] = ()  # what loads but differs in a loader (an alpha it does not read), for the user

    @property
    def complete(self) -> bool:
        return all(loader.complete for loader in self.loaders)

    def summary(self) -> str:
        """"a.safetensors: 288 of 288 keys load in SD Studio, diffusers, ComfyUI, A1111", with one clause per
        differing count when some loader ignores keys."""
        groups: dict[int, list[str]] = {}
        for loader in self.loaders:
            groups.setdefault(loader.loaded, []).append(loader.loader)
        clauses = [f"{loaded} of {self.total} keys load in {', '.join(names)}"
                   for loaded, names in sorted(groups.items(), reverse=True)]
        return f"{self.file}: " + "; ".join(clauses)

    def problems(self) -> list[str]:
        """One line per loader that ignores keys: which loader, how many, and (some of) the keys."""
        lines = []
        for loader in self.loaders:
            if loader.complete:
                continue
            if not loader.ignored:
                lines.append(f"{self.file}: {loader.loader}: {loader.note}")
                continue
            shown = ", ".join(loader.ignored[:LISTED_KEYS])
            more = f" and {len(loader.ignored) - LISTED_KEYS} more" if len(loader.ignored) > LISTED_KEYS else ""
            reason = f" ({loader.note})" if loader.note else ""
            lines.append(f"{self.file}: {loader.loader} would ignore {len(loader.ignored)} of {self.total} "
                         f"keys{reason}: {shown}{more}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "kind": self.kind, "total": self.total, "complete": self.complete,
                "summary": self.summary(), "loaders": [loader.to_dict() for loader in self.loaders],
                "not_checked": self.not_checked, "notes": list(self.notes)}


def _result(loader: str, keys: Sequence[str], consumed: Iterable[str], note: str = "") -> LoaderKeys:
    taken = set(consumed)
    ignored = tuple(key for key in keys if key not in taken)
    return LoaderKeys(loader, len(keys) - len(ignored), len(keys), ignored, note)


# --------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------


def _diffusers_consumed(path: Path, state_dict: Mapping[str, Tensor], family: ModelFamily,
                        modules: Mapping[str, nn.Module]) -> tuple[list[str], str]:
    """(file keys diffusers' `load_lora_weights` would place, why the rest are not) for one file.

    Converted tensors are traced back to the file keys they came from by their storage (each file tensor gets
    its own copy first); a kohya `.alpha` goes with its layer, since diffusers keeps alphas beside the factors.
    """
    import diffusers
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    from webui.models.lora_formats import group_layers

    copies = {key: tensor.clone() for key, tensor in state_dict.items()}
    origin = {tensor.data_ptr(): key for key, tensor in copies.items() if tensor.numel()}
    pipeline_class = getattr(diffusers, family.pipeline_class_name(family.resident_mode))
    options = {}
    if issubclass(pipeline_class, StableDiffusionXLLoraLoaderMixin):  # its load_lora_weights passes the UNet's
        options["unet_config"] = modules[family.denoiser].config     # config: SGM (LDM) names are renumbered
    try:
        converted = pipeline_class.lora_state_dict(dict(copies), **options)
    except Exception as error:  # noqa: BLE001 - whatever diffusers refuses a file with, it loads none of it
        return [], f"diffusers refuses the file: {type(error).__name__}: {error}"
    if isinstance(converted, tuple):
        converted = converted[0]
    stray = [key for key in converted if "lora" not in key]
    if stray:  # load_lora_weights refuses such a file as a whole ("Invalid LoRA checkpoint")
        return [], f"diffusers refuses the file: keys without 'lora' in their name, e.g. {stray[0]}"
    components = (family.denoiser, *family.text_encoders)
    notes = []
    for component in family.text_encoders:  # diffusers converts text-encoder keys once more, and may fail
        prefix = f"{component}."
        part = {key[len(prefix):]: value for key, value in converted.items() if key.startswith(prefix)}
        if part:
            try:
                convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
            except ValueError as error:
                notes.append(f"{component}: {error}")
                converted = {key: value for key, value in converted.items() if not key.startswith(prefix)}
    prefixes = () if family.denoiser == "unet" else tuple((f"{component}.", component, True) for component in components)
    layers, _ = group_layers(converted, prefixes)
    installed = {component: set(targetable_module_paths(module)) for component, module in modules.items()
                 if module is not None}
    consumed: set[str] = set()
    for layer in layers:
        paths = installed.get(layer.component, set())
        name = layer.name
        if name not in paths and layer.component != family.denoiser:
            name = name.removeprefix("text_model.")
        if name not in paths:
            continue
        for tensor in layer.tensors.values():
            key = origin.get(tensor.data_ptr())
            if key is not None:
                consumed.add(key)
    for key in state_dict:  # kohya alphas travel with their layer
        if key.endswith(".alpha") and f"{key[:-len('.alpha')]}.lora_down.weight" in consumed:
            consumed.add(key)
    return [key for key in state_dict if key in consumed], "; ".join(notes)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _single_file_loader(family: ModelFamily, standard_layout: bool) -> tuple[str | None, str]:
    """(A1111 or Forge, whichever loads the family's LoRAs, when it applies; why not otherwise)."""
    loader = family.single_file_lora_loader
    if loader is None:
        return None, f"A1111 and Forge: no {family.label} LoRA loader"
    if not standard_layout:
        return None, f"{loader}: not checked, it cannot load a base model without the standard {family.label} layout"
    return loader, ""


def _unread_alpha_notes(path: Path, keys: Sequence[str], loaders: Sequence[str]) -> tuple[str, ...]:
    """A PEFT-keyed file keeps alpha only in diffusers' `lora_adapter_metadata`; ComfyUI (and Forge) read the
    tensors alone, so where alpha differs from the rank they apply the update at rank / alpha times the
    strength this app and diffusers use."""
    import json

    from webui.models.checkpoint_files import read_metadata

    if any(key.endswith(".alpha") for key in keys) or not any(key.endswith(".lora_A.weight") for key in keys):
        return ()
    try:
        config = json.loads(read_metadata(path).get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        return ()
    if not isinstance(config, dict):
        return ()
    components = sorted({key.rsplit(".", 1)[0] for key in config if key.endswith(".r")})
    differing = []
    for component in components:
        rank, alpha = config.get(f"{component}.r"), config.get(f"{component}.lora_alpha")
        if isinstance(rank, (int, float)) and isinstance(alpha, (int, float)) and (
                alpha != rank or config.get(f"{component}.alpha_pattern")):
            differing.append(f"{component} (rank {rank:g}, alpha {alpha:g}: x{rank / alpha:g})" if alpha
                             else component)
    readers = [loader for loader in (LOADER_COMFYUI, LOADER_FORGE) if loader in loaders]
    if not differing or not readers:
        return ()
    return (f"{' and '.join(readers)}: the alpha is only in lora_adapter_metadata, which is not read there, so "
            f"{', '.join(differing)} load at rank / alpha times the strength SD Studio and diffusers use",)


def check_lora(path: Path, family: str, modules: Mapping[str, nn.Module], *, standard_layout: bool = True) -> KeyCheck:
    """Check a LoRA file against its family's loaders; `modules` are the model's denoiser and text encoders
    (meta-device modules are enough: only names and shapes are read). `standard_layout`: the base model has
    its family's published layout, so single-file UIs (A1111, Forge) can load it and its LoRAs."""
    from webui.models.lora import LoraFileError, read_lora

    path = Path(path)
    model_family = family_named(family)
    state_dict = read_state_dict(path)
    keys = list(state_dict)
    present = {name: module for name, module in modules.items() if module is not None}
    try:
        own = _result(LOADER_OWN, keys, set(keys) - set(read_lora(path, present, family).unmatched_keys))
    except LoraFileError as error:
        own = _result(LOADER_OWN, keys, (), error.reason)
    loaded, note = _diffusers_consumed(path, state_dict, model_family, present)
    loaders = [own, _result(LOADER_DIFFUSERS, keys, loaded, note)]
    comfy = keys_read(keys, comfyui_layer_names(model_family, present), COMFYUI_SUFFIXES, COMFYUI_PROCESSOR_SUFFIXES)
    loaders.append(_result(LOADER_COMFYUI, keys, comfy))
    single_file, not_checked = _single_file_loader(model_family, standard_layout)
    if single_file == LOADER_A1111:
        loaders.append(_result(LOADER_A1111, keys, keys_read(keys, a1111_layer_names(model_family, present),
                                                             A1111_SUFFIXES)))
    elif single_file == LOADER_FORGE:
        loaders.append(_result(LOADER_FORGE, keys, comfy))
    return KeyCheck(path.name, KIND_LORA, len(keys), tuple(loaders), not_checked,
                    _unread_alpha_notes(path, keys, [loader.loader for loader in loaders]))


# Embedding layouts: A1111's .pt dict, kohya's / A1111's safetensors "emb_params", SDXL's clip_l / clip_g.
_SDXL_EMBEDDING_KEYS = ("clip_l", "clip_g")


def _embedding_keys(path: Path) -> dict[str, Tensor]:
    """An embedding file's tensors by key as loaders see them (A1111's `string_to_param` dict flattened to
    "string_to_param.<placeholder>"); other entries (name, step, token ids) are metadata, not weights."""
    if path.suffix.lower() == ".safetensors":
        return dict(read_state_dict(path))
    from webui.models.checkpoint_files import read_pickle_checkpoint  # the weights-only unpickler embeddings use

    contents = read_pickle_checkpoint(path)
    if not isinstance(contents, Mapping):
        return {}
    tensors: dict[str, Tensor] = {}
    for key, value in contents.items():
        if isinstance(value, Tensor):
            tensors[str(key)] = value
        elif key == "string_to_param" and isinstance(value, Mapping):
            tensors.update({f"string_to_param.{name}": tensor for name, tensor in value.items()})
    return tensors


def check_embedding(path: Path, family: str, widths: Mapping[str, int], *, standard_layout: bool = True) -> KeyCheck:
    """Check an embedding against the loaders: which of its vector tensors each reads for a model whose text
    encoders are `widths` wide ({"text_encoder": 768} / SDXL {"text_encoder": 768, "text_encoder_2": 1280}).

    A1111 and diffusers read one tensor of an SD1/SD2 file (`string_to_param`'s only entry, `emb_params`, or
    the only tensor) and both `clip_l` and `clip_g` of an SDXL one (diffusers through its documented two
    `load_textual_inversion` calls); ComfyUI takes the first tensor (per encoder for SDXL). A tensor whose
    width is not its encoder's is not loaded."""
    from webui.models.embeddings import FIRST_ENCODER, SECOND_ENCODER, EmbeddingFileError, incompatibility, read_embedding

    path = Path(path)
    tensors = _embedding_keys(path)
    keys = list(tensors)
    try:
        embedding = read_embedding(path)
        problem = incompatibility(embedding, dict(zip((FIRST_ENCODER, SECOND_ENCODER), widths.values())))
        own = _result(LOADER_OWN, keys, () if problem else _embedding_reads(tensors, widths, first=False), problem or "")
    except EmbeddingFileError as error:
        own = _result(LOADER_OWN, keys, (), error.reason)
    loaders = [own, _result(LOADER_DIFFUSERS, keys, _embedding_reads(tensors, widths, first=False)),
               _result(LOADER_COMFYUI, keys, _embedding_reads(tensors, widths, first=True))]
    single_file, not_checked = _single_file_loader(family_named(family), standard_layout)
    if single_file is not None:  # A1111 (and Forge, which keeps its embedding loader) read them alike
        loaders.append(_result(single_file, keys, _embedding_reads(tensors, widths, first=False)))
    return KeyCheck(path.name, KIND_EMBEDDING, len(keys), tuple(loaders), not_checked)


def _embedding_reads(tensors: Mapping[str, Tensor], widths: Mapping[str, int], *, first: bool) -> list[str]:
    """The tensor keys a loader reads: SDXL's clip_l / clip_g by name; otherwise one tensor, either the
    only one (or the one named string_to_param.* / emb_params when `first` is False) or, for ComfyUI
    (`first`), whichever comes first."""
    def fits(key: str, width: int | None) -> bool:
        tensor = tensors[key]
        return width is not None and tensor.ndim in (1, 2) and int(tensor.shape[-1]) == width

    encoder_widths = list(widths.values())
    if len(encoder_widths) == 2:
        return [key for key, width in zip(_SDXL_EMBEDDING_KEYS, encoder_widths) if key in tensors and fits(key, width)]
    width = encoder_widths[0] if encoder_widths else None
    if first:
        chosen = next(iter(tensors), None)
    else:
        named = [key for key in tensors if key.startswith("string_to_param.") or key == "emb_params"]
        chosen = named[0] if len(named) == 1 else (next(iter(tensors)) if len(tensors) == 1 else None)
    return [chosen] if chosen is not None and fits(chosen, width) else []


def check_saved_file(path: Path, family: str, modules: Mapping[str, nn.Module], widths: Mapping[str, int], *,
                     standard_layout: bool = True) -> KeyCheck:
    """A LoRA or an embedding the trainer wrote (told apart by the folder-independent content: an embedding
    holds vectors only)."""
    path = Path(path)
    try:
        keys = list(_embedding_keys(path))
    except CheckpointReadError as error:
        return KeyCheck(path.name, KIND_LORA, 0, (LoaderKeys(LOADER_OWN, 0, 0, (), f"unreadable: {error.reason}"),))
    vector_keys = {"emb_params", *_SDXL_EMBEDDING_KEYS}
    if keys and all(key in vector_keys or key.startswith("string_to_param.") for key in keys):
        return check_embedding(path, family, widths, standard_layout=standard_layout)
    return check_lora(path, family, modules, standard_layout=standard_layout)


def _is_t5(module: nn.Module) -> bool:
    return any(path.startswith("encoder.block.") for path in targetable_module_paths(module))


def encoder_widths(modules: Mapping[str, nn.Module], family: str) -> dict[str, int]:
    """The hidden width of each CLIP text encoder an embedding feeds (T5 takes no embeddings)."""
    widths = {}
    for component in family_named(family).text_encoders:
        module = modules.get(component)
        if module is None or _is_t5(module):
            continue
        widths[component] = int(module.config.hidden_size)
    return widths


@dataclass
class SavedFileChecker:
    """Checks the LoRAs and embeddings a training run writes (files in `folders`; a DreamBooth checkpoint is no
    adapter and is not checked) against the base model's module names, building weightless modules once."""

    family: str
    build_modules: Callable[[], Mapping[str, nn.Module]]
    folders: tuple[Path, ...]
    standard_layout: bool = True  # the base model has its family's published layout (A1111 / Forge can load it)
    _modules: Mapping[str, nn.Module] | None = field(default=None, repr=False)

    def __call__(self, path: Path) -> KeyCheck | None:
        path = Path(path)
        if path.parent not in {Path(folder) for folder in self.folders}:
            return None
        try:
            if self._modules is None:
                self._modules = self.build_modules()
            return check_saved_file(path, self.family, self._modules, encoder_widths(self._modules, self.family),
                                    standard_layout=self.standard_layout)
        except Exception as error:  # noqa: BLE001 - the file is saved; an unchecked file is a warning, not a failure
            reason = f"the key check could not run ({type(error).__name__}: {error})"
            return KeyCheck(path.name, KIND_LORA, 0, (LoaderKeys(LOADER_OWN, 0, 0, (), reason),))


def saved_file_checker(base: CheckpointWeights, folders: Sequence[Path]) -> SavedFileChecker:
    """The checker of a run on `base` whose adapters go to `folders` (the LoRA and embedding folders)."""
    from webui.models.checkpoint_loading import meta_modules
    from webui.models.merger import _matches_shipped_configs

    family = family_named(base.architecture.family)
    # UNet families: A1111 loads only the published layouts (not the toy model); Forge reads any Flux file.
    standard = family.denoiser != "unet" or _matches_shipped_configs(base)
    return SavedFileChecker(family.name, lambda: meta_modules(base), tuple(Path(folder) for folder in folders),
                            standard)


__all__ = ["KeyCheck", "LoaderKeys", "SavedFileChecker", "check_embedding", "check_lora", "check_saved_file",
           "encoder_widths", "saved_file_checker"]
