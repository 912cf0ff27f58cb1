"""LyCORIS LoHa / LoKr files in the kohya layout A1111, Forge and ComfyUI load.

Layer names are kohya's (`lora_unet_...`, `lora_te_...`, from `export.kohya_layer_names`); each layer holds
its factors under LyCORIS's tensor names (`hada_w1_a` ... for LoHa, `lokr_w1`, `lokr_w2_a` ... for LoKr) and
an `alpha`. LyCORIS scales a layer by alpha / rank, the rank being the inner size of a decomposed factor;
a LoKr layer whose factors are all stored whole has no rank and scale 1 there, so PEFT's alpha / r is
folded into its second factor to keep the file equal to what was trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from webui.training.export import _write_hashed, checked_lora_target, kohya_layer_names

LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LYCORIS_NETWORK_MODULE = "lycoris.kohya"


@dataclass(frozen=True, eq=False)  # tensors have no meaningful ==
class LycorisLayerWeights:
    """One layer's LoHa or LoKr factors by their LyCORIS names, with PEFT's rank r and alpha."""

    algo: str                      # "loha" or "lokr"
    tensors: Mapping[str, Tensor]
    rank: int
    alpha: float

    def __post_init__(self) -> None:
        roles = LOHA_ROLES if self.algo == "loha" else LOKR_ROLES if self.algo == "lokr" else None
        if roles is None:
            raise ValueError(f"unknown LyCORIS algorithm {self.algo!r}")
        unknown = sorted(set(self.tensors) - set(roles))
        if unknown:
            raise ValueError(f"{self.algo} layers hold {', '.join(roles)}; not {', '.join(unknown)}")
        if not math.isfinite(float(self.alpha)) or self.rank <= 0:
            raise ValueError(f"a {self.algo} layer needs a positive rank and a finite alpha")

    def file_tensors(self) -> dict[str, Tensor]:
        """The tensors as the file stores them (a LoKr without decomposed factors carries its scale in w2)."""
        tensors = {role: tensor.detach().float().cpu() for role, tensor in self.tensors.items()}
        if self.algo == "lokr" and not ({"lokr_w1_b", "lokr_w2_b"} & set(tensors)):
            tensors["lokr_w2"] = tensors["lokr_w2"] * (float(self.alpha) / self.rank)
        return tensors


def save_lycoris_lora(path: Path, layers: Mapping[str, LycorisLayerWeights], metadata: Mapping[str, str],
                      family: str, *, dtype: torch.dtype = torch.float16,
                      unet_config: Mapping[str, Any] | None = None) -> Path:
    """Write LoHa / LoKr layers (keys `"unet.<diffusers path>"`, `"text_encoder.<path>"`) under kohya names."""
    path, file_metadata = checked_lora_target(path, layers, metadata)
    names = kohya_layer_names(list(layers), family, unet_config)
    tensors: dict[str, Tensor] = {}
    for layer_key, weights in layers.items():
        name = names[layer_key]
        for role, tensor in weights.file_tensors().items():
            tensors[f"{name}.{role}"] = tensor.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(weights.alpha), dtype=torch.float32)
    return _write_hashed(path, tensors, file_metadata)
