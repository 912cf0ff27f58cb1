"""Textual-inversion embeddings: reading every common file format, cataloguing a folder, and injecting
embeddings into a loaded diffusers pipeline so that their names work in prompts.

As in A1111, an embedding is addressed in prompts by its file name without extension, one prompt token
per learned vector. Files are untrusted downloads: pickle-based ones go through the weights-only loader
of :mod:`webui.models.checkpoint_files`, so a file that needs code to unpickle is refused, not run.

Vector sets are keyed by text encoder: ``"te1"`` is the first (for SD1/SD2 the only) encoder, ``"te2"``
SDXL's second (OpenCLIP bigG) encoder. An embedding is usable exactly when it has vectors for every
encoder of the loaded model and each has that encoder's width.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor, nn
from tokenizers import Tokenizer
from transformers import AddedToken, CLIPTextModel

from webui.models.checkpoint_files import (
    CheckpointReadError,
    read_pickle_checkpoint,
    read_key_shapes,
    read_state_dict,
)
from webui.models.families import family_named
from webui.models.module_construction import constructing_modules

EMBEDDING_SUFFIXES = frozenset({".pt", ".bin", ".safetensors"})
FIRST_ENCODER = "te1"
SECOND_ENCODER = "te2"
# Real embeddings are a few KB to a few hundred KB; anything far larger is a misplaced model, and
# pickle files have no header, so reading one would load gigabytes just to reject it.
MAX_EMBEDDING_FILE_BYTES = 32 * 1024 * 1024
MAX_EMBEDDING_ELEMENTS = 2_000_000

_KNOWN_WIDTH_LABELS = {
    (("te1", 768),): "SD1.x (768 wide)",
    (("te1", 1024),): "SD2.x (1024 wide)",
    (("te1", 768), ("te2", 1280)): "SDXL (768 + 1280 wide)",
}


class EmbeddingFileError(ValueError):
    """A file is not a usable textual-inversion embedding; the message names the file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot use '{self.path}' as an embedding: {reason}")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file's learned vectors, per text encoder, each ``[n_vectors, width]``."""

    name: str
    path: Path
    vectors: Mapping[str, Tensor]
    step: int | None

    def width(self) -> dict[str, int]:
        return {encoder: int(tensor.shape[1]) for encoder, tensor in self.vectors.items()}

    @property
    def vector_count(self) -> int:
        """How many prompt tokens the embedding occupies (the same for every encoder)."""
        return int(next(iter(self.vectors.values())).shape[0])

    def __eq__(self, other: object) -> bool:
        """Equal when they would inject the same vectors under the same name (tensors compared by value)."""
        if not isinstance(other, Embedding):
            return NotImplemented
        return (
            self.name == other.name
            and self.path == other.path
            and self.step == other.step
            and self.vectors.keys() == other.vectors.keys()
            and all(
                self.vectors[key].dtype == other.vectors[key].dtype
                and torch.equal(self.vectors[key], other.vectors[key])
                for key in self.vectors
            )
        )

    def __hash__(self) -> int:
        return hash((self.name, self.path))


def describe_widths(widths: Mapping[str, int]) -> str:
    """A human label for a set of encoder widths, e.g. "SDXL (768 + 1280 wide)"."""
    signature = tuple(sorted(widths.items()))
    if signature in _KNOWN_WIDTH_LABELS:
        return _KNOWN_WIDTH_LABELS[signature]
    return ", ".join(f"{encoder}={width}" for encoder, width in sorted(widths.items()))


# --------------------------------------------------------------------------------------------
# Reading one file
# --------------------------------------------------------------------------------------------


def _summarise_contents(items: Mapping[str, object]) -> str:
    """A short list of what a file holds, so the error tells the user what the file actually is."""
    parts = []
    for key, value in list(items.items())[:4]:
        if isinstance(value, Tensor):
            parts.append(f"{key} {list(value.shape)}")
        elif isinstance(value, tuple):
            parts.append(f"{key} {list(value)}")
        else:
            parts.append(f"{key} ({type(value).__name__})")
    more = f" and {len(items) - 4} more" if len(items) > 4 else ""
    return ", ".join(parts) + more if parts else "nothing"


def _guess_other_kind(keys: Iterable[str]) -> str:
    keys = list(keys)
    if any(".lora_down." in key or ".lora_A." in key or key.startswith("lora_") for key in keys):
        return " (looks like a LoRA)"
    if any(key.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for key in keys):
        return " (looks like a checkpoint)"
    if any(key.startswith(("encoder.", "decoder.")) for key in keys):
        return " (looks like a VAE)"
    return ""


def _as_vector_matrix(path: Path, label: str, value: object) -> Tensor:
    """Accept [width] or [n, width] floating tensors; everything else is reported."""
    if not isinstance(value, Tensor):
        raise EmbeddingFileError(path, f"'{label}' is a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise EmbeddingFileError(path, f"'{label}' holds {value.dtype} values, not floating point vectors")
    tensor = value.detach()
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise EmbeddingFileError(
            path, f"'{label}' has shape {list(value.shape)}; expected [vectors, width] or [width]"
        )
    return tensor.contiguous()


def _optional_step(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _vectors_from_contents(path: Path, contents: Mapping[str, object]) -> tuple[dict[str, Tensor], int | None]:
    """Recognise the layouts that A1111, kohya and diffusers write, in A1111's order of precedence."""
    if "string_to_param" in contents:
        params = contents["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else type(params).__name__
            raise EmbeddingFileError(path, f"'string_to_param' must hold exactly one tensor, found {count}")
        (placeholder, tensor), = params.items()
        vectors = {FIRST_ENCODER: _as_vector_matrix(path, f"string_to_param[{placeholder!r}]", tensor)}
        return vectors, _optional_step(contents.get("step"))
    if "clip_l" in contents and "clip_g" in contents:
        first = _as_vector_matrix(path, "clip_l", contents["clip_l"])
        second = _as_vector_matrix(path, "clip_g", contents["clip_g"])
        if first.shape[0] != second.shape[0]:
            raise EmbeddingFileError(
                path, f"clip_l has {first.shape[0]} vectors but clip_g has {second.shape[0]}; they must match"
            )
        return {FIRST_ENCODER: first, SECOND_ENCODER: second}, None
    if "emb_params" in contents:
        return {FIRST_ENCODER: _as_vector_matrix(path, "emb_params", contents["emb_params"])}, None
    tensors = {key: value for key, value in contents.items() if isinstance(value, Tensor)}
    if len(contents) == 1 and len(tensors) == 1:
        (token, tensor), = tensors.items()
        return {FIRST_ENCODER: _as_vector_matrix(path, token, tensor)}, None
    raise EmbeddingFileError(
        path,
        "not a textual inversion embedding"
        f"{_guess_other_kind(contents)}: found {_summarise_contents(contents)}",
    )


def _check_safetensors_header(path: Path) -> None:
    """Reject large or foreign safetensors files from the header alone, before loading any data."""
    shapes = read_key_shapes(path)
    elements = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    if elements > MAX_EMBEDDING_ELEMENTS:
        raise EmbeddingFileError(
            path,
            f"holds {elements:,} values, far more than an embedding{_guess_other_kind(shapes)}: "
            f"found {_summarise_contents(shapes)}",
        )


def read_embedding(path: Path) -> Embedding:
    """Read one embedding file (.pt / .bin / .safetensors) without executing pickled code."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise EmbeddingFileError(path, f"unsupported file type '{path.suffix}'")
    if not path.is_file():
        raise EmbeddingFileError(path, "file does not exist")
    try:
        if suffix == ".safetensors":
            _check_safetensors_header(path)
            contents: object = read_state_dict(path)
        else:
            size = path.stat().st_size
            if size > MAX_EMBEDDING_FILE_BYTES:
                raise EmbeddingFileError(path, f"{size / 2**20:.0f} MiB is far too large for an embedding")
            contents = read_pickle_checkpoint(path)
    except CheckpointReadError as error:
        raise EmbeddingFileError(path, error.reason) from error
    except Exception as error:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        detail = str(error).splitlines()[0] if str(error) else ""
        raise EmbeddingFileError(path, f"corrupt or not a PyTorch file ({type(error).__name__}: {detail})") from error
    if not isinstance(contents, Mapping):
        raise EmbeddingFileError(path, f"contains a {type(contents).__name__}, not a dict")
    vectors, step = _vectors_from_contents(path, {str(key): value for key, value in contents.items()})
    return Embedding(name=path.stem, path=path, vectors=MappingProxyType(vectors), step=step)


def incompatibility(embedding: Embedding, encoder_widths: Mapping[str, int]) -> str | None:
    """Why the embedding cannot be used with encoders of these widths, or None when it can."""
    widths = embedding.width()
    if widths == dict(encoder_widths):
        return None
    return f"made for {describe_widths(widths)}, but the loaded model needs {describe_widths(encoder_widths)}"


# --------------------------------------------------------------------------------------------
# Folder catalog
# --------------------------------------------------------------------------------------------


class EmbeddingCatalog:
    """All embeddings below a folder (recursively), plus a per-file error for each unusable file.

    ``errors()`` is keyed by the file's path relative to the folder, since that is what a user has to
    find and fix; good embeddings are keyed by name. Files whose size and modification time have not
    changed are not re-read by :meth:`refresh`.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._embeddings: dict[str, Embedding] = {}
        self._errors: dict[str, str] = {}
        self._read_cache: dict[Path, tuple[tuple[int, int], Embedding | EmbeddingFileError]] = {}
        self.refresh()

    def _candidate_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        files = [
            path
            for path in self.folder.rglob("*")
            if path.suffix.lower() in EMBEDDING_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(self.folder).parts)
        ]
        # Shallower files win name clashes, then alphabetical order: deterministic across scans.
        return sorted(files, key=lambda path: (len(path.relative_to(self.folder).parts), str(path).lower()))

    def _read_cached(self, path: Path) -> Embedding | EmbeddingFileError:
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._read_cache.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            result: Embedding | EmbeddingFileError = read_embedding(path)
        except EmbeddingFileError as error:
            result = error
        self._read_cache[path] = (version, result)
        return result

    def refresh(self) -> None:
        """Re-scan the folder; deleted files disappear, new and changed files are read."""
        embeddings: dict[str, Embedding] = {}
        errors: dict[str, str] = {}
        files = self._candidate_files()
        for path in files:
            relative = path.relative_to(self.folder).as_posix()
            try:
                result = self._read_cached(path)
            except OSError as error:
                errors[relative] = f"Cannot read '{path}': {error}"
                continue
            if isinstance(result, EmbeddingFileError):
                errors[relative] = str(result)
            elif result.name in embeddings:
                kept = embeddings[result.name].path.relative_to(self.folder).as_posix()
                errors[relative] = f"Skipped '{path}': the name '{result.name}' is already used by '{kept}'"
            else:
                embeddings[result.name] = result
        present = set(files)
        self._read_cache = {path: entry for path, entry in self._read_cache.items() if path in present}
        self._embeddings = embeddings
        self._errors = errors

    @property
    def embeddings(self) -> dict[str, Embedding]:
        """Every readable embedding, whatever model it was made for."""
        return dict(self._embeddings)

    def compatible(self, encoder_widths: Mapping[str, int]) -> dict[str, Embedding]:
        return {
            name: embedding
            for name, embedding in self._embeddings.items()
            if incompatibility(embedding, encoder_widths) is None
        }

    def incompatible(self, encoder_widths: Mapping[str, int]) -> dict[str, str]:
        reasons = {name: incompatibility(embedding, encoder_widths) for name, embedding in self._embeddings.items()}
        return {name: reason for name, reason in reasons.items() if reason is not None}

    def errors(self) -> dict[str, str]:
        return dict(self._errors)


# --------------------------------------------------------------------------------------------
# Injection into a loaded pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class _EncoderChange:
    """What was changed in one text encoder, so it can be undone exactly."""

    text_encoder: nn.Module
    original_rows: int
    original_vocab_size: int | None
    original_eos_ids: list[tuple[CLIPTextModel, int | None]]


@dataclass
class _TokenizerChange:
    """A tokenizer whose backend was swapped for a copy with our tokens added."""

    tokenizer: object
    original: Tokenizer
    working: Tokenizer


def _token_embedding(text_encoder: nn.Module) -> nn.Embedding:
    embedding = text_encoder.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"{type(text_encoder).__name__} has no nn.Embedding token table")
    return embedding


def _replace_embedding_weight(embedding: nn.Embedding, weight: Tensor, requires_grad: bool) -> None:
    """Give the token table a new weight (grown or shrunk). Registering a parameter is what a checkpoint load on
    another worker would empty meanwhile (the resident table would become meta), hence the construction lock."""
    with constructing_modules():
        embedding.weight = nn.Parameter(weight, requires_grad=requires_grad)
    embedding.num_embeddings = int(weight.shape[0])


def _backend(tokenizer: object) -> Tokenizer:
    """The Rust tokenizer that holds all of a transformers 5 tokenizer's vocabulary state."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TypeError(
            f"{type(tokenizer).__name__} is not backed by a `tokenizers` Tokenizer; cannot add tokens reversibly"
        )
    return backend


def _install_working_copy(tokenizer: object) -> tuple[Tokenizer, Tokenizer]:
    """Give the tokenizer a private copy of its backend to add tokens to; return (original, copy).

    A Rust tokenizer cannot forget added tokens, so undoing means putting the untouched original
    back: the same object, hence exactly the same vocabulary and settings.
    """
    original = _backend(tokenizer)
    working = Tokenizer.from_str(original.to_str())
    working.encode_special_tokens = original.encode_special_tokens
    tokenizer._tokenizer = working  # noqa: SLF001 - the one place transformers keeps the vocabulary
    return original, working


def _clip_models_with_eos(text_encoder: nn.Module) -> list[CLIPTextModel]:
    return [module for module in text_encoder.modules() if isinstance(module, CLIPTextModel)]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "x"


class EmbeddingInjector:
    """Makes embedding names usable in prompts for a loaded pipeline, reversibly.

    Each vector becomes one new tokenizer token and one NEW row of the text encoder's token table;
    original rows are never written, and :meth:`clear` shrinks the table and tokenizer back to exactly
    what they were. Tokens are named ``emb_<name>_<i>`` (lower-case, punctuation-free) rather than the
    bare name: that keeps them apart from real words and from each other, and out of reach of
    diffusers' own multi-vector prompt rewriting, which would otherwise expand them a second time.
    Prompts reach them through :meth:`expand_prompt`, which, like A1111, matches names as whole words
    and case-insensitively.

    CLIP configs with the legacy ``eos_token_id == 2`` pick the pooled output at the highest token id,
    which an added token would win; while tokens are injected the encoders look for the real EOS id
    instead (identical results for prompts without embeddings), and :meth:`clear` restores it.

    Call :meth:`clear` before copying other weights into the text encoders (their tables must have the
    checkpoint's shape) and :meth:`set_active` again afterwards.
    """

    def __init__(self, pipeline: object, family: str) -> None:
        self.pipeline = pipeline
        self.family = family_named(family)  # ValueError for an unknown family
        self._active: dict[str, Embedding] = {}
        self._tokens: dict[str, list[str]] = {}
        self._encoder_changes: list[_EncoderChange] = []
        self._tokenizer_changes: list[_TokenizerChange] = []
        self._name_pattern: re.Pattern[str] | None = None

    # -- queries -------------------------------------------------------------------------------

    def _encoder_pairs(self) -> dict[str, tuple[object, nn.Module]]:
        # An embedding file has one vector table per text encoder of the family, in encoder order.
        return {key: (getattr(self.pipeline, tokenizer), getattr(self.pipeline, encoder))
                for key, tokenizer, encoder in zip((FIRST_ENCODER, SECOND_ENCODER), self.family.tokenizers,
                                                   self.family.text_encoders)}

    @property
    def encoder_widths(self) -> dict[str, int]:
        """The widths an embedding must have to be used with this pipeline (pass to the catalog)."""
        return {
            key: _token_embedding(encoder).embedding_dim for key, (_, encoder) in self._encoder_pairs().items()
        }

    @property
    def active_names(self) -> list[str]:
        return sorted(self._active)

    def active_embedding(self, name: str) -> Embedding:
        """The injected embedding called `name` (as returned by `names_in_prompt`)."""
        return self._active[name]

    def tokens_for(self, name: str) -> list[str]:
        """The token sequence that stands for an active embedding in a prompt."""
        return list(self._tokens[name])

    def names_in_prompt(self, text: str) -> list[str]:
        """Active embeddings a prompt refers to (for infotext), in order of first use."""
        if self._name_pattern is None:
            return []
        found: list[str] = []
        for match in self._name_pattern.finditer(text):
            name = self._resolve_name(match.group(0))
            if name not in found:
                found.append(name)
        return found

    def _resolve_name(self, written: str) -> str:
        if written in self._active:
            return written
        return next(name for name in sorted(self._active) if name.lower() == written.lower())

    def expand_prompt(self, text: str) -> str:
        """Replace each whole-word embedding name with its tokens ("name" -> "emb_name_0 emb_name_1")."""
        if self._name_pattern is None:
            return text
        return self._name_pattern.sub(lambda match: " ".join(self._tokens[self._resolve_name(match.group(0))]), text)

    # -- changes -------------------------------------------------------------------------------

    def set_active(self, embeddings: Mapping[str, Embedding]) -> None:
        """Make exactly these embeddings usable; nothing happens when they are already the active set."""
        wanted = dict(embeddings)
        if wanted.keys() == self._active.keys() and all(wanted[name] == self._active[name] for name in wanted):
            return
        widths = self.encoder_widths
        problems = {name: incompatibility(embedding, widths) for name, embedding in wanted.items()}
        problems = {name: reason for name, reason in problems.items() if reason is not None}
        if problems:
            listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(problems.items()))
            raise ValueError(f"embeddings not usable with this model: {listed}")
        self.clear()
        if not wanted:
            return
        tokens = self._assign_tokens(wanted)
        try:
            for encoder_key, (tokenizer, text_encoder) in self._encoder_pairs().items():
                self._inject(encoder_key, tokenizer, text_encoder, wanted, tokens)
        except Exception:
            self.clear()
            raise
        self._active = wanted
        self._tokens = tokens
        names = sorted(wanted, key=lambda name: (-len(name), name))
        alternatives = "|".join(re.escape(name) for name in names)
        self._name_pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def _assign_tokens(self, embeddings: Mapping[str, Embedding]) -> dict[str, list[str]]:
        """Unique token strings per vector that clash with nothing already in any tokenizer."""
        backends = [_backend(tokenizer) for tokenizer, _ in self._encoder_pairs().values()]
        taken: set[str] = set()

        def is_free(token: str) -> bool:
            return token not in taken and all(backend.token_to_id(token) is None for backend in backends)

        assigned: dict[str, list[str]] = {}
        for name in sorted(embeddings):
            count = embeddings[name].vector_count
            stem, attempt = f"emb_{_slug(name)}", 1
            while not all(is_free(f"{stem}_{index}") for index in range(count)):
                attempt += 1
                stem = f"emb{attempt}_{_slug(name)}"
            assigned[name] = [f"{stem}_{index}" for index in range(count)]
            taken.update(assigned[name])
        return assigned

    def _inject(
        self,
        encoder_key: str,
        tokenizer: object,
        text_encoder: nn.Module,
        embeddings: Mapping[str, Embedding],
        tokens: Mapping[str, list[str]],
    ) -> None:
        table = _token_embedding(text_encoder)
        names = sorted(embeddings)
        new_tokens = [token for name in names for token in tokens[name]]
        change = next((done for done in self._tokenizer_changes if done.tokenizer is tokenizer), None)
        if change is None:
            original, working = _install_working_copy(tokenizer)
            change = _TokenizerChange(tokenizer, original, working)
            self._tokenizer_changes.append(change)
            tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in new_tokens])
        original_length = change.original.get_vocab_size(with_added_tokens=True)
        if original_length != table.num_embeddings:
            raise RuntimeError(
                f"tokenizer has {original_length} tokens but the text encoder has {table.num_embeddings} rows; "
                "refusing to add embeddings to a mismatched pair"
            )
        token_ids = tokenizer.convert_tokens_to_ids(new_tokens)
        if token_ids != list(range(original_length, original_length + len(new_tokens))):
            raise RuntimeError(
                f"new tokens got ids {token_ids[:3]}..., expected them right after id {original_length - 1}"
            )

        clip_models = _clip_models_with_eos(text_encoder)
        self._encoder_changes.append(
            _EncoderChange(
                text_encoder=text_encoder,
                original_rows=table.num_embeddings,
                original_vocab_size=getattr(text_encoder.config, "vocab_size", None),
                original_eos_ids=[(model, model.eos_token_id) for model in clip_models],
            )
        )
        weight = table.weight
        vectors = torch.cat([embeddings[name].vectors[encoder_key] for name in names])
        with torch.no_grad():
            extended = torch.cat([weight.detach(), vectors.to(device=weight.device, dtype=weight.dtype)])
        _replace_embedding_weight(table, extended, weight.requires_grad)
        if getattr(text_encoder.config, "vocab_size", None) is not None:
            text_encoder.config.vocab_size = int(extended.shape[0])
        for model in clip_models:
            model.eos_token_id = tokenizer.eos_token_id

    def clear(self) -> None:
        """Remove every injected token and row; the tokenizer and token table are as before, bitwise.

        A tokenizer whose backend someone else replaced meanwhile is left as they set it.
        """
        for change in reversed(self._encoder_changes):
            table = _token_embedding(change.text_encoder)
            if table.num_embeddings > change.original_rows:
                with torch.no_grad():
                    kept = table.weight.detach()[: change.original_rows].clone()
                _replace_embedding_weight(table, kept, table.weight.requires_grad)
            if change.original_vocab_size is not None:
                change.text_encoder.config.vocab_size = change.original_vocab_size
            for model, eos_id in change.original_eos_ids:
                model.eos_token_id = eos_id
        for tokenizer_change in self._tokenizer_changes:
            if tokenizer_change.tokenizer._tokenizer is tokenizer_change.working:  # noqa: SLF001
                tokenizer_change.tokenizer._tokenizer = tokenizer_change.original  # noqa: SLF001
        self._encoder_changes = []
        self._tokenizer_changes = []
        self._active = {}
        self._tokens = {}
        self._name_pattern = None
