"""The Extensions tab in a real headless Chromium (issue 16, item 7): a broken extension's problem and
traceback are shown, switching one off is remembered across a restart, and an install from a git URL,
a refused URL and an uninstall go through the tab."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
from tests.conftest import start_server, stop_server, with_default_model
from tests.support.extension_repos import extension_repo, write_extension

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("extensions-tab"), default_model_folder)
    write_extension(data / "extensions" / "broken", "broken", code="import not_a_module_anywhere\n")
    write_extension(data / "extensions" / "hello", "hello", description="greets at start")
    holder = {"server": start_server(data), "repos": tmp_path_factory.mktemp("repos")}
    yield holder
    stop_server(holder["server"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_tab(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(120_000)
    page.goto(url + "/")
    page.click("button[role=tab]:has-text('Extensions')")
    page.wait_for_selector("#extensions_table table")
    return page


def row(page, name: str):
    return page.locator(f"#extensions_table tr[data-extension='{name}']")


def checkbox(page, name: str):
    # The exact name: shipped extensions such as "hello-tab" contain the test extensions' names.
    return page.locator("#extensions_enabled label", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).locator(
        "input[type=checkbox]")


def test_a_broken_extension_shows_its_problem_and_traceback(served, browser):
    page = open_tab(browser, served["server"].url)
    broken = row(page, "broken")
    assert "failed" in broken.locator(".sd-ext-state").inner_text()
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere'" in broken.inner_text()
    broken.locator("summary").click()
    assert 'extension.py", line 1' in broken.locator("pre").inner_text()
    hello = row(page, "hello")
    assert "loaded" in hello.locator(".sd-ext-state").inner_text() and "app_started" in hello.inner_text()
    page.close()


def test_disable_then_restart_lists_it_as_disabled(served, browser):
    page = open_tab(browser, served["server"].url)
    assert checkbox(page, "hello").is_checked()
    checkbox(page, "hello").uncheck()
    page.click("#extensions_apply")
    page.wait_for_selector("#extensions_result :text('hello is off: its hooks stopped now')")
    page.wait_for_function(
        "document.querySelector(\"#extensions_table tr[data-extension='hello']\").dataset.state === 'disabled'")
    page.close()

    data = served["server"].data_dir
    stop_server(served["server"])
    served["server"] = start_server(data)
    page = open_tab(browser, served["server"].url)
    hello = row(page, "hello")
    assert "disabled" in hello.locator(".sd-ext-state").inner_text()
    assert hello.locator(".sd-ext-next").inner_text().strip() == "off"
    assert not checkbox(page, "hello").is_checked()
    page.close()


def test_install_a_refused_url_and_uninstall_from_the_tab(served, browser):
    page = open_tab(browser, served["server"].url)
    page.fill("#extensions_install_url textarea, #extensions_install_url input", "--upload-pack=touch /tmp/x")
    page.click("#extensions_install")
    page.wait_for_selector("text=must not start with '-'")
    assert row(page, "greeter").count() == 0

    remote = extension_repo(served["repos"] / "greeter", "greeter", version="1.4.0")
    page.fill("#extensions_install_url textarea, #extensions_install_url input", remote)
    page.click("#extensions_install")
    page.wait_for_selector("#extensions_result :text('Installed greeter 1.4.0')")
    greeter = row(page, "greeter")
    greeter.wait_for()
    assert "not loaded yet" in greeter.inner_text() and remote in greeter.inner_text()

    page.click("#extensions_pick input")
    page.click("#extensions_pick [role=option][aria-label='greeter']")
    page.click("#extensions_uninstall")
    page.wait_for_selector("#extensions_result :text('Uninstalled greeter')")
    row(page, "greeter").wait_for(state="detached")  # installed after this start: nothing of it is left
    assert not (served["server"].data_dir / "extensions" / "greeter").exists()
    page.close()
