"""The login page: a self-contained HTML form (no gradio assets are served before login)."""

from __future__ import annotations

from html import escape

_STYLE = """
body {font-family: system-ui, sans-serif; background: #f4f4f5; display: flex; justify-content: center; margin-top: 10vh;}
form {background: white; padding: 1.5em 2em; border-radius: 8px; box-shadow: 0 1px 4px #0002; width: 20em; margin-bottom: 1em;}
label {display: block; margin-top: 0.8em; font-size: 0.9em;}
input {width: 100%; box-sizing: border-box; padding: 0.45em; margin-top: 0.2em;}
button {margin-top: 1.2em; width: 100%; padding: 0.55em; background: #f97316; color: white; border: 0; border-radius: 4px;}
.error {color: #b91c1c; font-size: 0.9em;}
"""


def login_page(next_path: str, error: str = "", token_login: bool = False) -> bytes:
    """The form posts to /login; with a start-up access token, a second form takes the token."""
    next_field = f'<input type="hidden" name="next" value="{escape(next_path)}">'
    message = f'<p class="error" id="login_error">{escape(error)}</p>' if error else ""
    token_form = (
        '<form method="post" action="/login" id="token_form"><h3>Access token</h3>'
        "<p>Paste the token printed in the server's console when it started.</p>"
        f'{next_field}<label>Token<input name="token" id="login_token" type="password" autocomplete="off"></label>'
        '<button type="submit" id="token_submit">Log in with token</button></form>'
    ) if token_login else ""
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>SD Studio: log in</title>"
        f"<meta name='viewport' content='width=device-width'><style>{_STYLE}</style></head><body><div>"
        '<form method="post" action="/login" id="password_form"><h2>SD Studio</h2>'
        f"{message}{next_field}"
        '<label>User name<input name="username" id="login_username" autocomplete="username"></label>'
        '<label>Password<input name="password" id="login_password" type="password" autocomplete="current-password"></label>'
        '<button type="submit" id="login_submit">Log in</button></form>'
        f"{token_form}</div></body></html>"
    )
    return html.encode("utf-8")
