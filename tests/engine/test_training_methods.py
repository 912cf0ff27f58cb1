"""Every training method, end to end on the shipped toy model (CPU, 64 px, a few steps each).

The dataset is six renders of the toy world's held-out hexagon. Each run must produce files the rest of
the app loads (LoRA via `read_lora`, embeddings via `read_embedding`, DreamBooth checkpoints via the
catalog), leave the app's `CheckpointWeights` bitwise unchanged, stop promptly when cancelled, and
continue a saved state at the saved step with the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdstudio_eval.toy_world import held_out_concept_images
from tests.engine.helpers import make_paths
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import build_pipeline, read_checkpoint_weights
from webui.models.default_model import SHIPPED_DEFAULT_MODEL
from webui.models.embeddings import read_embedding
from webui.models.hashing import HashCache
from webui.models.lora import read_lora
from webui.training.config import TrainingConfig
from webui.training.loop import (
    TrainingProgress,
    class_images_folder,
    encode_captions,
    min_snr_weights,
    prediction_target,
    run_training,
)
from webui.training.methods import TrainerModels
from webui.training.methods.pivotal import PivotalMethod
from webui.training.methods.textual_inversion import TextualInversionMethod

CPU = torch.device("cpu")
TOKEN_TABLE_KEY = "embeddings.token_embedding.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The app's weights for the shipped default model, as the manager would hold them (fp32 on CPU)."""
    catalog = CheckpointCatalog(SHIPPED_DEFAULT_MODEL.parent, HashCache(tmp_path_factory.mktemp("hashes") / "h.json"))
    record = next(r for r in catalog.refresh() if r.name == SHIPPED_DEFAULT_MODEL.name)
    return read_checkpoint_weights(catalog.with_hash(record), torch.float32)


@pytest.fixture(scope="module")
def base_snapshot(base):
    return {component: {key: tensor.clone() for key, tensor in sd.items()} for component, sd in base.state_dicts.items()}


@pytest.fixture(scope="module")
def base_modules(base):
    pipeline = build_pipeline(base, CPU, torch.float32)
    return {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder}


@pytest.fixture(scope="module")
def hexagon_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hexagons")
    for index, image in enumerate(held_out_concept_images("hexagon", 6)):
        image.save(folder / f"hexagon_{index}.png")
    return folder


def tiny_config(dataset: Path, **changes) -> TrainingConfig:
    values = dict(
        method="lora", output_name="hexlora", base_checkpoint="sd-studio-toy", dataset_dir=str(dataset),
        trigger_word="hxgn", class_word="shape", resolution=64, min_bucket_resolution=32, max_bucket_resolution=128,
        bucket_step=32, rank=4, alpha=4.0, unet_lr=1e-3, text_encoder_lr=1e-4, embedding_lr=5e-3,
        train_batch_size=2, max_train_steps=2, sample_steps=2, seed=7,
    )
    values.update(changes)
    return TrainingConfig(**values)


def assert_base_unchanged(base, snapshot) -> None:
    for component, state_dict in snapshot.items():
        for key, tensor in state_dict.items():
            assert torch.equal(base.state_dicts[component][key], tensor), f"{component}.{key} changed"


def test_lora_trains_and_exports_a_kohya_file_the_app_reads(base, base_snapshot, base_modules, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    reports: list[TrainingProgress] = []
    config = tiny_config(hexagon_folder, train_text_encoder=True, conv_rank=2, conv_alpha=1.0, max_train_steps=0,
                         max_train_epochs=2, train_batch_size=3, save_every_n_epochs=1, sample_every_n_steps=2,
                         sample_prompts=("hxgn, a shape",), min_snr_gamma=5.0, noise_offset=0.05,
                         gradient_checkpointing=True, lr_scheduler="cosine")
    result = run_training(config, base, paths, CPU, on_progress=reports.append)

    assert not result.cancelled and result.steps_done == 4 and result.epochs_done == 2
    assert math.isfinite(result.final_loss)
    assert result.files == [paths.lora_dir / "hexlora-000001.safetensors", paths.lora_dir / "hexlora.safetensors"]
    assert all(path.is_file() for path in result.files)
    assert "<lora:hexlora:1>" in result.usage and "hxgn" in result.usage

    lora = read_lora(paths.lora_dir / "hexlora.safetensors", base_modules, "sd1")
    assert lora.unmatched_keys == [] and lora.notes == []
    targets = {patch.target for patch in lora.patches}
    assert any(t.startswith("unet.") and t.endswith("attn2.to_k") for t in targets)
    assert any(t.startswith("text_encoder.") and t.endswith("q_proj") for t in targets)
    assert any(t.endswith("resnets.0.conv1") for t in targets)  # LoCon 3x3 convs at conv_rank
    conv_patch = next(p for p in lora.patches if p.target.endswith("resnets.0.conv1"))
    assert conv_patch.rank == 2 and conv_patch.alpha == 1.0
    attention_patch = next(p for p in lora.patches if p.target.endswith("attn1.to_q"))
    assert attention_patch.rank == 4 and attention_patch.alpha == 4.0
    # B (up) starts at zero; trained layers have moved away from it.
    assert any(p.tensors["up"].abs().max() > 0 for p in lora.patches if p.target.startswith("unet."))
    assert lora.trigger_words == ["hxgn"]

    steps = [r.step for r in reports if not r.message]
    assert steps == [1, 2, 3, 4] and all(r.total_steps == 4 and r.total_epochs == 2 for r in reports if not r.message)
    assert all(math.isfinite(r.loss) and math.isfinite(r.smoothed_loss) for r in reports if not r.message)
    sampled = [r for r in reports if r.samples]
    assert sampled and sampled[-1].samples[0][0] == "hxgn, a shape"
    assert isinstance(sampled[-1].samples[0][1], Image.Image) and sampled[-1].samples[0][1].size == (64, 64)
    assert sorted(p.name for p in (paths.samples_dir / "hexlora").glob("*.png")) == ["000002-0.png", "000004-0.png"]
    assert_base_unchanged(base, base_snapshot)


def test_textual_inversion_writes_an_embedding_named_after_the_token(base, base_snapshot, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    config = tiny_config(hexagon_folder, method="textual_inversion", token="HxGn", init_word="shape", num_vectors=2,
                         clip_skip=2, mixed_precision="bf16")
    result = run_training(config, base, paths, CPU)
    assert any("bf16 only applies on CUDA" in warning and "fp32" in warning for warning in result.warnings)

    assert result.files == [paths.embeddings_dir / "hxgn.safetensors"]
    embedding = read_embedding(result.files[0])
    assert embedding.name == "hxgn" and embedding.vector_count == 2 and embedding.width() == {"te1": 64}
    assert result.usage == "hxgn"
    [check] = result.key_checks  # the embedding's one tensor loads in every loader
    assert (check.file, check.kind, check.total, check.complete) == ("hxgn.safetensors", "embedding", 1, True)
    assert_base_unchanged(base, base_snapshot)


def test_textual_inversion_only_moves_the_new_rows(base):
    """Weight decay would shrink every row that reaches the optimizer; the original rows must stay bitwise."""
    pipeline = build_pipeline(base, CPU, torch.float32)
    models = TrainerModels(pipeline=pipeline, family="sd1", device=CPU, base=base, base_hash="")
    config = TrainingConfig(method="textual_inversion", token="hxgn", init_word="shape", num_vectors=3)
    method = TextualInversionMethod(config, models)
    method.prepare()
    table = pipeline.text_encoder.get_input_embeddings().weight
    original = base.state_dicts["text_encoder"][TOKEN_TABLE_KEY]
    new_ids = pipeline.tokenizer.convert_tokens_to_ids(["hxgn", "hxgn_1", "hxgn_2"])
    shape_id = pipeline.tokenizer("shape", add_special_tokens=False).input_ids[0]
    assert new_ids == [original.shape[0], original.shape[0] + 1, original.shape[0] + 2]
    assert torch.equal(table[new_ids[0]].detach(), original[shape_id])  # initialised from the init word

    optimizer = torch.optim.AdamW([{"params": [table], "lr": 1e-2}], weight_decay=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        hidden, _ = encode_captions(models, [method.expand_prompt("a HXGN on the left")], clip_skip=1)
        hidden.pow(2).mean().backward()
        optimizer.step()
        method.after_optimizer_step()

    assert method.expand_prompt("a HXGN") == "a hxgn hxgn_1 hxgn_2"
    assert torch.equal(table[: original.shape[0]].detach(), original)
    assert not torch.equal(table[new_ids[0]].detach(), original[shape_id])


def test_pivotal_saves_a_lora_and_an_embedding_and_freezes_the_vectors_halfway(base, base_modules, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    config = tiny_config(hexagon_folder, method="pivotal", output_name="hexpivot", num_vectors=2, max_train_steps=2,
                         embedding_train_fraction=0.5, init_word="shape", cache_latents=False, flip_augment=True,
                         gradient_accumulation_steps=2)
    result = run_training(config, base, paths, CPU)
    assert result.files == [paths.lora_dir / "hexpivot.safetensors", paths.embeddings_dir / "hexpivot.safetensors"]
    lora = read_lora(result.files[0], base_modules, "sd1")
    assert lora.patches and not lora.unmatched_keys and lora.trigger_words == ["hexpivot"]
    assert read_embedding(result.files[1]).vector_count == 2
    assert result.usage == "<lora:hexpivot:1> hexpivot"
    assert [(check.file, check.kind, check.complete) for check in result.key_checks] == [
        ("hexpivot.safetensors", "lora", True), ("hexpivot.safetensors", "embedding", True)]

    pipeline = build_pipeline(base, CPU, torch.float32)
    method = PivotalMethod(config, TrainerModels(pipeline=pipeline, family="sd1", device=CPU, base=base, base_hash=""))
    method.prepare()
    method.on_step_start(1, 4)
    assert method.text_encoder_trains() and method.embeddings.weights[0].requires_grad
    method.on_step_start(2, 4)
    assert not method.text_encoder_trains() and not method.embeddings.weights[0].requires_grad


def test_dreambooth_with_prior_preservation_saves_a_loadable_checkpoint(base, base_snapshot, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    messages: list[str] = []
    config = tiny_config(hexagon_folder, method="dreambooth", output_name="hexdb", unet_lr=1e-4, text_encoder_lr=1e-4,
                         train_text_encoder=True, with_prior_preservation=True, class_prompt="a shape",
                         num_class_images=2)
    result = run_training(config, base, paths, CPU, on_progress=lambda p: messages.append(p.message))
    assert result.steps_done == 2 and math.isfinite(result.final_loss)
    assert result.files == [paths.checkpoints_dir / "hexdb"]
    assert result.key_checks == []  # a checkpoint is no adapter: nothing to check

    class_folder = class_images_folder(paths, base.record.sha256, "a shape", 64)
    assert sorted(p.name for p in class_folder.glob("*.png")) == ["00000.png", "00001.png"]
    assert any("generating 2 class image" in m for m in messages)

    catalog = CheckpointCatalog(paths.checkpoints_dir, HashCache(tmp_path / "hashes.json"))
    record = next(r for r in catalog.refresh() if r.name == "hexdb")
    assert record.usable and record.architecture.family == "sd1"
    trained = read_checkpoint_weights(record, torch.float32)
    changed = [key for key, tensor in trained.state_dicts["unet"].items()
               if not torch.equal(tensor, base.state_dicts["unet"][key].half().float())]
    assert changed, "DreamBooth did not change the UNet"
    assert not torch.equal(trained.state_dicts["text_encoder"]["encoder.layers.0.self_attn.q_proj.weight"],
                           base.state_dicts["text_encoder"]["encoder.layers.0.self_attn.q_proj.weight"].half().float())
    assert_base_unchanged(base, base_snapshot)

    # DreamBooth-LoRA with the same class prompt reuses the cached class images.
    lora_messages: list[str] = []
    config = tiny_config(hexagon_folder, method="dreambooth_lora", output_name="hexdbl", class_prompt="a shape",
                         num_class_images=2, max_train_steps=1)
    mtimes = [p.stat().st_mtime_ns for p in sorted(class_folder.glob("*.png"))]
    result = run_training(config, base, paths, CPU, on_progress=lambda p: lora_messages.append(p.message))
    assert result.files == [paths.lora_dir / "hexdbl.safetensors"]
    [check] = result.key_checks
    assert check.complete and check.summary().startswith(f"hexdbl.safetensors: {check.total} of {check.total} keys")
    assert not any("generating" in m for m in lora_messages)
    assert [p.stat().st_mtime_ns for p in sorted(class_folder.glob("*.png"))] == mtimes


def test_cancel_stops_at_once_and_keeps_only_finished_epochs(base, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    reports: list[TrainingProgress] = []
    config = tiny_config(hexagon_folder, output_name="hexstop", train_batch_size=3, max_train_steps=0,
                         max_train_epochs=3, save_every_n_epochs=1)

    def should_stop() -> bool:
        return any(r.step >= 3 and not r.message for r in reports)

    result = run_training(config, base, paths, CPU, on_progress=reports.append, should_stop=should_stop)
    assert result.cancelled and result.steps_done == 3
    assert max(r.step for r in reports) == 3
    assert result.files == [paths.lora_dir / "hexstop-000001.safetensors"]
    assert sorted(p.name for p in paths.lora_dir.iterdir()) == ["hexstop-000001.safetensors"]
    assert sorted(p.name for p in paths.states_dir.iterdir()) == ["hexstop-000001-state"]


def test_resume_continues_at_the_saved_step_with_the_same_result(base, hexagon_folder, tmp_path):
    paths = make_paths(tmp_path)
    config = tiny_config(hexagon_folder, output_name="hexfull", train_batch_size=3, max_train_steps=0,
                         max_train_epochs=2, save_every_n_epochs=1, lr_scheduler="linear", lr_warmup_steps=1,
                         use_ema=True, ema_decay=0.7)
    uninterrupted = run_training(config, base, paths, CPU)
    state = paths.states_dir / "hexfull-000001-state"
    assert state.is_dir() and uninterrupted.steps_done == 4

    reports: list[TrainingProgress] = []
    resumed_config = config.replace(output_name="hexresumed", resume_from=str(state))
    resumed = run_training(resumed_config, base, paths, CPU, on_progress=reports.append)
    assert [r.step for r in reports if not r.message] == [3, 4]
    assert any(r.message == "resumed at step 2" for r in reports)
    assert resumed.steps_done == 4 and resumed.epochs_done == 2
    for name in ("", "_ema"):  # the raw weights, and their EMA kept in the state
        full = load_file(paths.lora_dir / f"hexfull{name}.safetensors")
        continued = load_file(paths.lora_dir / f"hexresumed{name}.safetensors")
        assert full.keys() == continued.keys()
        for key in full:
            assert torch.allclose(full[key].float(), continued[key].float(), atol=1e-3), key
    assert resumed.final_loss == pytest.approx(uninterrupted.final_loss, rel=1e-4)


def test_min_snr_weights_follow_the_prediction_type(base):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(base.scheduler_config)
    timesteps = torch.tensor([0, 500, 999])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    epsilon = min_snr_weights(scheduler, timesteps, 5.0, v_prediction=False)
    velocity = min_snr_weights(scheduler, timesteps, 5.0, v_prediction=True)
    assert torch.allclose(epsilon, torch.clamp(snr, max=5.0) / snr)
    assert torch.allclose(velocity, torch.clamp(snr, max=5.0) / (snr + 1))
    assert epsilon[0] < 1e-2 and epsilon[2] == pytest.approx(1.0)  # low-noise steps are down-weighted


def tiny_sdxl_weights(tmp_path: Path):
    """A randomly initialised SDXL-shaped model (two CLIP encoders, text_time embedding) small enough for CPU.

    The second encoder keeps SDXL's legacy `eos_token_id == 2`, which pools at the highest token id.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from webui.models.catalog import CheckpointRecord
    from webui.models.checkpoint_loading import CheckpointWeights
    from webui.models.ldm_conversion import Architecture
    from webui.models.model_configs import config_dir, load_component_config

    torch.manual_seed(0)
    text_configs = [
        CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=eos, pad_token_id=1)
        for eos in (49407, 2)
    ]
    encoders = [CLIPTextModel(text_configs[0]), CLIPTextModelWithProjection(text_configs[1])]
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, sample_size=64)
    configs = {
        "unet": dict(unet.config), "vae": dict(vae.config),
        "text_encoder": {**text_configs[0].to_dict(), "architectures": ["CLIPTextModel"]},
        "text_encoder_2": {**text_configs[1].to_dict(), "architectures": ["CLIPTextModelWithProjection"]},
    }
    modules = {"unet": unet, "vae": vae, "text_encoder": encoders[0], "text_encoder_2": encoders[1]}
    record = CheckpointRecord(name="tiny-sdxl", path=tmp_path / "tiny-sdxl", format="diffusers",
                              architecture=Architecture("sdxl", 4, "SDXL"), sha256="0" * 64)
    return CheckpointWeights(
        record=record, architecture=record.architecture, configs=configs,
        state_dicts={name: {k: v.detach().clone() for k, v in module.state_dict().items()} for name, module in modules.items()},
        tokenizer_folder=config_dir("sdxl"), scheduler_config=load_component_config("sdxl", "scheduler"),
    )


def test_sdxl_pivotal_uses_both_encoders_and_writes_sdxl_files(hexagon_folder, tmp_path):
    weights = tiny_sdxl_weights(tmp_path)
    snapshot = {c: {k: v.clone() for k, v in sd.items()} for c, sd in weights.state_dicts.items()}
    paths = make_paths(tmp_path)
    reports: list[TrainingProgress] = []
    config = tiny_config(hexagon_folder, method="pivotal", output_name="xlpivot", num_vectors=2, init_word="shape",
                         train_text_encoder=True, max_train_steps=2, sample_every_n_steps=2,
                         sample_prompts=("xlpivot",), clip_skip=1)
    result = run_training(config, weights, paths, CPU, on_progress=reports.append)
    assert math.isfinite(result.final_loss)

    lora_keys = load_file(paths.lora_dir / "xlpivot.safetensors").keys()
    assert any(key.startswith("lora_unet_input_blocks_") for key in lora_keys)  # SDXL LoRAs use LDM names
    assert any(key.startswith("lora_te1_") for key in lora_keys) and any(key.startswith("lora_te2_") for key in lora_keys)
    pipeline = build_pipeline(weights, CPU, torch.float32)
    lora = read_lora(paths.lora_dir / "xlpivot.safetensors", {"unet": pipeline.unet, "text_encoder": pipeline.text_encoder,
                                                             "text_encoder_2": pipeline.text_encoder_2}, "sdxl")
    assert not lora.unmatched_keys
    embedding = read_embedding(paths.embeddings_dir / "xlpivot.safetensors")
    assert embedding.width() == {"te1": 32, "te2": 32} and embedding.vector_count == 2
    assert any(r.samples for r in reports)
    lora_check, embedding_check = result.key_checks  # both encoders' keys load everywhere
    assert lora_check.complete and lora_check.total == len(lora_keys) and embedding_check.complete
    assert embedding_check.total == 2  # clip_l and clip_g
    assert_base_unchanged(weights, snapshot)


def test_new_tokens_make_legacy_clip_configs_pool_at_end_of_text(tmp_path):
    weights = tiny_sdxl_weights(tmp_path)
    pipeline = build_pipeline(weights, CPU, torch.float32)
    models = TrainerModels(pipeline=pipeline, family="sdxl", device=CPU, base=weights, base_hash="")
    method = TextualInversionMethod(TrainingConfig(method="textual_inversion", token="xltok", init_word="shape"), models)
    method.prepare()
    ids = pipeline.tokenizer_2(["xltok shape"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    pooled = pipeline.text_encoder_2(ids).text_embeds
    eos_position = int((ids[0] == pipeline.tokenizer_2.eos_token_id).nonzero()[0])
    hidden = pipeline.text_encoder_2.text_model(ids).last_hidden_state
    expected = pipeline.text_encoder_2.text_projection(hidden[:, eos_position])
    assert torch.allclose(pooled, expected)


def test_headless_cli_trains_into_the_app_folders(data_dir, hexagon_folder, tmp_path, capsys):
    from webui.train import main

    config = tiny_config(hexagon_folder, output_name="clilora", max_train_steps=2)
    config_file = config.save(tmp_path / "job.json")
    assert main([str(config_file), "--data-dir", str(data_dir), "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "step 1/2" in output and "step 2/2" in output
    lora = data_dir / "models" / "Lora" / "clilora.safetensors"
    assert lora.is_file() and f"wrote {lora}" in output
    assert "keys: clilora.safetensors: " in output and "done: 2 steps" in output

    bad = config.replace(lr_scheduler="sometimes").save(tmp_path / "bad.json")
    assert main([str(bad), "--data-dir", str(data_dir)]) == 2
    assert "lr_scheduler: 'sometimes' is not one of" in capsys.readouterr().err
    missing_model = config.replace(base_checkpoint="nope").save(tmp_path / "missing.json")
    assert main([str(missing_model), "--data-dir", str(data_dir), "--device", "cpu"]) == 2
    assert "checkpoint 'nope' not found" in capsys.readouterr().err


def test_the_target_follows_the_base_scheduler_prediction_type(base):
    from diffusers import DDPMScheduler

    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    epsilon = DDPMScheduler.from_config(base.scheduler_config)
    assert torch.equal(prediction_target(epsilon, latents, noise, timesteps), noise)
    velocity = DDPMScheduler.from_config({**base.scheduler_config, "prediction_type": "v_prediction"})
    alphas = velocity.alphas_cumprod[timesteps].reshape(2, 1, 1, 1)
    expected = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents
    assert torch.allclose(prediction_target(velocity, latents, noise, timesteps), expected, atol=1e-6)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_generation_and_training_encode_text_with_one_rule(base, tmp_path, clip_skip):
    """Issue 17: the app's prompt encoder and the trainer's caption encoder agree for a prompt of one chunk,
    on SD1 (the default model) and SDXL (both encoders, penultimate layers, pooled output)."""
    from webui.generation.conditioning import PromptEncoder
    from webui.training.loop import encode_captions

    for weights in (base, tiny_sdxl_weights(tmp_path)):
        pipeline = build_pipeline(weights, CPU, torch.float32)
        family = weights.architecture.family
        models = TrainerModels(pipeline=pipeline, family=family, device=CPU, base=weights, base_hash="")
        generated = PromptEncoder(pipeline, family, clip_skip).encode("a red circle on a blue background")
        with torch.no_grad():
            hidden, pooled = encode_captions(models, ["a red circle on a blue background"], clip_skip)
        assert torch.allclose(generated.hidden, hidden, atol=1e-6), family
        assert (generated.pooled is None) == (pooled is None) == (family != "sdxl")
        if pooled is not None:
            assert torch.allclose(generated.pooled, pooled, atol=1e-6)
