"""LoRA updates and textual-inversion token rows as patches over a model's untouched base weights.

A patch is data: what it changes (a module's parameter, or new token rows) and how to compute the
change (factors read from a file, at a strength). Readers turn files into patches
(:func:`webui.models.lora.read_lora` -> :class:`~webui.models.lora_formats.LoraPatch` ->
:func:`weight_patches`; embeddings -> :func:`token_patches`); a :class:`ModelPatcher` makes exactly one
:class:`PatchSet` active on a pipeline. Because every merge is computed from the kept originals,
re-weighting never accumulates rounding, removal is bitwise exact, and applying the set that is
already active is a no-op decided by comparing keys, never by re-reading or re-merging.

Merging into the weights (rather than adding LoRA layers) costs nothing per denoising step, which is
what a web UI that renders many images with one LoRA setting wants.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from webui.models.embeddings import Embedding, EmbeddingInjector
from webui.models.lora_formats import COMPONENT_TE, KIND_DIFF, LoraPatch, patch_bias_delta, patch_delta

__all__ = ["ModelPatcher", "PatchSet", "TokenPatch", "WeightPatch", "WeightPatcher", "token_patches",
           "weight_patches"]

WEIGHT = "weight"
BIAS = "bias"
_FUSABLE_PROJECTIONS = ("to_q", "to_k", "to_v")


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """A weighted update of one parameter: ``target`` is ``<component>.<module path>`` of the pipeline as
    installed (e.g. ``unet.mid_block.attentions.0.proj_in``), ``parameter`` is "weight" or "bias".

    ``source`` names the file version ``update`` was read from; with target, parameter and strength it
    is the patch's key, so the same file at the same strength is recognised without comparing tensors.
    """

    target: str
    parameter: str
    update: LoraPatch
    strength: float
    source: str

    def key(self) -> tuple[str, str, str, float]:
        return (self.source, self.target, self.parameter, self.strength)

    def delta(self, shape: torch.Size, device: torch.device, current: Tensor | None = None) -> Tensor:
        """The fp32 change this patch makes at strength 1, shaped like the parameter. `current` is the fp32
        weight it is added to (the original with earlier patches merged): a DoRA update renormalises it, so the
        merge `current + strength * delta` is the DoRA weight at strength 1 and a blend toward it below."""
        if self.parameter == WEIGHT:
            return patch_delta(self.update, shape, device=device, base=current)
        bias = patch_bias_delta(self.update, device=device)
        if bias is None:
            raise ValueError(f"{self.target}: the update carries no bias")
        return bias.reshape(shape)


def weight_patches(updates: Iterable[LoraPatch], te_strength: float, unet_strength: float,
                   source: str) -> tuple[WeightPatch, ...]:
    """One file's layer updates as patches: every text encoder's (``text_encoder``, ``text_encoder_2``,
    ...) at ``te_strength``, the denoiser's (``unet``, or a transformer) at ``unet_strength``; a strength
    of 0 leaves those weights out entirely (they stay bitwise original)."""
    patches: list[WeightPatch] = []
    for update in updates:
        is_text_encoder = update.component.startswith(COMPONENT_TE)
        strength = float(te_strength if is_text_encoder else unet_strength)
        if strength == 0.0:
            continue
        patches.append(WeightPatch(update.target, WEIGHT, update, strength, source))
        if update.kind == KIND_DIFF and "diff_b" in update.tensors:
            patches.append(WeightPatch(update.target, BIAS, update, strength, source))
    return tuple(patches)


@dataclass(frozen=True, eq=False)
class TokenPatch:
    """One embedding as new prompt tokens: its vectors become rows appended to each text encoder's
    token table (existing rows are never written). ``source`` names the file's content (its sha256)."""

    name: str
    embedding: Embedding
    source: str

    def key(self) -> tuple[str, str]:
        return (self.name, self.source)


def token_patches(embeddings: Mapping[str, Embedding], sources: Mapping[str, str]) -> tuple[TokenPatch, ...]:
    """Patches for these embeddings, by name; ``sources`` gives each one's content hash (a missing one
    falls back to the file path, which still tells different files apart)."""
    return tuple(TokenPatch(name, embedding, sources.get(name) or f"path:{embedding.path}")
                 for name, embedding in sorted(embeddings.items()))


@dataclass(frozen=True)
class PatchSet:
    """Everything patched onto one pipeline: weight patches in the order asked for, token patches."""

    weights: tuple[WeightPatch, ...] = ()
    tokens: tuple[TokenPatch, ...] = ()

    def key(self) -> tuple:
        return (tuple(patch.key() for patch in self.weights), tuple(sorted(patch.key() for patch in self.tokens)))


class WeightPatcher:
    """Keeps exactly one set of weight patches merged into a pipeline's modules, reversibly.

    The original of every touched parameter is kept (on the CPU by default, or on its own device with
    ``backup_device="same"``) and every merge is computed from it, so :meth:`restore` is bitwise exact
    however often patches are switched or re-weighted. If the weights are replaced behind the patcher's
    back (a checkpoint switch copying into the same modules), call :meth:`forget` so stale originals are
    not written back. Thread-safe.
    """

    def __init__(self, modules: Mapping[str, nn.Module], *, backup_device: str = "cpu") -> None:
        if backup_device not in ("cpu", "same"):
            raise ValueError("backup_device must be 'cpu' or 'same'")
        self._modules = dict(modules)
        self._backup_on_cpu = backup_device == "cpu"
        self._originals: dict[tuple[str, str], Tensor] = {}
        self._active: tuple[WeightPatch, ...] = ()
        self._key: tuple = ()
        self._lock = threading.RLock()

    @property
    def active(self) -> tuple[WeightPatch, ...]:
        return self._active

    def apply(self, patches: Sequence[WeightPatch]) -> bool:
        """Make exactly ``patches`` merged; returns False (and touches nothing) when they already are.

        On any failure the model is left with its original weights and no patch active.
        """
        patches = tuple(patches)
        key = tuple(patch.key() for patch in patches)
        with self._lock:
            if key == self._key:
                return False
            try:
                self._merge(patches)
            except BaseException:
                self._restore_all()
                raise
            self._active, self._key = patches, key
            return True

    def restore(self) -> None:
        """Put every touched weight back to its bitwise original."""
        with self._lock:
            self._restore_all()

    def forget(self) -> None:
        """Drop the kept originals without writing them back (the weights were replaced elsewhere)."""
        with self._lock:
            self._originals.clear()
            self._active, self._key = (), ()

    def _restore_all(self) -> None:
        for key in list(self._originals):
            self._put_back(key)
        self._active, self._key = (), ()

    def _parameter(self, target: str, name: str) -> Tensor:
        component, module_path = target.split(".", 1)
        module = self._modules[component].get_submodule(module_path)
        parent_path, _, leaf = module_path.rpartition(".")
        parent = self._modules[component].get_submodule(parent_path)
        if leaf in _FUSABLE_PROJECTIONS and getattr(parent, "fused_projections", False):
            raise RuntimeError(
                f"cannot apply a LoRA to {target}: its attention uses fused QKV projections; unfuse first"
            )
        parameter = getattr(module, name)
        if not isinstance(parameter, torch.Tensor):
            raise RuntimeError(f"{target} has no {name} to apply a LoRA to")
        return parameter

    def _put_back(self, key: tuple[str, str]) -> None:
        original = self._originals.pop(key)
        with torch.no_grad():
            self._parameter(*key).copy_(original)

    def _original(self, key: tuple[str, str], parameter: Tensor) -> Tensor:
        original = self._originals.get(key)
        if original is None:
            if not self._backup_on_cpu:
                original = parameter.detach().clone()
            else:
                # Pinned host memory makes the copy back to a GPU on every re-weight fast.
                original = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu",
                                       pin_memory=parameter.is_cuda)
                original.copy_(parameter.detach())
            self._originals[key] = original
        return original

    def _merge(self, patches: tuple[WeightPatch, ...]) -> None:
        by_parameter: dict[tuple[str, str], list[WeightPatch]] = {}
        for patch in patches:
            by_parameter.setdefault((patch.target, patch.parameter), []).append(patch)
        for key in list(self._originals):
            if key not in by_parameter:
                self._put_back(key)
        for key, updates in by_parameter.items():
            parameter = self._parameter(*key)
            original = self._original(key, parameter)
            # Move in the stored precision, widen on the device; the copy keeps the original intact.
            merged = original.to(parameter.device, non_blocking=True).to(torch.float32, copy=True)
            for patch in updates:
                merged.add_(patch.delta(parameter.shape, parameter.device, merged), alpha=patch.strength)
            with torch.no_grad():
                parameter.copy_(merged)


class ModelPatcher:
    """The patches of one pipeline: weight patches merged by a :class:`WeightPatcher`, token patches
    added by an :class:`~webui.models.embeddings.EmbeddingInjector` (new tokenizer tokens and new token
    table rows, removed exactly by shrinking back). The injector stays in embeddings.py because adding
    tokens reversibly is tokenizer work; here it is only the applier of token patches.
    """

    def __init__(self, weights: WeightPatcher, tokens: EmbeddingInjector) -> None:
        self.weights = weights
        self.tokens = tokens
        self._token_key: tuple = ()
        self._key: tuple = ((), ())

    @property
    def key(self) -> tuple:
        """The key of the active patch set (empty tuples when nothing is applied)."""
        return self._key

    def apply(self, patches: PatchSet) -> bool:
        """Make exactly ``patches`` active; False when they already were (nothing was touched).

        A failure leaves no weight patch merged and raises; token patches are all-or-nothing too.
        """
        key = patches.key()
        if key == self._key:
            return False
        self._key = ((), ())  # unknown until both parts succeed
        _, token_key = key
        self.weights.apply(patches.weights)
        if token_key != self._token_key:
            self._token_key = ()
            self.tokens.set_active({patch.name: patch.embedding for patch in patches.tokens})
            self._token_key = token_key
        self._key = key
        return True

    def remove(self) -> None:
        """Take every patch off: weights bitwise original, tokenizer and token tables as before."""
        self.weights.restore()
        self.tokens.clear()
        self._token_key = ()
        self._key = ((), ())
