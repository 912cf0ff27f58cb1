"""A person in headless Chromium: open txt2img's ControlNet accordion, upload a control image, pick canny and
the model, preview the map, generate, and get an image whose infotext records the unit."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.browser.test_txt2img_browser import fill_small_request
from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet, write_ldm

pytestmark = pytest.mark.browser
UNIT = "#txt2img_script_controlnet_unit0"
MODEL = "control_v11p_sd15_canny"


def test_upload_pick_canny_preview_and_generate(page, server, tmp_path):
    model_file = server.data_dir / "models" / "ControlNet" / f"{MODEL}.safetensors"
    if not model_file.exists():
        write_ldm(model_file, tiny_controlnet(sd1_unet_config(), seed=3, scale=8))
    source = tmp_path / "control.png"
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).ellipse((10, 10, 54, 54), fill="white")
    image.save(source)

    fill_small_request(page, "a red circle on a blue background", "41")
    page.click("#txt2img_alwayson_controlnet >> text=ControlNet")     # open the accordion
    page.set_input_files(f"{UNIT}_upload input[type=file]", str(source))
    page.wait_for_function(f"document.querySelector('{UNIT}_enabled input').checked")  # an upload enables the unit
    page.click(f"{UNIT}_module input")
    page.click(f"{UNIT}_module [role=option][aria-label='canny']")
    page.click(f"{UNIT}_refresh")
    page.wait_for_timeout(500)
    page.click(f"{UNIT}_model input")
    page.click(f"{UNIT}_model [role=option]:has-text('{MODEL}')")

    page.click(f"{UNIT}_run_preview")
    src = page.wait_for_selector(f"{UNIT}_preview img").get_attribute("src")
    raw = (base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:")
           else page.request.get(src if src.startswith("http") else server.url + src).body())
    edges = np.asarray(Image.open(io.BytesIO(raw)).convert("L"))
    assert edges[edges.shape[0] // 2, edges.shape[1] // 2] == 0 and edges.max() == 255   # the circle's outline

    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 41')")
    infotext = page.input_value("#txt2img_infotext textarea")
    assert f'ControlNet 0: "Module: canny, Model: {MODEL} [' in infotext
    page.wait_for_selector("#txt2img_gallery img")
