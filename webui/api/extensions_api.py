"""Extensions over HTTP: A1111's `GET /sdapi/v1/extensions`, and SD Studio's `/api/v1/extensions`
(every record with its problem and timings, install from a git URL, update, uninstall, switch on/off)
for scripts and for `python -m webui.extensions.check`. The rules live in `ExtensionService`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from webui.api.common import API_PREFIX, ReasonedValidationRoute, admin_caller, caller, translate_errors
from webui.api.sdapi import STRICT_JSON
from webui.context import AppContext
from webui.extensions.service import UNINSTALLED, ExtensionInfo
from webui.security.identity import User

EXTENSIONS_PREFIX = "/api/v1/extensions"


class InstallBody(BaseModel):
    model_config = STRICT_JSON

    url: str


class EnabledBody(BaseModel):
    model_config = STRICT_JSON

    enabled: bool


def a1111_entry(row: ExtensionInfo) -> dict[str, Any]:
    """A1111's extension item: its `version` is the short commit; ours is the manifest's version."""
    return {"name": row.name, "remote": row.remote, "branch": row.branch, "commit_hash": row.commit,
            "version": row.version, "commit_date": row.commit_date, "enabled": row.enabled}


def full_entry(row: ExtensionInfo) -> dict[str, Any]:
    return {"name": row.name, "version": row.version, "description": row.description, "builtin": row.builtin,
            "state": row.state, "enabled": row.enabled, "pending": row.pending, "problem": row.problem,
            "traceback": row.traceback, "import_seconds": round(row.import_seconds, 4), "hooks": list(row.hooks),
            "slow_hooks": list(row.slow_hooks), "hook_calls": dict(row.hook_calls), "routes": list(row.routes),
            "folder": str(row.folder), "remote": row.remote,
            "branch": row.branch, "commit": row.commit, "commit_date": row.commit_date}


def build_extensions_router(ctx: AppContext) -> APIRouter:
    service = ctx.extension_service
    router = APIRouter(route_class=ReasonedValidationRoute)

    @router.get(f"{API_PREFIX}/extensions", dependencies=[Depends(caller)])
    @translate_errors
    def a1111_extensions() -> list[dict[str, Any]]:
        return [a1111_entry(row) for row in service.records() if row.state != UNINSTALLED]

    @router.get(EXTENSIONS_PREFIX, dependencies=[Depends(admin_caller)])
    @translate_errors
    def extensions() -> dict[str, Any]:
        return {"api_version": service.registry.api_version, "extensions": [full_entry(row) for row in service.records()]}

    @router.post(f"{EXTENSIONS_PREFIX}/install")
    @translate_errors
    def install(body: InstallBody, user: User = Depends(caller)) -> dict[str, str]:
        result = service.install(user, body.url)
        return {"name": result.name, "message": result.message}

    @router.post(EXTENSIONS_PREFIX + "/{name}/update")
    @translate_errors
    def update(name: str, user: User = Depends(caller)) -> dict[str, str]:
        result = service.update(user, name)
        return {"name": result.name, "message": result.message}

    @router.delete(EXTENSIONS_PREFIX + "/{name}")
    @translate_errors
    def uninstall(name: str, user: User = Depends(caller)) -> dict[str, str]:
        result = service.uninstall(user, name)
        return {"name": result.name, "message": result.message}

    @router.put(EXTENSIONS_PREFIX + "/{name}/enabled")
    @translate_errors
    def set_enabled(name: str, body: EnabledBody, user: User = Depends(caller)) -> dict[str, str]:
        return {"name": name, "message": service.set_enabled(user, name, body.enabled)}

    return router
