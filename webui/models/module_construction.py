"""The one rule for building torch modules in a process where libraries build models "empty".

Why a rule is needed: accelerate's `init_empty_weights` (which diffusers' loaders use, and this app uses to
build a checkpoint's modules weightless before assigning its weights) replaces `torch.nn.Module.register_parameter`
on the class itself while it lasts. That is process-wide: every parameter any thread registers meanwhile is moved
to the meta device. A module another thread builds in that window (a ControlNet, an upscaler, a token table
grown for a textual-inversion embedding, LoRA training adapters, modules filled by `load_state_dict(assign=True)`)
comes out without weights, and loading a state dict into it does nothing. Two windows that overlap are worse:
each one restores on exit what it found on entry, so the later one to exit reinstalls the earlier one's patch and
the process builds empty modules from then on. transformers' loaders likewise swap `torch.nn.init`'s functions
(and `PreTrainedModel.tie_weights`) for no-ops process-wide while they build.

The rule, in one place: every such window of this app, and every construction of ours that a window would
spoil, runs under ONE lock for the whole process (`_CONSTRUCTION_LOCK`, deliberately the only module-level state:
the library's patch is process-wide, so a lock per app context or per worker would not exclude the other
contexts' loads). `empty_weights()` is the only way the app enters `init_empty_weights`; `constructing_modules()`
is taken around module builds, parameter replacements and library loads that patch torch (transformers'
`from_pretrained`). The lock is held only while modules are built or parameters replaced (milliseconds to a few
seconds), never during a generation or while weights are read from disk.

Building under `torch.device("meta")` (the VAE shape check, the CLIP key fit-up in ldm_conversion) needs no lock:
that context is per thread, and a module built in it has no weights to lose.

Code that does not take the lock (an extension calling diffusers' `from_pretrained` itself) cannot be excluded,
but its window can be seen: while `register_parameter` is not torch's own, a guarded section waits for it to
close (up to FOREIGN_WINDOW_WAIT_S) before building, and raises `ModuleConstructionBusy` when it never does
rather than building modules without weights.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

FOREIGN_WINDOW_WAIT_S = 30.0  # how long a build waits for an unguarded empty-weights window to close
_POLL_S = 0.05

# Process-wide on purpose (see the module docstring): accelerate's patch is process-wide, so the lock must be.
# Reentrant so that a guarded section may call a helper that guards itself. Never nest a guarded build inside
# `empty_weights`, though: it would wait for that very window to close and fail with ModuleConstructionBusy.
_CONSTRUCTION_LOCK = threading.RLock()


class ModuleConstructionBusy(TimeoutError):
    """Modules could not be built because code outside this app's guard kept building empty modules (meta
    weights) process-wide; a passing state: the next try may succeed."""


def empty_weights_window_open() -> bool:
    """Whether some thread is inside accelerate's `init_empty_weights` right now (torch's `register_parameter`
    or `register_buffer` is replaced on `nn.Module` itself)."""
    module_name = torch.nn.Module.__module__
    for name in ("register_parameter", "register_buffer"):
        function = getattr(torch.nn.Module, name)
        if getattr(function, "__module__", None) != module_name or \
                getattr(function, "__qualname__", None) != f"Module.{name}":
            return True
    return False


def _wait_until_no_window(wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while empty_weights_window_open():
        if time.monotonic() >= deadline:
            raise ModuleConstructionBusy(
                f"another part of this process has been building modules without weights for over {wait_s:g} s "
                "(accelerate's init_empty_weights, outside this app's loaders); nothing was built, try again")
        time.sleep(_POLL_S)


@contextmanager
def constructing_modules(wait_s: float = FOREIGN_WINDOW_WAIT_S) -> Iterator[None]:
    """Hold around building torch modules, registering parameters (`module.weight = nn.Parameter(...)`,
    `load_state_dict(assign=True)`, PEFT adapters) or a library load that patches torch process-wide: no window of
    this app is open meanwhile, and an unguarded one is waited for (`ModuleConstructionBusy` after `wait_s`)."""
    with _CONSTRUCTION_LOCK:
        _wait_until_no_window(wait_s)
        yield


@contextmanager
def empty_weights(wait_s: float = FOREIGN_WINDOW_WAIT_S) -> Iterator[None]:
    """accelerate's `init_empty_weights` (parameters on the meta device, buffers real), entered only under the
    construction lock: modules built inside have no weights, and nothing else of this app is built meanwhile.
    Weights are then given with `load_state_dict(assign=True)` under `constructing_modules()`, outside this window
    (inside it, the assigned parameters would be emptied too)."""
    from accelerate import init_empty_weights

    with constructing_modules(wait_s), init_empty_weights(include_buffers=False):
        yield
