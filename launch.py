"""Start SD Studio: installs what is missing into .venv (unless --skip-install), then serves the app.

    python3 launch.py                 # UI on http://127.0.0.1:7860 with the embedded default model
    python3 launch.py --listen --api  # reachable from the network, plus the A1111-compatible API
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from webui.settings import build_arg_parser

    if "-h" in argv or "--help" in argv:
        build_arg_parser().print_help()
        return 0
    if "--skip-install" not in argv:
        from webui.install import ensure_environment, reexec_in_venv

        ensure_environment()
        reexec_in_venv(Path(__file__).resolve(), argv)
    from webui.app import run

    return run(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main(sys.argv[1:]))
