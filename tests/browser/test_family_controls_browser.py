"""Per-family controls in real Chromium: the checkpoint dropdown names each model's family, choosing an SD3.5
checkpoint shows "Shift" (at its scheduler config's 3.0) in txt2img and img2img and switches img2img's sampler
to Euler (DPM++ 2M cannot start from an image on a flow model), choosing the SD1 default
model hides it again; "Distilled CFG Scale" stays hidden for both (neither is guidance-distilled). A Flux.1 dev
checkpoint shows "Distilled CFG Scale" (Forge's 3.5) and "Shift" (0: its resolution-dependent schedule) and
hides "Clip skip"."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
from tests.conftest import start_server, stop_server
from tests.support.flux_files import tiny_flux_modules, write_all_in_one
from tests.support.sd3_files import tiny_sd3_modules, write_single_file

pytestmark = pytest.mark.browser

SD3_FILE = "tiny-sd3.5-medium"
FLUX_FILE = "tiny-flux1-dev-aio"


@pytest.fixture(scope="module")
def family_server(tmp_path_factory, default_model_folder):
    data = tmp_path_factory.mktemp("family-browser")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    write_single_file(checkpoints / f"{SD3_FILE}.safetensors", tiny_sd3_modules(), dtype=torch.float32)
    write_all_in_one(checkpoints / f"{FLUX_FILE}.safetensors", tiny_flux_modules())
    running = start_server(data)
    yield running
    stop_server(running)


@pytest.fixture
def page(family_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1200})
        tab.set_default_timeout(120_000)
        tab.goto(family_server.url + "/")
        tab.wait_for_selector("#txt2img_prompt textarea")
        yield tab
        browser.close()


def choose_checkpoint(page, name: str) -> str:
    """Pick the checkpoint whose entry starts with `name` from the quicksettings dropdown; returns its text."""
    page.click("#setting_sd_model_checkpoint input")
    option = page.locator(f"[role=option]:has-text('{name}')").first
    text = option.inner_text()
    option.click()
    return text


def test_choosing_a_flow_checkpoint_shows_shift_and_the_sd1_model_hides_it(page, family_server):
    assert page.input_value("#setting_sd_model_checkpoint input").startswith("sd-studio-toy")
    assert page.input_value("#setting_sd_model_checkpoint input").endswith("(SD1.x)")
    assert not page.is_visible("#txt2img_shift") and not page.is_visible("#txt2img_distilled_cfg_scale")
    assert page.is_visible("#txt2img_cfg_scale")

    label = choose_checkpoint(page, SD3_FILE)
    assert label.startswith(SD3_FILE) and label.endswith("(SD3.5 Medium)")
    page.wait_for_selector("#txt2img_shift", state="visible")
    assert float(page.input_value("#txt2img_shift input[type=number]")) == 3.0  # the shipped SD3.5 scheduler's
    assert not page.is_visible("#txt2img_distilled_cfg_scale")
    assert page.input_value("#txt2img_sampling input") == "DPM++ 2M"  # SD3.5 can use it for txt2img
    # Pasted Forge-style parameters fill the shown Shift control.
    page.fill("#txt2img_prompt textarea", "a red circle\nSteps: 4, Sampler: Euler, CFG scale: 4.5, Shift: 2.5, "
                                          "Seed: 7, Size: 64x64")
    page.click("#txt2img_paste")
    page.wait_for_function("document.querySelector('#txt2img_shift input[type=number]').value == '2.5'")
    page.click("button[role=tab]:has-text('img2img')")
    page.wait_for_selector("#img2img_shift", state="visible")
    page.wait_for_selector("#img2img_distilled_cfg_scale", state="hidden")
    # ... but not to start from an image: img2img's sampler became the family's default.
    page.wait_for_function("document.querySelector('#img2img_sampling input').value === 'Euler'")

    page.click("button[role=tab]:has-text('txt2img')")
    assert choose_checkpoint(page, "sd-studio-toy").endswith("(SD1.x)")
    page.wait_for_selector("#txt2img_shift", state="hidden")
    page.click("button[role=tab]:has-text('img2img')")
    page.wait_for_selector("#img2img_denoising_strength", state="visible")
    page.wait_for_selector("#img2img_shift", state="hidden")
    assert "cannot be loaded" not in family_server.log()


def test_a_flux_checkpoint_shows_distilled_cfg_and_hides_clip_skip(page, family_server):
    page.click("#txt2img_extra_options >> text=Extra")  # open the accordion holding Clip skip
    page.wait_for_selector("#txt2img_clip_skip", state="visible")
    assert not page.is_visible("#txt2img_distilled_cfg_scale")

    label = choose_checkpoint(page, FLUX_FILE)
    assert label.startswith(FLUX_FILE) and label.endswith("(Flux.1 dev)")
    page.wait_for_selector("#txt2img_distilled_cfg_scale", state="visible")
    assert float(page.input_value("#txt2img_distilled_cfg_scale input[type=number]")) == 3.5
    assert page.is_visible("#txt2img_shift")
    assert float(page.input_value("#txt2img_shift input[type=number]")) == 0.0  # dev shifts by image size
    page.wait_for_selector("#txt2img_clip_skip", state="hidden")
    page.click("#txt2img_hires_fix")
    page.wait_for_selector("#txt2img_hr_distilled_cfg", state="visible")

    assert choose_checkpoint(page, "sd-studio-toy").endswith("(SD1.x)")
    page.wait_for_selector("#txt2img_clip_skip", state="visible")
    page.wait_for_selector("#txt2img_distilled_cfg_scale", state="hidden")
    page.wait_for_selector("#txt2img_hr_distilled_cfg", state="hidden")
