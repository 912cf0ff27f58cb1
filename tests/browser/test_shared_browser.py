"""Two plain users in real Chromium on one server with accounts: each sees their own images (live preview,
gallery, Send to img2img), not the other's; closing the tab that pressed Generate stops its job."""

from __future__ import annotations

import time

import pytest
import requests

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path, set_number
from tests.conftest import start_server, stop_server, with_default_model
from webui.security.users import UserStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("shared-browser"), default_model_folder)
    store = UserStore(data / "users.json")
    store.add_user("boss", "boss-password-1", "admin")
    for name in ("ulla", "vera"):
        store.add_user(name, f"{name}-password-1", "user")
    running = start_server(data, "--api")
    yield running
    stop_server(running)


def log_in(browser, url: str, name: str):
    page = browser.new_context().new_page()
    page.set_default_timeout(120_000)
    page.goto(url + "/")
    page.fill("#login_username", name)
    page.fill("#login_password", f"{name}-password-1")
    page.click("#login_submit")
    page.wait_for_selector("#txt2img_prompt textarea")
    return page


def image_loaded(page, selector: str) -> bool:
    return page.evaluate(f"() => {{ const i = document.querySelector({selector!r}); "
                         "return !!i && i.complete && i.naturalWidth > 0; }")


def test_each_user_sees_their_own_images_and_a_closed_tab_stops_its_job(accounts_server):
    from playwright.sync_api import sync_playwright

    url = accounts_server.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        ulla = log_in(browser, url, "ulla")
        ulla.fill("#txt2img_prompt textarea", "a red circle on the left")
        for field, value in (("width", "64"), ("height", "64"), ("steps", "8")):
            set_number(ulla, f"#txt2img_{field} input[type=number]", value)
        set_number(ulla, "#txt2img_seed input", "77")
        ulla.click("#txt2img_generate")
        ulla.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 77')")
        ulla.wait_for_function("() => { const i = document.querySelector('#txt2img_gallery img'); "
                               "return !!i && i.complete && i.naturalWidth > 0; }")  # fetched through file=
        source = ulla.get_attribute("#txt2img_gallery img", "src")
        assert "/gradio_api/file=" in source
        assert ulla.request.get(source).status == 200

        # Send to img2img passes her gallery image back to the server as an input: hers, so accepted.
        ulla.click("#txt2img_send_to_img2img")
        ulla.wait_for_function("() => { const i = document.querySelector('#img2img_image img'); "
                               "return !!i && i.complete && i.naturalWidth > 0; }")

        vera = log_in(browser, url, "vera")
        assert vera.request.get(source).status == 404  # ulla's image, asked for with vera's session

        # A long generation; closing the tab that started it stops it.
        for field, value in (("steps", "150"), ("batch_count", "20")):
            set_number(vera, f"#txt2img_{field} input[type=number]", value)
        vera.click("#txt2img_generate")
        admin = ("boss", "boss-password-1")

        def state() -> dict:
            return requests.get(f"{url}/sdapi/v1/progress", auth=admin, timeout=30).json()["state"]

        deadline = time.monotonic() + 120
        while state().get("sampling_step", 0) < 1:
            assert time.monotonic() < deadline, "vera's generation did not start"
            time.sleep(0.2)
        vera.context.close()
        deadline = time.monotonic() + 60
        while state()["busy"]:
            assert time.monotonic() < deadline, "the job of the closed tab kept running"
            time.sleep(0.2)
        browser.close()
