"""One unit's residuals (webui/generation/controlnet.py) on a tiny ControlNet of the default model's UNet:
weight scaling, the two soft control modes, the step window, and control images of another size."""

from __future__ import annotations

import pytest
import torch

from tests.support.controlnet_files import sd1_unet_config, tiny_controlnet
from webui.generation.controlnet import (
    BALANCED,
    CONTROL_MORE_IMPORTANT,
    PROMPT_MORE_IMPORTANT,
    in_window,
    level_scales,
    unit_residuals,
)


@pytest.fixture(scope="module")
def call():
    torch.manual_seed(0)
    controlnet = tiny_controlnet(sd1_unet_config(), seed=5)
    sample = torch.randn(2, 4, 8, 8)
    hidden = torch.randn(2, 8, sd1_unet_config()["cross_attention_dim"])
    image = torch.rand(1, 3, 64, 64)
    return controlnet, sample, hidden, image


def residuals(call, **options):
    controlnet, sample, hidden, image = call
    options.setdefault("weight", 1.0)
    down, mid = unit_residuals(controlnet, options.pop("image", image), sample, torch.tensor(500), hidden, {}, **options)
    return [*down, mid]


def test_weight_scales_every_residual(call):
    full, half = residuals(call), residuals(call, weight=0.5)
    assert all(torch.allclose(h, f * 0.5) for f, h in zip(full, half))
    assert all(t.abs().sum() > 0 for t in full)


def test_prompt_more_important_scales_shallow_levels_down_and_control_more_important_drops_the_negative_half(call):
    full = residuals(call, mode=BALANCED)
    soft = residuals(call, mode=PROMPT_MORE_IMPORTANT)
    scales = level_scales(len(full), 1.0, PROMPT_MORE_IMPORTANT)
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.825 ** (len(full) - 1))
    assert all(torch.allclose(s, f * scale) for f, s, scale in zip(full, soft, scales))
    control = residuals(call, mode=CONTROL_MORE_IMPORTANT)
    assert all((c[:1] == 0).all() and torch.allclose(c[1:], s[1:]) for c, s in zip(control, soft))
    unguided = residuals(call, mode=CONTROL_MORE_IMPORTANT, guided=False)
    assert all(torch.allclose(u, s) for u, s in zip(unguided, soft))


def test_a_control_image_of_another_size_is_resized_to_the_sample(call):
    controlnet, _, _, image = call
    resized = torch.nn.functional.interpolate(image, size=(128, 128), mode="bilinear", align_corners=False)
    assert [t.shape for t in residuals(call, image=resized)] == [t.shape for t in residuals(call)]


def test_the_window_includes_both_ends_and_an_unknown_step_count_is_the_first_step():
    assert in_window(0, 0, 0.0, 0.0) and not in_window(0, 0, 0.1, 1.0)
    assert in_window(2, 4, 0.5, 0.5) and not in_window(3, 4, 0.0, 0.5) and in_window(3, 4, 0.75, 1.0)
    with pytest.raises(ValueError, match="Balanced"):
        level_scales(13, 1.0, "Louder")
