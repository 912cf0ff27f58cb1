"""Issue #14's last gaps, against real servers: each user's own outputs and datasets, and state that survives
a restart.

One server with accounts: `boss` (admin), `anna` and `ben` (plain users), each with an API token. Anna builds a
dataset through the Train tab's upload, captions it, checks it, batch-processes it and generates; Ben then tries
to list, read, write and batch-process her folders by every spelling, over the UI's gradio calls and the HTTP
API, and must get exactly the answer a folder that does not exist gets. An admin still reaches everything, and a
server without accounts keeps A1111's `outputs/txt2img-images/` layout. Last, the server restarts: Anna's login
cookie still works, her image is still hers to fetch, and still not Ben's.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.conftest import RunningServer, start_server, stop_server, with_default_model
from webui.security.users import UserStore

USERS = {"boss": "admin", "anna": "user", "ben": "user"}
FILE_META = {"_type": "gradio.FileData"}


class Folks:
    """The running server and each user's API token (the server object is replaced by a restart)."""

    def __init__(self, server: RunningServer, tokens: dict[str, str]):
        self.server, self.tokens = server, tokens
        self.info = self.get("/gradio_api/info", "boss").json()

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str, **kwargs) -> requests.Response:
        return requests.get(self.server.url + path, headers=self.headers(user), timeout=60, **kwargs)

    def post(self, path: str, user: str, **kwargs) -> requests.Response:
        return requests.post(self.server.url + path, headers=self.headers(user), timeout=600, **kwargs)

    def call(self, user: str, name: str, data: list, session: str | None = None,
             headers: dict[str, str] | None = None) -> tuple[str, str]:
        """(final event, its data) of a gradio endpoint, called as gradio's HTTP client does."""
        headers = headers if headers is not None else self.headers(user)
        started = requests.post(f"{self.server.url}/gradio_api/call/{name}", json={"data": data, "session_hash": session},
                                headers=headers, timeout=60)
        if started.status_code != 200:
            return str(started.status_code), started.text
        stream = requests.get(f"{self.server.url}/gradio_api/call/{name}/{started.json()['event_id']}",
                              headers=headers, timeout=600).text
        final = [event for event in re.findall(r"event: (\w+)\ndata: (.*)", stream) if event[0] in ("complete", "error")]
        return final[-1] if final else ("none", stream)

    def values(self, name: str, **by_label) -> list:
        """Every input of an endpoint: its defaults (the form as it loads), 64 px and 1 step, and `by_label` overrides (a key is
        the label or its start: "Input directory" for "Input directory (in datasets/ or outputs/)")."""
        values = []
        for parameter in self.info["named_endpoints"][f"/{name}"]["parameters"]:
            label = parameter.get("label") or ""
            key = label if label in by_label else next((k for k in by_label if label.startswith(k)), None)
            if key is not None:
                values.append(by_label[key])
            elif label in ("Width", "Height"):
                values.append(64)
            elif label == "Sampling steps":
                values.append(1)
            elif parameter.get("parameter_has_default"):
                values.append(parameter.get("parameter_default"))
            elif parameter["component"] in ("Image", "Imageeditor", "File", "Gallery"):
                values.append(None)
            else:
                values.append(parameter.get("example_input"))
        return values

    def upload(self, user: str, content: bytes, name: str) -> str:
        answer = self.post("/gradio_api/upload", user, files={"files": (name, content, "image/png")})
        assert answer.status_code == 200, answer.text
        return answer.json()[0]

    def batch(self, user: str, input_folder: str, output_folder: str = "") -> tuple[str, str]:
        """The img2img Batch tab: select the tab in a session (it sets the mode), then press Generate."""
        config = self.get("/config", user).json()
        tab = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "img2img_batch_tab")
        select = next(d["api_name"] for d in config["dependencies"] if [tab, "select"] in d["targets"])
        session = uuid.uuid4().hex
        assert self.call(user, select, [], session)[0] == "complete"
        data = self.values("img2img", **{"Input directory": input_folder, "Output directory": output_folder,
                                         "Inpaint batch mask directory": "",
                                         "Denoising strength": 0.1})
        return self.call(user, "img2img", data, session)


@pytest.fixture(scope="module")
def folks(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("user-folders"), default_model_folder)
    store = UserStore(data / "users.json")
    tokens = {}
    for name, role in USERS.items():
        store.add_user(name, f"{name}-password-1", role)
        tokens[name] = store.create_token(name, "tests")
    group = Folks(start_server(data, "--api"), tokens)
    yield group
    stop_server(group.server)


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def file_value(path: str) -> dict:
    return {"path": path, "orig_name": Path(path).name, "meta": FILE_META}


def blanked(answer: tuple[str, str], typed: str) -> tuple[str, str]:
    """An answer with the typed path taken out, to compare the answers for two different paths."""
    return answer[0], answer[1].replace(json.dumps(typed)[1:-1], "<typed>").replace(typed, "<typed>")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def annas_dataset(folks) -> Path:
    """Anna uploads two pictures into a dataset named `cats` through the Train tab and captions one."""
    uploads = [folks.upload("anna", png(color), f"{color}.png") for color in ("red", "blue")]
    kind, payload = folks.call("anna", "upload_images", [[file_value(path) for path in uploads], "cats", ".txt"])
    assert kind == "complete", payload
    folder = Path(json.loads(payload)[0])
    assert folder == (folks.data / "datasets" / "users" / "anna" / "cats").resolve()
    assert sorted(path.name for path in folder.iterdir()) == ["blue.png", "red.png"]
    rows = {"headers": ["file", "caption"], "data": [["red.png", "a red cat"], ["blue.png", ""]], "metadata": None}
    kind, payload = folks.call("anna", "save_captions", ["cats", rows, ".txt"])
    assert kind == "complete" and "Saved 1 caption file" in payload, payload
    assert (folder / "red.txt").read_text().strip() == "a red cat"
    return folder


def test_a_user_lists_captions_and_checks_their_own_dataset_by_its_plain_name(folks, annas_dataset):
    kind, payload = folks.call("anna", "load_captions", ["cats", ".txt"])
    assert kind == "complete" and "a red cat" in payload and "blue.png" in payload, payload
    kind, payload = folks.call("anna", "check", folks.values("check", **{"Dataset folder": "cats", "Output name": "cat-check"}))
    assert kind == "complete" and "2 image" in payload, payload


def test_another_user_cannot_list_read_or_write_that_dataset_by_any_spelling(folks, annas_dataset):
    before = tree(folks.data / "datasets")
    missing = str(folks.data / "datasets" / "users" / "anna" / "dogs")
    spellings = [str(annas_dataset), "../anna/cats", "../../users/anna/cats", f"{annas_dataset}/../cats"]
    rows = {"headers": ["file", "caption"], "data": [["red.png", "overwritten"]], "metadata": None}
    for spelling in spellings:
        listed = folks.call("ben", "load_captions", [spelling, ".txt"])
        assert listed[0] == "error" and "red.png" not in listed[1] and "a red cat" not in listed[1], listed
        assert blanked(listed, spelling) == blanked(folks.call("ben", "load_captions", [missing, ".txt"]), missing)
        assert "users/ben/" in listed[1]  # the refusal names where Ben's own datasets are
        written = folks.call("ben", "save_captions", [spelling, rows, ".txt"])
        assert blanked(written, spelling) == blanked(folks.call("ben", "save_captions", [missing, rows, ".txt"]), missing)
        checked = folks.call("ben", "check", folks.values("check", **{"Dataset folder": spelling, "Output name": "cat-check"}))
        assert checked[0] == "error" and "2 image" not in checked[1], checked
    # A relative name is Ben's own folder: "cats" is not Anna's, it is a dataset Ben does not have.
    own = folks.call("ben", "load_captions", ["cats", ".txt"])
    assert own[0] == "error" and "red.png" not in own[1], own
    # Uploading under the same output name lands in Ben's folder, not in Anna's.
    kind, payload = folks.call("ben", "upload_images", [[file_value(folks.upload("ben", png("green"), "g.png"))],
                                                        "cats", ".txt"])
    assert kind == "complete" and Path(json.loads(payload)[0]) == (folks.data / "datasets/users/ben/cats").resolve()
    after = tree(folks.data / "datasets")
    assert {k: v for k, v in after.items() if not k.startswith("users/ben/")} == before


def test_the_train_api_refuses_another_users_dataset_exactly_like_a_missing_one(folks, annas_dataset):
    def train(user: str, dataset: str) -> requests.Response:
        return folks.post("/sdapi/v1/train", user, json={"method": "lora", "output_name": "bens-run", "rank": 4,
                                                          "dataset_dir": dataset, "max_train_steps": 1})

    missing = str(folks.data / "datasets" / "users" / "anna" / "dogs")
    refused_missing = train("ben", missing)
    assert refused_missing.status_code == 422
    for spelling in (str(annas_dataset), "../anna/cats"):
        refused = train("ben", spelling)
        assert refused.status_code == 422
        assert refused.json()["detail"].replace(spelling, "<typed>") == \
            refused_missing.json()["detail"].replace(missing, "<typed>")
    assert folks.get("/sdapi/v1/train/progress", "ben").json()["state"] == "idle"  # nothing was queued


def test_batch_img2img_works_in_the_users_own_folders_and_refuses_anothers(folks, annas_dataset):
    kind, payload = folks.batch("anna", "cats")
    assert kind == "complete", payload
    annas_outputs = folks.data / "outputs" / "users" / "anna"
    assert sorted(path.name for path in (annas_outputs / "img2img-batch").iterdir()) == ["blue.png", "red.png"]
    missing_input = str(folks.data / "datasets" / "users" / "anna" / "dogs")
    refused_input = folks.batch("ben", missing_input)
    assert refused_input[0] == "error"
    for spelling in (str(annas_dataset), "../anna/cats", str(annas_outputs / "img2img-batch")):
        answer = folks.batch("ben", spelling)
        assert blanked(answer, spelling) == blanked(refused_input, missing_input), answer
    # Ben's own input, written into Anna's output folder: refused, nothing written there.
    (folks.data / "datasets" / "users" / "ben" / "mine").mkdir(parents=True)
    (folks.data / "datasets" / "users" / "ben" / "mine" / "b.png").write_bytes(png("yellow"))
    before = tree(folks.data / "outputs")
    target = str(annas_outputs / "img2img-batch")
    into_annas = folks.batch("ben", "mine", target)
    missing_output = str(annas_outputs / "nothing-here")
    assert blanked(into_annas, target) == blanked(folks.batch("ben", "mine", missing_output), missing_output)
    assert into_annas[0] == "error" and tree(folks.data / "outputs") == before
    # An admin keeps the whole folders: Anna's dataset by its full path, results in outputs/ itself.
    kind, payload = folks.batch("boss", "users/anna/cats", "boss-batch")
    assert kind == "complete", payload
    assert sorted(path.name for path in (folks.data / "outputs" / "boss-batch").iterdir()) == ["blue.png", "red.png"]


def test_saved_images_go_to_the_users_folder_and_an_admins_keep_a1111s_layout(folks):
    day = time.strftime("%Y-%m-%d")
    for user, folder in (("anna", folks.data / "outputs/users/anna/txt2img-images" / day),
                         ("boss", folks.data / "outputs/txt2img-images" / day)):
        answer = folks.post("/sdapi/v1/txt2img", user, json={"prompt": "a red circle", "steps": 1, "width": 64,
                                                             "height": 64, "seed": 4242, "save_images": True})
        assert answer.status_code == 200, answer.text
        assert list(folder.glob("*-4242.png")), f"{user}'s image is not in {folder}"
    assert not list((folks.data / "outputs" / "users" / "ben").glob("**/*.png"))
    # Ben cannot batch-process Anna's saved generations either.
    annas = str(folks.data / "outputs/users/anna/txt2img-images" / day)
    assert folks.batch("ben", annas)[0] == "error"


def test_identical_uploads_share_a_cache_folder_but_not_each_others_file_names(folks):
    content = png("purple")
    annas = folks.upload("anna", content, "annas-private-name.png")
    bens = folks.upload("ben", content, "ben.png")
    assert os.path.dirname(annas) == os.path.dirname(bens)  # gradio names the folder by the bytes
    assert folks.get("/gradio_api/file=" + annas, "anna").status_code == 200
    assert folks.get("/gradio_api/file=" + bens, "ben").status_code == 200
    guessed = folks.get("/gradio_api/file=" + annas, "ben")
    never = folks.get("/gradio_api/file=" + os.path.join(os.path.dirname(annas), "no-such-name.png"), "ben")
    assert guessed.status_code == never.status_code == 404 and guessed.text == never.text
    # The same bytes under the same name are one file, now recorded for both; each already holds its bytes.
    same_for_ben = folks.upload("ben", content, "annas-private-name.png")
    assert same_for_ben == annas and folks.get("/gradio_api/file=" + annas, "ben").content == content


def test_without_accounts_saved_images_keep_a1111s_layout(server):
    day = time.strftime("%Y-%m-%d")
    folder = server.data_dir / "outputs" / "txt2img-images" / day
    answer = requests.post(server.url + "/sdapi/v1/txt2img", json={"prompt": "a blue square", "steps": 1, "width": 64,
                                                                  "height": 64, "seed": 5151, "save_images": True},
                           timeout=600)
    assert answer.status_code == 200, answer.text
    assert list(folder.glob("*-5151.png")) and not (server.data_dir / "outputs" / "users").exists()


# Last: it restarts the module's server.
def test_a_login_and_whose_files_are_whose_survive_a_restart(folks):
    login = requests.post(folks.server.url + "/login", data={"username": "anna", "password": "anna-password-1"},
                          allow_redirects=False, timeout=60)
    assert login.status_code == 303
    cookie = {"Cookie": f"sdstudio_session={login.cookies['sdstudio_session']}"}
    kind, payload = folks.call("anna", "txt2img", folks.values("txt2img", Seed=77), headers=cookie)
    assert kind == "complete", payload
    image = json.loads(payload)[0][0]["image"]["path"]  # Anna's gallery image, in gradio's cache

    def fetch(headers: dict[str, str]) -> requests.Response:
        return requests.get(folks.server.url + "/gradio_api/file=" + image, headers=headers, timeout=60)

    assert fetch(cookie).status_code == 200
    refused = fetch(folks.headers("ben"))
    assert refused.status_code == 404

    stop_server(folks.server)
    folks.server = start_server(folks.data, "--api")

    assert requests.get(folks.server.url + "/sdapi/v1/progress", timeout=60).status_code == 401  # not an open server
    assert requests.get(folks.server.url + "/sdapi/v1/progress", headers=cookie, timeout=60).status_code == 200
    assert fetch(cookie).status_code == 200 and fetch(cookie).content == Path(image).read_bytes()
    after = fetch(folks.headers("ben"))
    assert (after.status_code, after.text) == (refused.status_code, refused.text)
    assert fetch(folks.headers("boss")).status_code == 200
    # Logging out still ends the session for good.
    out = requests.post(folks.server.url + "/logout", headers={**cookie, "Origin": folks.server.url},
                        allow_redirects=False, timeout=60)
    assert out.status_code == 303
    assert requests.get(folks.server.url + "/sdapi/v1/progress", headers=cookie, timeout=60).status_code == 401
