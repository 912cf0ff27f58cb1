"""The Train tab in a real headless Chromium: upload, train a tiny LoRA, watch it, reconnect, use it, cancel."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from sdstudio_eval.toy_world import held_out_concept_images

pytestmark = pytest.mark.browser

LOSS_LINES = "#train_loss_plot path[aria-roledescription='line mark']"


@pytest.fixture
def page(browser_page):
    open_train_tab(browser_page)
    return browser_page


@pytest.fixture(scope="module")
def hexagon_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("browser-hexagons")
    paths = []
    for index, image in enumerate(held_out_concept_images("hexagon", 4)):
        image.save(folder / f"hexagon_{index}.png")
        paths.append(str(folder / f"hexagon_{index}.png"))
    return paths


def open_train_tab(page) -> None:
    page.wait_for_selector("#txt2img_prompt textarea")
    page.click("button[role=tab]:has-text('Train')")
    page.wait_for_selector("#train_output_name")


def fill_until_kept(page, selector: str, value: str) -> None:
    """Type a value and leave the field; again if the field was re-mounted meanwhile (an accordion's
    first opening renders its widgets anew, dropping what was typed into the old ones)."""
    for _ in range(10):
        page.fill(selector, value)
        page.press(selector, "Tab")
        page.wait_for_timeout(250)
        if page.input_value(selector) == value:
            return
    raise AssertionError(f"{selector} did not keep {value!r}")


def fill_text(page, elem_id: str, value: str) -> None:
    fill_until_kept(page, f"#{elem_id} textarea, #{elem_id} input", value)


def set_number(page, elem_id: str, value: int) -> None:
    fill_until_kept(page, f"#{elem_id} input[type=number]", str(value))


def open_group(page, elem_id: str) -> None:
    page.click(f"#{elem_id} button")
    page.wait_for_selector(f"#{elem_id} input", state="visible")


def prepare_tiny_lora(page, name: str, images: list[str], steps: int, samples: bool, sample_steps: int = 2) -> None:
    """Upload, words, LoRA, 64 px and a few steps, as a user fills the form."""
    fill_text(page, "train_output_name", name)
    page.set_input_files("#train_upload input[type=file]", images)
    page.wait_for_selector("#train_upload_message:has-text('Copied 4 image(s)')")
    folder = page.input_value("#train_dataset_dir textarea, #train_dataset_dir input")
    assert folder.endswith(f"/datasets/{name}") and "/training/" not in folder  # uploads go to datasets/<name>
    fill_text(page, "train_trigger_word", "hxgn")
    fill_text(page, "train_class_word", "shape")
    page.locator("#train_method").get_by_label("LoRA", exact=True).check()
    for elem_id, value in (("train_resolution", 64), ("train_min_bucket_resolution", 32),
                           ("train_max_bucket_resolution", 128), ("train_bucket_step", 32)):
        set_number(page, elem_id, value)
    open_group(page, "train_group_network")
    set_number(page, "train_rank", 4)
    open_group(page, "train_group_steps")
    set_number(page, "train_max_train_steps", steps)
    open_group(page, "train_group_saving")
    set_number(page, "train_save_every_n_epochs", 1)
    if samples:
        set_number(page, "train_sample_every_n_steps", 3)
        set_number(page, "train_sample_steps", sample_steps)
        fill_until_kept(page, "#train_sample_prompts textarea", "hxgn, a shape")


def loss_points(page) -> int:
    """Points on the plotted raw-loss line (0 before any step)."""
    lines = page.locator(LOSS_LINES)
    if lines.count() == 0:
        return 0
    path = lines.first.get_attribute("d") or ""
    return len(re.findall(r"[ML]", path))


def test_train_a_lora_watch_it_reconnect_and_generate_with_it(page, server, hexagon_files):
    # The step-3 sample takes 24 sampling steps: long enough (over a second) that the tab, polling once a
    # second, shows the run mid-way even on an idle machine where six training steps take a moment.
    prepare_tiny_lora(page, "browser_hex", hexagon_files, steps=6, samples=True, sample_steps=24)
    page.click("#train_start")
    page.wait_for_selector("#train_summary:has-text('4 images')")

    seen_steps, seen_points = set(), set()
    deadline = time.monotonic() + 300
    while "Finished" not in page.inner_text("#train_progress") and time.monotonic() < deadline:
        match = re.search(r"step (\d+)/6", page.inner_text("#train_progress"))
        if match:
            seen_steps.add(int(match.group(1)))
        seen_points.add(loss_points(page))
        time.sleep(0.3)
    assert "Finished" in page.inner_text("#train_progress"), page.inner_text("#train_progress")
    assert seen_steps & {1, 2, 3, 4, 5}, f"no progress seen mid-run: {seen_steps}"
    assert len(seen_points - {0}) >= 1
    page.wait_for_function(f"document.querySelectorAll(\"{LOSS_LINES}\").length === 2")
    page.wait_for_function(f"(document.querySelector(\"{LOSS_LINES}\").getAttribute('d').match(/L/g) || []).length === 5")
    result = page.inner_text("#train_result")
    assert "browser_hex finished" in result and "<lora:browser_hex:1> hxgn" in result
    assert "browser_hex-000001.safetensors" in result and "browser_hex.safetensors" in result
    assert re.search(r"browser_hex\.safetensors: (\d+) of \1 keys load in SD Studio, diffusers, ComfyUI", result), result
    page.wait_for_selector("#train_samples img")
    assert (server.data_dir / "models" / "Lora" / "browser_hex.safetensors").is_file()

    # A reloaded page shows the last run's results without any click.
    page.reload()
    open_train_tab(page)
    page.wait_for_selector("#train_result:has-text('<lora:browser_hex:1> hxgn')")
    assert "100%" in page.inner_text("#train_progress")
    page.wait_for_function(f"document.querySelectorAll(\"{LOSS_LINES}\").length === 2")

    # "Compare epochs" opens the X/Y/Z plot of the saved epochs x LoRA weight.
    page.click("#train_compare_epochs")
    page.wait_for_function("(box => box !== null && box.value.includes('browser_hex-000001'))"
                           "(document.querySelector('#xyz_x_values textarea, #xyz_x_values input'))")
    assert "0.6" in page.input_value("#xyz_y_values textarea, #xyz_y_values input")

    # The new LoRA is usable in txt2img at once.
    page.click("#tab_txt2img-button")
    page.fill("#txt2img_prompt textarea", "hxgn, a shape <lora:browser_hex:1>")
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 4)
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Lora hashes')")
    assert "browser_hex: " in page.input_value("#txt2img_infotext textarea")


def test_a_reload_during_training_shows_the_running_job_and_cancel_stops_it(page, server, hexagon_files):
    prepare_tiny_lora(page, "browser_long", hexagon_files, steps=400, samples=False)
    page.click("#train_start")
    page.wait_for_function("/step \\d+\\/400/.test(document.querySelector('#train_progress').innerText)")

    page.reload()
    open_train_tab(page)
    page.wait_for_function("/Training browser_long.*step \\d+\\/400/.test(document.querySelector('#train_progress').innerText)")
    first = int(re.search(r"step (\d+)/400", page.inner_text("#train_progress")).group(1))
    page.wait_for_function(
        f"Number((document.querySelector('#train_progress').innerText.match(/step (\\d+)\\/400/) || [0, 0])[1]) > {first}")
    page.click("#train_cancel")
    page.wait_for_selector("#train_result:has-text('browser_long was cancelled')", timeout=180_000)
    assert "Cancelled" in page.inner_text("#train_progress")


def test_bad_values_show_the_configs_message_and_nothing_starts(page, server, hexagon_files):
    page.set_input_files("#train_upload input[type=file]", hexagon_files[:1])
    page.wait_for_selector("text=enter an output name first")
    page.reload()  # a fresh upload box
    open_train_tab(page)
    prepare_tiny_lora(page, "browser_bad", hexagon_files, steps=4, samples=False)
    open_group(page, "train_group_optimizer")
    set_number(page, "train_unet_lr", 0)
    page.click("#train_start")
    page.wait_for_selector("text=unet_lr: must be a number above 0")
    assert "browser_bad" not in page.inner_text("#train_progress")
    latest = requests.get(server.url + "/sdapi/v1/train/progress", timeout=30).json()
    assert latest["name"] != "browser_bad"


def test_presets_fill_the_form_and_the_users_own_are_saved_for_later(page, server):
    page.click("#train_preset input")
    page.click("[role=option]:has-text('sd1_textual_inversion')")
    page.click("#train_load_preset")
    page.wait_for_selector("#train_preset_message:has-text('Loaded preset')")
    assert page.locator("#train_method").get_by_label("Textual Inversion", exact=True).is_checked()
    assert page.input_value("#train_resolution input[type=number]") == "512"
    # The method's settings groups follow the method in a second event: wait for them (fails on timeout).
    page.wait_for_selector("#train_group_embedding", state="visible")
    page.wait_for_selector("#train_group_network", state="hidden")

    set_number(page, "train_repeats", 7)
    fill_text(page, "train_preset_name", "browser_preset")
    page.click("#train_save_preset")
    page.wait_for_selector("#train_preset_message:has-text('Saved preset')")
    saved = json.loads((server.data_dir / "training" / "presets" / "browser_preset.json").read_text())
    assert saved["method"] == "textual_inversion" and saved["repeats"] == 7 and "output_name" not in saved
    page.click("#train_preset input")
    page.wait_for_selector("[role=option]:has-text('browser_preset')")
    assert page.locator("[role=option]:has-text('browser_preset')").count() == 1


def test_a_dataset_folder_outside_datasets_is_refused_with_the_folder_to_use(page, server, tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "photo.png").write_bytes(b"")
    (outside / "photo.txt").write_text("API_KEY=do-not-show")
    fill_text(page, "train_dataset_dir", str(outside))
    page.click("#train_load_captions")
    page.wait_for_selector("text=use a folder under datasets/")
    assert "API_KEY" not in page.inner_text("#train_captions")
    fill_text(page, "train_dataset_dir", "not-made-yet")  # a plain name inside datasets/ may just not exist
    page.click("#train_load_captions")
    page.wait_for_selector("text=does not exist or is not a folder")
