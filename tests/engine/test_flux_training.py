"""LoRA training on a Flux.1 dev checkpoint through the TrainingService (packed latents, distilled guidance).

A tiny Flux.1 dev of the exact architecture (tests/support/flux_files.py) is written as the "all in one" file
ComfyUI/Forge users download and trained for two flow-matching steps; diffusers' `FluxPipeline.load_lora_weights`
must use every key of the LoRA it writes and move the transformer's prediction by exactly the trained update.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdstudio_eval.toy_world import held_out_concept_images
from tests.support.flux_files import DEV, reference_pipeline, tiny_flux_modules, write_all_in_one
from webui.context import build_context
from webui.models.families.flux import pack_latents, unpack_latents
from webui.settings import settings_from_args
from webui.training.config import TrainingConfig
from webui.training.service import preset_names, start_training

SEED = 1
RANK, ALPHA = 4, 2.0


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("flux-train")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_all_in_one(checkpoints / "flux1-dev-tiny.safetensors", tiny_flux_modules(DEV, seed=SEED))
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    folder = context.settings.datasets_folder / "hexagons"
    folder.mkdir(parents=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 2)):
        image.save(folder / f"hexagon_{index}.png")
    yield context
    context.close()


@pytest.fixture(scope="module")
def trained(ctx):
    config = TrainingConfig(method="lora", output_name="fluxhex", dataset_dir="hexagons", trigger_word="hxgn",
                            class_word="shape", resolution=64, enable_bucketing=False, rank=RANK, alpha=ALPHA,
                            unet_lr=1e-2, max_train_steps=2, max_train_epochs=0, seed=3, sample_every_n_steps=2,
                            sample_prompts=("hxgn, a shape",), sample_steps=2, sample_cfg=3.5)
    return start_training(ctx.training, config).result(timeout=600)


def test_packing_is_flux_pipelines_own():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 16, 8, 6)
    assert torch.equal(pack_latents(latents), FluxPipeline._pack_latents(latents, 2, 16, 8, 6))
    assert torch.equal(unpack_latents(pack_latents(latents), 16, 8, 6), latents)


def test_two_steps_train_with_a_finite_loss_and_write_a_diffusers_keyed_flux_lora(ctx, trained):
    assert not trained.cancelled and trained.steps_done == 2 and math.isfinite(trained.final_loss)
    assert ctx.training.monitor.samples()  # a sample image came from the trainer's FluxPipeline
    assert preset_names(ctx.training, None)[:2] == ["flux_dreambooth_lora", "flux_lora"]
    [path] = trained.files
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    layers = {key[len("transformer."):-len(".lora_A.weight")] for key in keys if key.endswith(".lora_A.weight")}
    assert "transformer_blocks.0.attn.add_q_proj" in layers and "transformer_blocks.0.attn.to_add_out" in layers
    assert {"single_transformer_blocks.1.attn.to_v", "single_transformer_blocks.1.proj_out"} <= layers
    assert keys == {f"transformer.{layer}.lora_{part}.weight" for layer in layers for part in "AB"}
    assert (metadata["ss_base_model_version"], metadata["modelspec.architecture"]) == ("flux1", "flux-1-dev/lora")
    assert metadata["modelspec.prediction_type"] == "flow"
    [check] = trained.key_checks
    assert check.complete and check.total == len(keys)
    assert [loader.loader for loader in check.loaders] == ["SD Studio", "diffusers", "ComfyUI", "Forge"]


def test_diffusers_flux_pipeline_loads_every_key_and_the_transformer_changes_by_the_trained_update(trained):
    [path] = trained.files
    pipeline = reference_pipeline(tiny_flux_modules(DEV, seed=SEED))
    transformer = pipeline.transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=generator),
                  encoder_hidden_states=torch.randn(1, 6, 32, generator=generator),
                  pooled_projections=torch.randn(1, 32, generator=generator), timestep=torch.tensor([0.5]),
                  img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(6, 3), guidance=torch.tensor([3.5]))
    inputs["img_ids"][:, 1] = torch.arange(16) // 4
    inputs["img_ids"][:, 2] = torch.arange(16) % 4
    with torch.no_grad():
        before = transformer(**inputs).sample
    saved = load_file(str(path))
    reference = tiny_flux_modules(DEV, seed=SEED)["transformer"]
    linears = dict(reference.named_modules())
    with torch.no_grad():
        for key in saved:
            if key.endswith(".lora_A.weight"):
                layer = key[len("transformer."):-len(".lora_A.weight")]
                linears[layer].weight += ALPHA / RANK * saved[key.replace("lora_A", "lora_B")].float() @ saved[key].float()
        expected = reference(**inputs).sample

    pipeline.load_lora_weights(str(path))

    from peft.tuners.lora import LoraLayer
    adapted = {name for name, layer in transformer.named_modules() if isinstance(layer, LoraLayer)}
    assert {f"transformer.{name}.lora_{part}.weight" for name in adapted for part in "AB"} == set(saved)
    with torch.no_grad():
        after = transformer(**inputs).sample
    assert not torch.allclose(before, after, atol=1e-5)
    assert torch.allclose(after, expected, atol=1e-4)


def test_the_kohya_layout_option_writes_sd_scripts_names_the_app_loads_with_every_key(ctx):
    """"LoRA file layout: kohya": sd-scripts' BFL names (fused qkv / linear1), BFL's implementation id; checked
    out with the model, every key is used."""
    from tests.support.dit_lora_files import use

    config = TrainingConfig(method="lora", output_name="fluxhexk", dataset_dir="hexagons", trigger_word="hxgn",
                            class_word="shape", resolution=64, enable_bucketing=False, rank=RANK, alpha=ALPHA,
                            unet_lr=1e-2, max_train_steps=1, max_train_epochs=0, seed=3, lora_file_layout="kohya")
    [path] = start_training(ctx.training, config).result(timeout=600).files
    with safe_open(str(path), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_txt_attn_qkv.alpha",
            "lora_unet_single_blocks_1_linear1.lora_up.weight"} <= keys
    assert not any(key.startswith("transformer.") for key in keys)
    assert metadata["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    manager = ctx.models.managers[0]
    with manager.checkout(manager.state_for("flux1-dev-tiny", [use(path)])) as model:
        assert [lora.name for lora in model.loras] == ["fluxhexk"] and model.warnings == ()
