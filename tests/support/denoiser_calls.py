"""What a loaded model's denoiser is called with during a generation, per call (a forward pre-hook on the
resident module, removed afterwards): the pooled text and the text tokens each step really received."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DenoiserCall:
    pooled: torch.Tensor   # `pooled_projections` as passed ([negative; positive] rows under CFG)
    text: torch.Tensor     # `encoder_hidden_states` as passed


def record_denoiser_calls(denoiser: torch.nn.Module, run: Callable[[], object]) -> list[DenoiserCall]:
    calls: list[DenoiserCall] = []

    def seen(module, args, kwargs):
        calls.append(DenoiserCall(kwargs["pooled_projections"].detach().clone(),
                                  kwargs["encoder_hidden_states"].detach().clone()))

    handle = denoiser.register_forward_pre_hook(seen, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


def first_call_with(calls: list[DenoiserCall], part: Callable[[DenoiserCall], torch.Tensor],
                    wanted: torch.Tensor) -> int:
    """The index of the first call whose `part` equals `wanted` (ValueError when none does)."""
    return next(index for index, call in enumerate(calls) if torch.equal(part(call), wanted.to(part(call))))
