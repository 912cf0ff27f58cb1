"""A person in a real headless Chromium: type a prompt, Generate, see the image, its infotext, PNG Info."""

from __future__ import annotations

import datetime

import pytest
from PIL import Image

from tests.browser.conftest import set_number
from sdstudio_eval.analyzer import analyze
from sdstudio_eval.toy_world import parse_prompt
from webui.generation.infotext import parse_infotext, read_infotext
from webui.models.default_model import EXAMPLE_PROMPT

pytestmark = pytest.mark.browser


def fill_small_request(page, prompt: str, seed: str) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    set_number(page, "#txt2img_width input[type=number]", "64")
    set_number(page, "#txt2img_height input[type=number]", "64")
    set_number(page, "#txt2img_steps input[type=number]", "6")
    set_number(page, "#txt2img_seed input", seed)


def test_a_newcomer_presses_generate_on_the_pre_filled_prompt_and_gets_it(page, server):
    """The first thing a new user does: Generate on what the page offers, at its default settings."""
    assert page.input_value("#txt2img_prompt textarea") == EXAMPLE_PROMPT
    set_number(page, "#txt2img_seed input", "5003")  # the fidelity report draws this prompt right on 10 of 10 seeds
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 5003')")
    infotext = page.input_value("#txt2img_infotext textarea")
    assert "Steps: 20" in infotext and "Size: 128x128" in infotext and "CFG scale: 7" in infotext
    day = datetime.date.today().isoformat()
    saved = sorted((server.data_dir / "outputs" / "txt2img-images" / day).glob("*-5003.png"))
    analysis = analyze(Image.open(saved[-1]))
    # A red circle on a blue background, as the prompt says.
    assert analysis.matches(parse_prompt(EXAMPLE_PROMPT)) == {"count": True, "color": True, "shape": True,
                                                              "background": True}


def test_generate_from_the_browser_saves_an_image_with_its_parameters(page, server):
    assert page.input_value("#setting_sd_model_checkpoint input").startswith("sd-studio-toy")
    fill_small_request(page, "a red circle on the left", "123")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 123')")
    infotext = page.input_value("#txt2img_infotext textarea")
    assert infotext.startswith("a red circle on the left\n")
    assert "Steps: 6" in infotext and "Size: 64x64" in infotext and "Model: sd-studio-toy" in infotext
    assert "Done: 1 image" in page.inner_text("#txt2img_progress")

    day = datetime.date.today().isoformat()
    saved = sorted((server.data_dir / "outputs" / "txt2img-images" / day).glob("*-123.png"))
    assert saved, "the generated image was not saved"
    params = parse_infotext(read_infotext(Image.open(saved[-1])))
    assert params["Prompt"] == "a red circle on the left" and params["Seed"] == "123"

    # PNG Info reads the saved file and sends every field back to txt2img.
    page.fill("#txt2img_prompt textarea", "something else")
    set_number(page, "#txt2img_seed input", "-1")
    page.click("button[role=tab]:has-text('PNG Info')")
    page.set_input_files("#pnginfo_image input[type=file]", str(saved[-1]))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('Seed: 123')")
    assert "Sampler" in page.inner_text("#pnginfo_table")
    page.click("#pnginfo_send_txt2img")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a red circle on the left'")
    assert page.is_visible("#txt2img_generate")
    assert page.input_value("#txt2img_seed input") == "123"
    assert page.input_value("#txt2img_steps input[type=number]") == "6"
    assert page.input_value("#txt2img_width input[type=number]") == "64"


def test_progress_preview_and_interrupt(page):
    fill_small_request(page, "a long job", "5")
    set_number(page, "#txt2img_steps input[type=number]", "150")
    set_number(page, "#txt2img_batch_count input[type=number]", "3")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Step ')")
    assert "ETA" in page.inner_text("#txt2img_progress") or "Step" in page.inner_text("#txt2img_progress")
    page.wait_for_selector("#txt2img_preview img")
    page.click("#txt2img_interrupt")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('interrupted')")
    assert page.locator("#txt2img_gallery img").count() >= 1


def test_bad_input_shows_a_clear_message_and_the_page_keeps_working(page):
    fill_small_request(page, "bad width", "1")
    set_number(page, "#txt2img_width input[type=number]", "100")
    page.click("#txt2img_generate")
    page.wait_for_selector("text=width 100 is not a multiple of 8")
    assert "broken-download" in page.inner_text("#unusable_checkpoints")
    set_number(page, "#txt2img_width input[type=number]", "64")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('bad width')")


def test_lora_card_click_inserts_the_tag_and_the_hash_reaches_the_infotext(page, server):
    import torch
    from diffusers import UNet2DConditionModel

    from tests.engine.test_lora_generation import write_kohya_lora

    unet = UNet2DConditionModel.from_pretrained(server.data_dir / "models" / "Stable-diffusion" / "sd-studio-toy" / "unet")
    write_kohya_lora(server.data_dir / "models" / "Lora" / "browser_style.safetensors", unet)
    del unet, torch
    fill_small_request(page, "a large red circle in the center, blue background", "8")
    page.click("#txt2img_extra_networks button:has-text('Extra networks')")
    page.click("button[role=tab]:has-text('LoRA')")
    # Other tests train LoRAs on the same server: search narrows the cards down to this one.
    page.fill("#txt2img_extra_networks_search textarea, #txt2img_extra_networks_search input", "browser_style")
    page.click("#txt2img_extra_networks_refresh")
    page.wait_for_function("document.querySelectorAll('#txt2img_extra_networks_lora img').length === 1")
    assert "rank 4" in page.inner_text("#txt2img_extra_networks_lora")
    page.locator("#txt2img_extra_networks_lora img").first.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('<lora:browser_style:1>')")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Lora hashes')")
    assert "browser_style: " in page.input_value("#txt2img_infotext textarea")


def test_checkpoint_merger_tab_saves_a_model_that_appears_in_the_dropdown(page, server):
    import shutil

    checkpoints = server.data_dir / "models" / "Stable-diffusion"
    if not (checkpoints / "toy-twin").exists():
        shutil.copytree(checkpoints / "sd-studio-toy", checkpoints / "toy-twin")
    page.click("#refresh_sd_model_checkpoint")
    page.click("button[role=tab]:has-text('Checkpoint Merger')")
    for selector, option in (("#merger_primary", "sd-studio-toy"), ("#merger_secondary", "toy-twin")):
        page.click(f"{selector} input")
        page.click(f"[role=option]:has-text('{option}')")
    page.fill("#merger_name textarea, #merger_name input", "browser-merge")
    page.click("#merger_merge")
    page.wait_for_selector("#merger_result:has-text('Saved')")
    assert (checkpoints / "browser-merge" / "model_index.json").is_file()
    page.click("#setting_sd_model_checkpoint input")
    page.wait_for_selector("[role=option]:has-text('browser-merge')")
    assert page.locator("[role=option]:has-text('browser-merge')").count() == 1


def test_xyz_plot_script_in_txt2img_makes_a_grid(page):
    fill_small_request(page, "a small red circle on the left, blue background", "3")
    page.click("#txt2img_script input")
    page.get_by_role("option", name="X/Y/Z plot", exact=True).click()
    page.click("#txt2img_script_xyz_x_type input")
    page.get_by_role("option", name="Seed", exact=True).click()
    page.fill("#txt2img_script_xyz_x_values textarea, #txt2img_script_xyz_x_values input", "1, 2")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('X/Y/Z plot: 2 cell')")
    assert "X Type: Seed" in page.input_value("#txt2img_infotext textarea")
    page.fill("#txt2img_script_xyz_x_values textarea, #txt2img_script_xyz_x_values input", "1-")
    page.click("#txt2img_generate")
    page.wait_for_selector("text=1-")
