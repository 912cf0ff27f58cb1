"""The Train tab with an SD3.5 checkpoint beside the default model: choosing it as the base offers its presets."""

from __future__ import annotations

import pytest
import torch

from tests.browser.test_train_browser import open_train_tab
from tests.conftest import start_server, stop_server, with_default_model
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, write_single_file

pytestmark = pytest.mark.browser
CHECKPOINT = "sd3.5_medium_tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_folder):
    """This module's own server (the browser fixtures open it): the default model and a tiny SD3.5 Medium."""
    data = with_default_model(tmp_path_factory.mktemp("sd3-browser"), default_model_folder)
    write_single_file(data / "models" / "Stable-diffusion" / f"{CHECKPOINT}.safetensors",
                      tiny_sd3_modules(MEDIUM, seed=1), dtype=torch.float32)
    running = start_server(data)
    yield running
    stop_server(running)


def test_choosing_an_sd3_base_offers_the_sd3_presets_and_loading_one_fills_1024(browser_page):
    page = browser_page
    open_train_tab(page)
    page.click("#train_base_checkpoint input")
    page.click(f"[role=option]:has-text('{CHECKPOINT}')")
    page.click("#train_preset input")
    page.wait_for_selector("[role=option]:has-text('sd3_lora')")
    assert page.locator("[role=option]:has-text('sd1_lora')").count() == 0
    page.click("[role=option]:has-text('sd3_dreambooth_lora')")
    page.click("#train_load_preset")
    page.wait_for_selector("#train_preset_message:has-text('Loaded preset')")
    assert page.locator("#train_method").get_by_label("DreamBooth-LoRA", exact=True).is_checked()
    assert page.input_value("#train_resolution input[type=number]") == "1024"
