"""A person in headless Chromium: upload an image to Inpaint, paint a mask with the mouse, generate, and
get an image that changed under the strokes and nowhere else; send a txt2img result to img2img."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import set_number
from tests.browser.test_txt2img_browser import fill_small_request
from sdstudio_eval.toy_world import render, scene_from_attributes

pytestmark = pytest.mark.browser


def newest_output(server, folder: str) -> Image.Image:
    day = datetime.date.today().isoformat()
    files = sorted((server.data_dir / "outputs" / folder / day).glob("*.png"), key=lambda p: p.stat().st_mtime)
    assert files, f"nothing was saved in outputs/{folder}"
    return Image.open(files[-1]).convert("RGB")


def paint_strokes(page, selector: str, fractions: tuple[float, ...]) -> None:
    """Vertical brush strokes over the left of the picture (the editor centres the image in its canvas)."""
    box = page.locator(f"{selector} canvas").first.bounding_box()
    side = min(box["width"], box["height"]) * 0.85
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    for fraction in fractions:
        x = left + side * fraction
        page.mouse.move(x, top + side * 0.05)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(x, top + side * (0.05 + 0.09 * step))
        page.mouse.up()


def test_inpaint_with_a_painted_mask_changes_only_the_painted_area(page, server, tmp_path):
    source_path = tmp_path / "source.png"
    render(scene_from_attributes(shape="circle", color="red", background="yellow", size="large"), size=64).save(source_path)
    page.click("#tab_img2img-button")
    page.click("#img2img_inpaint_tab-button")
    # Through the editor's Upload button, as a person does: setting the hidden file input directly is lost when the
    # editor has not finished mounting. The loaded background is the editor's first undoable step.
    with page.expect_file_chooser() as chooser:
        page.click("#img2maskimg button[aria-label='Upload']")
    chooser.value.set_files(str(source_path))
    page.wait_for_selector("#img2maskimg button[aria-label='Undo']:not([disabled])")
    page.wait_for_timeout(1000)  # the editor fits the picture into its canvas
    paint_strokes(page, "#img2maskimg", (0.05, 0.12, 0.19))
    page.wait_for_timeout(500)
    page.fill("#img2img_prompt textarea", "a large blue square in the center, white background")
    for name, value in (("width", "64"), ("height", "64"), ("steps", "6"), ("mask_blur", "0"),
                        ("denoising_strength", "1")):
        set_number(page, f"#img2img_{name} input[type=number]", value)
    page.click("#img2img_generate")
    page.wait_for_function("document.querySelector('#img2img_infotext textarea').value.includes('Mask blur: 0')")

    changed = np.abs(np.asarray(newest_output(server, "img2img-images"), dtype=int)
                     - np.asarray(Image.open(source_path).convert("RGB"), dtype=int)).sum(axis=2) > 0
    assert changed[:, 4:10].mean() > 0.5, "the painted strokes were not redrawn"
    assert not changed[:, 40:].any(), "pixels far from the strokes changed"


def test_send_a_txt2img_result_to_img2img(page):
    fill_small_request(page, "a small green triangle at the top", "77")
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 77')")
    page.click("#txt2img_send_to_img2img")
    page.wait_for_selector("#img2img_image img")
    assert page.input_value("#img2img_prompt textarea") == "a small green triangle at the top"
    assert page.input_value("#img2img_seed input") == "77"
