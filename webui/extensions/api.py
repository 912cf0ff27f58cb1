"""SD Studio's extension API: the one module an extension imports.

Version: `API_VERSION` (semantic versioning). Every name in `__all__` is stable for the whole major
version: it is not removed or renamed, a function keeps accepting what it accepted, and a dataclass
handed to a hook keeps its fields (new fields may be added, with defaults). A minor version adds names;
tests/unit/test_extension_api.py fails when a name disappears without a major bump. Anything not in
`__all__` (and everything outside this module) may change in any release.

An extension is a folder with `extension.toml` (see `webui.extensions.manifest`) and an entry module
that defines::

    from webui.extensions import api

    def setup(ext: api.ExtensionSetup) -> None:
        ext.on_app_started(lambda started: ...)
        ext.add_router(router)          # a fastapi.APIRouter, served under the app's login

`setup` only registers; it runs once at start, before the server answers. Each hook has one signature,
given by the type aliases below. Hooks run isolated: an exception, or a return value of the wrong type,
switches the extension off until the next start and shows the traceback in the Extensions tab; the app
and the running job go on without it (the job's warnings say so). Each call is timed. GPU work goes only
through the scheduler (`Services.submit_txt2img`, ...), never straight to a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.extensions.registry import ExtensionRecord, ExtensionRegistry, HookRefusal, Registration
from webui.generation.controlnet import (
    BALANCED,
    CONTROL_MODES,
    in_window,
    is_transformer_controlnet,
    transformer_unit_residuals,
    union_mode_index,
    unit_residuals,
)
from webui.generation.control_maps import canny as canny_edges, gray as gray_map, map_to_rgb
from webui.generation.hooks import JobModel
from webui.extensions.script_values import FIELD_META, ScriptArgsError, ScriptDefinition, define_script
from webui.extensions.settings_store import SettingError, SettingSpec, SettingValue
from webui.generation.infotext import is_valid_infotext_key
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.security.identity import ADMIN, USER, NotAuthenticated, User, request_user

API_VERSION = "1.4.0"

__all__ = [
    "API_VERSION", "ExtensionSetup", "ExtensionError", "Services", "AppStarted", "AppStartedHook", "Caller",
    "caller_of", "Txt2ImgRequest", "Img2ImgRequest", "JobOutcome", "Setting", "SettingValue",
    # -- generation-time hooks (ext-gen) --
    "PromptExpansion", "PromptExpansionHook", "BeforeRequest", "BeforeRequestHook", "ImageReady",
    "AfterImageHook", "BatchDone", "AfterBatchHook", "DenoisingStep", "DenoisingStepHook", "UNetCall",
    "UNetResiduals", "UNetResidualsHook", "ModelCall", "ModelCallWrapper", "AttentionSetup",
    "AttentionProcessorsHook", "VaeCall", "VaeWrapper", "ModelLoaded", "ModelLoadedHook", "SamplerFactory",
    "XyzAxisApply",
    # ext-ui: UI tabs, JS/CSS, scripts
    "TabContext", "TabBuilder", "script_field", "ScriptContext", "ScriptResult", "ScriptRunHook", "ScriptUi",
    "ScriptUiBuilder", "ScriptHandle", "labelled_grid",
    # extra-network types
    "NetworkItem", "NetworkItemsHook", "NetworkUse", "NetworkActivation", "NetworkActivateHook",
    # 1.1: ControlNet-class extensions (models matched to the job's checkpoint, refusing a job)
    "JobModel", "JobRefused", "ControlNet", "ControlNetInfo", "CONTROL_MODES", "in_control_window",
    # 1.2: control models in the job's model state; UNetCall.hires
    "ControlModelsHook",
    # 1.3: the product's weight-free control maps (the toy ControlNet was trained on `canny_edges`); transformer
    # ControlNets (Flux.1) with union modes (see docs/EXTENSIONS.md)
    "canny_edges", "gray_map", "map_to_rgb",
]

# Paths the app serves itself; an extension's routes live elsewhere (by default under /extensions/<name>).
RESERVED_PREFIXES = ("/sdapi", "/api", "/gradio_api", "/login", "/logout", "/docs", "/openapi.json", "/file",
                     "/assets", "/static", "/config", "/theme", "/queue", "/upload", "/info", "/manifest")
# Folders of the data folder the app uses itself (an extension's `user_folder` is never one of them).
APP_FOLDERS = frozenset({"models", "outputs", "datasets", "training", "extensions", "extension-data", "cache", "jobs",
                         "inputs", "embeddings", "logs"})
_PREFIX = re.compile(r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$")

# Hook names: the keys of the registry's table (strings so that the table is data).
APP_STARTED = "app_started"
ROUTER = "router"
# -- generation-time hooks (ext-gen) --
PROMPT_EXPANSION = "prompt_expansion"
BEFORE_REQUEST = "before_request"
AFTER_IMAGE = "after_image"
AFTER_BATCH = "after_batch"
DENOISING_STEP = "denoising_step"
UNET_RESIDUALS = "unet_residuals"
MODEL_CALL = "model_call"
ATTENTION_PROCESSORS = "attention_processors"
VAE_DECODE = "vae_decode"
VAE_ENCODE = "vae_encode"
MODEL_LOADED = "model_loaded"
CONTROL_MODELS = "control_models"
SAMPLER = "sampler"
XYZ_AXIS = "xyz_axis"
TAB = "tab"
JAVASCRIPT = "javascript"
CSS = "css"
SCRIPT = "script"
NETWORK_TYPE = "network_type"
# Tag kinds the app reads itself (LoRA); an extension's network type needs a kind of its own.
BUILT_IN_NETWORK_KINDS = frozenset({"lora", "lyco"})
_NETWORK_KIND = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


# A setting an extension declares: key, label, default (its type is the setting's type: bool, int, float
# or str), optional choices (a dropdown), minimum/maximum for numbers, help text. Shown in the Settings tab.
Setting = SettingSpec


class ExtensionError(ValueError):
    """A registration the app refuses (a bad route prefix, a duplicate name ...); raised inside `setup`, it
    marks the extension as failed with this message."""


class JobRefused(HookRefusal):
    """Raise it from a generation hook when the job cannot work as asked (a model made for another family):
    the job fails with this message (HTTP 422, an error in the UI) and the extension stays on."""


# The checkpoint a job runs on (`UNetCall.model`): name, family ("sd1", "sdxl", ...), unet_config (the
# UNet's diffusers config), device, dtype. Models an extension brings must fit it.
# (JobModel is imported from the engine's seam above and re-exported as part of this API.)


@dataclass(frozen=True)
class ControlNetInfo:
    """A file or folder of the ControlNet folder (`models/ControlNet`) as `Services.controlnet_models` lists
    it: `title` is "name [hash]" (sd-webui-controlnet's model titles), `family` the checkpoint family it is
    for ("sd1", "sd2", "sdxl", "flux"), `problem` why it cannot be used ("" when it can). Since 1.3:
    `union_modes`, the control types a union ControlNet takes (by index; empty for other ControlNets)."""

    title: str
    name: str
    family: str
    problem: str = ""
    union_modes: tuple[str, ...] = ()


def union_modes_of(found: Any) -> tuple[str, ...]:
    """A union ControlNet file's control types by index: its family's published names, then the indices the
    model embeds beyond them (empty for other ControlNets)."""
    from webui.models.families import family_named

    named = family_named(found.family).controlnet_union_modes[:found.union_modes]
    return (*named, *(str(index) for index in range(len(named), found.union_modes)))


class ControlNet:
    """A ControlNet loaded for one job's checkpoint (`Services.controlnet`): its residuals for a UNet call."""

    def __init__(self, title: str, module: Any, union_modes: tuple[str, ...] = ()):
        self.title = title
        self._module = module
        self.union_modes = union_modes   # since 1.3: a union ControlNet's control types, by index

    def residuals(self, call: "UNetCall", image: torch.Tensor, weight: float = 1.0,
                  control_mode: str = BALANCED, union_mode: str | int | None = None) -> "UNetResiduals":
        """The residuals for `call` of a control image (1 x 3 x H x W, values in [0, 1], any size: it is
        resized to the call's sample), scaled by `weight` and the control mode (one of CONTROL_MODES). The
        batch is the call's; with classifier-free guidance (cfg scale > 1) its first half is the negative.

        Since 1.3, transformer ControlNets (Flux.1): `call` is a transformer call (sample = packed latent tokens)
        and the residuals come one per double-stream block (`down`) and per single-stream block (`single`);
        `union_mode` is a union ControlNet's control type (a name of `union_modes` or its index), which such a
        model needs and other models refuse. JobRefused says what is wrong with a unit."""
        if is_transformer_controlnet(self._module):
            return self._transformer_residuals(call, image, weight, control_mode, union_mode)
        try:
            union_mode_index(union_mode, (), 0, self.title)   # UNet ControlNets take no control type
        except ValueError as error:
            raise JobRefused(str(error)) from None
        guided = float(getattr(call.request, "cfg_scale", 7.0)) > 1.0
        down, mid = unit_residuals(self._module, image, call.sample, call.timestep, call.encoder_hidden_states,
                                   call.extra, weight=weight, mode=control_mode, guided=guided)
        return UNetResiduals(tuple(down), mid)

    def _transformer_residuals(self, call: "UNetCall", image: torch.Tensor, weight: float, control_mode: str,
                               union_mode: str | int | None) -> "UNetResiduals":
        if control_mode != BALANCED:
            raise JobRefused(f"ControlNet {self.title!r}: control mode {control_mode!r} weighs the halves of a "
                             f"guided batch, which a transformer ControlNet's distilled-guidance model does not "
                             f"have; use {BALANCED!r}")
        if call.model is None:
            raise JobRefused(f"ControlNet {self.title!r} needs the job's checkpoint")
        from webui.models.families import family_named

        family = family_named(call.model.family)
        config = call.model.unet_config
        try:
            index = union_mode_index(union_mode, self.union_modes or family.controlnet_union_modes,
                                     self._union_count, self.title)
            double, single = transformer_unit_residuals(
                self._module, image, call.sample, call.timestep, call.encoder_hidden_states, call.extra,
                weight=weight, union_mode=index,
                blocks=(int(config.get("num_layers", 0)), int(config.get("num_single_layers", 0))),
                encode=call.model.encode_control)
        except ValueError as error:
            raise JobRefused(str(error)) from None
        return UNetResiduals(tuple(double), None, tuple(single))

    @property
    def _union_count(self) -> int:
        modes = getattr(self._module.config, "num_mode", None)
        return int(modes) if modes else 0


def in_control_window(call: "UNetCall", start: float, end: float) -> bool:
    """Whether a unit with starting/ending control step `start`/`end` (fractions of the pass) acts on this
    call: step / total_steps of the pass within [start, end], sd-webui-controlnet's rule."""
    return in_window(call.step, call.total_steps, start, end)


@dataclass(frozen=True)
class Caller:
    """Who sent a request to an extension's route or tab: jobs an extension queues for them carry this name,
    so they count against that user's queue bound and only they (or an admin) see and stop them."""

    name: str
    is_admin: bool


def caller_of(request: Any) -> Caller:
    """The logged-in caller of a FastAPI `Request` or a gradio `gr.Request` (the app's login covers every
    route, so a handler always has one); ExtensionError when the request carries none."""
    try:
        user = request_user(request)
    except NotAuthenticated as error:
        raise ExtensionError(str(error)) from None
    return Caller(user.name, user.is_admin)


def _user_of(caller: Caller | None) -> User | None:
    """The app's identity for a caller (its folders, queue bound and job ownership follow from it)."""
    return None if caller is None else User(caller.name, ADMIN if caller.is_admin else USER)


@dataclass(frozen=True)
class JobOutcome:
    """A finished generation job as an extension sees it."""

    images: list[Image.Image]
    infotexts: list[str]
    warnings: list[str]


class Services:
    """What an extension may ask of the running app. A thin, stable face over the app's services: job
    submission goes through the scheduler, so an extension's work waits its turn like a user's and is
    checked like a user's (values, limits, checkpoint names: a ValueError says what is wrong)."""

    def __init__(self, context: Any):
        self._context = context

    def checkpoint_titles(self) -> list[str]:
        """The checkpoints a user can pick, as the checkpoint dropdown shows them."""
        return list(self._context.models.checkpoint_titles())

    def submit_txt2img(self, request: Txt2ImgRequest, caller: Caller | None = None) -> str:
        """Queue a txt2img job (for `caller`, or as the app's own work); returns the job id."""
        return self._context.generation.submit_txt2img(request, owner=_user_of(caller)).job_id

    def submit_img2img(self, request: Img2ImgRequest, caller: Caller | None = None) -> str:
        """Queue an img2img / inpaint job; returns the job id."""
        return self._context.generation.submit_img2img(request, owner=_user_of(caller)).job_id

    def controlnet_models(self) -> list[ControlNetInfo]:
        """Everything in the ControlNet folder, usable or not (with the reason), by name."""
        from webui.models.controlnet_files import ControlNetFile

        store = self._context.controlnets
        if store is None:
            return []
        return [ControlNetInfo(title, found.name, found.family, "", union_modes_of(found))
                if isinstance(found, ControlNetFile)
                else ControlNetInfo(title, title.rsplit(" [", 1)[0], "", found) for title, found in store.scan()]

    def controlnet(self, name: str, model: JobModel) -> ControlNet:
        """The ControlNet `name` (title or name) built for the job's checkpoint `model` (kept in RAM between
        jobs). JobRefused when it is unknown, unusable or made for another family (naming both)."""
        from webui.models.controlnet_files import ControlNetFileError
        from webui.models.controlnet_store import UnknownControlNetError

        store = self._context.controlnets
        if store is None:
            raise JobRefused("this app has no ControlNet folder")
        try:
            found = store.find(name)
            module = model.controls.get(str(found.path))   # built in the job's checkout (add_control_models)
            if module is None:
                module = store.module_for(found, model.family, model.unet_config, model.name, model.device,
                                          model.dtype)
        except (ControlNetFileError, UnknownControlNetError) as error:
            raise JobRefused(str(error)) from None
        return ControlNet(f"{found.name}", module, union_modes_of(found))

    def annotator_folders(self) -> tuple[Path, ...]:
        """Since 1.4: where ControlNet annotator weights (lllyasviel/Annotators files) are read from,
        first: `<ControlNet folder>/annotators`, then sd-webui-controlnet's
        `extensions/sd-webui-controlnet/annotator/downloads` (its files sit in one folder per annotator)."""
        settings = self._context.settings
        return (settings.controlnet_folder / "annotators",
                settings.extensions_folder / "sd-webui-controlnet" / "annotator" / "downloads")

    def wait(self, job_id: str, timeout: float | None = None) -> JobOutcome:
        """Wait for a job this extension queued; raises the job's error, or TimeoutError."""
        job = self._context.scheduler.get(job_id)
        if job is None:
            raise ExtensionError(f"no job {job_id!r} is known")
        result = job.result(timeout)
        return JobOutcome(list(result.images), list(result.infotexts), list(result.warnings))


@dataclass(frozen=True)
class AppStarted:
    """Handed to `on_app_started` hooks once the server answers requests."""

    base_url: str            # where this server is reached locally, e.g. "http://127.0.0.1:7860"
    services: Services
    data_folder: Path        # a folder of the extension's own, for files it keeps between starts


AppStartedHook = Callable[[AppStarted], None]

# ---- ext-ui: UI tabs, JS/CSS and scripts ---------------------------------------------------------------

@dataclass(frozen=True)
class TabContext:
    """Handed to a tab's build function, inside the tab the app opened for it: create gradio components
    there. In event handlers, `caller_of(request)` (take a `gr.Request` argument) says who clicked."""

    services: Services
    extension: str           # the extension's name
    data_folder: Path        # the extension's own folder for files it keeps


TabBuilder = Callable[[TabContext], None]


def script_field(default: SettingValue, label: str = "", *, choices: Sequence[str] = (), minimum: float | None = None,
                 maximum: float | None = None, help: str = "", infotext: str = "") -> Any:
    """A field of a script's values dataclass with what its control shows: `x: int = api.script_field(3,
    "Rows", minimum=1, maximum=8)`. The default's type is the field's type (bool, int, float or str);
    `choices` makes a dropdown; `infotext` is the key under which the value is written into the images'
    infotext (default: "<script title> <field name>")."""
    return dataclasses.field(default=default, metadata={FIELD_META: {
        "label": label, "choices": tuple(choices), "minimum": minimum, "maximum": maximum, "help": help,
        "infotext": infotext}})


@dataclass(frozen=True)
class ScriptResult:
    """What a selectable script's run returns: its images with one infotext each, and a grid (shown and
    saved first, with the first image's infotext) or None."""

    images: list[Image.Image]
    infotexts: list[str]
    grid: Image.Image | None = None


@dataclass(frozen=True)
class ScriptContext:
    """Handed to a selectable script's run, inside the ONE queued job that runs the script on a worker.

    `request` is the tab's (or the API body's) request, already checked, its checkpoint pinned and the
    script's values recorded in its infotext fields: derive the requests you generate from it
    (`context.request.with_changes(prompt=...)`). `values` is an instance of the script's dataclass."""

    request: Txt2ImgRequest
    values: Any
    is_img2img: bool
    _generate: Callable[[Txt2ImgRequest], JobOutcome]
    _set_message: Callable[[str], None]
    _interrupted: Callable[[], bool]

    def generate(self, request: Txt2ImgRequest) -> JobOutcome:
        """Generate `request` now, on this job's worker (images are saved as the request says; no grid)."""
        return self._generate(request)

    def set_message(self, message: str) -> None:
        """The progress text the user sees, e.g. "Image 3 of 8"."""
        self._set_message(message)

    @property
    def interrupted(self) -> bool:
        """True once the user pressed Interrupt: return what you have."""
        return self._interrupted()


ScriptRunHook = Callable[[ScriptContext], ScriptResult]


@dataclass(frozen=True)
class ScriptUi:
    """Handed to a script's custom control builder, inside the script's group in a generation tab."""

    tab: str                 # "txt2img" or "img2img"
    elem_prefix: str         # prefix for elem_ids that are unique on the page


# Returns {field name: gradio component} for every field of the script's values dataclass.
ScriptUiBuilder = Callable[[ScriptUi], dict]


class ScriptHandle:
    """What `add_script` returns: the script's title, and for an always-on script its values in a request."""

    def __init__(self, definition: ScriptDefinition):
        self._definition = definition

    @property
    def title(self) -> str:
        return self._definition.title

    def values_of(self, request: Txt2ImgRequest) -> Any | None:
        """An always-on script's values (its dataclass) in a request that carries them, else None: read it
        in your generation hooks, whose contexts carry the request (`request.script_values[title]`)."""
        raw = request.script_values.get(self._definition.title)
        return self._definition.parse(raw) if raw is not None else None


def labelled_grid(images: Sequence[Image.Image], columns: int, column_labels: Sequence[str] = (),
                  row_labels: Sequence[str] = (), margin: int = 0) -> Image.Image:
    """The app's labelled grid (as the X/Y/Z plot draws it): images left to right, top to bottom, with a
    label above each column and left of each row (empty: no band), `margin` pixels between cells."""
    from webui.xyz.grid import draw_grid

    if columns < 1 or not images:
        raise ExtensionError("labelled_grid needs at least one image and one column")
    rows = -(-len(images) // columns)
    cells = list(images) + [None] * (rows * columns - len(images))
    size = (max(image.width for image in images), max(image.height for image in images))
    try:
        return draw_grid(cells, columns, rows, size, list(column_labels) or [""] * columns,
                         list(row_labels) or [""] * rows, margin=margin)
    except ValueError as error:
        raise ExtensionError(f"labelled_grid: {error}") from None



# ---- generation-time hooks (ext-gen) -------------------------------------------------------------------
# What the hooks of a running job receive. A job's hooks run on the worker thread that runs the job, in
# load order; tensors are on the job's device, in its dtype.

@dataclass(frozen=True)
class PromptExpansion:
    """Handed to `on_prompt_expansion` hooks before any seed is used. Return one prompt per image to draw
    (image i gets prompt i and seed `seed + i`; the number of images may differ from `image_count`), or
    None to leave the prompt alone. The first extension (in load order) that returns a list decides."""

    prompt: str
    negative_prompt: str
    image_count: int         # batch_count x batch_size
    seed: int                # the job's first seed (already fixed when the request asked for a random one)
    request: Txt2ImgRequest  # a Txt2ImgRequest or an Img2ImgRequest


PromptExpansionHook = Callable[[PromptExpansion], list[str] | None]


@dataclass(frozen=True)
class BeforeRequest:
    """Handed to `on_before_request` hooks before a job runs (before its checkpoint is loaded). Return a
    changed request of the same type (`request.with_changes(...)`), or None. A change that the app's
    checks refuse is dropped and the job's warnings say why."""

    request: Txt2ImgRequest


BeforeRequestHook = Callable[[BeforeRequest], Txt2ImgRequest | None]


@dataclass(frozen=True)
class ImageReady:
    """Handed to `on_after_image` hooks for each image, before its infotext is written and it is saved.
    Return a replacement image (what a detailer does) or None."""

    image: Image.Image
    index: int               # the image's position in the job
    seed: int
    prompt: str              # this image's own prompt (after prompt expansion)
    negative_prompt: str
    request: Txt2ImgRequest
    parameters: dict[str, Any]   # a copy of the image's infotext fields so far
    _inpaint: Callable[..., Image.Image] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    _added: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def set_parameter(self, key: str, value: Any) -> None:
        """Write `key: value` into this image's infotext (PNG Info and send-to read it back)."""
        if not is_valid_infotext_key(key):
            raise ExtensionError(f"set_parameter: {key!r} is not a usable infotext key (at least 2 characters: "
                                 "letters, digits, '_', spaces, '-' or '/', starting with a letter or digit)")
        self._added[key] = value

    def inpaint(self, image: Image.Image, mask: Image.Image, *, prompt: str | None = None,
                negative_prompt: str | None = None, denoising_strength: float = 0.4, steps: int | None = None,
                seed: int | None = None, mask_blur: int = 4, padding: int = 32,
                only_masked: bool = True) -> Image.Image:
        """Run an inpaint pass over `image` where `mask` is white, through the job's own model and worker,
        right now (no new job is queued): the job's prompt, sampler, steps and CFG unless given, this
        image's seed, "only masked" at the job's size by default. Returns the inpainted image; bad values
        raise ValueError."""
        changes: dict[str, Any] = {"denoising_strength": denoising_strength, "mask_blur": mask_blur,
                                   "inpaint_full_res": only_masked, "inpaint_full_res_padding": padding}
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt), ("steps", steps),
                            ("seed", seed)):
            if value is not None:
                changes[name] = value
        return self._inpaint(image, mask, changes)


AfterImageHook = Callable[[ImageReady], Image.Image | None]


@dataclass(frozen=True)
class BatchDone:
    """Handed to `on_after_batch` hooks after each batch (images as they will be saved)."""

    images: list[Image.Image]
    seeds: list[int]
    prompts: list[str]
    request: Txt2ImgRequest


AfterBatchHook = Callable[[BatchDone], None]


@dataclass(frozen=True)
class DenoisingStep:
    """Handed to `on_denoising_step` hooks after each denoising step. Return changed latents of the same
    shape (they replace the job's), or None."""

    latents: torch.Tensor
    step: int                # 0-based index of the step just done (hires fix continues the count)
    total_steps: int
    sigma: float             # the noise level of `latents` now (0 after the last step)
    request: Txt2ImgRequest


DenoisingStepHook = Callable[[DenoisingStep], torch.Tensor | None]


@dataclass(frozen=True)
class UNetCall:
    """One call of the UNet (classifier-free guidance doubles the batch: negative first, then positive).

    Since 1.1: `step` / `total_steps` place the call in its pass (txt2img, hires fix and img2img passes
    count apart; `total_steps` is 0 until the pass's first step ends), `extra` holds the UNet's other
    inputs (SDXL's `added_cond_kwargs`), `model` the checkpoint it belongs to. Since 1.2: `hires` is True
    for the calls of txt2img's hires-fix pass (a ControlNet unit's "Low res only" / "High res only")."""

    sample: torch.Tensor
    timestep: Any
    encoder_hidden_states: torch.Tensor
    request: Txt2ImgRequest
    step: int = 0
    total_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    model: JobModel | None = None
    hires: bool = False      # since 1.2: the call belongs to txt2img's hires-fix pass


@dataclass(frozen=True)
class UNetResiduals:
    """Residuals added to the UNet's skip connections (`down`, one per down-block output, as ControlNet
    produces them) and to its middle block (`mid`). Several extensions' residuals are summed."""

    down: tuple[torch.Tensor, ...] = ()
    mid: torch.Tensor | None = None
    # Since 1.3, for transformer calls (Flux): `down` holds one residual per double-stream block and `single` one
    # per single-stream block (tensors batch x tokens x width, like the call's sample).
    single: tuple[torch.Tensor, ...] = ()


UNetResidualsHook = Callable[[UNetCall], UNetResiduals | None]
# Since 1.2: the ControlNets (titles or names) a job's hooks will use, for its model state.
ControlModelsHook = Callable[[Txt2ImgRequest], "list[str] | tuple[str, ...]"]


@dataclass(frozen=True)
class ModelCall:
    """Handed to `wrap_model_call` hooks for each UNet call: call `call(...)` (the UNet, or the next
    wrapper) as often as you like, e.g. per tile, and return the noise prediction for `sample`."""

    sample: torch.Tensor
    timestep: Any
    encoder_hidden_states: torch.Tensor
    request: Txt2ImgRequest
    _next: Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor] = field(repr=False, compare=False,
                                                                             default=None)  # type: ignore[assignment]

    def call(self, sample: torch.Tensor | None = None, timestep: Any = None,
             encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """The model's prediction for these inputs (each defaults to this call's own)."""
        return self._next(self.sample if sample is None else sample, self.timestep if timestep is None else timestep,
                          self.encoder_hidden_states if encoder_hidden_states is None else encoder_hidden_states)


ModelCallWrapper = Callable[[ModelCall], torch.Tensor]


@dataclass(frozen=True)
class AttentionSetup:
    """Handed to `set_attention_processors` hooks when a job starts: the UNet's processors by name
    (diffusers' `attn_processors`). Return {name: processor} for those to replace during the job, or None;
    the previous ones are put back when the job ends."""

    processors: dict[str, Any]
    request: Txt2ImgRequest


AttentionProcessorsHook = Callable[[AttentionSetup], dict[str, Any] | None]


@dataclass(frozen=True)
class VaeCall:
    """Handed to `wrap_vae_decode` / `wrap_vae_encode` hooks. Decode: `tensor` is latents (already divided
    by the VAE's scaling factor) and the result pixels in [-1, 1]. Encode: `tensor` is pixels in [-1, 1] and
    the result the latent distribution's parameters (mean and log-variance stacked on the channel axis)."""

    tensor: torch.Tensor
    request: Txt2ImgRequest
    _next: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, compare=False,
                                                          default=None)  # type: ignore[assignment]

    def call(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """The VAE (or the next wrapper) on `tensor` (default: this call's own)."""
        return self._next(self.tensor if tensor is None else tensor)


VaeWrapper = Callable[[VaeCall], torch.Tensor]


@dataclass(frozen=True)
class ModelLoaded:
    """Handed to `on_model_loaded` hooks after a checkpoint is loaded or switched to."""

    name: str
    hash: str | None         # A1111's short hash (10 hex digits) once known
    family: str              # "sd1", "sd2", "sdxl", ...


ModelLoadedHook = Callable[[ModelLoaded], None]

@dataclass(frozen=True)
class NetworkItem:
    """One card of an extension's extra-network type in the Extra networks panel; clicking it puts
    `<kind:name:1>` in the prompt."""

    name: str
    description: str = ""
    preview: Path | None = None     # an image file shown on the card (a name tile when None)


NetworkItemsHook = Callable[[], list[NetworkItem]]


@dataclass(frozen=True)
class NetworkUse:
    """One `<kind:name:arg1:arg2...>` tag of the extension's kind in a prompt (or its negative prompt)."""

    name: str
    args: tuple[str, ...]
    negative: bool = False          # the tag was in the negative prompt


@dataclass(frozen=True)
class NetworkActivation:
    """Handed to a network type's `activate` hook before a job whose prompts use its tags runs (before
    the `on_before_request` hooks). Return a changed request (`request.with_changes(...)`) or None. The
    tags themselves never reach the text encoder, like A1111's."""

    request: Txt2ImgRequest
    uses: tuple[NetworkUse, ...]


NetworkActivateHook = Callable[[NetworkActivation], Txt2ImgRequest | None]

# The loaded model's scheduler config (a dict) in, a diffusers scheduler out.
SamplerFactory = Callable[[dict[str, Any]], Any]
# An X/Y/Z axis: the cell's request and one value of the axis in, the changed request out.
XyzAxisApply = Callable[[Txt2ImgRequest, Any], Txt2ImgRequest]


class ExtensionSetup:
    """Handed to an extension's `setup(ext)`: one registration method per hook."""

    def __init__(self, registry: ExtensionRegistry, record: ExtensionRecord, data_root: Path):
        self._registry = registry
        self._record = record
        self._data_root = data_root

    @property
    def name(self) -> str:
        """The extension's name from its manifest."""
        return self._record.name

    @property
    def folder(self) -> Path:
        """The extension's own folder (read its bundled files from here)."""
        return self._record.folder

    @property
    def data_folder(self) -> Path:
        """`<data>/extension-data/<name>/`: where the extension may keep files; created on first use."""
        folder = self._data_root / self._record.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def user_folder(self, name: str) -> Path:
        """`<data>/<name>/`: a folder of files the user keeps for extensions to read (e.g. `wildcards`); one
        plain name, not a folder the app itself uses (models, outputs, extensions, ...). Not created."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or "") or name.casefold() in APP_FOLDERS:
            raise ExtensionError(f"user_folder: {name!r} is not allowed (one plain name that is not one of "
                                 f"{', '.join(sorted(APP_FOLDERS))})")
        return self._data_root.parent / name

    def _add(self, hook: str, function: Callable[..., Any], returns: Any = None, payload: Any = None) -> None:
        if not callable(function):
            raise ExtensionError(f"{hook}: expected a function, got {type(function).__name__}")
        self._registry.register(Registration(self._record.name, hook, function, returns, payload))

    def add_setting(self, setting: Setting) -> None:
        """Declare a setting (shown in the Settings tab under the extension's name, kept across restarts)."""
        if not isinstance(setting, SettingSpec):
            raise ExtensionError(f"add_setting: expected an api.Setting, got {type(setting).__name__}")
        try:
            self._registry.settings.declare(self._record.name, setting)
        except SettingError as error:
            raise ExtensionError(f"add_setting: {error}") from None

    def setting(self, key: str) -> SettingValue:
        """The setting's current value (read at each call: a change in the Settings tab applies at once)."""
        return self._registry.settings.value(self._record.name, key)

    def on_app_started(self, hook: AppStartedHook) -> None:
        """Called once the server answers requests (after every extension's setup)."""
        self._add(APP_STARTED, hook, returns=type(None))

    def add_router(self, router: Any, prefix: str | None = None) -> None:
        """Serve a `fastapi.APIRouter`'s routes at `prefix` (default `/extensions/<name>`), behind the same
        login, limits and CSRF rules as the app's own API. Prefixes the app uses are refused."""
        from fastapi import APIRouter

        if not isinstance(router, APIRouter):
            raise ExtensionError(f"add_router: expected a fastapi.APIRouter, got {type(router).__name__}")
        prefix = prefix if prefix is not None else f"/extensions/{self._record.name}"
        if not _PREFIX.match(prefix) or any(prefix == reserved or prefix.startswith(reserved + "/")
                                           or reserved.startswith(prefix + "/") for reserved in RESERVED_PREFIXES):
            raise ExtensionError(f"add_router: prefix {prefix!r} is not allowed (use a path such as "
                                 f"'/extensions/{self._record.name}'; the app's own paths are "
                                 f"{', '.join(RESERVED_PREFIXES)})")
        self._add(ROUTER, lambda: router, payload=prefix)

    # ---- generation-time hooks (ext-gen) ---------------------------------------------------------------
    def on_prompt_expansion(self, hook: PromptExpansionHook) -> None:
        """Expand a job's prompt into one prompt per image before seeds are used (dynamic prompts)."""
        self._add(PROMPT_EXPANSION, hook, returns=(list, type(None)))

    def on_before_request(self, hook: BeforeRequestHook) -> None:
        """See (and possibly change) each request before its job runs."""
        self._add(BEFORE_REQUEST, hook, returns=(Txt2ImgRequest, type(None)))

    def on_after_image(self, hook: AfterImageHook) -> None:
        """Each image before it is saved: replace it, add infotext fields, run an inpaint pass."""
        self._add(AFTER_IMAGE, hook, returns=(Image.Image, type(None)))

    def on_after_batch(self, hook: AfterBatchHook) -> None:
        """After each batch of a job."""
        self._add(AFTER_BATCH, hook, returns=type(None))

    def on_denoising_step(self, hook: DenoisingStepHook) -> None:
        """After each denoising step, with the latents (may return changed ones)."""
        self._add(DENOISING_STEP, hook, returns=(torch.Tensor, type(None)))

    def add_unet_residuals(self, hook: UNetResidualsHook,
                           applies: Callable[[Txt2ImgRequest], bool] | None = None) -> None:
        """Extra down-block / mid-block residuals for each UNet call (what ControlNet adds). Since 1.1,
        `applies(request) -> bool` says whether the hook has work for a job: for a job where no hook applies
        the UNet is not wrapped at all (and SD3/Flux jobs get no note that UNet hooks do not reach them)."""
        if applies is not None and not callable(applies):
            raise ExtensionError("add_unet_residuals: applies must be a function of the request")
        self._add(UNET_RESIDUALS, hook, returns=(UNetResiduals, type(None)), payload=applies)

    def add_control_models(self, hook: ControlModelsHook) -> None:
        """Since 1.2: `hook(request)` names the ControlNets (titles or names) a job will use. They join the
        job's model state: the worker builds them for the checkpoint when it takes the job (a ControlNet of
        another family fails the job naming both), keeps them in RAM for the next jobs, and the state key
        differs from a job without them. `Services.controlnet` then hands back the module already built."""
        self._add(CONTROL_MODELS, hook, returns=(list, tuple))

    def wrap_model_call(self, hook: ModelCallWrapper) -> None:
        """Wrap each UNet call (tiled diffusion and the like); wrappers nest in load order."""
        self._add(MODEL_CALL, hook, returns=torch.Tensor)

    def set_attention_processors(self, hook: AttentionProcessorsHook) -> None:
        """Attention processors installed for each job and restored after it (regional prompting)."""
        self._add(ATTENTION_PROCESSORS, hook, returns=(dict, type(None)))

    def wrap_vae_decode(self, hook: VaeWrapper) -> None:
        """Wrap each VAE decode (tiled VAE)."""
        self._add(VAE_DECODE, hook, returns=torch.Tensor)

    def wrap_vae_encode(self, hook: VaeWrapper) -> None:
        """Wrap each VAE encode (tiled VAE)."""
        self._add(VAE_ENCODE, hook, returns=torch.Tensor)

    def on_model_loaded(self, hook: ModelLoadedHook) -> None:
        """After a checkpoint is loaded or switched to (on the worker that loaded it)."""
        self._add(MODEL_LOADED, hook, returns=type(None))

    def add_sampler(self, name: str, factory: SamplerFactory) -> None:
        """A sampler listed beside the built-in ones (UI, /sdapi/v1/samplers, X/Y/Z), built by
        `factory(scheduler_config)` each time a job uses it. A name already taken is refused."""
        from webui.generation.samplers import UnknownSamplerError, find_sampler

        if not isinstance(name, str) or not name.strip():
            raise ExtensionError("add_sampler: the name must be non-empty text")
        try:
            find_sampler(name)
        except UnknownSamplerError:
            pass
        else:
            raise ExtensionError(f"add_sampler: {name!r} is a built-in sampler's name")
        if any(row.payload == name for row in self._registry.rows(SAMPLER)):
            raise ExtensionError(f"add_sampler: another extension already added a sampler named {name!r}")
        self._add(SAMPLER, factory, returns=None, payload=name.strip())

    def add_xyz_axis(self, label: str, apply: XyzAxisApply, kind: str = "str",
                     choices: list[str] | None = None) -> None:
        """An X/Y/Z plot axis: `kind` "int", "float" or "str" (values as typed; numbers accept ranges like
        A1111's) or "choice" (one of `choices`); `apply(request, value)` returns the cell's request."""
        if kind not in ("int", "float", "str", "choice"):
            raise ExtensionError(f"add_xyz_axis: kind must be int, float, str or choice, not {kind!r}")
        if kind == "choice" and not choices:
            raise ExtensionError("add_xyz_axis: a choice axis needs its choices")
        if not isinstance(label, str) or not label.strip():
            raise ExtensionError("add_xyz_axis: the label must be non-empty text")
        self._add(XYZ_AXIS, apply, returns=Txt2ImgRequest, payload=(label.strip(), kind, tuple(choices or ())))

    # ---- ext-ui: UI tabs, JS/CSS and scripts ----------------------------------------------------------
    def add_tab(self, title: str, build: TabBuilder) -> None:
        """A tab after the app's tabs; `build(context)` creates its components (called once per page
        build). A build that raises switches the extension off and the UI is built without the tab."""
        if not isinstance(title, str) or not title.strip():
            raise ExtensionError("add_tab: the title must be non-empty text")
        self._add(TAB, build, returns=type(None), payload=title.strip())

    def add_javascript(self, path: str) -> None:
        """Load a JavaScript file of your folder in the page (`javascript/*.js` is loaded without asking)."""
        self._add_asset(JAVASCRIPT, path, ".js")

    def add_css(self, path: str) -> None:
        """Add a CSS file of your folder to the page (`style.css` is added without asking)."""
        self._add_asset(CSS, path, ".css")

    def _add_asset(self, hook: str, path: str, suffix: str) -> None:
        folder = self._record.folder.resolve()
        target = (folder / str(path)).resolve()
        if not target.is_relative_to(folder) or not target.is_file() or target.suffix != suffix:
            raise ExtensionError(f"{'add_javascript' if hook == JAVASCRIPT else 'add_css'}: {path!r} is not a "
                                 f"{suffix} file inside the extension's folder")
        self._add(hook, target.read_text, returns=str, payload=target)

    def add_script(self, title: str, values: type, run: ScriptRunHook | None = None, *, alwayson: bool = False,
                   txt2img: bool = True, img2img: bool = True, ui: ScriptUiBuilder | None = None,
                   read_args: Callable[[Any], dict] | None = None,
                   write_infotext: Callable[[Any], dict] | None = None,
                   read_infotext: Callable[[dict], dict] | None = None) -> ScriptHandle:
        """A script: in the Script dropdown (selectable: `run` makes the images) or always on (no `run`: your
        generation hooks read its values with `ScriptHandle.values_of`). `values` is a dataclass whose
        fields (all with defaults; see `script_field`) are the script's controls and its API arguments.

        Since 1.1, for argument and infotext formats that are not one value per field:
        `read_args(args) -> {field: value}` reads what clients send that is not a dict of field names (raise
        ValueError with the reason: a 422); `write_infotext(values) -> {key: text}` replaces the one pair per
        field in the images' infotext, and `read_infotext({key: text}) -> {field: value}` reads it back for
        PNG Info and paste (a field's `script_field(infotext=...)` key says which pair holds it)."""
        try:
            definition = define_script(self._record.name, title, values, alwayson=alwayson, txt2img=txt2img,
                                       img2img=img2img, run=run, ui=ui, read_args=read_args,
                                       write_infotext=write_infotext, read_infotext=read_infotext)
        except ScriptArgsError as error:
            raise ExtensionError(f"add_script: {error}") from None
        taken = {row.payload.title.casefold() for row in self._registry.rows(SCRIPT)}
        if definition.title.casefold() in taken:
            raise ExtensionError(f"add_script: a script titled {definition.title!r} exists already")
        self._add(SCRIPT, run if run is not None else _no_run, returns=ScriptResult, payload=definition)
        return ScriptHandle(definition)


    # ---- extra-network types ----------------------------------------------------------------------
    def add_network_type(self, kind: str, label: str, items: NetworkItemsHook, activate: NetworkActivateHook) -> None:
        """An extra-network type with its own prompt tag, `<kind:name:...>` (A1111's hypernetworks and the
        like): `items()` gives the cards of its tab in the Extra networks panel, `activate` sees the tags a
        job's prompts use and may change the request. The kind must be new (not `lora`/`lyco`, not
        another extension's): 2-32 lower-case letters, digits or '_', starting with a letter."""
        if not isinstance(kind, str) or not _NETWORK_KIND.match(kind) or kind in BUILT_IN_NETWORK_KINDS:
            raise ExtensionError(f"add_network_type: kind {kind!r} must be 2-32 lower-case letters, digits or '_' "
                                 f"and not one the app reads ({', '.join(sorted(BUILT_IN_NETWORK_KINDS))})")
        if any(row.payload[0] == kind for row in self._registry.rows(NETWORK_TYPE)):
            raise ExtensionError(f"add_network_type: another extension already added the kind {kind!r}")
        if not isinstance(label, str) or not label.strip():
            raise ExtensionError("add_network_type: the label must be non-empty text")
        if not callable(items):
            raise ExtensionError("add_network_type: items must be a function returning a list of NetworkItem")
        self._add(NETWORK_TYPE, activate, returns=(Txt2ImgRequest, type(None)), payload=(kind, label.strip(), items))


def _no_run(context: ScriptContext) -> ScriptResult:
    raise ExtensionError("an always-on script is not run from the Script dropdown")
