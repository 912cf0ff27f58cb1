"""Per-checkpoint user settings: what a file cannot say about itself, chosen once by an admin and honoured by
every load. Today that is the prediction type: NoobAI-style v-prediction SDXL fine-tunes published without
the `v_pred` marker key generate noise as epsilon models, and Forge/reForge users pick "v-prediction" and
"zero terminal SNR" for them by hand.

Where: `<data>/checkpoint_settings.json`, keyed by the checkpoint's name (its path below the checkpoint folder,
A1111's model name). A1111 keeps its per-model user metadata (description, activation text, preferred
weight, SD version) in a `<checkpoint>.json` beside the model file; these settings change how a shared model
loads for everyone, so they stay in the app's own data folder and the models folder is never written.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_SETTINGS_FILE = "checkpoint_settings.json"  # in the data folder
AUTOMATIC = "Automatic"  # as the file says (its `v_pred` / `ztsnr` marker keys, else the family's default)
EPSILON, V_PREDICTION = "epsilon", "v_prediction"
PREDICTIONS = (AUTOMATIC, EPSILON, V_PREDICTION)


class CheckpointSettingError(ValueError):
    """A setting value that cannot be used; the message names the allowed values."""


@dataclass(frozen=True)
class CheckpointSetting:
    """One checkpoint's settings; the defaults change nothing."""

    prediction: str = AUTOMATIC
    zero_terminal_snr: bool = False

    def check(self) -> "CheckpointSetting":
        if self.prediction not in PREDICTIONS:
            raise CheckpointSettingError(
                f"prediction {self.prediction!r} is unknown; choose one of {', '.join(PREDICTIONS)}")
        if not isinstance(self.zero_terminal_snr, bool):
            raise CheckpointSettingError("zero_terminal_snr must be true or false")
        return self

    def scheduler_overrides(self) -> dict[str, Any]:
        """What the loader puts over the checkpoint's scheduler config: the prediction type and, with zero
        terminal SNR, rescaled betas (as a file's `v_pred` / `ztsnr` markers do)."""
        overrides: dict[str, Any] = {}
        if self.prediction != AUTOMATIC:
            overrides["prediction_type"] = self.prediction
        if self.zero_terminal_snr:
            overrides["rescale_betas_zero_snr"] = True
        return overrides


class CheckpointSettings:
    """The settings file; thread-safe, written whole (to a temporary file, then renamed) on each change."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointSettingError(f"{self.path.name} cannot be read ({error}); fix or remove it") from error
        return data if isinstance(data, dict) else {}

    def get(self, name: str) -> CheckpointSetting:
        with self._lock:
            stored = self._read().get(name) or {}
        known = {key: stored[key] for key in ("prediction", "zero_terminal_snr") if key in stored}
        try:
            return CheckpointSetting(**known).check()
        except CheckpointSettingError:
            return CheckpointSetting()  # a hand-edited bad value changes nothing rather than break loading

    def set(self, name: str, setting: CheckpointSetting) -> CheckpointSetting:
        setting.check()
        with self._lock:
            data = self._read()
            if setting == CheckpointSetting():
                data.pop(name, None)
            else:
                data[name] = asdict(setting)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(temporary, self.path)
        return setting

    def scheduler_overrides(self, name: str) -> dict[str, Any]:
        return self.get(name).scheduler_overrides()
