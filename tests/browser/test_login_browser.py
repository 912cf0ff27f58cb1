"""A server started with --listen and no accounts: the browser is sent to the login page until it uses the
start-up token; then the UI works, an admin account is added in the Account tab, a second browser logs in
with it and makes an API token that an HTTP client can use."""

from __future__ import annotations

import re

import pytest
import requests

from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
from tests.conftest import start_server, stop_server, with_default_model

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def listening_server(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("listen-data"), default_model_folder)
    running = start_server(data, "--listen", "--api")
    yield running
    stop_server(running)


def test_token_login_then_the_ui_and_an_account_token(listening_server):
    from playwright.sync_api import sync_playwright

    match = re.search(r"\?token=([A-Za-z0-9_-]+)", listening_server.log())
    assert match, listening_server.log()
    token = match.group(1)
    url = listening_server.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(120_000)
        page.goto(url + "/")
        assert "/login" in page.url
        assert page.locator("#txt2img_prompt").count() == 0

        page.fill("#login_token", "not-the-token")
        page.click("#token_submit")
        assert "Wrong user name, password or token" in page.text_content("#login_error")

        page.fill("#login_token", token)
        page.click("#token_submit")
        page.wait_for_selector("#txt2img_prompt textarea")
        assert "token" not in page.url

        # The start-up token is not an account: the Account tab says how to get API tokens.
        page.click("button[role=tab]:has-text('Account')")
        page.wait_for_selector("#account_who")
        page.fill("#account_new_name textarea, #account_new_name input", "robot-admin")
        page.fill("#account_new_password input", "a long password")
        page.click("#account_add")  # the first account must be an admin: refused as a plain user
        page.wait_for_selector("text=first account must be an admin")
        page.click("#account_new_role input")
        page.click("li[role=option]:has-text('admin')")
        page.click("#account_add")
        page.wait_for_function("document.querySelector('#account_message').innerText.includes('robot-admin')")

        # A second browser logs in with the new account's password and makes an API token.
        other = browser.new_context().new_page()
        other.set_default_timeout(120_000)
        other.goto(url + "/")
        other.fill("#login_username", "robot-admin")
        other.fill("#login_password", "a long password")
        other.click("#login_submit")
        other.wait_for_selector("#txt2img_prompt textarea")
        other.click("button[role=tab]:has-text('Account')")
        other.wait_for_function("document.querySelector('#account_who').innerText.includes('robot-admin')")
        other.fill("#account_token_label input, #account_token_label textarea", "my-bot")
        other.click("#account_create_token")
        other.wait_for_function("document.querySelector('#account_new_token textarea, #account_new_token input').value.startsWith('sds_')")
        api_token = other.input_value("#account_new_token textarea, #account_new_token input")
        browser.close()

    bearer = {"Authorization": f"Bearer {api_token}"}
    assert requests.get(f"{url}/sdapi/v1/options", headers=bearer, timeout=30).status_code == 200

    # The new account works for HTTP clients; anonymous ones are still refused.
    answer = requests.get(f"{url}/sdapi/v1/options", auth=("robot-admin", "a long password"), timeout=30)
    assert answer.status_code == 200
    assert requests.get(f"{url}/sdapi/v1/options", timeout=30).status_code == 401
