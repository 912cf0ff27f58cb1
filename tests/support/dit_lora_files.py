"""LoRA files for transformer (DiT) models in the namings people download them in, written from seeded random
low-rank factors that the tests keep, so the expected merge is computed independently of the reader.

Original module names (Stability's MMDiT, BFL's Flux) come from the test support's own writers of single files
(`transformer_to_original`, `transformer_to_bfl`), diffusers names from the loaded modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from webui.models.lora_catalog import LoraUse

RANK = 2
KOHYA, COMFYUI, PEFT, ONETRAINER = "kohya", "comfyui", "peft", "onetrainer"


class Updates:
    """Seeded low-rank factors per layer; `delta(name)` is the update at strength 1 (alpha / rank applied)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.factors: dict[str, tuple[Tensor, Tensor, float]] = {}

    def add(self, name: str, out_features: int, in_features: int, alpha: float | None = None) -> tuple[Tensor, Tensor, float]:
        down = torch.randn(RANK, in_features, generator=self.generator) * 0.5
        up = torch.randn(out_features, RANK, generator=self.generator) * 0.5
        # Differing alphas (a mix-up of layers would show); None = the file has none: scale 1.
        self.factors[name] = (down, up, float(len(self.factors) % 3 + 1) if alpha is None else alpha)
        return self.factors[name]

    def delta(self, name: str) -> Tensor:
        down, up, alpha = self.factors[name]
        return alpha / RANK * up @ down

    def of_denoiser(self) -> list[str]:
        return [name for name in self.factors if not name.startswith("text_encoder")]


def snapshot(modules: Mapping[str, nn.Module]) -> dict[str, dict[str, Tensor]]:
    return {name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in modules.items()}


def original_linear_weights(original_state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Module name -> weight of every Linear in a single file's state (2-D `.weight`s under `prefix`)."""
    return {key[len(prefix):-len(".weight")]: value for key, value in original_state.items()
            if key.startswith(prefix) and key.endswith(".weight") and value.ndim == 2}


def expected_from_original(state: dict[str, Tensor], updates: Updates, weight: float,
                           to_original: Callable[[dict[str, Tensor]], dict[str, Tensor]], prefix: str,
                           from_original: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The denoiser's diffusers weights after a merge: the checkpoint converter applied to the original
    weights plus the weighted updates of the original-named layers."""
    original = to_original(state)
    for name in updates.of_denoiser():
        original[f"{prefix}{name}.weight"] = original[f"{prefix}{name}.weight"] + weight * updates.delta(name)
    return from_original(original)


def text_encoder_layers(module: nn.Module) -> dict[str, Tensor]:
    """Two Linear layers of a text encoder (CLIP or T5): an attention projection and an MLP layer."""
    wanted = ("layers.0.self_attn.q_proj", "layers.1.mlp.fc2", "block.0.layer.0.SelfAttention.q",
              "block.1.layer.1.DenseReluDense.wo")
    return {path: child.weight for path, child in module.named_modules()
            if isinstance(child, nn.Linear) and path.endswith(wanted)}


def _text_path(path: str) -> str:
    """CLIP layers as files name them (under "text_model.", whatever the installed transformers' layout)."""
    return "text_model." + path if path.startswith("encoder.layers.") else path


def write_file(path: Path, tensors: Mapping[str, Tensor]) -> Path:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path


def _kohya_tensors(key: str, factors: tuple[Tensor, Tensor, float]) -> dict[str, Tensor]:
    down, up, alpha = factors
    return {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}


def _text_encoder_tensors(modules: Mapping[str, nn.Module], kohya_prefixes: Mapping[str, str], updates: Updates,
                          dotted: bool) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for component, prefix in kohya_prefixes.items():
        for layer, weight in text_encoder_layers(modules[component]).items():
            factors = updates.add(f"{component}.{layer}", *weight.shape, alpha=float(RANK) if dotted else None)
            if dotted:
                key = f"{component}.{_text_path(layer)}"
                tensors |= {f"{key}.lora_A.weight": factors[0], f"{key}.lora_B.weight": factors[1]}
            else:
                tensors |= _kohya_tensors(prefix + _text_path(layer).replace(".", "_"), factors)
    return tensors


def original_names_file(path: Path, modules: Mapping[str, nn.Module], original_weights: Mapping[str, Tensor],
                        naming: str, text_encoder_prefixes: Mapping[str, str], seed: int) -> tuple[Path, Updates]:
    """Every Linear of the denoiser under its original name: KOHYA `lora_unet_<name with underscores>` (lora_down/up
    + alpha), COMFYUI `diffusion_model.<name>` as ai-toolkit writes it (lora_A/B, no alpha), plus kohya
    text-encoder layers (`text_encoder_prefixes`)."""
    updates, tensors = Updates(seed), {}
    for name, weight in original_weights.items():
        if naming == KOHYA:
            tensors |= _kohya_tensors("lora_unet_" + name.replace(".", "_"), updates.add(name, *weight.shape))
        else:
            down, up, _ = updates.add(name, *weight.shape, alpha=float(RANK))
            tensors |= {f"diffusion_model.{name}.lora_A.weight": down, f"diffusion_model.{name}.lora_B.weight": up}
    tensors |= _text_encoder_tensors(modules, text_encoder_prefixes, updates, dotted=False)
    return write_file(path, tensors), updates


def diffusers_names_file(path: Path, modules: Mapping[str, nn.Module], naming: str,
                         text_encoder_prefixes: Mapping[str, str], seed: int) -> tuple[Path, Updates]:
    """Every Linear of the transformer under its diffusers name (PEFT: `transformer.<path>.lora_A/B`, no alpha,
    text encoders `text_encoder*.`; ONETRAINER: `lora_transformer_<path with underscores>` + alpha, text
    encoders under their kohya prefixes)."""
    updates, tensors = Updates(seed), {}
    for module_path, child in modules["transformer"].named_modules():
        if not isinstance(child, nn.Linear):
            continue
        if naming == PEFT:
            down, up, _ = updates.add(f"transformer.{module_path}", *child.weight.shape, alpha=float(RANK))
            tensors |= {f"transformer.{module_path}.lora_A.weight": down, f"transformer.{module_path}.lora_B.weight": up}
        else:
            factors = updates.add(f"transformer.{module_path}", *child.weight.shape)
            tensors |= _kohya_tensors("lora_transformer_" + module_path.replace(".", "_"), factors)
    tensors |= _text_encoder_tensors(modules, text_encoder_prefixes, updates, dotted=naming == PEFT)
    return write_file(path, tensors), updates


TE_WEIGHT, DENOISER_WEIGHT = 0.5, 0.75  # A1111's <lora:name:te:unet>; the second weight is the transformer's


def use(path: Path) -> LoraUse:
    """A LoRA file as a prompt tag `<lora:name:0.5:0.75>` asks for it."""
    return LoraUse(path.stem, path, TE_WEIGHT, DENOISER_WEIGHT, "000000000000")


def assert_text_encoders_merged(modules: Mapping[str, nn.Module], original: Mapping[str, Mapping[str, Tensor]],
                                updates: Updates) -> None:
    """Every text-encoder layer the file changes holds its original weight plus TE_WEIGHT times the update."""
    for target in [name for name in updates.factors if name.startswith("text_encoder")]:
        component, layer = target.split(".", 1)
        expected = original[component][f"{layer}.weight"] + TE_WEIGHT * updates.delta(target)
        torch.testing.assert_close(modules[component].get_submodule(layer).weight, expected, rtol=1e-5, atol=1e-5)


def assert_restored(manager, checkpoint: str, original: Mapping[str, Mapping[str, Tensor]]) -> None:
    """Checking the checkpoint out without LoRAs gives back every original weight bitwise."""
    with manager.checkout(manager.state_for(checkpoint, ())) as model:
        for component, state in original.items():
            loaded = getattr(model.pipeline, component).state_dict()
            assert all(torch.equal(loaded[key], value) for key, value in state.items()), component


def check_diffusers_names_merge(manager, checkpoint: str, modules: Mapping[str, nn.Module], path: Path,
                                naming: str, text_encoders: Mapping[str, str], seed: int) -> None:
    """A file in diffusers module names (`naming`: PEFT or OneTrainer) merges exactly its deltas into the
    transformer (at DENOISER_WEIGHT) and text encoders (at TE_WEIGHT), every key is used, and taking it off
    restores every weight bitwise."""
    original = snapshot(modules)
    path, updates = diffusers_names_file(path, modules, naming, text_encoders, seed=seed)
    with manager.checkout(manager.state_for(checkpoint, [use(path)])) as model:
        assert model.warnings == ()
        merged = model.pipeline.transformer.state_dict()
        for target in updates.of_denoiser():
            key = target.removeprefix("transformer.") + ".weight"
            expected = original["transformer"][key] + DENOISER_WEIGHT * updates.delta(target)
            torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-5, msg=key)
        assert_text_encoders_merged(modules, original, updates)
    assert_restored(manager, checkpoint, original)
