"""A prompt schedule's pooled text for transformer families whose pipelines read none back per step.

SDXL's pipelines take a changed pooled embedding back from `callback_on_step_end` (`add_text_embeds`), so a
`[a:b:N]` switch changes it there. SD3's and Flux's do not: Flux's pipelines list only the latents and the
prompt embeddings as callback tensors, and SD3's img2img/inpaint pipelines only the negative pooled vector,
after it has been joined to the positive one. Without help the first prompt's pooled vector would stay for
the whole run. So the mode pipeline of such a family (`ModelFamily.pooled_denoiser_argument`) is built with
this wrapper as its denoiser (`denoise.pipeline_for`, the one place): the step callback hands it the rows the
schedule has reached, and from the next denoiser call on they replace the pooled argument the pipeline passes.
It holds the resident module (no weight is copied) and answers every attribute the pipeline reads from it.
"""

from __future__ import annotations

from typing import Any

import torch


class PooledSwitchingDenoiser(torch.nn.Module):
    """The denoiser as the pipeline calls it, with the pooled argument the prompt schedule has reached."""

    def __init__(self, inner: torch.nn.Module, argument: str):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_argument", argument)  # plain state of the wrapper, not a submodule/buffer
        object.__setattr__(self, "_pooled", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def switch_pooled(self, pooled: torch.Tensor) -> None:
        """Use `pooled` (rows as the pipeline passes them: [negative; positive] under classifier-free guidance)
        from the next call on."""
        object.__setattr__(self, "_pooled", pooled)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        given = kwargs.get(self._argument)
        if self._pooled is not None and given is not None and tuple(given.shape) == tuple(self._pooled.shape):
            kwargs[self._argument] = self._pooled.to(device=given.device, dtype=given.dtype)
        return self.inner(*args, **kwargs)
