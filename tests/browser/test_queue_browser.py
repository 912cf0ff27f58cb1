"""The Queue tab in a real headless Chromium: two jobs waiting behind a long one, cancel the second
(which Resume refuses: it is no training run), watch the others finish, and send a result's parameters to txt2img; and the Generate button that says
where a waiting job stands."""

from __future__ import annotations

import pytest
import requests

from tests.browser.conftest import set_number

pytestmark = pytest.mark.browser

JOBS = "/api/v1/jobs"
TINY = {"width": 64, "height": 64, "steps": 2}


def submit(server, prompt: str, **changes) -> str:
    """Queue a txt2img job the way a script would (the test server has no accounts: the local admin)."""
    body = {"kind": "txt2img", "request": {**TINY, "prompt": prompt, **changes}}
    response = requests.post(server.url + JOBS, json=body, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def state_of(server, job_id: str) -> str:
    return requests.get(f"{server.url}{JOBS}/{job_id}", timeout=30).json()["state"]


def table_row(page, job_id: str):
    return page.locator("#queue_table [role=row]", has_text=job_id[:8])  # gradio 6 draws a grid of divs


def test_two_waiting_jobs_show_in_the_queue_and_the_second_is_cancelled(page, server):
    blocker = submit(server, "a long job", steps=40, n_iter=6)
    first = submit(server, "a green triangle on a white background", seed=3)
    second = submit(server, "a job the user cancels", seed=4)

    page.click("button[role=tab]:has-text('Queue')")
    page.wait_for_selector("#queue_table")
    row = table_row(page, second)
    row.wait_for()
    assert "queued" in row.inner_text()
    assert "a job the user cancels" in row.inner_text()
    assert "queued" in table_row(page, first).inner_text()

    row.locator("[role=gridcell]").first.click()
    page.wait_for_function(f"document.querySelector('#queue_status').innerText.includes('Selected job {second[:8]}')")
    page.click("#queue_cancel")
    page.wait_for_function("document.querySelector('#queue_status').innerText.includes('was cancelled')")
    assert state_of(server, second) == "cancelled"
    table_row(page, second).filter(has_text="cancelled").wait_for()

    # Resume is for stopped training runs; for this txt2img job it says why not (HTTP tests cover a real resume).
    page.click("#queue_resume")
    page.locator("[data-testid=toast-body]", has_text="only training jobs can be resumed").wait_for()
    assert requests.get(f"{server.url}{JOBS}/{second}", timeout=30).json()["resumed_as"] is None

    requests.delete(f"{server.url}{JOBS}/{blocker}", timeout=30)  # no need to wait for the long one
    table_row(page, first).filter(has_text="done").wait_for(timeout=300_000)
    assert state_of(server, first) == "done" and state_of(server, second) == "cancelled"

    # The finished job's image is in the results; its parameters go to txt2img.
    page.locator("#queue_gallery img").first.wait_for()
    page.locator("#queue_gallery img").first.click()
    page.wait_for_function(
        "document.querySelector('#queue_infotext textarea').value.includes('a green triangle on a white background')")
    page.click("#queue_send_txt2img")
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value === 'a green triangle on a white background'")


def test_the_generate_button_says_where_a_waiting_job_stands(page, server):
    blocker = submit(server, "a long job ahead of the user's", steps=40, n_iter=6)
    page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
    set_number(page, "#txt2img_width input[type=number]", "64")
    set_number(page, "#txt2img_height input[type=number]", "64")
    page.click("#txt2img_generate")
    page.wait_for_function("/^Queued, position \\d+$/.test(document.querySelector('#txt2img_generate').innerText.trim())")
    assert "Queued, position" in page.inner_text("#txt2img_progress")
    requests.delete(f"{server.url}{JOBS}/{blocker}", timeout=30)
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done')", timeout=300_000)
    assert page.inner_text("#txt2img_generate").strip() == "Generate"
