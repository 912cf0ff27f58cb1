"""`manager.checkout(state)`: the default model reconciled to wanted states, LoRAs and embeddings as
patches that come off bitwise, re-weighting without re-reading, and checkpoint switches under LoRAs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import with_default_model
from tests.engine.helpers import perturbed_copy
from webui.context import build_context
from webui.models.lora_catalog import LoraUse
from webui.settings import settings_from_args

TOY = "sd-studio-toy"
VARIANT = "variant-b"


def write_lora(path, unet: torch.nn.Module, projection: str, seed: int, rank: int = 4) -> None:
    """A kohya LoRA on one attention projection (`to_q`, `to_v`, ...) of every UNet attention."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name and name.endswith("." + projection):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("state"), default_model_folder)
    perturbed_copy(default_model_folder, data / "models" / "Stable-diffusion" / VARIANT, seed=3)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    with context.manager.checkout(context.manager.state_for(TOY)) as model:
        lora_folder = context.settings.lora_folder
        lora_folder.mkdir(parents=True, exist_ok=True)
        write_lora(lora_folder / "queries.safetensors", model.pipeline.unet, "to_q", seed=1)
        write_lora(lora_folder / "values.safetensors", model.pipeline.unet, "to_v", seed=2)
        width = model.pipeline.text_encoder.get_input_embeddings().embedding_dim
    embeddings = context.settings.embeddings_folder
    embeddings.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(2, width, generator=torch.Generator().manual_seed(4))},
              str(embeddings / "glowy.safetensors"))
    yield context
    context.close()


def use(ctx, name: str, weight: float) -> LoraUse:
    return LoraUse(name, ctx.settings.lora_folder / f"{name}.safetensors", weight, weight, "")


def weights(model) -> dict[str, torch.Tensor]:
    pipeline = model.pipeline
    return {f"{component}.{key}": value.detach().clone()
            for component in ("unet", "text_encoder") for key, value in getattr(pipeline, component).state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {key for key in before if not torch.equal(before[key], after[key])}


def test_checkout_applies_exactly_the_named_loras_and_removal_is_bitwise(ctx):
    manager = ctx.manager
    plain = manager.state_for(TOY)
    with manager.checkout(plain) as model:
        original = weights(model)
        assert model.state is plain and model.state_key == plain.key() == manager.held_state_key
    with manager.checkout(manager.state_for(TOY, [use(ctx, "queries", 0.8)])) as model:
        touched = changed(original, weights(model))
        assert [lora.name for lora in model.loras] == ["queries"]
    assert touched and all(key.startswith("unet.") and key.endswith("to_q.weight") for key in touched)
    with manager.checkout(manager.state_for(TOY, [use(ctx, "values", 0.8)])) as model:
        touched = changed(original, weights(model))  # the first LoRA came off when it was no longer named
    assert touched and all(key.endswith("to_v.weight") for key in touched)
    with manager.checkout(manager.state_for(TOY, [use(ctx, "queries", 1.0), use(ctx, "values", 1.0)])) as model:
        touched = changed(original, weights(model))
    assert {key.rsplit(".", 2)[-2] for key in touched} == {"to_q", "to_v"}
    with manager.checkout(plain) as model:
        assert changed(original, weights(model)) == set()
    assert manager.switch_count["rebuilt"] == 1


def test_reweighting_reads_no_file_and_the_same_state_touches_nothing(ctx):
    manager = ctx.manager
    with manager.checkout(manager.state_for(TOY)) as model:
        original = weights(model)
        write_lora(ctx.settings.lora_folder / "keys.safetensors", model.pipeline.unet, "to_k", seed=5)
    reads = manager.lora_reads
    results = {}
    for weight in (0.5, 1.0, -0.5, 1.0):
        with manager.checkout(manager.state_for(TOY, [use(ctx, "keys", weight)])) as model:
            results[weight] = weights(model)
    assert manager.lora_reads == reads + 1  # parsed once, re-weighted three times from memory
    key = next(iter(changed(original, results[1.0])))
    half = results[0.5][key] - original[key]
    assert torch.allclose(results[1.0][key] - original[key], 2 * half, atol=1e-5)
    assert torch.allclose(results[-0.5][key] - original[key], -half, atol=1e-5)
    # Asking for the state already held re-merges nothing: a marker written into a weight survives.
    state = manager.state_for(TOY, [use(ctx, "keys", 1.0)])
    module, parameter = key.split(".", 1)
    with manager.checkout(state) as model:
        with torch.no_grad():
            getattr(model.pipeline, module).state_dict()[parameter].add_(1.0)
    with manager.checkout(state) as model:
        assert torch.equal(weights(model)[key], results[1.0][key] + 1.0)
    # Removal writes back the kept original, whatever happened to the merged weight.
    with manager.checkout(manager.state_for(TOY)) as model:
        assert changed(original, weights(model)) == set()


def test_switching_checkpoint_with_loras_active_keeps_the_new_base_weights_untouched(ctx):
    manager = ctx.manager
    toy, variant = ctx.catalog.find(TOY), ctx.catalog.find(VARIANT)
    base = {name: manager.weights_of(record).state_dicts["unet"] for name, record in ((TOY, toy), (VARIANT, variant))}

    def unet_is(model, name: str) -> bool:
        return all(torch.equal(value, base[name][key]) for key, value in model.pipeline.unet.state_dict().items())

    with manager.checkout(manager.state_for(TOY, [use(ctx, "queries", 1.0)])) as model:
        assert not unet_is(model, TOY)
    with manager.checkout(manager.state_for(VARIANT)) as model:
        assert model.record.name == VARIANT and unet_is(model, VARIANT)
    with manager.checkout(manager.state_for(VARIANT, [use(ctx, "values", 1.5)])) as model:
        assert not unet_is(model, VARIANT)
    with manager.checkout(manager.state_for(TOY, [use(ctx, "queries", 1.0)])) as model:
        assert model.record.name == TOY
    with manager.checkout(manager.state_for(TOY)) as model:
        assert unet_is(model, TOY)
    with manager.checkout(manager.state_for(VARIANT)) as model:
        assert unet_is(model, VARIANT)
    assert manager.switch_count["rebuilt"] == 1  # every switch copied into the resident modules


def test_embeddings_are_token_patches_that_come_off_exactly(ctx):
    manager = ctx.manager
    with_embedding = manager.state_for(TOY)
    assert [file.name for file in with_embedding.embeddings] == ["glowy"]
    without = dataclasses.replace(with_embedding, embeddings=())
    assert without.key() != with_embedding.key()
    with manager.checkout(without) as model:
        table = model.pipeline.text_encoder.get_input_embeddings().weight.detach().clone()
        vocabulary = len(model.pipeline.tokenizer)
        assert model.embeddings.active_names == []
    with manager.checkout(with_embedding) as model:
        grown = model.pipeline.text_encoder.get_input_embeddings().weight
        assert grown.shape[0] == table.shape[0] + 2 and torch.equal(grown[: table.shape[0]], table)
        assert model.embeddings.active_names == ["glowy"]
        assert model.embeddings.expand_prompt("a glowy cat") != "a glowy cat"
    with manager.checkout(without) as model:
        assert torch.equal(model.pipeline.text_encoder.get_input_embeddings().weight, table)
        assert len(model.pipeline.tokenizer) == vocabulary


def test_state_keys_are_stable_and_checkout_refuses_anything_but_a_state(ctx):
    manager = ctx.manager
    first = manager.state_for(TOY, [use(ctx, "queries", 0.5)], "None")
    assert manager.state_for(TOY, [use(ctx, "queries", 0.5)], "None").key() == first.key()
    assert manager.state_for(VARIANT, [use(ctx, "queries", 0.5)], "None").key() != first.key()
    assert first.checkpoint.sha256 == ctx.catalog.hashes.sha256(ctx.catalog.find(TOY).path)
    with pytest.raises(TypeError, match="state_for"):
        with manager.checkout(TOY):
            pass
