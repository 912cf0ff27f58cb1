"""Every HTTP route group, installed on one FastAPI app (gradio's when the UI runs, else a bare one)."""

from __future__ import annotations

from fastapi import FastAPI

from webui.api.checkpoint_settings_api import build_checkpoint_settings_router
from webui.api.extensions_api import build_extensions_router
from webui.api.jobs_api import build_jobs_router
from webui.api.sdapi import build_api_router
from webui.api.train_api import build_train_router
from webui.context import AppContext


def install_api(app: FastAPI, ctx: AppContext) -> None:
    """Add the API routes; works on an app that is already serving (gradio's), like A1111's API."""
    options = ctx.options  # A1111's server options: POST /options and the Settings tab change what requests fall back on
    app.include_router(build_api_router(ctx, options))
    app.include_router(build_train_router(ctx))
    app.include_router(build_jobs_router(ctx, options))
    app.include_router(build_extensions_router(ctx))
    app.include_router(build_checkpoint_settings_router(ctx))
