"""CFG split: the UNet rows of one image's denoising on two workers (two devices) at once, in lockstep.

With classifier-free guidance every UNet call of a UNet pipeline (SD1, SD2, SDXL) takes the unconditional
and the conditional rows as one batch; the rows do not depend on each other. A job split this way has two
parts on two workers, each with its own copy of the model on its own device:

* the *main* part runs the job as always, with a denoising hook (`CfgSplitDenoising.call_unet`) that sends
  the first half of each UNet call's rows (the unconditional ones) to the partner, runs the second half on
  its own UNet meanwhile, and joins the two predictions;
* the *partner* part checks out the same model state (checkpoint, VAE, LoRAs) on its worker once the first
  call arrives, and answers each call with its own UNet until the main part says it is done.

The exchange (`CfgChannel`) is two in-memory queues: the workers are threads of one process, and each tensor
is moved to the other worker's device (GPU to GPU through the host or peer copy, as torch does it). The
result equals the one-worker image within float tolerance (the UNet sees half the batch).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from webui.generation.hooks import DenoisingHooks, GenerationHooks, JobInfo, UNetFunction, UNetInput
from webui.generation.requests import Txt2ImgRequest

MAIN, PARTNER = "main", "partner"
_DONE = object()


class CfgChannel:
    """The lockstep exchange between a main part and its partner: calls one way, predictions (or the
    partner's error) the other. `close` is the main part's last word; it is always said (in a `finally`)."""

    def __init__(self) -> None:
        self._calls: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[Any] = queue.Queue()

    # ---- the main part ----
    def ask(self, call: UNetInput) -> None:
        self._calls.put(call)

    def answer(self) -> torch.Tensor:
        """The partner's prediction for the last call; its error re-raised when it failed."""
        answer = self._answers.get()
        if isinstance(answer, BaseException):
            raise RuntimeError(f"the CFG split partner failed: {type(answer).__name__}: {answer}") from answer
        return answer

    def close(self) -> None:
        self._calls.put(_DONE)

    # ---- the partner ----
    def next_call(self) -> UNetInput | None:
        """The next call to answer; None once the main part is done."""
        call = self._calls.get()
        return None if call is _DONE else call

    def reply(self, answer: torch.Tensor | BaseException) -> None:
        self._answers.put(answer)


@dataclass(frozen=True)
class CfgSplitPart:
    """One of the two parts of a CFG-split job: the whole (one-image) request, its role, the shared channel."""

    request: Txt2ImgRequest
    role: str
    channel: CfgChannel


def cfg_parts(request: Txt2ImgRequest) -> tuple[CfgSplitPart, CfgSplitPart]:
    """The main part and the partner of `request` (seeds resolved already: the main part draws them)."""
    channel = CfgChannel()
    return CfgSplitPart(request, MAIN, channel), CfgSplitPart(request, PARTNER, channel)


def _rows(value: Any, rows: slice, count: int) -> Any:
    """`value` cut to `rows` when it is batched like the call's sample (tensors, and dicts/tuples of them)."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.ndim > 0 and value.shape[0] == count else value
    if isinstance(value, Mapping):
        return {key: _rows(item, rows, count) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_rows(item, rows, count) for item in value)
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: _to(item, device) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(item, device) for item in value)
    return value


def half_call(call: UNetInput, rows: slice) -> UNetInput:
    count = call.sample.shape[0]
    return UNetInput(call.sample[rows], _rows(call.timestep, rows, count), call.encoder_hidden_states[rows],
                     {key: _rows(value, rows, count) for key, value in call.extra.items()}, call.step,
                     call.total_steps, call.hires)


class CfgSplitDenoising(DenoisingHooks):
    """The main part's denoising hooks: half of every UNet call's rows go to the partner; everything else is
    the job's own denoising hooks' (`inner`, None: none), which do not hook the UNet call (else no split).
    Should they install attention processors (which the partner's UNet would lack), the calls stay whole."""

    def __init__(self, inner: DenoisingHooks | None, channel: CfgChannel):
        self._inner = inner if inner is not None else DenoisingHooks()
        self._channel = channel
        self._whole = False
        self.wants_unet = True
        self.wants_vae = self._inner.wants_vae

    def step_finished(self, step: int, steps: int) -> None:
        super().step_finished(step, steps)
        self._inner.step_finished(step, steps)

    def begin_pass(self, hires: bool) -> None:
        super().begin_pass(hires)
        self._inner.begin_pass(hires)

    def on_step(self, latents: torch.Tensor, step: int, total_steps: int, sigma: float) -> torch.Tensor | None:
        return self._inner.on_step(latents, step, total_steps, sigma)

    def attention_processors(self, current: Mapping[str, Any]) -> dict[str, Any]:
        processors = self._inner.attention_processors(current)
        self._whole = self._whole or bool(processors)
        return processors

    def decode(self, latents: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self._inner.decode(latents, call)

    def encode(self, pixels: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self._inner.encode(pixels, call)

    def call_unet(self, unet_input: UNetInput, call: UNetFunction) -> torch.Tensor:
        count = unet_input.sample.shape[0]
        if count < 2 or self._whole:
            return call(unet_input)
        half = count // 2
        self._channel.ask(half_call(unet_input, slice(0, half)))  # the unconditional rows (negatives first)
        own = call(half_call(unet_input, slice(half, count)))
        theirs = self._channel.answer()
        return torch.cat([theirs.to(device=own.device, dtype=own.dtype), own])


class CfgSplitHooks(GenerationHooks):
    """The app's generation hooks, with the main part's CFG split as the denoising hook. A job whose
    extensions hook the denoising themselves is not split (their hooks would see half the rows on one
    device only): it runs whole, and the partner is let go."""

    def __init__(self, hooks: GenerationHooks, channel: CfgChannel):
        self._hooks = hooks
        self._channel = channel

    def before_request(self, request: Any, warnings: list[str], check: Callable[[Any], Any]) -> Any:
        return self._hooks.before_request(request, warnings, check)

    def expand_prompts(self, job: JobInfo, prompt: str, negative_prompt: str, count: int, seed: int) -> Any:
        return self._hooks.expand_prompts(job, prompt, negative_prompt, count, seed)

    def after_image(self, job: JobInfo, image: Any, info: Any) -> Any:
        return self._hooks.after_image(job, image, info)

    def after_batch(self, job: JobInfo, images: list[Any], seeds: list[int], prompts: list[str]) -> None:
        self._hooks.after_batch(job, images, seeds, prompts)

    def denoising(self, job: JobInfo) -> DenoisingHooks | None:
        own = self._hooks.denoising(job)
        return own if own is not None and own.wants_unet else CfgSplitDenoising(own, self._channel)

    def control_models(self, request: Any, warnings: list[str]) -> tuple[str, ...]:
        return self._hooks.control_models(request, warnings)

    def model_loaded(self, name: str, shorthash: str | None, family: str) -> None:
        self._hooks.model_loaded(name, shorthash, family)

    def samplers(self) -> Any:
        return self._hooks.samplers()


def serve_partner(channel: CfgChannel, checkout: Callable[[], AbstractContextManager[Any]]) -> None:
    """The partner's work: once the first call arrives, check out the model (`checkout()` gives the loaded
    model of the job's state on this worker) and answer every call with its UNet until the main part is done.
    A failure is handed to the main part (which fails the job with it) and raised here too."""
    call = channel.next_call()
    if call is None:  # the main part ran whole (or failed before its first UNet call)
        return
    try:
        with checkout() as model:
            unet, device = model.pipeline.unet, model.device
            while call is not None:
                with torch.no_grad():
                    prediction = unet(_to(call.sample, device).to(unet.dtype), _to(call.timestep, device),
                                      _to(call.encoder_hidden_states, device), return_dict=False,
                                      **_to(dict(call.extra), device))[0]
                channel.reply(prediction)
                call = channel.next_call()
    except BaseException as error:
        channel.reply(error)
        while channel.next_call() is not None:  # the main part stops at its next call; let it close
            channel.reply(error)
        raise
