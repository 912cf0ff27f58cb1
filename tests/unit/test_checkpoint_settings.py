"""Per-checkpoint settings (prediction type, zero terminal SNR): stored in the data folder, read back by a new
store (a restart), refused when unknown, turned into the scheduler overrides the loader applies."""

from __future__ import annotations

import json

import pytest

from webui.models.checkpoint_settings import (
    AUTOMATIC, EPSILON, V_PREDICTION, CheckpointSetting, CheckpointSettingError, CheckpointSettings,
)


def test_a_setting_survives_a_new_store_and_the_default_is_not_stored(tmp_path):
    path = tmp_path / "checkpoint_settings.json"
    CheckpointSettings(path).set("xl/noob-vpred", CheckpointSetting(V_PREDICTION, zero_terminal_snr=True))
    again = CheckpointSettings(path)
    assert again.get("xl/noob-vpred") == CheckpointSetting(V_PREDICTION, True)
    assert again.get("other") == CheckpointSetting()
    again.set("xl/noob-vpred", CheckpointSetting())
    assert json.loads(path.read_text()) == {}


@pytest.mark.parametrize(("setting", "overrides"), [
    (CheckpointSetting(), {}),
    (CheckpointSetting(V_PREDICTION), {"prediction_type": "v_prediction"}),
    (CheckpointSetting(V_PREDICTION, True), {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}),
    (CheckpointSetting(EPSILON), {"prediction_type": "epsilon"}),
    (CheckpointSetting(AUTOMATIC, True), {"rescale_betas_zero_snr": True}),
])
def test_settings_become_the_scheduler_overrides_the_v_pred_marker_gives(setting, overrides):
    assert setting.scheduler_overrides() == overrides


def test_unknown_values_are_refused_and_a_hand_edited_bad_file_entry_changes_nothing(tmp_path):
    store = CheckpointSettings(tmp_path / "s.json")
    with pytest.raises(CheckpointSettingError,
                       match="prediction 'v' is unknown; choose one of Automatic, epsilon, v_prediction"):
        store.set("m", CheckpointSetting("v"))
    (tmp_path / "s.json").write_text(json.dumps({"m": {"prediction": "sample", "zero_terminal_snr": True}}))
    assert store.get("m") == CheckpointSetting()
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(CheckpointSettingError, match="s.json cannot be read"):
        store.get("m")
