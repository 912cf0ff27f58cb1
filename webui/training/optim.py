"""Optimizers and learning-rate schedules by the names kohya_ss users know.

Optional optimizers (8-bit AdamW from bitsandbytes, Prodigy from prodigyopt) are offered only when their
package imports; asking for one that does not gives a message saying which package to install instead of
a traceback in the middle of a run. Schedules come from diffusers' `get_scheduler`, the same curves the
diffusers and kohya scripts use.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

OPTIONAL_OPTIMIZER_PACKAGES = {"AdamW8bit": "bitsandbytes", "Prodigy": "prodigyopt"}


def optimizer_unavailable_reason(name: str) -> str | None:
    """Why `name` cannot be used here (a missing package), or None when it can."""
    package = OPTIONAL_OPTIMIZER_PACKAGES.get(name)
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except Exception as error:  # noqa: BLE001 - bitsandbytes raises assorted errors without a usable GPU build
        return f"{name} needs the '{package}' package, which cannot be imported here ({type(error).__name__}: {error}); " \
               f"install it with `pip install {package}` or choose AdamW or Adafactor"
    return None


# Where the UNet's parts start in its parameter names (diffusers' UNet2DConditionModel, every SD UNet family).
UNET_BLOCK_PREFIXES = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


def unet_block_of(name: str) -> str | None:
    """"down", "mid" or "up" for a UNet parameter name; None for the rest (conv_in, time embedding, conv_out)."""
    return next((block for block, prefix in UNET_BLOCK_PREFIXES.items() if name.startswith(prefix)), None)


def block_weighted_groups(named_parameters: dict[str, torch.nn.Parameter], lr: float,
                          weights: dict[str, float]) -> list[dict[str, Any]]:
    """UNet parameters as optimizer groups whose lr is `lr` times their block's weight (kohya's down/mid/up
    lr weights); a block weighted 0 is frozen (no gradient, not in the optimizer). All weights 1 give the one
    group a run without block weights has, so its saved optimizer states still fit."""
    if all(weight == 1.0 for weight in weights.values()):
        return [{"params": list(named_parameters.values()), "lr": lr}]
    by_block: dict[str | None, list[torch.nn.Parameter]] = {None: [], **{block: [] for block in UNET_BLOCK_PREFIXES}}
    for name, parameter in named_parameters.items():
        by_block[unet_block_of(name)].append(parameter)
    groups = []
    for block, parameters in by_block.items():
        weight = 1.0 if block is None else weights[block]
        if weight == 0.0:
            for parameter in parameters:
                parameter.requires_grad_(False)
        elif parameters:
            groups.append({"params": parameters, "lr": lr * weight, "lr_weight": weight})
    return groups


def build_optimizer(name: str, parameter_groups: list[dict[str, Any]], *, weight_decay: float) -> torch.optim.Optimizer:
    """An optimizer over groups that each carry their own `lr` (UNet, text encoder, embeddings)."""
    reason = optimizer_unavailable_reason(name)
    if reason:
        from webui.training.config import TrainingConfigError

        raise TrainingConfigError("optimizer", reason)
    groups = [group for group in parameter_groups if group["params"]]
    if name == "AdamW":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
    if name == "AdamW8bit":
        bitsandbytes = importlib.import_module("bitsandbytes")
        return bitsandbytes.optim.AdamW8bit(groups, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)
    if name == "Prodigy":
        prodigyopt = importlib.import_module("prodigyopt")
        return prodigyopt.Prodigy(groups, weight_decay=weight_decay, safeguard_warmup=True, use_bias_correction=True)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        # Fixed learning rates from the config, as kohya's recommended Adafactor arguments do.
        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def build_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int,
                       cycles: int, power: float) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' schedule `name`, stepped once per optimizer step for `total_steps` steps.

    A warmup given with "constant" is honoured (kohya does the same) rather than silently dropped.
    """
    from diffusers.optimization import get_scheduler

    if name == "constant" and warmup_steps > 0:
        name = "constant_with_warmup"
    return get_scheduler(
        name, optimizer, num_warmup_steps=min(warmup_steps, total_steps), num_training_steps=total_steps,
        num_cycles=cycles, power=power,
    )
