"""Account tab: who you are, your API tokens (create once-shown / revoke), and for admins the accounts."""

from __future__ import annotations

import gradio as gr

from webui.security.accounts import AccountService
from webui.security.identity import ROLES, USER, User
from webui.ui.access import caller_of
from webui.errors import user_error

TOKEN_HEADERS = ["id", "label", "created"]
USER_HEADERS = ["name", "role"]
LOGOUT_FORM = ('<form method="post" action="/logout" id="logout_form">'
               '<button type="submit" class="lg secondary" id="logout_button">Log out</button></form>')


def build_account_tab(accounts: AccountService, tab: gr.Tab) -> None:
    who = gr.Markdown(elem_id="account_who")
    gr.HTML(LOGOUT_FORM if accounts.login_required else "", elem_id="account_logout")
    with gr.Group():
        gr.Markdown("### API tokens\nUse a token from scripts and A1111 clients as `Authorization: Bearer <token>`. "
                    "It is shown once, when it is created.")
        tokens = gr.Dataframe(headers=TOKEN_HEADERS, interactive=False, elem_id="account_tokens")
        with gr.Row():
            label = gr.Textbox(label="New token's label", placeholder="e.g. my-bot", elem_id="account_token_label")
            create = gr.Button("Create token", variant="primary", elem_id="account_create_token")
        new_token = gr.Textbox(label="New token (copy it now: it is not shown again)", interactive=False,
                               elem_id="account_new_token")
        with gr.Row():
            revoke_id = gr.Dropdown(label="Token to revoke", choices=[], elem_id="account_revoke_id")
            revoke = gr.Button("Revoke", variant="stop", elem_id="account_revoke")
    with gr.Group(visible=False) as admin_group:
        gr.Markdown("### Accounts (admin)")
        users = gr.Dataframe(headers=USER_HEADERS, interactive=False, elem_id="account_users")
        with gr.Row():
            new_name = gr.Textbox(label="User name", elem_id="account_new_name")
            new_password = gr.Textbox(label="Password", type="password", elem_id="account_new_password")
            new_role = gr.Dropdown(label="Role", choices=list(ROLES), value=USER, elem_id="account_new_role")
            add = gr.Button("Add account", elem_id="account_add")
        with gr.Row():
            remove_name = gr.Dropdown(label="Account to remove", choices=[], elem_id="account_remove_name")
            remove = gr.Button("Remove account", variant="stop", elem_id="account_remove")
    message = gr.Markdown(elem_id="account_message")

    def refresh(caller: User) -> list:
        rows = [[t.token_id, t.label, t.created] for t in accounts.tokens(caller)]
        names = [u.name for u in accounts.users(caller)] if caller.is_admin else []
        user_rows = [[u.name, u.role] for u in accounts.users(caller)] if caller.is_admin else []
        return [accounts.describe(caller), rows, gr.update(choices=[r[0] for r in rows], value=None),
                gr.update(visible=caller.is_admin), user_rows, gr.update(choices=names, value=None)]

    view = [who, tokens, revoke_id, admin_group, users, remove_name]

    def show(request: gr.Request):
        return refresh(caller_of(request))

    def finish(caller: User, action, *values) -> list:
        """Run an account action for the caller; errors become gr.Error, the view is refreshed after."""
        try:
            note, secret = action(caller, *values)
        except (ValueError, PermissionError) as error:
            raise gr.Error(user_error(error)) from None
        return [*refresh(caller), secret, note]

    def create_token(text: str, request: gr.Request):
        caller = caller_of(request)
        return finish(caller, lambda c: ("Token created.", accounts.create_token(c, text)))

    def revoke_token(token_id: str | None, request: gr.Request):
        def action(caller: User):
            if not token_id:
                raise ValueError("choose a token to revoke")
            accounts.revoke_token(caller, token_id)
            return f"Token {token_id} revoked.", ""
        return finish(caller_of(request), action)

    def add_user(name: str, password: str, role: str, request: gr.Request):
        def action(caller: User):
            created = accounts.add_user(caller, name, password, role)
            return f"Account {created.name} ({created.role}) added.", ""
        return finish(caller_of(request), action)

    def remove_user(name: str | None, request: gr.Request):
        def action(caller: User):
            if not name:
                raise ValueError("choose an account to remove")
            accounts.remove_user(caller, name)
            return f"Account {name} removed.", ""
        return finish(caller_of(request), action)

    outputs = [*view, new_token, message]
    tab.select(show, outputs=view)
    create.click(create_token, inputs=[label], outputs=outputs)
    revoke.click(revoke_token, inputs=[revoke_id], outputs=outputs)
    add.click(add_user, inputs=[new_name, new_password, new_role], outputs=outputs)
    remove.click(remove_user, inputs=[remove_name], outputs=outputs)
