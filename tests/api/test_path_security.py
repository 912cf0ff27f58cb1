"""Issue 14, items 1 and 7, against a real server: no request reads, lists, writes or deletes a file outside the
app's folders, answers differently for an existing and a missing outside path, or reaches the Hugging Face Hub.

Outside the data folder sits a sentinel folder with an image, a same-named secret `.txt` caption and `.json`
file (what `load_captions`/`save_captions` used to read and write), next to a path that does not exist; inside
`datasets/` two symlinks point at them. The walk calls EVERY named gradio endpoint that `/gradio_api/info`
lists and every `/sdapi/v1` route of the app's routers with path-like values in its string fields (the sentinel
and the missing path as absolute, `../` and URL-encoded forms, the symlinks, `~`): every free-text field at
once, each free-text field alone with valid values elsewhere (so the handler gets past its other checks), every
choice field at once (gradio must refuse what is not a choice), and each file parameter as a "file" that names
the sentinel's files on the server. Generation endpoints get 1 step at 64 px, so the walk takes a few minutes.
Afterwards the secrets never appeared in an answer, the outside world is byte-for-byte what it was, and each
answer for the sentinel equals the answer for the missing path once the typed path itself is blanked out.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import threading
import types
import typing
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, RunningServer, start_server, stop_server

FILE_COMPONENTS = {"Image", "Imageeditor", "File", "Gallery", "Video", "Audio", "Model3d"}
DEEP = 16  # enough `../` to climb from any folder of the app to / before walking down again
HUB_REPO = "someone/some-model"

pytestmark = pytest.mark.long  # the walk of every gradio endpoint takes about two minutes


@dataclass
class World:
    server: RunningServer
    base: Path           # holds the data folder, the sentinel and the (absent) missing path, nothing else
    data: Path
    sentinel: Path
    missing: Path
    secrets: tuple[str, ...]
    unlisted: str        # the name of a sentinel image no request names: it shows up only if the folder is listed
    hf_home: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory, default_model_folder) -> World:
    base = tmp_path_factory.mktemp("path-security")
    data = base / "data"
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    # Same-length names, so that no answer can differ just because the typed text is one character longer.
    sentinel, missing = base / "outside_present", base / "outside_missing"
    sentinel.mkdir()
    secret_text, secret_json = f"API_KEY={secrets.token_hex(12)}", f"TOKEN_{secrets.token_hex(12)}"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(sentinel / "sentinel_picture.png")
    (sentinel / "sentinel_picture.txt").write_text(secret_text)
    (sentinel / "sentinel_picture.json").write_text(json.dumps({"rank": 7, "token": secret_json}))
    unlisted = f"unlisted_{secrets.token_hex(8)}"
    Image.new("RGB", (64, 64), (30, 200, 30)).save(sentinel / f"{unlisted}.png")
    (sentinel / f"{unlisted}.txt").write_text(secret_text)
    (data / "datasets").mkdir()
    (data / "datasets" / "link_present").symlink_to(sentinel, target_is_directory=True)
    (data / "datasets" / "link_missing").symlink_to(missing, target_is_directory=True)
    hf_home = base / "hf-home"  # where a Hub download would land; must never appear
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("HF_HOME", str(hf_home))
        server = start_server(data, "--api")
    yield World(server, base, data, sentinel, missing, (secret_text, secret_json), unlisted, hf_home)
    stop_server(server)


# --------------------------------------------------------------------------------------------
# What "nothing outside changed" and "the same answer" mean
# --------------------------------------------------------------------------------------------


def outside_listing(world: World) -> dict[str, tuple]:
    """Every entry under the test's base folder except the data folder: kind, size, mtime and content hash."""
    listing = {}
    for path in sorted(world.base.rglob("*")):
        if path == world.data or world.data in path.parents:
            continue
        stat = path.lstat()
        if path.is_symlink():
            listing[str(path)] = ("link", os.readlink(path))
        elif path.is_dir():
            listing[str(path)] = ("dir",)
        else:
            listing[str(path)] = ("file", stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return listing


def root_listing() -> set[str]:
    """Top-level names of the server's working directory (the checkout): a relative write would land there."""
    return {path.name for path in ROOT.iterdir()} - {".pytest_cache", "__pycache__"}


def path_pairs(world: World) -> list[tuple[str, str]]:
    """(a path-like value naming the sentinel, the same value naming the missing path)."""
    present, absent = str(world.sentinel), str(world.missing)
    datasets, home = world.data / "datasets", Path.home()

    def forms(make) -> tuple[str, str]:
        return make(present), make(absent)

    return [
        forms(lambda p: p),
        forms(lambda p: p + "/sentinel_picture.txt"),
        forms(lambda p: p + "/sentinel_picture"),  # preset names get `.json` appended
        forms(lambda p: os.path.relpath(p, world.data)),
        forms(lambda p: os.path.relpath(p, datasets)),  # what a plain name in the dataset box is relative to
        forms(lambda p: "../" * DEEP + p.lstrip("/") + "/sentinel_picture"),
        (str(datasets / "link_present"), str(datasets / "link_missing")),
        ("link_present", "link_missing"),
        forms(lambda p: quote(p, safe="")),
        forms(lambda p: "~/" + os.path.relpath(p, home)),
    ]


def single_field_pairs(world: World, generates: bool = False) -> list[tuple[str, str]]:
    """The forms used when each field is tried alone, so the walk stays at a few minutes on 2 cores.

    A generation endpoint's text fields (prompts, X/Y/Z values) with valid values elsewhere start a real
    (1-step, 64 px) generation each time, so they get one pair; every form is still sent to all of their
    string fields at once.
    """
    pairs = path_pairs(world)
    return [pairs[0]] if generates else [pairs[0], pairs[5], pairs[7]]


def normalized(text: str, typed: str, world: World) -> str:
    """An answer with the path text itself, file hashes and numbers blanked out, and option lists dropped.

    Dropdown choices (`"choices": [...]` in an update, or listed when gradio refuses a value) list what the
    server holds, which grows as the walk saves presets or merges; the path oracle this compares for is in
    messages and values.
    """
    try:
        text = json.dumps(_drop_choices(json.loads(text)), sort_keys=True)
    except ValueError:
        pass
    text = re.sub(r" \[[0-9a-f]{10}\]", "", text)  # a checkpoint title gains its hash once something hashed it
    # The link names go first: an answer that lists every option shows a value an earlier probe stored
    # ("link_missing" in hello-tab.greeting), which must read the same whichever of the pair is typed now.
    typed = typed.replace("link_present", "<LINK>").replace("link_missing", "<LINK>")
    text = text.replace("link_present", "<LINK>").replace("link_missing", "<LINK>")
    for value in (typed, json.dumps(typed)[1:-1], repr(typed)[1:-1]):
        if value:
            text = text.replace(value, "<TYPED>")
    for path, mark in ((world.sentinel, "<OUT>"), (world.missing, "<OUT>")):
        for form in (str(path), os.path.realpath(path)):
            text = text.replace(form, mark)
    for name in ("outside_present", "outside_missing"):
        text = text.replace(name, "<OUT>")
    text = re.sub(r"[A-Za-z0-9+/]{120,}={0,2}", "<BASE64>", text)  # images in A1111 answers
    text = re.sub(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b", "<HASH>", text)
    return re.sub(r"\d+", "<N>", text)


def _drop_choices(value):
    if isinstance(value, dict):
        return {key: _drop_choices(item) for key, item in value.items() if key != "choices"}
    if isinstance(value, list):
        return [_drop_choices(item) for item in value]
    if isinstance(value, str):  # gradio's refusal of a value that is not a choice lists the choices
        return re.sub(r"is not in the list of choices: .*", "is not in the list of choices: <CHOICES>", value)
    return value


@dataclass
class Answer:
    kind: str   # "complete", "error" or an HTTP status
    data: str
    raw: str    # everything the server sent, to search for secrets


@dataclass
class Probe:
    """One question asked twice: `send(present)` and `send(absent)` must get the same answer."""

    where: str
    present: str
    absent: str
    send: Callable[[str], Answer]


class Walk:
    """Asks probes (a few at a time: each call mostly waits on the server), checks secrets and pairs.

    The two calls of one probe run one after the other on one thread, so an endpoint that changes state
    (saving a preset, merging) is compared with itself in the same state.
    """

    THREADS = 4  # the UI's gradio queue runs 4 events at once

    def __init__(self, world: World):
        self.world = world
        self._local = threading.local()
        self.mismatches: list[str] = []
        self.leaks: list[str] = []
        self.calls = 0

    @property
    def http(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def ask(self, probes: list[Probe], threads: int = THREADS) -> None:
        """`threads=1` for an endpoint whose answer shows state that its other probes change (the options)."""
        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(self._ask_one, probes))
        for probe, (present, absent, first_present) in zip(probes, answers):
            self._check(probe, present, absent)
            self._check_leaks(probe, probe.present, first_present)

    def _ask_one(self, probe: Probe) -> tuple[Answer, Answer, Answer]:
        """Present, then absent; when they differ, present once more: an endpoint whose first call changed
        state (switching extensions off: "X is off", then "Nothing changed") is compared in the new state,
        while an answer that depends on the path differs again."""
        first = present = probe.send(probe.present)
        absent = probe.send(probe.absent)
        if self._key(probe.present, present) != self._key(probe.absent, absent):
            present = probe.send(probe.present)
        return present, absent, first

    def _key(self, typed: str, answer: Answer) -> tuple[str, str]:
        return answer.kind, normalized(answer.data, typed, self.world)

    def _check(self, probe: Probe, present: Answer, absent: Answer) -> None:
        for typed, answer in ((probe.present, present), (probe.absent, absent)):
            self.calls += 1
            self._check_leaks(probe, typed, answer)
        first, second = self._key(probe.present, present), self._key(probe.absent, absent)
        if first != second:
            self.mismatches.append(f"{probe.where}: {probe.present!r} -> {first} but {probe.absent!r} -> {second}")

    def _check_leaks(self, probe: Probe, typed: str, answer: Answer) -> None:
        for secret in self.world.secrets:
            if secret in answer.raw:
                self.leaks.append(f"{probe.where} with {typed!r} answered the secret: {answer.raw[:300]}")
        if self.world.unlisted in answer.raw:
            self.leaks.append(f"{probe.where} with {typed!r} listed the sentinel folder: {answer.raw[:300]}")

    def assert_clean(self) -> None:
        assert self.leaks == [], "\n".join(self.leaks[:20])
        assert self.mismatches == [], "\n".join(self.mismatches[:20])


# --------------------------------------------------------------------------------------------
# gradio
# --------------------------------------------------------------------------------------------


def gradio_call(walk: Walk, name: str, data: list, session_hash: str | None = None) -> Answer:
    url = walk.world.server.url
    response = walk.http.post(f"{url}/gradio_api/call/{name}", json={"data": data, "session_hash": session_hash},
                              timeout=120)
    if response.status_code != 200:
        return Answer(str(response.status_code), response.text, response.text)
    stream = walk.http.get(f"{url}/gradio_api/call/{name}/{response.json()['event_id']}", timeout=300).text
    kind, payload = "none", ""
    for event, body in re.findall(r"event: (\w+)\ndata: (.*)", stream):
        if event in ("complete", "error"):
            kind, payload = event, body
    return Answer(kind, payload, stream)


def default_value(parameter: dict):
    """A valid value: tiny sizes/steps from the info's examples, defaults for choices, nothing for files."""
    component = parameter["component"]
    if component in FILE_COMPONENTS:
        return None
    if component in ("Slider", "Number"):
        return parameter.get("example_input")
    if parameter.get("parameter_has_default"):
        return parameter.get("parameter_default")
    return parameter.get("example_input")


def is_string(parameter: dict) -> bool:
    """Free text (a Textbox and the like): what a handler gets as typed."""
    return (parameter.get("python_type") or {}).get("type") == "str"


def is_choice(parameter: dict) -> bool:
    """A Dropdown/Radio value: gradio itself refuses anything that is not one of its choices."""
    return "enum" in (parameter.get("type") or {})


def batch_tab_selector(world: World) -> str:
    """The api name of the img2img Batch tab's select event (it sets the tab's mode state to "batch")."""
    config = requests.get(world.server.url + "/config", timeout=30).json()
    tab = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "img2img_batch_tab")
    return next(d["api_name"] for d in config["dependencies"] if [tab, "select"] in d["targets"])


def file_data(path: str) -> dict:
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def endpoint_probes(walk: Walk, name: str, parameters: list[dict], batch_select: str) -> list[Probe]:
    """Every way this walk asks one endpoint: all strings at once, each text field alone, files as server paths."""
    world = walk.world
    defaults = [default_value(parameter) for parameter in parameters]
    labels = [parameter.get("label") or parameter.get("parameter_name") for parameter in parameters]
    strings = [index for index, parameter in enumerate(parameters) if is_string(parameter)]
    choices = [index for index, parameter in enumerate(parameters) if is_choice(parameter)]
    texts = [index for index in strings if parameters[index]["component"] == "Textbox"]
    files = [index for index, parameter in enumerate(parameters) if parameter["component"] in FILE_COMPONENTS]
    batch = any((label or "").startswith("Input directory") for label in labels)
    generates = "Sampling steps" in labels

    def sender(indexes: list[int], wrap: Callable = lambda value: value) -> Callable[[str], Answer]:
        def send(value: str) -> Answer:
            data = [wrap(value) if index in indexes else default for index, default in enumerate(defaults)]
            session = None
            if batch:  # reach the Batch tab's folders: select that tab in this session first
                session = uuid.uuid4().hex
                gradio_call(walk, batch_select, [], session)
            return gradio_call(walk, name, data, session)
        return send

    probes = []
    if not strings and not files and not choices:  # still called: nothing it answers may hold a secret
        probes.append(Probe(f"/{name}", "", "", sender([])))
    if choices:
        probes += [Probe(f"/{name} (every choice)", present, absent, sender(choices))
                   for present, absent in path_pairs(world)[:1]]
    if strings:
        probes += [Probe(f"/{name} (every string)", present, absent, sender(strings))
                   for present, absent in path_pairs(world)]
    alone = [] if texts == strings and len(texts) == 1 else texts  # one text field: "every string" did it
    probes += [Probe(f"/{name} ({labels[index]!r} alone)", present, absent, sender([index]))
               for index in alone for present, absent in single_field_pairs(world, generates)]
    for index in files:  # an "upload" that names a file on the server instead
        wrap = (lambda path: [file_data(path)]) if parameters[index]["component"] == "File" else file_data
        probes += [Probe(f"/{name} ({labels[index]!r} as a server path)", str(world.sentinel / leaf),
                         str(world.missing / leaf), sender([index], wrap))
                   for leaf in ("sentinel_picture.png", "sentinel_picture.txt")]
    return probes


def test_every_gradio_endpoint_with_path_like_values(world):
    before, root_before = outside_listing(world), root_listing()
    endpoints = requests.get(world.server.url + "/gradio_api/info", timeout=30).json()["named_endpoints"]
    assert len(endpoints) > 50 and "/load_captions" in endpoints and "/save_captions" in endpoints
    batch_select = batch_tab_selector(world).lstrip("/")
    walk = Walk(world)
    for name, endpoint in endpoints.items():
        walk.ask(endpoint_probes(walk, name.lstrip("/"), endpoint["parameters"], batch_select))
    print(f"\ngradio endpoints walked ({len(endpoints)}, {walk.calls} calls): {' '.join(endpoints)}")
    walk.assert_clean()
    assert outside_listing(world) == before and not world.missing.exists()
    assert root_listing() == root_before
    assert requests.get(world.server.url + "/sdapi/v1/progress", timeout=30).status_code == 200  # still serving


# --------------------------------------------------------------------------------------------
# /sdapi/v1
# --------------------------------------------------------------------------------------------


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _string_fields(model) -> list[str]:
    """Fields of a pydantic body model that hold text (or lists of text)."""
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        arguments = set(typing.get_args(annotation)) - {type(None)}
        if annotation is str or arguments == {str} or (typing.get_origin(annotation) is list and arguments == {str}):
            names.append(name)
    return names


def _training_string_fields() -> list[str]:
    from webui.training.config import TrainingConfig

    hints = typing.get_type_hints(TrainingConfig)
    return [f.name for f in dataclasses.fields(TrainingConfig)
            if hints[f.name] is str or typing.get_origin(hints[f.name]) is tuple]


LIST_FIELDS = {"styles", "init_images", "sample_prompts", "target_modules"}


def route_table() -> dict[tuple[str, str], tuple[dict, list[str]]]:
    """(method, path) -> (a valid body, the fields that get path-like text) for every route that takes input."""
    from webui.api.sdapi import Img2ImgBody, OptionsBody, PngInfoBody, Txt2ImgBody
    from webui.api.jobs_api import ExtrasJobBody
    from webui.api.sdapi_extras import ExtrasBatchBody, ExtrasSingleBody

    tiny = {"prompt": "a red square", "steps": 1, "width": 64, "height": 64, "seed": 3, "subseed": 5,
            "sampler_name": "Euler"}
    training = {"method": "lora", "output_name": "walk", "dataset_dir": "no-such-dataset", "trigger_word": "sks",
                "class_word": "shape", "resolution": 64, "min_bucket_resolution": 32, "max_bucket_resolution": 128,
                "bucket_step": 32, "rank": 4, "max_train_steps": 2}
    overrides = ["override_settings.sd_model_checkpoint", "override_settings.sd_vae",
                 "override_settings.upscaler_for_img2img"]
    return {
        ("POST", "/sdapi/v1/txt2img"): (tiny, _string_fields(Txt2ImgBody) + overrides),
        ("POST", "/sdapi/v1/img2img"): ({**tiny, "init_images": [tiny_png()], "denoising_strength": 0.0},
                                        _string_fields(Img2ImgBody) + overrides),
        ("POST", "/sdapi/v1/options"): ({}, _string_fields(OptionsBody)),
        ("POST", "/sdapi/v1/png-info"): ({"image": tiny_png()}, _string_fields(PngInfoBody)),
        ("POST", "/sdapi/v1/extra-single-image"): ({"image": tiny_png(), "upscaler_1": "Lanczos"},
                                                   _string_fields(ExtrasSingleBody)),
        ("POST", "/sdapi/v1/extra-batch-images"): ({"imageList": [{"data": tiny_png(), "name": "a"}],
                                                    "upscaler_1": "Lanczos"}, _string_fields(ExtrasBatchBody)),
        ("POST", "/sdapi/v1/train"): (training, _training_string_fields()),
        ("POST", "/sdapi/v1/train/export"): ({"license": "mit"}, ["license"]),
        ("POST", "/sdapi/v1/train/presets"): ({"name": "walk", "config": {"method": "lora"}},
                                              ["name"] + [f"config.{name}" for name in _training_string_fields()]),
        # Path parameters ("{file}") get the value URL-encoded into the path.
        ("GET", "/sdapi/v1/train/exports/{name}/{file}"): ({}, ["{name}", "{file}"]),
        ("GET", "/sdapi/v1/train/presets"): ({}, []),  # `base_checkpoint` is matched against the catalog, never opened
        ("GET", "/sdapi/v1/progress"): ({}, []),  # its one query parameter is a bool
        ("POST", "/api/v1/jobs"): ({"kind": "train", "request": training},
                                   [f"request.{name}" for name in _training_string_fields()]),
        # a second body for the same route: "#<kind>" is dropped from the URL
        ("POST", "/api/v1/jobs#extras"): ({"kind": "extras", "request": {"image": tiny_png(), "upscaler_1": "Lanczos"}},
                                          [f"request.{name}" for name in _string_fields(ExtrasJobBody)]),
        ("GET", "/api/v1/jobs"): ({}, []),  # filters (state, kind, owner) name no files
        ("GET", "/api/v1/jobs/{job_id}/events"): ({}, []),  # `after` is a number
    }


def app_routes() -> list[tuple[str, str, bool]]:
    """(method, path, takes input) of every route the app's API routers define, read from the routers."""
    from fastapi.routing import APIRoute

    from webui.generation.server_options import ServerOptions
    from webui.api.jobs_api import build_jobs_router
    from webui.api.sdapi import build_api_router
    from webui.api.train_api import build_train_router
    from webui.security.limits import RequestLimits
    from webui.settings import Settings

    settings = Settings()  # while being built, the routers read only the settings and the request limits
    holder = types.SimpleNamespace(settings=settings, request_limits=RequestLimits.from_settings(settings))
    routes = []
    for router in (build_api_router(holder), build_train_router(holder), build_jobs_router(holder, ServerOptions())):
        for route in router.routes:
            if isinstance(route, APIRoute):
                takes_input = route.body_field is not None or bool(route.dependant.query_params)
                routes.extend((method, route.path, takes_input) for method in sorted(route.methods))
    return routes


def with_values(body: dict, fields: list[str], value: str) -> dict:
    changed = json.loads(json.dumps(body))
    for field in fields:  # "override_settings.sd_vae", "request.dataset_dir": a field inside an object
        *parents, leaf = field.split(".")
        target = changed
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = [value] if leaf in LIST_FIELDS else value
    return changed


def test_every_sdapi_route_with_path_like_values(world):
    before, root_before = outside_listing(world), root_listing()
    table, routes = route_table(), app_routes()
    untested = [(method, path) for method, path, takes_input in routes if takes_input and (method, path) not in table]
    assert untested == [], f"routes that take input but are not in this walk's table: {untested}"
    walk = Walk(world)

    def sender(method: str, path: str, base: dict, fields: list[str]) -> Callable[[str], Answer]:
        def send(value: str) -> Answer:
            body_fields = [field for field in fields if not field.startswith("{")]
            body = with_values(base, body_fields, value) if method == "POST" else None
            url_path = path.split("#")[0]
            for field in fields:
                if field.startswith("{"):
                    url_path = url_path.replace(field, quote(value, safe=""))
            response = walk.http.request(method, world.server.url + url_path, json=body, timeout=300)
            return Answer(str(response.status_code), response.text, response.text)
        return send

    variants = [(method, path, True) for method, path in table if "#" in path]
    for method, path, _ in routes + variants:
        base, fields = table.get((method, path), ({}, []))
        probes = [] if fields else [Probe(f"{method} {path}", "", "", sender(method, path, base, []))]
        probes += [Probe(f"{method} {path} (every string)", present, absent, sender(method, path, base, fields))
                   for present, absent in (path_pairs(world) if fields else [])]
        probes += [Probe(f"{method} {path} ({field} alone)", present, absent, sender(method, path, base, [field]))
                   for field in fields
                   for present, absent in single_field_pairs(world, generates=path.endswith("2img"))]
        # POST /options answers with every option: probes of it run one at a time, so no probe's answer shows
        # a value another probe is storing at that moment.
        walk.ask(probes, threads=1 if (method, path) == ("POST", "/sdapi/v1/options") else Walk.THREADS)
    print(f"\n/sdapi/v1 routes walked: {' '.join(f'{m} {p}' for m, p, _ in routes + variants)} ({walk.calls} calls)")
    walk.assert_clean()
    assert outside_listing(world) == before and not world.missing.exists()
    assert root_listing() == root_before


def test_gradios_file_route_serves_nothing_outside_its_own_cache(world):
    """`/gradio_api/file=<path>` is gradio's own path-taking route: it must refuse the sentinel like a missing file."""
    walk = Walk(world)

    def fetch(path: str) -> Answer:
        response = walk.http.get(f"{world.server.url}/gradio_api/file={path}", timeout=60)
        return Answer(str(response.status_code), response.text, response.text)

    probes = [Probe("GET /gradio_api/file=", present, absent, fetch) for present, absent in path_pairs(world)]
    probes += [Probe("GET /gradio_api/file=", str(world.sentinel / leaf), str(world.missing / leaf), fetch)
               for leaf in ("sentinel_picture.png", "sentinel_picture.json")]
    probes.append(Probe("GET /gradio_api/file= (the server's own files)", str(ROOT / "launch.py"),
                        str(ROOT / "launch.missing"), fetch))
    walk.ask(probes)
    walk.assert_clean()
    assert fetch(str(world.sentinel / "sentinel_picture.txt")).kind == "403"


# --------------------------------------------------------------------------------------------
# The Hub (item 7): refused with 404 and the folder to use, nothing downloaded
# --------------------------------------------------------------------------------------------


def test_a_hub_repo_id_checkpoint_is_404_naming_the_checkpoint_folder_and_nothing_is_fetched(world):
    url = world.server.url + "/sdapi/v1"
    loaded = requests.get(url + "/options", timeout=30).json()["sd_model_checkpoint"]
    answers = [
        requests.post(url + "/options", json={"sd_model_checkpoint": HUB_REPO}, timeout=60),
        requests.post(url + "/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                              "override_settings": {"sd_model_checkpoint": HUB_REPO}}, timeout=60),
        requests.post(url + "/img2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                              "init_images": [tiny_png()],
                                              "override_settings": {"sd_model_checkpoint": HUB_REPO}}, timeout=60),
    ]
    for response in answers:
        assert response.status_code == 404, response.text
        detail = response.json()["detail"]
        assert HUB_REPO in detail and "models/Stable-diffusion" in detail and "--allow-hub" in detail
    assert requests.get(url + "/options", timeout=30).json()["sd_model_checkpoint"] == loaded  # still loaded
    checkpoints = world.data / "models" / "Stable-diffusion"
    assert not (checkpoints / HUB_REPO.replace("/", "--")).exists()
    assert not world.hf_home.exists()  # no Hub cache was even created
    assert not (world.data / "cache" / "huggingface").exists()


def test_the_train_tab_refuses_a_hub_caption_model_and_the_hub_upload_without_allow_hub(world):
    walk = Walk(world)
    info = requests.get(world.server.url + "/gradio_api/info", timeout=30).json()["named_endpoints"]

    def call_with(name: str, **by_label) -> Answer:
        parameters = info[f"/{name}"]["parameters"]
        data = [by_label.get(p.get("label"), default_value(p)) for p in parameters]
        return gradio_call(walk, name, data)

    caption_label = next(p["label"] for p in info["/autocaption"]["parameters"] if p["label"].startswith("Captioning"))
    captioning = call_with("autocaption", **{caption_label: "Salesforce/blip-image-captioning-base",
                                             "Dataset folder": "link_present"})
    assert captioning.kind == "error" and "datasets/" in captioning.data  # the folder is refused first
    (world.data / "datasets" / "walk-set").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64)).save(world.data / "datasets" / "walk-set" / "one.png")
    captioning = call_with("autocaption", **{caption_label: "Salesforce/blip-image-captioning-base",
                                             "Dataset folder": "walk-set", "Caption template": "{trigger}, a {class}"})
    assert captioning.kind == "error" and "--allow-hub" in captioning.data, captioning.raw
    assert not (world.data / "datasets" / "walk-set" / "one.txt").exists()
    upload = call_with("upload_files", **{"Hub repo id (user/name)": "someone/walk", "Hugging Face token (write)": "hf_x"})
    assert upload.kind == "error" and "--allow-hub" in upload.data, upload.raw
    assert not world.hf_home.exists()
