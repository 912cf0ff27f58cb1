"""An exponential moving average (EMA) of the trained weights, saved beside or instead of the raw weights.

After every optimizer step each average moves towards its parameter: ``average = decay * average + (1 - decay)
* parameter``, starting from the weights training starts with. Averaging over the last ~1 / (1 - decay) steps
smooths out the noise of single steps, which is why SimpleTuner and diffusers' scripts offer it (`use_ema`,
`ema_decay`). The decay is constant (no warm-up), so the average after n steps has the closed form
``decay**n * start + sum_k (1 - decay) * decay**(n - k) * weights_k`` a user can check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

EMA_SUFFIX = "_ema"  # `name_ema.safetensors` beside `name.safetensors`


class WeightAverage:
    """The EMA of a fixed list of parameters, kept on their own devices in fp32."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must lie strictly between 0 and 1 (got {decay})")
        self.parameters = list(parameters)
        self.decay = decay
        self.averages = [parameter.detach().float().clone() for parameter in self.parameters]

    @torch.no_grad()
    def restart(self) -> None:
        """Start averaging afresh from the parameters' current values (a resumed state without an EMA)."""
        for average, parameter in zip(self.averages, self.parameters):
            average.copy_(parameter.detach().float())

    @torch.no_grad()
    def update(self) -> None:
        """One step: every average moves (1 - decay) of the way to its parameter's current value."""
        for average, parameter in zip(self.averages, self.parameters):
            average.lerp_(parameter.detach().float(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The parameters hold the averages inside the block (to save them); the raw weights come back after."""
        with torch.no_grad():
            raw = [parameter.detach().clone() for parameter in self.parameters]
            for parameter, average in zip(self.parameters, self.averages):
                parameter.copy_(average.to(parameter.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, raw):
                    parameter.copy_(saved)

    def state(self) -> dict[str, torch.Tensor]:
        """The averages by position, for a resumable state file."""
        return {f"ema.{index}": average.contiguous().cpu() for index, average in enumerate(self.averages)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put averages saved by `state` back; a state of a differently shaped run is refused."""
        if len(tensors) != len(self.averages):
            raise ValueError(f"the saved EMA holds {len(tensors)} tensors but this run trains {len(self.averages)}")
        for index, average in enumerate(self.averages):
            saved = tensors.get(f"ema.{index}")
            if saved is None or tuple(saved.shape) != tuple(average.shape):
                raise ValueError(f"the saved EMA tensor {index} does not fit this run")
            average.copy_(saved.to(device=average.device, dtype=average.dtype))
