"""A person in headless Chromium: the Refiner accordion of txt2img (pick a checkpoint, set Switch at, Generate,
read the infotext, paste it back through PNG Info) and the Settings tab's checkpoint prediction setting."""

from __future__ import annotations

import json

import pytest

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path, set_number
from tests.conftest import start_server, stop_server, with_default_model
from tests.engine.helpers import perturbed_copy

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def refiner_server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("refiner-ui"), default_model_folder)
    perturbed_copy(default_model_folder, data / "models" / "Stable-diffusion" / "toy-refiner", seed=9)
    running = start_server(data)
    yield running
    stop_server(running)


@pytest.fixture
def tab(refiner_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(120_000)
        page.goto(refiner_server.url + "/")
        page.wait_for_selector("#txt2img_prompt textarea")
        yield page
        browser.close()


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"{dropdown} [role=option][aria-label^='{option}']")


def test_the_refiner_accordion_refines_and_its_infotext_pastes_back(tab):
    tab.fill("#txt2img_prompt textarea", "a red circle")
    for selector, value in (("#txt2img_width", "64"), ("#txt2img_height", "64"), ("#txt2img_steps", "4")):
        set_number(tab, f"{selector} input[type=number]", value)
    set_number(tab, "#txt2img_seed input", "77")
    tab.click("#txt2img_refiner")  # open the accordion
    choose(tab, "#txt2img_refiner_checkpoint", "toy-refiner")
    set_number(tab, "#txt2img_refiner_switch_at input[type=number]", "0.5")
    tab.click("#txt2img_generate")
    tab.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 77')")
    infotext = tab.input_value("#txt2img_infotext textarea")
    assert "Refiner: toy-refiner [" in infotext and "Refiner switch at: 0.5" in infotext

    # Back to no refiner, then paste the infotext: the refiner and its switch come back.
    choose(tab, "#txt2img_refiner_checkpoint", "None")
    set_number(tab, "#txt2img_refiner_switch_at input[type=number]", "0.8")
    tab.fill("#txt2img_prompt textarea", infotext)
    tab.click("#txt2img_paste")
    tab.wait_for_function("document.querySelector('#txt2img_refiner_checkpoint input').value.startsWith('toy-refiner')")
    assert tab.input_value("#txt2img_refiner_switch_at input[type=number]") == "0.5"


def test_an_admin_sets_a_checkpoints_prediction_type_in_settings(tab, refiner_server):
    tab.click("button[role=tab]:has-text('Settings')")
    choose(tab, "#setting_checkpoint_name", "toy-refiner")
    choose(tab, "#setting_checkpoint_prediction", "v_prediction")
    tab.check("#setting_checkpoint_zero_snr input")
    tab.click("#setting_checkpoint_save")
    tab.wait_for_function(
        "document.querySelector('#setting_checkpoint_result').innerText.includes('Saved for toy-refiner')")
    stored = json.loads((refiner_server.data_dir / "checkpoint_settings.json").read_text())
    assert stored == {"toy-refiner": {"prediction": "v_prediction", "zero_terminal_snr": True}}
