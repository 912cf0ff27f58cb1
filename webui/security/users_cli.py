"""Manage accounts from a shell on the server (a running server picks the changes up at once).

    python -m webui.security.users_cli --data-dir DIR add NAME --role admin   # asks for the password
    python -m webui.security.users_cli --data-dir DIR list
    python -m webui.security.users_cli --data-dir DIR remove NAME
    python -m webui.security.users_cli --data-dir DIR token NAME --label my-bot  # prints a new API token

The password is read from the terminal (or from SDSTUDIO_PASSWORD), never from the command line, so
it does not show up in the process list or shell history.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from webui.security.identity import ROLES, USER
from webui.security.users import AccountError, UserStore
from webui.settings import PROJECT_ROOT


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.security.users_cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT, help="the server's --data-dir")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add an account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default=USER)
    commands.add_parser("list", help="list accounts")
    remove = commands.add_parser("remove", help="remove an account")
    remove.add_argument("name")
    token = commands.add_parser("token", help="create an API token and print it once")
    token.add_argument("name")
    token.add_argument("--label", default="cli")
    args = parser.parse_args(argv)
    try:
        store = UserStore(args.data_dir.resolve() / "users.json")
        if args.command == "add":
            password = os.environ.get("SDSTUDIO_PASSWORD") or getpass.getpass(f"password for {args.name}: ")
            user = store.add_user(args.name, password, args.role)
            print(f"added {user.name} ({user.role})")
        elif args.command == "list":
            for user in store.users():
                print(f"{user.name}\t{user.role}\t{len(store.tokens_of(user.name))} token(s)")
        elif args.command == "remove":
            store.remove_user(args.name)
            print(f"removed {args.name}")
        else:
            print(store.create_token(args.name, args.label))
    except AccountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
