"""A person in headless Chromium upscales a picture in the Extras tab with an ESRGAN model they just dropped
into models/ESRGAN, and gets the enlarged file in outputs/extras-images keeping the picture's parameters;
a Batch from Directory folder outside the app's folders is refused without saying whether it exists; a
txt2img result sent to Extras keeps its parameters."""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.browser.conftest import set_number
from tests.browser.test_txt2img_browser import fill_small_request
from tests.upscaler_files import write_esrgan_old

pytestmark = pytest.mark.browser

SOURCE_INFOTEXT = "a red circle on a blue background\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 41, Size: 24x16"


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"{dropdown} [role=option][aria-label='{option}']")


def test_extras_upscales_with_a_dropped_in_esrgan_model_and_keeps_the_parameters(page, server, tmp_path):
    # A tiny 4x ESRGAN, written as the .pth people download, appears after the 🔄 rescan.
    models = server.data_dir / "models" / "ESRGAN"
    models.mkdir(parents=True, exist_ok=True)
    write_esrgan_old(models / "tiny-esrgan-4x.pth", scale=4)
    source = tmp_path / "picture.png"
    info = PngInfo()
    info.add_text("parameters", SOURCE_INFOTEXT)
    Image.new("RGB", (24, 16), (200, 30, 30)).save(source, pnginfo=info)

    page.click("#tab_extras-button")
    page.click("#extras_refresh_upscalers")
    page.set_input_files("#extras_image input[type=file]", str(source))
    page.wait_for_selector("#extras_image img")
    choose(page, "#extras_upscaler_1", "tiny-esrgan-4x")
    set_number(page, "#extras_upscaling_resize input[type=number]", "2")
    page.click("#extras_generate")
    page.wait_for_function("document.querySelector('#extras_infotext textarea').value.includes('Postprocess')")

    shown = page.input_value("#extras_infotext textarea")
    assert shown == SOURCE_INFOTEXT + ", Postprocess upscale by: 2, Postprocess upscaler: tiny-esrgan-4x"
    saved = sorted((server.data_dir / "outputs" / "extras-images").glob("*.png"))
    assert saved, "nothing was saved in outputs/extras-images"
    with Image.open(saved[-1]) as result:
        assert result.size == (48, 32)
        assert result.text["parameters"] == shown


def test_batch_from_directory_refuses_a_folder_outside_the_app_alike_whether_it_exists_or_not(page):
    page.click("#tab_extras-button")
    page.click("#extras_batch_directory_tab-button")
    messages = []
    for folder in ("/etc", "/no-such-folder-anywhere"):
        page.fill("#extras_batch_input_dir textarea", folder)
        page.click("#extras_generate")
        toast = page.locator("[data-testid=toast-body]", has_text=folder).first
        toast.wait_for()
        messages.append(toast.locator("[data-testid=toast-text]").inner_text().replace(folder, "<folder>"))
        toast.locator("[data-testid=toast-close]").click()  # gradio groups a second error into a shown one
        toast.wait_for(state="detached")
    assert "is not allowed" in messages[0]
    assert messages[0] == messages[1]
    assert "exist" not in messages[0]
    page.click("#extras_single_tab-button")  # nothing uploaded: told so, and the tab keeps working
    page.click("#extras_generate")
    page.locator("[data-testid=toast-body]", has_text="Upload an image in the Single Image tab first").wait_for()


def test_a_txt2img_result_sent_to_extras_keeps_its_parameters_when_upscaled(page):
    fill_small_request(page, "a small green triangle at the top", "78")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 78')")
    generated = page.input_value("#txt2img_infotext textarea")
    page.click("#txt2img_send_to_extras")
    page.wait_for_selector("#extras_image img")
    choose(page, "#extras_upscaler_1", "Nearest")
    set_number(page, "#extras_upscaling_resize input[type=number]", "2")
    page.click("#extras_generate")
    page.wait_for_function("document.querySelector('#extras_infotext textarea').value.includes('Postprocess')")
    assert page.input_value("#extras_infotext textarea") == \
        generated + ", Postprocess upscale by: 2, Postprocess upscaler: Nearest"
