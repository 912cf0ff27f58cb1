"""Browser fixtures: Debian's chromium driven by Playwright, one page per test on the session server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("SDSTUDIO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: run `python3 run_tests.py`, which installs it")
    return path


@pytest.fixture
def browser_page(server) -> Iterator:
    """A fresh tab on the app's start page (txt2img)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1200})
        tab.set_default_timeout(120_000)
        tab.goto(server.url + "/")
        tab.wait_for_selector("#txt2img_prompt textarea")
        yield tab
        browser.close()


@pytest.fixture
def page(browser_page):
    return browser_page


def set_number(page, selector: str, value: str) -> None:
    page.fill(selector, value)
    page.press(selector, "Tab")
