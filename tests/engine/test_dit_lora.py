"""LoRAs for SD3.5 in every common key format, through the catalog, the manager's checkout and the pipeline.

A tiny SD3.5 Medium single file (tests/support/sd3_files.py) is loaded by `ModelManager.checkout`; each test
writes a LoRA file of seeded random low-rank updates in one naming (sd-scripts `lora_unet_` + MMDiT names,
ComfyUI `diffusion_model.` + MMDiT names, diffusers/PEFT `transformer.`, OneTrainer `lora_transformer_`, with
the text encoders' `lora_te1/2/3_` or `text_encoder*.`), checks out the model with it and compares every
weight with the expected merge: for the original MMDiT names, diffusers' own single-file converter applied to
(original weights + update) is the oracle, so fused `qkv` layers and swapped modulation halves are split as a
checkpoint's are; for a few layers the expected value W + scale * up @ down is also written out here.
Removal must give back the weights bitwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from safetensors.torch import save_file
from torch import Tensor, nn

from tests.support.sd3_files import MEDIUM, tiny_sd3_modules, transformer_to_original, write_single_file
from webui.models.catalog import CheckpointCatalog
from webui.models.hashing import HashCache
from webui.models.lora import LoraFileError
from webui.generation.prompt_syntax import extract_network_tags
from webui.models.lora_catalog import LoraCatalog, LoraUse
from webui.models.manager import ModelManager

CHECKPOINT = "sd3.5_medium_incl_clips_t5xxl"
TE_WEIGHT, DENOISER_WEIGHT = 0.5, 0.75  # A1111's <lora:name:te:unet>; the second weight is the transformer's
RANK = 2
ORIGINAL_PREFIX = "model.diffusion_model."
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@pytest.fixture(scope="module")
def manager(tmp_path_factory) -> ModelManager:
    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    write_single_file(root / "Stable-diffusion" / f"{CHECKPOINT}.safetensors", tiny_sd3_modules(MEDIUM, seed=3),
                      dtype=torch.float32)
    catalog = CheckpointCatalog(root / "Stable-diffusion", HashCache(root / "hashes.json"))
    catalog.refresh()
    return ModelManager(catalog, torch.device("cpu"), torch.float32)


def loaded_modules(manager: ModelManager) -> dict[str, nn.Module]:
    with manager.checkout(CHECKPOINT) as model:
        return {name: getattr(model.pipeline, name) for name in ("transformer", *TEXT_ENCODERS)}


def snapshot(modules: dict[str, nn.Module]) -> dict[str, dict[str, Tensor]]:
    return {name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in modules.items()}


def use(path: Path) -> LoraUse:
    return LoraUse(path.stem, path, TE_WEIGHT, DENOISER_WEIGHT, "000000000000")


class Updates:
    """Seeded low-rank factors per layer; `delta(name)` is the update at strength 1 (alpha / rank applied)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.factors: dict[str, tuple[Tensor, Tensor, float]] = {}

    def add(self, name: str, out_features: int, in_features: int) -> tuple[Tensor, Tensor, float]:
        down = torch.randn(RANK, in_features, generator=self.generator) * 0.5
        up = torch.randn(out_features, RANK, generator=self.generator) * 0.5
        alpha = float(len(self.factors) % 3 + 1)  # differing alphas: a mix-up of layers would show
        self.factors[name] = (down, up, alpha)
        return self.factors[name]

    def delta(self, name: str) -> Tensor:
        down, up, alpha = self.factors[name]
        return alpha / RANK * up @ down


def original_linear_weights(transformer: nn.Module) -> dict[str, Tensor]:
    """The MMDiT's Linear weights under their original module names (the test support's writer)."""
    original = transformer_to_original(transformer.state_dict())
    return {key[len(ORIGINAL_PREFIX):-len(".weight")]: value for key, value in original.items()
            if key.endswith(".weight") and value.ndim == 2}


def expected_transformer(state: dict[str, Tensor], updates: Updates, weight: float) -> dict[str, Tensor]:
    """diffusers' single-file converter applied to the original weights plus the weighted updates."""
    original = transformer_to_original(state)
    for name in [name for name in updates.factors if not name.startswith("text_encoder")]:
        original[f"{ORIGINAL_PREFIX}{name}.weight"] = original[f"{ORIGINAL_PREFIX}{name}.weight"] + (
            weight * updates.delta(name))
    return convert_sd3_transformer_checkpoint_to_diffusers(original)


def text_encoder_layers(module: nn.Module) -> dict[str, Tensor]:
    """Two Linear layers of each text encoder: an attention projection and an MLP layer."""
    wanted = ("layers.0.self_attn.q_proj", "layers.1.mlp.fc2", "block.0.layer.0.SelfAttention.q",
              "block.1.layer.1.DenseReluDense.wo")
    return {path: child.weight for path, child in module.named_modules()
            if isinstance(child, nn.Linear) and path.endswith(wanted)}


def kohya_text_name(path: str) -> str:
    return ("text_model." + path if path.startswith("encoder.layers.") else path).replace(".", "_")


def write_file(path: Path, tensors: dict[str, Tensor]) -> Path:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def original_names_file(path: Path, modules: dict[str, nn.Module], naming: str, seed: int) -> tuple[Path, Updates]:
    """Every Linear of the MMDiT under its original name ("kohya": lora_unet_joint_blocks_0_x_block_attn_qkv,
    "comfyui": diffusion_model.joint_blocks.0.x_block.attn.qkv), plus kohya text-encoder layers."""
    updates, tensors = Updates(seed), {}
    for name, weight in original_linear_weights(modules["transformer"]).items():
        down, up, alpha = updates.add(name, *weight.shape)
        key = "lora_unet_" + name.replace(".", "_") if naming == "kohya" else "diffusion_model." + name
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    for number, component in enumerate(TEXT_ENCODERS, start=1):
        for layer, weight in text_encoder_layers(modules[component]).items():
            down, up, alpha = updates.add(f"{component}.{layer}", *weight.shape)
            key = f"lora_te{number}_{kohya_text_name(layer)}"
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)}
    return write_file(path, tensors), updates


def diffusers_names_file(path: Path, modules: dict[str, nn.Module], naming: str, seed: int) -> tuple[Path, Updates]:
    """Every Linear of the transformer under its diffusers name ("peft": transformer.<path>.lora_A/B, no alpha;
    "onetrainer": lora_transformer_<path with underscores>.lora_down/up + alpha) and the text encoders'."""
    updates, tensors = Updates(seed), {}
    layers = {f"transformer.{path}": child.weight for path, child in modules["transformer"].named_modules()
              if isinstance(child, nn.Linear)}
    for component in TEXT_ENCODERS:
        layers |= {f"{component}.{path}": weight for path, weight in text_encoder_layers(modules[component]).items()}
    for target, weight in layers.items():
        down, up, alpha = updates.add(target, *weight.shape)
        component, module_path = target.split(".", 1)
        if naming == "peft":
            updates.factors[target] = (down, up, float(RANK))  # no alpha in the file: scale 1
            key = f"{component}.{'text_model.' if module_path.startswith('encoder.layers.') else ''}{module_path}"
            tensors |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
        else:
            prefix = "lora_transformer_" if component == "transformer" else f"lora_te{TEXT_ENCODERS.index(component) + 1}_"
            key = prefix + (kohya_text_name(module_path) if component != "transformer" else module_path.replace(".", "_"))
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)}
    return write_file(path, tensors), updates


def assert_text_encoders_merged(modules, original, updates: Updates) -> None:
    for target in [name for name in updates.factors if name.startswith("text_encoder")]:
        component, layer = target.split(".", 1)
        expected = original[component][f"{layer}.weight"] + TE_WEIGHT * updates.delta(target)
        torch.testing.assert_close(modules[component].get_submodule(layer).weight, expected, rtol=1e-5, atol=1e-5)


def assert_restored(manager: ModelManager, original: dict[str, dict[str, Tensor]]) -> None:
    with manager.checkout(CHECKPOINT, loras=()) as model:
        for component, state in original.items():
            loaded = getattr(model.pipeline, component).state_dict()
            assert all(torch.equal(loaded[key], value) for key, value in state.items()), component


@pytest.mark.parametrize("naming", ["kohya", "comfyui"])
def test_original_mmdit_names_merge_like_the_checkpoint_converter_splits_them(manager, tmp_path, naming):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    path, updates = original_names_file(tmp_path / f"{naming}.safetensors", modules, naming, seed=11)
    with manager.checkout(CHECKPOINT, loras=[use(path)]) as model:
        assert model.warnings == ()  # every key matched a layer
        merged = model.pipeline.transformer.state_dict()
        expected = expected_transformer(original["transformer"], updates, DENOISER_WEIGHT)
        for key, value in expected.items():
            torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-5, msg=key)
        # Written out for a few layers: the fused qkv's rows go to q, k, v; the last block's context
        # modulation and the final modulation have their (shift, scale) halves swapped.
        width = merged["transformer_blocks.0.attn.to_q.weight"].shape[0]
        qkv = updates.delta("joint_blocks.0.x_block.attn.qkv")
        for part, name in enumerate(("to_q", "to_k", "to_v")):
            key = f"transformer_blocks.0.attn.{name}.weight"
            torch.testing.assert_close(merged[key], original["transformer"][key] + DENOISER_WEIGHT * qkv[
                part * width:(part + 1) * width], rtol=1e-5, atol=1e-5)
        final = updates.delta("final_layer.adaLN_modulation.1")
        half = final.shape[0] // 2
        torch.testing.assert_close(merged["norm_out.linear.weight"], original["transformer"]["norm_out.linear.weight"]
                                   + DENOISER_WEIGHT * torch.cat([final[half:], final[:half]]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged["transformer_blocks.0.attn2.to_out.0.weight"],
                                   original["transformer"]["transformer_blocks.0.attn2.to_out.0.weight"]
                                   + DENOISER_WEIGHT * updates.delta("joint_blocks.0.x_block.attn2.proj"))
        assert_text_encoders_merged(modules, original, updates)
    assert_restored(manager, original)


@pytest.mark.parametrize("naming", ["peft", "onetrainer"])
def test_diffusers_module_names_merge_the_expected_delta(manager, tmp_path, naming):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    path, updates = diffusers_names_file(tmp_path / f"{naming}.safetensors", modules, naming, seed=12)
    with manager.checkout(CHECKPOINT, loras=[use(path)]) as model:
        assert model.warnings == ()
        merged = model.pipeline.transformer.state_dict()
        for target in [name for name in updates.factors if name.startswith("transformer.")]:
            key = target.removeprefix("transformer.") + ".weight"
            expected = original["transformer"][key] + DENOISER_WEIGHT * updates.delta(target)
            torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-5, msg=key)
        assert_text_encoders_merged(modules, original, updates)
    assert_restored(manager, original)


def denoise(pipeline, prompt: str) -> np.ndarray:
    return pipeline(prompt, num_inference_steps=2, height=32, width=32, guidance_scale=4.5,
                    generator=torch.Generator().manual_seed(7), output_type="np").images


def prompt_loras(folder: Path, prompt: str) -> tuple[str, tuple[LoraUse, ...]]:
    """A prompt's `<lora:name:te:unet>` tags as the generation service resolves them, and the prompt without them."""
    text, tags = extract_network_tags(prompt)
    return text, LoraCatalog(folder, HashCache(folder / "hashes.json")).resolve_tags(tags)


def test_a_lora_tag_changes_the_image_and_removing_it_gives_the_same_image_back(manager, tmp_path):
    modules = loaded_modules(manager)
    original = snapshot(modules)
    original_names_file(tmp_path / "style.safetensors", modules, "kohya", seed=13)
    plain_prompt, none = prompt_loras(tmp_path, "a photo of a cat")
    prompt, loras = prompt_loras(tmp_path, "a photo of a cat <lora:style:0:0.8>")
    assert none == () and prompt.strip() == plain_prompt
    assert [(use.name, use.te_weight, use.unet_weight) for use in loras] == [("style", 0.0, 0.8)]
    with manager.checkout(CHECKPOINT) as model:
        plain = denoise(model.pipeline, plain_prompt)
    with manager.checkout(CHECKPOINT, loras=loras) as model:
        styled = denoise(model.pipeline, prompt)
        # Text-encoder weight 0: the encoders are untouched, the transformer carries the LoRA.
        for component in TEXT_ENCODERS:
            assert all(torch.equal(value, original[component][key])
                       for key, value in getattr(model.pipeline, component).state_dict().items())
        assert not torch.equal(model.pipeline.transformer.proj_out.weight, original["transformer"]["proj_out.weight"])
    with manager.checkout(CHECKPOINT) as model:
        again = denoise(model.pipeline, plain_prompt)
    assert np.abs(styled - plain).max() > 1e-3
    np.testing.assert_array_equal(again, plain)
    assert manager.switch_count["copied"] == 0  # adding and removing LoRAs never reloaded the checkpoint


def test_an_sd1_lora_on_sd3_is_refused_with_both_family_names(manager, tmp_path):
    tensors = {}
    for name in ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"):
        tensors |= {f"lora_unet_{name}.lora_down.weight": torch.zeros(2, 32),
                    f"lora_unet_{name}.lora_up.weight": torch.zeros(32, 2)}
    path = write_file(tmp_path / "sd1_style.safetensors", tensors)
    with pytest.raises(LoraFileError, match=r"do not exist in the loaded SD3\.5 model.*SD1\.x"):
        with manager.checkout(CHECKPOINT, loras=[use(path)]):
            pass
    with manager.checkout(CHECKPOINT) as model:  # the manager keeps serving, without the LoRA
        assert model.loras == ()
