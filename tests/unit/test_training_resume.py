"""Which saved state a stopped training job resumes from (`webui.training.resume.last_saved_state`): the
latest one this run wrote, never an earlier run's under the same name, else the state the run started from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from webui.training.config import TrainingConfig
from webui.training.loop import STATE_FORMAT, STATE_VERSION
from webui.training.resume import last_saved_state

STARTED = 1_000_000.0


def write_state(folder: Path, name: str, step: int, written_at: float, method: str = "lora") -> Path:
    state = folder / name
    state.mkdir(parents=True)
    info = state / "state.json"
    info.write_text(json.dumps({"format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "method": method}))
    os.utime(info, (written_at, written_at))
    return state


def test_the_latest_state_this_run_saved_is_chosen(tmp_path):
    config = TrainingConfig(method="lora", output_name="hex")
    write_state(tmp_path, "hex-000001-state", 2, STARTED + 5)
    latest = write_state(tmp_path, "hex-000002-state", 4, STARTED + 9)
    write_state(tmp_path, "hex-state", 9, STARTED - 50)          # an earlier run's final state
    write_state(tmp_path, "hex-000003-state", 6, STARTED + 12, method="dreambooth")  # another method's
    write_state(tmp_path, "hexagon-000009-state", 18, STARTED + 12)  # another output name
    (tmp_path / "hex-000004-state").mkdir()  # a folder without state.json
    assert last_saved_state(tmp_path, config, STARTED) == latest


def test_a_run_that_saved_nothing_goes_back_to_the_state_it_started_from(tmp_path):
    origin = write_state(tmp_path, "hex-000001-state", 2, STARTED - 100)
    resumed = TrainingConfig(method="lora", output_name="hex", resume_from=str(origin))
    assert last_saved_state(tmp_path, resumed, STARTED) == origin
    assert last_saved_state(tmp_path, resumed, None) == origin  # cancelled while it waited
    plain = TrainingConfig(method="lora", output_name="hex")
    assert last_saved_state(tmp_path, plain, STARTED) is None
    assert last_saved_state(tmp_path / "missing", plain, STARTED) is None
