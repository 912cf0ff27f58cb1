"""Extensions in a real headless Chromium (issue 16, ext-ui): the Settings tab changes an extension's
setting and the app's own option and both survive a restart; choosing the Prompt matrix script shows its
controls and generates a labelled grid whose parameters paste back into the script's controls; an
extension's tab appears with its stylesheet and page script, and a tab whose build crashes is left out."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator

import pytest
import requests

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path, set_number
from tests.conftest import RunningServer, start_server, stop_server, with_default_model

pytestmark = pytest.mark.browser

BROKEN_TAB = '''
from webui.extensions import api

def build(context):
    import gradio as gr
    gr.Markdown("half built", elem_id="broken_tab_text")
    raise RuntimeError("this tab cannot be built")

def setup(ext):
    ext.add_tab("Broken tab", build)
'''


class Server:
    """The module's server, which a test may restart on the same data folder."""

    def __init__(self, running: RunningServer):
        self.running = running

    def restart(self) -> None:
        stop_server(self.running)
        self.running = start_server(self.running.data_dir)


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder) -> Iterator[Server]:
    data = with_default_model(tmp_path_factory.mktemp("ext-browser"), default_model_folder)
    folder = data / "extensions" / "broken-tab"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text('name = "broken-tab"\nversion = "0.1.0"\napi = ">=1.0, <2"\n')
    (folder / "extension.py").write_text(textwrap.dedent(BROKEN_TAB))
    server = Server(start_server(data))
    yield server
    stop_server(server.running)


def open_page(playwright, url: str):
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1600, "height": 1200})
    page.set_default_timeout(120_000)
    page.goto(url + "/")
    page.wait_for_selector("#txt2img_prompt textarea")
    return browser, page


@pytest.fixture
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


def open_tab(page, title: str) -> None:
    page.click(f"button[role=tab]:has-text('{title}')")


def open_settings(page) -> None:
    """The Settings tab, once the page load filled in the current values (it then shows Apply)."""
    open_tab(page, "Settings")
    page.wait_for_selector("#settings_apply", state="visible")


def text_box(page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"{dropdown} [role=option][aria-label='{option}']")


def test_the_settings_tab_changes_settings_that_survive_a_restart(served, playwright):
    browser, page = open_page(playwright, served.running.url)
    open_settings(page)
    greeting = text_box(page, "setting_hello-tab_greeting")
    assert greeting.input_value() == "Hello"
    greeting.fill("Howdy")
    # A VAE that is not installed: refused by name, and nothing else is applied either.
    page.fill("#setting_sd_vae_default input", "no-such-vae.safetensors")
    page.press("#setting_sd_vae_default input", "Enter")
    page.click("#settings_apply")
    page.wait_for_selector("text=Nothing was applied. SD Studio:")
    assert requests.get(f"{served.running.url}/extensions/hello-tab/greeting", timeout=30).json() == {
        "greeting": "Hello, local!"}
    choose(page, "#setting_sd_vae_default", "Automatic")
    set_number(page, "#setting_CLIP_stop_at_last_layers input[type=number]", "3")
    page.click("#settings_apply")
    page.wait_for_function("document.querySelector('#settings_result').innerText.includes('Applied')")
    browser.close()
    # The extension reads the new value at once; the app's option is the one the API answers with.
    assert requests.get(f"{served.running.url}/extensions/hello-tab/greeting", timeout=30).json() == {
        "greeting": "Howdy, local!"}
    assert json.loads((served.running.data_dir / "config.json").read_text())["CLIP_stop_at_last_layers"] == 3

    served.restart()
    browser, page = open_page(playwright, served.running.url)
    open_settings(page)
    page.wait_for_function("document.querySelector('#setting_CLIP_stop_at_last_layers input[type=number]').value === '3'")
    assert text_box(page, "setting_hello-tab_greeting").input_value() == "Howdy"
    browser.close()


def test_the_prompt_matrix_script_shows_its_controls_and_generates_a_grid(served, playwright):
    browser, page = open_page(playwright, served.running.url)
    assert not page.is_visible("#txt2img_script_prompt_matrix")
    choose(page, "#txt2img_script", "Prompt matrix")
    page.wait_for_selector("#txt2img_script_prompt_matrix_put_at_start", state="visible")
    assert page.is_visible("#txt2img_script_prompt_matrix_prompt_type")
    page.fill("#txt2img_prompt textarea", "a red circle|striped")
    set_number(page, "#txt2img_width input[type=number]", "64")
    set_number(page, "#txt2img_height input[type=number]", "64")
    set_number(page, "#txt2img_steps input[type=number]", "2")
    set_number(page, "#txt2img_seed input", "21")
    page.check("#txt2img_script_prompt_matrix_put_at_start input")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done: 2 image(s)')")
    assert page.locator("#txt2img_gallery img").count() == 3          # the grid, then both combinations
    infotext = page.input_value("#txt2img_infotext textarea")
    assert infotext.startswith("a red circle\n") and "Script: Prompt matrix" in infotext
    assert "Prompt matrix put at start: True" in infotext

    # Paste the parameters back after switching the script off: the script and its controls come back.
    page.uncheck("#txt2img_script_prompt_matrix_put_at_start input")
    choose(page, "#txt2img_script", "None")
    page.wait_for_selector("#txt2img_script_prompt_matrix", state="hidden")
    page.fill("#txt2img_prompt textarea", infotext)
    page.click("#txt2img_paste")
    page.wait_for_function("document.querySelector('#txt2img_script input').value === 'Prompt matrix'")
    page.wait_for_selector("#txt2img_script_prompt_matrix_put_at_start", state="visible")
    assert page.is_checked("#txt2img_script_prompt_matrix_put_at_start input")
    browser.close()


def test_an_extension_tab_appears_with_its_styles_and_script_and_a_broken_one_is_left_out(served, playwright):
    browser, page = open_page(playwright, served.running.url)
    assert page.evaluate("document.documentElement.dataset.helloTab") == "loaded"
    assert not page.locator("button[role=tab]:has-text('Broken tab')").is_visible()
    open_tab(page, "Hello")
    page.click("#hello_tab_button")
    page.wait_for_function("document.querySelector('#hello_tab_answer textarea, #hello_tab_answer input')"
                           ".value.includes('local!')")
    answer = text_box(page, "hello_tab_answer").input_value()
    assert answer.endswith(", local! This server has 1 checkpoint(s).")
    border = page.evaluate("getComputedStyle(document.querySelector('.hello-tab-note')).borderLeftColor")
    assert border == "rgb(64, 128, 255)"
    browser.close()


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory, default_model_folder) -> Iterator[RunningServer]:
    from webui.security.users import UserStore

    data = with_default_model(tmp_path_factory.mktemp("ext-accounts"), default_model_folder)
    store = UserStore(data / "users.json")
    store.add_user("boss", "boss-password-1", "admin")
    store.add_user("ulla", "ulla-password-1", "user")
    running = start_server(data)
    yield running
    stop_server(running)


def log_in(browser, url: str, name: str):
    page = browser.new_context(viewport={"width": 1600, "height": 1200}).new_page()
    page.set_default_timeout(120_000)
    page.goto(url + "/")
    page.fill("#login_username", name)
    page.fill("#login_password", f"{name}-password-1")
    page.click("#login_submit")
    page.wait_for_selector("#txt2img_prompt textarea")
    return page


def test_a_plain_user_sees_the_settings_read_only_and_an_admin_may_change_them(accounts_server, playwright):
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
    ulla = log_in(browser, accounts_server.url, "ulla")
    open_tab(ulla, "Settings")
    ulla.wait_for_function("document.querySelector('#settings_access').innerText.includes('Only an admin')")
    assert not ulla.is_visible("#settings_apply")
    assert text_box(ulla, "setting_hello-tab_greeting").is_disabled()
    boss = log_in(browser, accounts_server.url, "boss")
    open_settings(boss)
    assert text_box(boss, "setting_hello-tab_greeting").is_enabled()
    assert "Only an admin" not in boss.inner_text("#settings_access")
    browser.close()
