"""Account use cases with their permission rules: everyone manages their own API tokens, admins manage users.

The Account tab (and any future HTTP route for it) calls these with the caller from
`request_user`, so the rules live here and not in widgets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from webui.security.identity import ADMIN, LOCAL_ADMIN, User
from webui.security.auth import Authenticator
from webui.security.users import AccountError


@dataclass(frozen=True)
class TokenRow:
    token_id: str
    label: str
    created: str


class AccountService:
    def __init__(self, authenticator: Authenticator):
        self._auth = authenticator

    @property
    def login_required(self) -> bool:
        return not self._auth.open

    def describe(self, caller: User) -> str:
        if caller == LOCAL_ADMIN:
            return ("This server has no login: it only answers on this machine (or was started with "
                    "--insecure-no-auth). Adding an account below turns the login on.")
        return f"Logged in as **{caller.name}** ({caller.role})."

    def tokens(self, caller: User) -> list[TokenRow]:
        return [TokenRow(t.token_id, t.label, time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created)))
                for t in self._auth.users.tokens_of(caller.name)]

    def create_token(self, caller: User, label: str) -> str:
        if caller.name not in {user.name for user in self._auth.users.users()}:
            raise AccountError("API tokens belong to accounts: you are logged in without one "
                               "(start-up token or no login); an admin can create an account below")
        return self._auth.users.create_token(caller.name, label)

    def revoke_token(self, caller: User, token_id: str) -> None:
        self._auth.users.revoke_token(caller.name, token_id)

    def users(self, caller: User) -> list[User]:
        caller.require_admin("listing accounts")
        return self._auth.users.users()

    def add_user(self, caller: User, name: str, password: str, role: str) -> User:
        caller.require_admin("adding accounts")
        if len(self._auth.users) == 0 and role != ADMIN:
            raise AccountError("the first account must be an admin: it turns the login on")
        return self._auth.users.add_user(name.strip(), password, role)

    def remove_user(self, caller: User, name: str) -> None:
        caller.require_admin("removing accounts")
        if name == caller.name:
            raise AccountError("you cannot remove your own account while logged in with it")
        self._auth.users.remove_user(name)
