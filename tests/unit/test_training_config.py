"""TrainingConfig: validation messages a UI can show as they are, JSON round trips, presets, lr schedules."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from webui.training.config import (
    LR_SCHEDULERS,
    METHODS,
    TrainingConfig,
    TrainingConfigError,
    list_presets,
    load_preset,
    save_user_preset,
)
from webui.training.optim import build_lr_scheduler, build_optimizer, optimizer_unavailable_reason

JOB = {"output_name": "nosnja", "base_checkpoint": "sd-studio-toy", "dataset_dir": "/data/nosnja",
       "trigger_word": "nosnja", "class_word": "girl"}


def job_config(**changes) -> TrainingConfig:
    return TrainingConfig(**{**JOB, **changes})


def error_of(config: TrainingConfig) -> TrainingConfigError:
    with pytest.raises(TrainingConfigError) as caught:
        config.validate()
    return caught.value


def test_a_filled_in_default_config_is_valid_for_every_method():
    for method in METHODS:
        assert job_config(method=method).validate().method == method


@pytest.mark.parametrize("changes, field, words", [
    ({"lr_scheduler": "cosin"}, "lr_scheduler", ["'cosin'", "constant_with_warmup", "cosine_with_restarts", "polynomial"]),
    ({"method": "hypernetwork"}, "method", ["dreambooth_lora", "textual_inversion", "pivotal"]),
    ({"optimizer": "SGD"}, "optimizer", ["AdamW", "Adafactor", "Prodigy"]),
    ({"mixed_precision": "fp8"}, "mixed_precision", ["no", "fp16", "bf16"]),
    ({"rank": 0}, "rank", ["1 to 1024", "got 0"]),
    ({"unet_lr": -1e-4}, "unet_lr", ["above 0"]),
    ({"output_name": ""}, "output_name", ["empty"]),
    ({"output_name": "my/lora"}, "output_name", ["file name"]),
    ({"resolution": 500}, "resolution", ["multiple of 8"]),
    ({"lora_file_layout": "peft"}, "lora_file_layout", ["auto", "kohya", "diffusers"]),
    ({"network_type": "boft"}, "network_type", ["'boft'", "lora", "loha", "lokr", "dora"]),
    ({"target_modules": ("to_q", "attn")}, "target_modules", ["'attn'", "to_out.0", "ff.net.2"]),
    ({"max_train_epochs": 0, "max_train_steps": 0}, "max_train_steps", ["above 0"]),
    ({"sample_every_n_steps": 50}, "sample_prompts", ["at least one prompt"]),
    ({"min_bucket_resolution": 1024}, "min_bucket_resolution", ["64 to 512"]),
    ({"base_checkpoint": " "}, "base_checkpoint", ["checkpoint"]),
    ({"caption_extension": ".json"}, "caption_extension", ["'.json'", ".txt", ".caption"]),
    ({"caption_extension": ".pth"}, "caption_extension", ["'.pth'", ".txt", ".caption"]),
])
def test_validation_names_the_field_and_what_it_accepts(changes, field, words):
    error = error_of(job_config(**changes))
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    for word in words:
        assert word in str(error)


def test_method_specific_requirements():
    ti = job_config(method="textual_inversion", trigger_word="", token="", class_word="")
    assert error_of(ti).field == "token"
    assert error_of(ti.replace(token="two words")).field == "token"
    assert error_of(ti.replace(token="nosnja")).field == "init_word"
    assert ti.replace(token="NoSnja", init_word="girl").validate().effective_token == "nosnja"
    assert error_of(job_config(method="pivotal", embedding_train_fraction=1.5)).field == "embedding_train_fraction"
    assert error_of(job_config(method="dreambooth", with_prior_preservation=True, class_word="")).field == "class_prompt"
    assert error_of(job_config(method="textual_inversion", with_prior_preservation=True)).field == "with_prior_preservation"
    # LoRA-only settings do not block methods that have no network.
    assert job_config(method="textual_inversion", rank=0).validate()


def test_derived_values():
    config = job_config(method="textual_inversion", token="Hxgn", num_vectors=3)
    assert config.token_strings == ("hxgn", "hxgn_1", "hxgn_2")
    assert config.effective_trigger == "hxgn" and config.effective_init_word == "girl"
    assert job_config(method="dreambooth_lora").uses_prior_preservation  # always, by definition
    assert not job_config(method="lora").uses_prior_preservation
    assert job_config(method="dreambooth", with_prior_preservation=True).effective_class_prompt == "a girl"
    assert job_config(class_prompt="photo of a girl").effective_class_prompt == "photo of a girl"


def test_optional_optimizers_are_refused_with_an_install_hint_when_missing():
    for name, package in (("AdamW8bit", "bitsandbytes"), ("Prodigy", "prodigyopt")):
        config = job_config(optimizer=name)
        if importlib.util.find_spec(package) is None:
            assert f"pip install {package}" in str(error_of(config))
            assert error_of(config).field == "optimizer"
        else:
            assert optimizer_unavailable_reason(name) is None and config.validate()
    assert optimizer_unavailable_reason("AdamW") is None and optimizer_unavailable_reason("Adafactor") is None


def test_json_round_trip(tmp_path):
    config = job_config(method="pivotal", target_modules=("to_q", "to_v", "ff.net.2"), sample_prompts=("a", "b"),
                        unet_lr=3e-4, mixed_precision="bf16", num_vectors=4, flip_augment=True)
    path = config.save(tmp_path / "job.json")
    assert TrainingConfig.load(path) == config
    data = json.loads(path.read_text())
    assert data["target_modules"] == ["to_q", "to_v", "ff.net.2"] and data["unet_lr"] == 3e-4
    assert not list(tmp_path.glob("*.partial"))


def test_json_errors_name_the_setting(tmp_path):
    with pytest.raises(TrainingConfigError) as unknown:
        TrainingConfig.from_dict({"learning_rate": 1e-4})
    assert unknown.value.field == "learning_rate" and "unet_lr" in str(unknown.value)
    with pytest.raises(TrainingConfigError) as wrong_type:
        TrainingConfig.from_dict({"rank": "sixteen"})
    assert wrong_type.value.field == "rank"
    with pytest.raises(TrainingConfigError) as wrong_bool:
        TrainingConfig.from_dict({"flip_augment": "yes"})
    assert wrong_bool.value.field == "flip_augment"
    assert TrainingConfig.from_dict({"rank": 8.0, "alpha": 4}).rank == 8  # JSON numbers are forgiving where exact
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TrainingConfigError, match="not valid JSON"):
        TrainingConfig.load(broken)


def test_every_shipped_preset_loads_and_validates():
    names = list_presets()
    for family in ("sd1", "sdxl", "toy"):
        for method in ("lora", "dreambooth", "dreambooth_lora", "textual_inversion", "pivotal"):
            assert f"{family}_{method}" in names
    for name in names:
        preset = load_preset(name)
        assert preset.method in METHODS
        filled = preset.replace(**JOB)
        if optimizer_unavailable_reason(preset.optimizer) is None:
            filled.validate()


def test_presets_carry_the_recipes_people_use():
    lora = load_preset("sd1_lora")
    assert (lora.rank, lora.alpha, lora.unet_lr, lora.resolution) == (16, 16.0, 1e-4, 512)
    assert lora.text_encoder_lr < lora.unet_lr and lora.min_snr_gamma == 5.0 and lora.noise_offset == 0.05
    dreambooth = load_preset("sd1_dreambooth")
    assert dreambooth.unet_lr == 5e-6 and dreambooth.with_prior_preservation and dreambooth.prior_loss_weight == 1.0
    assert 100 <= dreambooth.num_class_images <= 200 and 400 <= dreambooth.max_train_steps <= 1200
    ti = load_preset("sd1_textual_inversion")
    assert (ti.embedding_lr, ti.max_train_steps) == (5e-4, 3000)
    pivotal = load_preset("sd1_pivotal")
    assert pivotal.embedding_train_fraction == 0.5 and pivotal.num_vectors == 2
    assert load_preset("sdxl_lora").resolution == 1024 and load_preset("sdxl_pivotal").resolution == 1024
    assert all(load_preset(name).mixed_precision == "bf16" for name in list_presets() if not name.startswith("toy_"))


def test_the_default_models_presets_train_at_its_native_size_in_full_precision():
    """The toy_* presets are for the embedded 128 px model, which people mostly train on a CPU (no bf16 there)."""
    toy = [name for name in list_presets() if name.startswith("toy_")]
    assert len(toy) == 5
    for name in toy:
        preset = load_preset(name)
        assert (preset.resolution, preset.mixed_precision, preset.gradient_checkpointing) == (128, "no", False)
        assert preset.min_bucket_resolution <= 128 <= preset.max_bucket_resolution


def test_user_presets_save_without_job_fields_and_shadow_nothing(tmp_path):
    config = job_config(rank=32, alpha=8.0, unet_lr=2e-4, resume_from="/somewhere")
    path = save_user_preset(config, tmp_path, "my_style")
    saved = json.loads(path.read_text())
    assert saved["rank"] == 32 and "output_name" not in saved and "dataset_dir" not in saved and "resume_from" not in saved
    assert "my_style" in list_presets(tmp_path)
    loaded = load_preset("my_style", tmp_path)
    assert (loaded.rank, loaded.alpha, loaded.unet_lr, loaded.output_name) == (32, 8.0, 2e-4, "")
    with pytest.raises(TrainingConfigError, match="sd1_lora"):
        load_preset("nope", tmp_path)
    with pytest.raises(TrainingConfigError):
        save_user_preset(config, tmp_path, "../escape")


def test_a_preset_name_cannot_read_json_outside_the_preset_folders(tmp_path):
    presets, outside = tmp_path / "presets", tmp_path / "outside"
    presets.mkdir()
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"output_name": "SECRET-OUTPUT-NAME"}))
    for name in ("../outside/secret", str(outside / "secret"), ".hidden", "a/b", None):
        with pytest.raises(TrainingConfigError) as refused:
            load_preset(name, presets)
        # The refusal names the field and never shows what the outside file holds.
        assert refused.value.field == "preset" and "SECRET-OUTPUT-NAME" not in str(refused.value)


def _learning_rates(name: str, total: int, warmup: int = 0) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("AdamW", [{"params": [parameter], "lr": 1.0}], weight_decay=0.0)
    scheduler = build_lr_scheduler(name, optimizer, total_steps=total, warmup_steps=warmup, cycles=2, power=2.0)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_lr_schedules_have_their_shapes():
    assert set(LR_SCHEDULERS) == {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial"}
    assert _learning_rates("constant", 10) == [1.0] * 10
    assert _learning_rates("constant", 10, warmup=5)[:2] == [0.0, 0.2]  # a warmup is honoured, as in kohya
    linear = _learning_rates("linear", 10)
    assert linear[0] == 1.0 and linear[-1] == pytest.approx(0.1)
    cosine = _learning_rates("cosine", 100)
    assert cosine[50] == pytest.approx(0.5, abs=0.02) and cosine[-1] < 0.01
    restarts = _learning_rates("cosine_with_restarts", 100)
    assert restarts[49] < 0.01 and restarts[50] == pytest.approx(1.0)  # two cycles
    polynomial = _learning_rates("polynomial", 10)
    assert polynomial[5] < linear[5]  # power 2 decays faster early than linear


def test_saving_one_preset_name_from_several_requests_at_once_never_fails(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    configs = [job_config(rank=rank) for rank in range(1, 17)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda config: save_user_preset(config, tmp_path, "shared"), configs))
    assert set(paths) == {tmp_path / "shared.json"}
    assert 1 <= load_preset("shared", tmp_path).rank <= 16
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shared.json"]


def test_dora_trains_for_every_family_but_not_into_a_dits_original_names():
    """DoRA has PEFT keys (lora_magnitude_vector), so SD3.5 / Flux take it in their diffusers layout; their kohya
    layout joins fused layers, whose magnitudes would need every part trained."""
    from webui.models.families import family_named

    dora = job_config(network_type="dora").validate()
    assert dora.check_family(family_named("sd1")) and dora.check_family(family_named("sd3"))
    assert dora.replace(lora_file_layout="kohya").check_family(family_named("sdxl"))
    with pytest.raises(TrainingConfigError, match="lora_file_layout: .*DoRA.* choose the auto or diffusers layout"):
        dora.replace(lora_file_layout="kohya").check_family(family_named("flux"))
