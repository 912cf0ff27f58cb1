"""Per-checkpoint settings over HTTP (`/sdapi/v1/checkpoint-settings`): read by anyone signed in, changed by an
admin only (they change how a shared model loads for everyone). The checkpoint is named as in A1111's
/sd-models (title, name or short hash); its settings are `webui.models.checkpoint_settings`'s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from webui.api.common import API_PREFIX, ReasonedValidationRoute, admin_caller, caller, translate_errors
from webui.context import AppContext
from webui.models.catalog import CheckpointRecord
from webui.models.checkpoint_settings import AUTOMATIC, CheckpointSetting


class CheckpointSettingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    prediction: str = AUTOMATIC
    zero_terminal_snr: bool = False


def _answer(record: CheckpointRecord, setting: CheckpointSetting) -> dict[str, Any]:
    return {"name": record.name, "title": record.title, "prediction": setting.prediction,
            "zero_terminal_snr": setting.zero_terminal_snr}


def build_checkpoint_settings_router(ctx: AppContext) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, route_class=ReasonedValidationRoute)

    @router.get("/checkpoint-settings", dependencies=[Depends(caller)])
    @translate_errors
    def read_setting(name: str) -> dict[str, Any]:
        return _answer(*ctx.models.checkpoint_setting(name))

    @router.post("/checkpoint-settings", dependencies=[Depends(admin_caller)])
    @translate_errors
    def write_setting(body: CheckpointSettingBody) -> dict[str, Any]:
        setting = CheckpointSetting(prediction=body.prediction, zero_terminal_snr=body.zero_terminal_snr)
        return _answer(*ctx.models.set_checkpoint_setting(body.name, setting))

    return router
