"""A v-prediction SDXL file without the `v_pred` key (NoobAI-style): the user's per-checkpoint setting makes the
loaded model's scheduler predict v with zero terminal SNR, the sampler a job installs does too, and a new
manager (a restart) still honours it."""

from __future__ import annotations

import torch

from tests.support.sdxl_files import BASE, write_single_file
from webui.generation.denoise import use_sampler
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_settings import V_PREDICTION, CheckpointSetting, CheckpointSettings
from webui.models.hashing import HashCache
from webui.models.manager import ModelManager


def manager_of(root, settings_file) -> ModelManager:
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"))
    catalog.refresh()
    return ModelManager(catalog, torch.device("cpu"), torch.float32,
                        checkpoint_settings=CheckpointSettings(settings_file))


def test_the_v_prediction_setting_reaches_the_scheduler_and_survives_a_restart(tmp_path):
    write_single_file(tmp_path / "Stable-diffusion" / "noob_vpred_tiny.safetensors", BASE, seed=3)
    settings_file = tmp_path / "data" / "checkpoint_settings.json"
    manager = manager_of(tmp_path, settings_file)
    with manager.checkout(manager.state_for("noob_vpred_tiny")) as model:
        assert model.scheduler_config["prediction_type"] == "epsilon"
    CheckpointSettings(settings_file).set("noob_vpred_tiny", CheckpointSetting(V_PREDICTION, zero_terminal_snr=True))
    with manager.checkout(manager.state_for("noob_vpred_tiny")) as model:  # the next job, no reload
        use_sampler(model, "Euler a", "Automatic", seed=1)
        assert model.pipeline.scheduler.config.prediction_type == "v_prediction"
        assert model.pipeline.scheduler.config.rescale_betas_zero_snr is True
        assert float(model.pipeline.scheduler.alphas_cumprod[-1]) < 1e-6  # the last step is pure noise
    manager = manager_of(tmp_path, settings_file)
    with manager.checkout(manager.state_for("noob_vpred_tiny")) as model:
        assert model.scheduler_config["prediction_type"] == "v_prediction"
        assert model.scheduler_config["rescale_betas_zero_snr"] is True
