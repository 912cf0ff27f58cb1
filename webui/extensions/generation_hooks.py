"""The extension layer's side of the generation engine's seam (`webui.generation.hooks`).

`ExtensionGenerationHooks` fills every generation-time hook from the registry: each call goes through
`ExtensionRegistry.call_one` (isolated, timed, wrong return types refused), and what the type alone cannot
check (a list of prompts that is not all text, latents of another shape, an unknown attention processor
name) is refused here with a message naming the extension, which is then switched off like any failing
one. Warnings land in the job's own warnings list, so the job goes on without the extension and says so.
X/Y/Z axes extensions add are turned into rows of the plot's axis table by `extension_axes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image

from webui.extensions import api
from webui.extensions.registry import ExtensionRegistry, HookFailure, Registration
from webui.generation.prompt_syntax import extract_network_tags
from webui.generation.hooks import DenoisingHooks, GenerationHooks, ImageInfo, JobInfo, SchedulerFactory, UNetInput
from webui.xyz.axes import AxisOption, AxisRegistry, default_axis_registry
from webui.xyz.ranges import AxisValueError

log = logging.getLogger("sdstudio.extensions")

DENOISING_HOOKS = (api.DENOISING_STEP, api.UNET_RESIDUALS, api.MODEL_CALL, api.ATTENTION_PROCESSORS,
                   api.VAE_DECODE, api.VAE_ENCODE)


class ExtensionGenerationHooks(GenerationHooks):
    """Every generation-time hook, from what the loaded extensions registered."""

    def __init__(self, registry: ExtensionRegistry, max_images: int):
        self._registry = registry
        self._max_images = max_images  # an expansion may not draw more images than a request may ask for

    def _refuse(self, row: Registration, problem: str, warnings: list[str] | None) -> None:
        self._registry.fail(row.extension, f"{row.hook} {problem}", "", warnings)

    def _call(self, row: Registration, argument: Any, warnings: list[str] | None) -> tuple[bool, Any]:
        try:
            return True, self._registry.call_one(row, argument, warnings=warnings)
        except HookFailure:
            return False, None

    def before_request(self, request: Any, warnings: list[str], check: Callable[[Any], Any]) -> Any:
        """Network types whose tags the prompts use first, then every `on_before_request` hook; each change
        goes through the app's checks before the next extension sees the request."""
        for row in self._registry.rows(api.NETWORK_TYPE):
            uses = network_uses(request, row.payload[0])
            if uses:
                request = self._apply_change(row, api.NetworkActivation(request, uses), request, warnings, check)
        for row in self._registry.rows(api.BEFORE_REQUEST):
            request = self._apply_change(row, api.BeforeRequest(request), request, warnings, check)
        return request

    def _apply_change(self, row: Registration, argument: Any, request: Any, warnings: list[str],
                      check: Callable[[Any], Any]) -> Any:
        """The request the hook returned, once the app's checks accept it; otherwise the request as it was."""
        ok, changed = self._call(row, argument, warnings)
        if not ok or changed is None:
            return request
        if type(changed) is not type(request):
            self._refuse(row, f"returned a {type(changed).__name__}, expected a {type(request).__name__} "
                              "(the request it was given, changed) or None", warnings)
            return request
        try:
            return check(changed)
        except ValueError as error:  # a value the app refuses: the request goes on unchanged
            warnings.append(f"extension '{row.extension}': its change to the request was not used ({error})")
            return request

    def expand_prompts(self, job: JobInfo, prompt: str, negative_prompt: str, count: int,
                       seed: int) -> list[str] | None:
        context = api.PromptExpansion(prompt, negative_prompt, count, seed, job.request)
        for row in self._registry.rows(api.PROMPT_EXPANSION):
            ok, prompts = self._call(row, context, job.warnings)
            if not ok or prompts is None:
                continue
            if not prompts or not all(isinstance(text, str) for text in prompts):
                self._refuse(row, "returned a list that is empty or holds something other than text", job.warnings)
                continue
            if len(prompts) > self._max_images:
                job.warnings.append(f"extension '{row.extension}' expanded the prompt into {len(prompts)} prompts; "
                                    f"only the first {self._max_images} were drawn (the image limit)")
                prompts = prompts[:self._max_images]
            return list(prompts)
        return None

    def after_image(self, job: JobInfo, image: Image.Image, info: ImageInfo) -> tuple[Image.Image, dict[str, Any]]:
        added: dict[str, Any] = {}
        for row in self._registry.rows(api.AFTER_IMAGE):
            context = api.ImageReady(image, info.index, info.seed, info.prompt, info.negative_prompt, job.request,
                                     dict(info.parameters), info.inpaint, added)
            ok, replacement = self._call(row, context, job.warnings)
            if ok and replacement is not None:
                image = replacement
        return image, added

    def after_batch(self, job: JobInfo, images: list[Image.Image], seeds: list[int], prompts: list[str]) -> None:
        for _ in self._registry.call_each(api.AFTER_BATCH, api.BatchDone(list(images), list(seeds), list(prompts),
                                                                         job.request), warnings=job.warnings):
            pass

    def denoising(self, job: JobInfo) -> DenoisingHooks | None:
        if not any(self._registry.has(hook) for hook in DENOISING_HOOKS):
            return None
        return ExtensionDenoising(self, job)

    def control_models(self, request: Any, warnings: list[str]) -> tuple[str, ...]:
        names: list[str] = []
        for row in self._registry.rows(api.CONTROL_MODELS):
            ok, wanted = self._call(row, request, warnings)
            if not ok:
                continue
            if not all(isinstance(name, str) for name in wanted):
                self._refuse(row, "returned control model names that are not strings", warnings)
                continue
            names += [name for name in wanted if name not in names]
        return tuple(names)

    def model_loaded(self, name: str, shorthash: str | None, family: str) -> None:
        for _ in self._registry.call_each(api.MODEL_LOADED, api.ModelLoaded(name, shorthash, family)):
            pass

    def samplers(self) -> Mapping[str, SchedulerFactory]:
        return {row.payload: self._sampler_factory(row) for row in self._registry.rows(api.SAMPLER)}

    def _sampler_factory(self, row: Registration) -> SchedulerFactory:
        def build(config: dict[str, Any]) -> Any:
            try:
                scheduler = self._registry.call_one(row, dict(config))
            except HookFailure:
                raise ValueError(f"sampler {row.payload!r} of extension '{row.extension}' failed to build; the "
                                 "extension is switched off (see the Extensions tab)") from None
            if not (callable(getattr(scheduler, "set_timesteps", None)) and callable(getattr(scheduler, "step", None))):
                self._refuse(row, f"returned a {type(scheduler).__name__}, expected a diffusers scheduler", None)
                raise ValueError(f"sampler {row.payload!r} of extension '{row.extension}' is not a diffusers "
                                 f"scheduler ({type(scheduler).__name__}); the extension is switched off")
            return scheduler

        return build


class ExtensionDenoising(DenoisingHooks):
    """One job's denoising hooks; wrappers are asked for only when an extension registered them."""

    def __init__(self, hooks: ExtensionGenerationHooks, job: JobInfo):
        self._hooks = hooks
        self._registry = hooks._registry
        self._job = job
        self._residual_rows = [row for row in self._registry.rows(api.UNET_RESIDUALS) if self._applies(row)]
        self.wants_residuals = bool(self._residual_rows)
        self.wraps_model_calls = self._registry.has(api.MODEL_CALL)
        self.wants_unet = self.wants_residuals or self.wraps_model_calls
        self.wants_vae = self._registry.has(api.VAE_DECODE) or self._registry.has(api.VAE_ENCODE)

    @property
    def _warnings(self) -> list[str]:
        return self._job.warnings

    def _applies(self, row: Registration) -> bool:
        """Whether a residuals hook has work for this job (its `applies(request)`; no such function: yes)."""
        if row.payload is None:
            return True
        check = Registration(row.extension, "unet_residuals applies", row.payload, returns=bool)
        ok, answer = self._hooks._call(check, self._job.request, self._warnings)
        return ok and answer

    def on_step(self, latents: torch.Tensor, step: int, total_steps: int, sigma: float) -> torch.Tensor | None:
        changed = None
        for row in self._registry.rows(api.DENOISING_STEP):
            current = latents if changed is None else changed
            ok, result = self._hooks._call(row, api.DenoisingStep(current, step, total_steps, sigma, self._job.request),
                                           self._warnings)
            if not ok or result is None:
                continue
            if result.shape != current.shape:
                self._hooks._refuse(row, f"returned latents of shape {tuple(result.shape)}, expected "
                                         f"{tuple(current.shape)}", self._warnings)
                continue
            changed = result.to(device=current.device, dtype=current.dtype)
        return changed

    def residuals(self, unet_input: UNetInput) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        down, mid, _ = self._collect(unet_input)
        return down, mid

    def transformer_residuals(self, unet_input: UNetInput) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        down, _, single = self._collect(unet_input)
        return down, single

    def _collect(self, unet_input: UNetInput) -> tuple[list[torch.Tensor] | None, torch.Tensor | None,
                                                        list[torch.Tensor] | None]:
        """Every residual hook's (down, mid, single) for one denoiser call, summed; a hook whose tensors do not
        fit the call (another batch or rank, another count than the others') is switched off."""
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        single: list[torch.Tensor] | None = None
        call = api.UNetCall(unet_input.sample, unet_input.timestep, unet_input.encoder_hidden_states, self._job.request,
                            unet_input.step, unet_input.total_steps, dict(unet_input.extra), self._job.model,
                            unet_input.hires)
        batch, rank = unet_input.sample.shape[0], unet_input.sample.ndim
        for row in self._residual_rows:
            if not self._registry.records[row.extension].active:
                continue
            ok, added = self._hooks._call(row, call, self._warnings)
            if not ok or added is None:
                continue
            tensors = list(added.down) + list(added.single) + ([added.mid] if added.mid is not None else [])
            if not all(isinstance(t, torch.Tensor) and t.ndim == rank and t.shape[0] == batch for t in tensors):
                self._hooks._refuse(row, f"returned residuals that are not {rank}-d tensors with the call's batch of "
                                         f"{batch}", self._warnings)
                continue
            mismatch = next((f"{len(new)} {what} residuals where another extension gave {len(old)}"
                             for what, old, new in (("down", down, added.down), ("single-block", single, added.single))
                             if new and old is not None and len(old) != len(new)), None)
            if mismatch:
                self._hooks._refuse(row, f"returned {mismatch}", self._warnings)
                continue
            down = summed(down, added.down, unet_input.sample)
            single = summed(single, added.single, unet_input.sample)
            if added.mid is not None:
                mid = added.mid.to(unet_input.sample) if mid is None else mid + added.mid.to(mid)
        return down, mid, single

    def call_unet(self, unet_input: UNetInput, call: Callable[[UNetInput], torch.Tensor]) -> torch.Tensor:
        def through(rows: list[Registration], given: UNetInput) -> torch.Tensor:
            if not rows:
                return call(given)
            row, rest = rows[0], rows[1:]

            def next_call(sample: torch.Tensor, timestep: Any, hidden: torch.Tensor) -> torch.Tensor:
                return through(rest, UNetInput(sample, timestep, hidden, given.extra, given.step, given.total_steps,
                                               given.hires))

            context = api.ModelCall(given.sample, given.timestep, given.encoder_hidden_states, self._job.request,
                                    next_call)
            ok, prediction = self._hooks._call(row, context, self._warnings)
            if not ok:
                return next_call(given.sample, given.timestep, given.encoder_hidden_states)
            if prediction.shape[0] != given.sample.shape[0] or prediction.shape[2:] != given.sample.shape[2:]:
                self._hooks._refuse(row, f"returned a prediction of shape {tuple(prediction.shape)} for a sample of "
                                         f"shape {tuple(given.sample.shape)}", self._warnings)
                return next_call(given.sample, given.timestep, given.encoder_hidden_states)
            return prediction

        return through(self._registry.rows(api.MODEL_CALL), unet_input)

    def attention_processors(self, current: Mapping[str, Any]) -> dict[str, Any]:
        wanted: dict[str, Any] = {}
        for row in self._registry.rows(api.ATTENTION_PROCESSORS):
            ok, processors = self._hooks._call(row, api.AttentionSetup(dict(current), self._job.request),
                                               self._warnings)
            if not ok or not processors:
                continue
            unknown = sorted(str(name) for name in processors if name not in current)
            if unknown:
                self._hooks._refuse(row, f"named attention processors the UNet does not have: "
                                         f"{', '.join(unknown[:3])}", self._warnings)
                continue
            wanted.update(processors)
        return wanted

    def _wrapped(self, hook: str, tensor: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        def through(rows: list[Registration], given: torch.Tensor) -> torch.Tensor:
            if not rows:
                return call(given)
            row, rest = rows[0], rows[1:]
            ok, result = self._hooks._call(row, api.VaeCall(given, self._job.request, lambda t: through(rest, t)),
                                           self._warnings)
            return result if ok else through(rest, given)

        return through(self._registry.rows(hook), tensor)

    def decode(self, latents: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self._wrapped(api.VAE_DECODE, latents, call)

    def encode(self, pixels: torch.Tensor, call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return self._wrapped(api.VAE_ENCODE, pixels, call)


def summed(total: list[torch.Tensor] | None, added: tuple[torch.Tensor, ...],
           like: torch.Tensor) -> list[torch.Tensor] | None:
    """Residual lists added element by element (none given: the total as it was)."""
    if not added:
        return total
    if total is None:
        return [t.to(like) for t in added]
    return [old + new.to(old) for old, new in zip(total, added)]


def extension_axes(registry: ExtensionRegistry, axes: AxisRegistry | None = None) -> AxisRegistry:
    """The X/Y/Z axis table: the built-in axes plus every axis extensions added (each call of an axis goes
    through the registry; a failing one makes the plot refuse the value with the extension's name)."""
    axes = axes if axes is not None else default_axis_registry()
    for row in registry.rows(api.XYZ_AXIS):
        label, kind, choices = row.payload
        try:
            axes.register(AxisOption(label, kind, _isolated_apply(registry, row),
                                     choices=(lambda _choices, listed=choices: list(listed)) if choices else None))
        except ValueError as error:
            registry.fail(row.extension, f"its X/Y/Z axis {label!r} was refused: {error}", "")
    return axes


def _isolated_apply(registry: ExtensionRegistry, row: Registration) -> Callable[[Any, Any], Any]:
    def apply(request: Any, value: Any) -> Any:
        try:
            changed = registry.call_one(row, request, value)
        except HookFailure:
            raise AxisValueError(f"the X/Y/Z axis {row.payload[0]!r} of extension '{row.extension}' failed "
                                 f"(see the Extensions tab)") from None
        if type(changed) is not type(request):
            registry.fail(row.extension, f"its X/Y/Z axis {row.payload[0]!r} returned a {type(changed).__name__}, "
                                         f"expected a {type(request).__name__}", "")
            raise AxisValueError(f"the X/Y/Z axis {row.payload[0]!r} of extension '{row.extension}' returned a "
                                 f"{type(changed).__name__} instead of a request")
        return changed

    return apply


def network_uses(request: Any, kind: str) -> tuple[api.NetworkUse, ...]:
    """The `<kind:...>` tags of the request's prompt and negative prompt, in order."""
    uses = []
    for text, negative in ((request.prompt, False), (request.negative_prompt, True)):
        uses += [api.NetworkUse(tag.name, tuple(tag.args), negative)
                 for tag in extract_network_tags(text or "")[1] if tag.kind == kind]
    return tuple(uses)


def network_types(registry: ExtensionRegistry) -> list[tuple[str, str]]:
    """(kind, label) of every extension network type, in load order (nothing is called)."""
    return [(row.payload[0], row.payload[1]) for row in registry.rows(api.NETWORK_TYPE)]


def network_items(registry: ExtensionRegistry, kind: str) -> list[api.NetworkItem]:
    """The current cards of one network type ([] when none has that kind; an `items` function that fails or
    returns something else switches its extension off)."""
    for row in registry.rows(api.NETWORK_TYPE):
        if row.payload[0] != kind:
            continue
        listing = Registration(row.extension, "network_items", row.payload[2], returns=list)
        try:
            listed = registry.call_one(listing)
        except HookFailure:
            return []
        if not all(isinstance(item, api.NetworkItem) for item in listed):
            registry.fail(row.extension, "network_items returned something other than NetworkItem values", "")
            return []
        return listed
    return []
