"""A corrupt job store does not stop the app: it is moved aside with a warning and jobs run as usual."""

from __future__ import annotations

import logging

from tests.conftest import with_default_model
from webui.context import JOB_STORE_FILE, build_context
from webui.settings import settings_from_args


def test_a_corrupt_job_store_is_moved_aside_and_the_app_runs_jobs(tmp_path, default_model_folder, caplog):
    data = with_default_model(tmp_path, default_model_folder)
    (data / JOB_STORE_FILE).write_bytes(b"this is not a database, it was cut short by a full disk" * 100)
    with caplog.at_level(logging.WARNING):
        ctx = build_context(settings_from_args(["--data-dir", str(data)]))
    try:
        assert "could not be read" in caplog.text
        moved = list(data.glob(f"{JOB_STORE_FILE}.corrupt-*"))
        assert len(moved) == 1 and moved[0].read_bytes().startswith(b"this is not a database")
        record = ctx.models.select_checkpoint("sd-studio-toy")  # a job through the fresh store
        assert record.name == "sd-studio-toy"
        assert [r.kind for r in ctx.scheduler.history()] == ["load-checkpoint"]
    finally:
        ctx.close()
