"""A person plotting in a real headless Chromium: Seed x Steps grid, fill-all, paste, and a bad range."""

from __future__ import annotations

import pytest

from tests.browser.conftest import set_number
from webui.generation.samplers import sampler_names
from webui.xyz.grid import plan_grid_layout

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser_page):
    browser_page.click("button[role=tab]:has-text('X/Y/Z plot')")
    browser_page.wait_for_selector("#xyz_prompt textarea")
    return browser_page


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"{dropdown} [role=option][aria-label='{option}']")


def small_base(page, prompt: str) -> None:
    page.fill("#xyz_prompt textarea", prompt)
    set_number(page, "#xyz_width input[type=number]", "64")
    set_number(page, "#xyz_height input[type=number]", "64")
    set_number(page, "#xyz_seed input", "9")


def test_seed_by_steps_plot_shows_a_labelled_grid_and_pasting_its_infotext_restores_the_axes(page):
    small_base(page, "a blue square")
    assert page.input_value("#xyz_x_type input") == "Seed"
    page.fill("#xyz_x_values textarea", "1, 2")
    choose(page, "#xyz_y_type", "Steps")
    page.fill("#xyz_y_values textarea", "4, 6")
    page.click("#xyz_generate")
    page.wait_for_function("document.querySelector('#xyz_progress').innerText.includes('Done: 4 of 4 cells')")
    image = page.wait_for_selector("#xyz_gallery img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image)
    size = page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", image)
    layout = plan_grid_layout(2, 2, (64, 64), ["Seed: 1", "Seed: 2"], ["Steps: 4", "Steps: 6"])
    assert layout.top_band > 0 and layout.left_band > 0
    assert size == [layout.width, layout.height]
    infotext = page.input_value("#xyz_infotext textarea")
    assert infotext.startswith("a blue square\n")
    assert "X Type: Seed" in infotext and 'X Values: "1, 2"' in infotext and "Y Type: Steps" in infotext

    # Paste the grid's infotext back after changing the axes: both axes and the prompt come back.
    choose(page, "#xyz_x_type", "Nothing")
    page.fill("#xyz_x_values textarea", "")
    page.fill("#xyz_y_values textarea", "20")
    page.fill("#xyz_prompt textarea", "something else")
    page.click("text=Paste parameters")  # open the accordion
    page.fill("#xyz_paste_text textarea", infotext)
    page.click("#xyz_paste")
    page.wait_for_function("document.querySelector('#xyz_x_values textarea').value === '1, 2'")
    page.wait_for_function("document.querySelector('#xyz_x_type input').value === 'Seed'")
    assert page.input_value("#xyz_y_type input") == "Steps"
    assert page.input_value("#xyz_y_values textarea") == "4, 6"
    assert page.input_value("#xyz_prompt textarea") == "a blue square"
    assert page.input_value("#xyz_seed input") == "1"  # the grid's first cell


def test_sampler_picker_and_fill_all_write_the_values(page):
    assert not page.is_visible("#xyz_x_fill")
    choose(page, "#xyz_x_type", "Sampler")
    page.wait_for_selector("#xyz_x_fill", state="visible")
    choose(page, "#xyz_x_picker", "Heun")
    choose(page, "#xyz_x_picker", "Euler a")
    page.wait_for_function("document.querySelector('#xyz_x_values textarea').value === 'Heun, Euler a'")
    page.click("#xyz_x_fill")
    page.wait_for_function("document.querySelector('#xyz_x_values textarea').value.startsWith('DPM++ 2M,')")
    assert page.input_value("#xyz_x_values textarea") == ", ".join(sampler_names())


def test_bad_range_shows_an_error_and_generates_nothing(page, server):
    small_base(page, "bad range")
    choose(page, "#xyz_y_type", "Steps")
    page.fill("#xyz_x_values textarea", "1, 2")
    page.fill("#xyz_y_values textarea", "4-")
    page.click("#xyz_generate")
    page.wait_for_selector("text=is not a whole number or a range")
    assert "Done" not in page.inner_text("#xyz_progress")
    assert page.locator("#xyz_gallery img").count() == 0
