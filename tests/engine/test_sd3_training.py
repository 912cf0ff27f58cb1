"""LoRA training on an SD3.5 Medium checkpoint through the TrainingService, as the Train tab and the API drive it.

A tiny SD3.5 Medium of the exact architecture (MMDiT-X, 16-channel VAE, CLIP-L/G + T5; tests/support/sd3_files.py)
is written as the single file people download and trained for two flow-matching steps. The LoRA it writes must
load into diffusers' own `StableDiffusion3Pipeline.load_lora_weights` with every key used and the trained alpha,
and change what the transformer predicts by exactly the trained update.
"""

from __future__ import annotations

import json
import math

import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdstudio_eval.toy_world import held_out_concept_images
from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, write_single_file
from webui.context import build_context
from webui.models.model_configs import load_tokenizers
from webui.settings import settings_from_args
from webui.training.config import TrainingConfig, TrainingConfigError, load_preset
from webui.training.objectives import FlowMatching
from webui.training.service import preset_names, start_training

SEED = 1
RANK, ALPHA = 4, 2.0


def sd3_config(**changes) -> TrainingConfig:
    values = dict(method="lora", output_name="sd3hex", dataset_dir="hexagons", trigger_word="hxgn", class_word="shape",
                  resolution=64, enable_bucketing=False, rank=RANK, alpha=ALPHA, unet_lr=1e-2, max_train_steps=2,
                  max_train_epochs=0, train_batch_size=1, seed=3)
    values.update(changes)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("sd3-train")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_single_file(checkpoints / "sd3.5_medium_tiny.safetensors", tiny_sd3_modules(MEDIUM, seed=SEED),
                      dtype=torch.float32)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    folder = context.settings.datasets_folder / "hexagons"
    folder.mkdir(parents=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 2)):
        image.save(folder / f"hexagon_{index}.png")
    yield context
    context.close()


@pytest.fixture(scope="module")
def trained(ctx):
    return start_training(ctx.training, sd3_config()).result(timeout=600)


def expected_layers(transformer: torch.nn.Module) -> set[str]:
    """Every attention projection of both streams in every joint block (+ MMDiT-X's attn2), by diffusers path."""
    names = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    return {path for path, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)
            and path.startswith("transformer_blocks.") and any(path.endswith(f".attn.{n}") or path.endswith(f".attn2.{n}")
                                                                for n in names)}


def test_two_steps_train_with_a_finite_loss_and_write_a_diffusers_keyed_lora_with_sd3_metadata(trained):
    assert not trained.cancelled and trained.steps_done == 2
    assert trained.final_loss is not None and math.isfinite(trained.final_loss)
    [path] = trained.files
    assert path.name == "sd3hex.safetensors" and path.is_file()
    layers = expected_layers(tiny_sd3_modules(MEDIUM, seed=SEED)["transformer"])
    assert any(".attn2." in layer for layer in layers) and any("add_q_proj" in layer for layer in layers)
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert keys == {f"transformer.{layer}.lora_{part}.weight" for layer in layers for part in "AB"}
    assert metadata["ss_base_model_version"] == "sd3"
    assert metadata["modelspec.architecture"] == "stable-diffusion-3.5-medium/lora"
    assert metadata["modelspec.prediction_type"] == "flow"
    adapter = json.loads(metadata["lora_adapter_metadata"])
    assert (adapter["transformer.r"], adapter["transformer.lora_alpha"]) == (RANK, ALPHA)


def test_diffusers_sd3_pipeline_loads_every_key_and_the_transformer_changes_by_the_trained_update(trained):
    [path] = trained.files
    modules = tiny_sd3_modules(MEDIUM, seed=SEED)
    pipeline = diffusers.StableDiffusion3Pipeline(
        **modules, **dict(zip(("tokenizer", "tokenizer_2", "tokenizer_3"), load_tokenizers("sd3"))),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    transformer = pipeline.transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 8, 8, generator=generator),
                  encoder_hidden_states=torch.randn(1, 5, 128, generator=generator),
                  pooled_projections=torch.randn(1, 128, generator=generator), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        before = transformer(**inputs).sample
    saved = load_file(str(path))
    # What the file says the update is: alpha / rank * B @ A, merged by hand into a copy of the weights.
    merged = {name: module.weight.detach().clone() for name, module in transformer.named_modules()
              if isinstance(module, torch.nn.Linear)}
    for key in saved:
        if key.endswith(".lora_A.weight"):
            layer = key[len("transformer."):-len(".lora_A.weight")]
            up = saved[key.replace("lora_A", "lora_B")].float()
            merged[layer] += ALPHA / RANK * up @ saved[key].float()

    pipeline.load_lora_weights(str(path))

    from peft.tuners.lora import LoraLayer
    adapted = {name: layer for name, layer in transformer.named_modules() if isinstance(layer, LoraLayer)}
    assert {f"transformer.{name}.lora_{part}.weight" for name in adapted for part in "AB"} == set(saved)
    for name, layer in adapted.items():  # every tensor of the file is the one diffusers put in place
        adapter = next(iter(layer.lora_A))
        assert torch.equal(layer.lora_A[adapter].weight.float(), saved[f"transformer.{name}.lora_A.weight"].float())
        assert layer.scaling[adapter] == pytest.approx(ALPHA / RANK)
    with torch.no_grad():
        after = transformer(**inputs).sample
    assert not torch.allclose(before, after, atol=1e-5)
    reference = tiny_sd3_modules(MEDIUM, seed=SEED)["transformer"]
    with torch.no_grad():
        for name, module in reference.named_modules():
            if name in merged:
                module.weight.copy_(merged[name])
        expected = reference(**inputs).sample
    assert torch.allclose(after, expected, atol=1e-4)


def test_flow_matching_noises_between_latents_and_noise_and_targets_their_difference():
    objective = FlowMatching(sd3_config(), {"shift": 3.0, "num_train_timesteps": 1000})
    latents, noise = torch.randn(64, 16, 4, 4), torch.randn(64, 16, 4, 4)
    batch = objective.noised(latents, noise, torch.Generator().manual_seed(0))
    sigmas = batch.timesteps / 1000
    assert torch.all((sigmas > 0) & (sigmas < 1))
    shaped = sigmas.reshape(-1, 1, 1, 1)
    assert torch.allclose(batch.noisy, (1 - shaped) * latents + shaped * noise, atol=1e-6)
    assert torch.equal(batch.target, noise - latents) and batch.weights is None
    # shift 3 moves the logit-normal's median noise level 0.5 to 0.75, as SD3's sampling schedule does
    many = objective.draw_sigmas(20_000, torch.Generator().manual_seed(1))
    assert many.median().item() == pytest.approx(0.75, abs=0.02)
    uniform = FlowMatching(sd3_config(flow_timestep_sampling="uniform"), {"shift": 1.0}).draw_sigmas(
        20_000, torch.Generator().manual_seed(1))
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.02)


def test_the_sd3_presets_are_offered_for_an_sd3_model_and_methods_it_cannot_train_are_refused(ctx, trained):
    assert preset_names(ctx.training, None)[:2] == ["sd3_dreambooth_lora", "sd3_lora"]
    preset = load_preset("sd3_lora")
    assert (preset.resolution, preset.flow_timestep_sampling, preset.train_text_encoder) == (1024, "logit_normal", False)
    monitor = ctx.training.monitor
    with pytest.raises(TrainingConfigError) as caught:
        start_training(ctx.training, sd3_config(method="textual_inversion", output_name="sd3ti"))
    assert caught.value.field == "method" and "SD3.5" in str(caught.value)
    with pytest.raises(TrainingConfigError, match="resolution: must be a multiple of 16 for SD3.5"):
        start_training(ctx.training, sd3_config(resolution=72))  # 9x9 latents: the 2x2 patch embedding cannot
    assert ctx.training.monitor is monitor and ctx.scheduler.pending == 0


def test_dreambooth_lora_with_text_encoders_feed_forwards_and_samples_loads_whole_into_diffusers(ctx, trained):
    changes = dict(method="dreambooth_lora", output_name="sd3db", train_text_encoder=True, num_class_images=1,
                   sample_every_n_steps=2, sample_prompts=("hxgn, a shape",), sample_steps=2, min_snr_gamma=5.0,
                   target_modules=("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"))
    result = start_training(ctx.training, sd3_config(**changes)).result(timeout=600)
    assert not result.cancelled and math.isfinite(result.final_loss)
    assert any("ignores" in warning and "min_snr_gamma" in warning for warning in result.warnings)
    assert ctx.training.monitor.samples()
    [path] = result.files
    saved = load_file(str(path))
    # CLIP-L and bigG get adapters; T5 (the optional third encoder) stays frozen
    assert {key.split(".")[0] for key in saved} == {"transformer", "text_encoder", "text_encoder_2"}
    assert any(".ff_context.net.2." in key for key in saved) and any(".ff.net.0.proj." in key for key in saved)
    pipeline = diffusers.StableDiffusion3Pipeline(
        **tiny_sd3_modules(MEDIUM, seed=SEED), **dict(zip(("tokenizer", "tokenizer_2", "tokenizer_3"),
                                                          load_tokenizers("sd3"))),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipeline.load_lora_weights(str(path))
    from peft.tuners.lora import LoraLayer
    loaded = {f"{component}.{name}.lora_{part}.weight"
              for component in ("transformer", "text_encoder", "text_encoder_2")
              for name, layer in getattr(pipeline, component).named_modules() if isinstance(layer, LoraLayer)
              for part in "AB"}
    assert loaded == set(saved)
    [check] = result.key_checks  # the trainer's own check agrees: every key loads, text encoders included
    assert check.complete and check.total == len(saved)
    assert [loader.loader for loader in check.loaders] == ["SD Studio", "diffusers", "ComfyUI"]
    # alpha 2 at rank 4 lives in lora_adapter_metadata only, which ComfyUI does not read: the record says so
    assert check.notes == ("ComfyUI: the alpha is only in lora_adapter_metadata, which is not read there, so "
                           "text_encoder (rank 4, alpha 2: x2), text_encoder_2 (rank 4, alpha 2: x2), transformer "
                           "(rank 4, alpha 2: x2) load at rank / alpha times the strength SD Studio and diffusers use",)
    assert check.complete  # a note, not an ignored key


def test_a_resumed_sd3_run_ends_where_the_uninterrupted_one_does(ctx, trained):
    """Every flow-matching draw (noise levels and noise) comes from the run's seeded generator, which the state keeps."""
    config = sd3_config(output_name="sd3full", max_train_steps=0, max_train_epochs=2, save_every_n_epochs=1)
    uninterrupted = start_training(ctx.training, config).result(timeout=600)
    assert uninterrupted.steps_done == 4
    state = ctx.settings.training_folder / "states" / "sd3full-000001-state"
    resumed = start_training(ctx.training, config.replace(output_name="sd3resumed", resume_from=str(state))
                             ).result(timeout=600)
    assert resumed.steps_done == 4
    full = load_file(str(ctx.settings.lora_folder / "sd3full.safetensors"))
    continued = load_file(str(ctx.settings.lora_folder / "sd3resumed.safetensors"))
    assert full.keys() == continued.keys()
    for key in full:
        assert torch.allclose(full[key].float(), continued[key].float(), atol=1e-3), key
    assert resumed.final_loss == pytest.approx(uninterrupted.final_loss, rel=1e-4)


def test_captions_are_encoded_at_the_lengths_generation_uses(ctx):
    """CLIP's 77-token chunk, then T5 at the family's generation length (256 for SD3.5), as txt2img conditions."""
    from webui.models.checkpoint_loading import build_pipeline
    from webui.models.families import family_named
    from webui.training.loop import encode_captions
    from webui.training.methods import TrainerModels

    weights = ctx.manager.weights_of(ctx.models.catalog.find("sd3.5_medium_tiny"))
    models = TrainerModels(pipeline=build_pipeline(weights, torch.device("cpu"), torch.float32),
                           family=weights.architecture.family, device=torch.device("cpu"), base=weights, base_hash="")
    with torch.no_grad():
        hidden, pooled = encode_captions(models, ["hxgn, a shape"], clip_skip=1)
    t5_tokens = family_named(weights.architecture.family).sequence_limit(weights.architecture.variant)
    assert t5_tokens == 256 and hidden.shape[:2] == (1, 77 + t5_tokens) and pooled.shape == (1, 128)
