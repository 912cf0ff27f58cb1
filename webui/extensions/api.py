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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.registry import ExtensionRecord, ExtensionRegistry, Registration
from webui.extensions.script_values import FIELD_META, ScriptArgsError, ScriptDefinition, define_script
from webui.extensions.settings_store import SettingError, SettingSpec, SettingValue
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.security.identity import ADMIN, USER, NotAuthenticated, User, request_user

API_VERSION = "1.0.0"

__all__ = [
    "API_VERSION", "ExtensionSetup", "ExtensionError", "Services", "AppStarted", "AppStartedHook", "Caller",
    "caller_of", "Txt2ImgRequest", "Img2ImgRequest", "JobOutcome", "Setting", "SettingValue",
    # ext-ui: UI tabs, JS/CSS, scripts
    "TabContext", "TabBuilder", "script_field", "ScriptContext", "ScriptResult", "ScriptRunHook", "ScriptUi",
    "ScriptUiBuilder", "ScriptHandle", "labelled_grid",
]

# Paths the app serves itself; an extension's routes live elsewhere (by default under /extensions/<name>).
RESERVED_PREFIXES = ("/sdapi", "/api", "/gradio_api", "/login", "/logout", "/docs", "/openapi.json", "/file",
                     "/assets", "/static", "/config", "/theme", "/queue", "/upload", "/info", "/manifest")
_PREFIX = re.compile(r"^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+$")

# Hook names: the keys of the registry's table (strings so that the table is data).
APP_STARTED = "app_started"
ROUTER = "router"
TAB = "tab"
JAVASCRIPT = "javascript"
CSS = "css"
SCRIPT = "script"


# A setting an extension declares: key, label, default (its type is the setting's type: bool, int, float
# or str), optional choices (a dropdown), minimum/maximum for numbers, help text. Shown in the Settings tab.
Setting = SettingSpec


class ExtensionError(ValueError):
    """A registration the app refuses (a bad route prefix, a duplicate name ...); raised inside `setup`, it
    marks the extension as failed with this message."""


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
                   txt2img: bool = True, img2img: bool = True, ui: ScriptUiBuilder | None = None) -> ScriptHandle:
        """A script: in the Script dropdown (selectable: `run` makes the images) or always on (no `run`: your
        generation hooks read its values with `ScriptHandle.values_of`). `values` is a dataclass whose
        fields (all with defaults; see `script_field`) are the script's controls and its API arguments."""
        try:
            definition = define_script(self._record.name, title, values, alwayson=alwayson, txt2img=txt2img,
                                       img2img=img2img, run=run, ui=ui)
        except ScriptArgsError as error:
            raise ExtensionError(f"add_script: {error}") from None
        taken = {row.payload.title.casefold() for row in self._registry.rows(SCRIPT)}
        if definition.title.casefold() in taken:
            raise ExtensionError(f"add_script: a script titled {definition.title!r} exists already")
        self._add(SCRIPT, run if run is not None else _no_run, returns=ScriptResult, payload=definition)
        return ScriptHandle(definition)


def _no_run(context: ScriptContext) -> ScriptResult:
    raise ExtensionError("an always-on script is not run from the Script dropdown")
