"""CFG split's lockstep on a tiny real UNet: the main part's hook sends the first half of each call's rows to a
partner thread running its own copy of the UNet and joins the answers (equal to the whole batch through one
UNet), the partner stops when the main part closes, and a partner that fails fails the main part with its
reason instead of leaving it waiting."""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from diffusers import UNet2DConditionModel

from webui.generation.cfg_split import CfgChannel, CfgSplitDenoising, serve_partner
from webui.generation.hooks import UNetInput

WAIT = 30.0


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2).eval()


def call_of(unet):
    def call(given: UNetInput) -> torch.Tensor:
        return unet(given.sample, given.timestep, given.encoder_hidden_states, return_dict=False, **given.extra)[0]
    return call


def partner(channel: CfgChannel, unet, fail: bool = False) -> tuple[threading.Thread, list[BaseException]]:
    """The partner on its own thread with its own copy of `unet` (as a second worker holds its own)."""
    errors: list[BaseException] = []
    own_copy = copy.deepcopy(unet)

    @contextmanager
    def checkout():
        if fail:
            raise OSError("the checkpoint file cannot be read")
        yield SimpleNamespace(pipeline=SimpleNamespace(unet=own_copy), device=torch.device("cpu"))

    def serve() -> None:
        try:
            serve_partner(channel, checkout)
        except BaseException as error:  # what the worker would record as the part's failure
            errors.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, errors


def guided_call(step: int) -> UNetInput:
    generator = torch.Generator().manual_seed(step)
    sample = torch.randn(2, 4, 8, 8, generator=generator).repeat(2, 1, 1, 1)  # [uncond x2; cond x2]
    hidden = torch.randn(4, 5, 8, generator=generator)
    return UNetInput(sample, torch.tensor(500 - 100 * step), hidden)


def test_the_first_half_of_the_rows_is_computed_by_the_partners_unet(unet):
    other = copy.deepcopy(unet)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05)
    channel = CfgChannel()
    thread, errors = partner(channel, other)
    given = guided_call(0)
    try:
        with torch.no_grad():
            split = CfgSplitDenoising(None, channel).call_unet(given, call_of(unet))
            assert torch.allclose(split[:2], call_of(other)(given)[:2], atol=1e-5)
            assert torch.allclose(split[2:], call_of(unet)(given)[2:], atol=1e-5)
            assert not torch.allclose(split[:2], call_of(unet)(given)[:2], atol=1e-3)
    finally:
        channel.close()
    thread.join(WAIT)
    assert not thread.is_alive() and errors == []


def test_the_partner_answers_in_lockstep_and_the_joined_prediction_is_the_whole_batchs(unet):
    channel = CfgChannel()
    thread, errors = partner(channel, unet)
    hooks = CfgSplitDenoising(None, channel)
    try:
        with torch.no_grad():
            for step in range(3):  # lockstep: one exchange per UNet call
                given = guided_call(step)
                split = hooks.call_unet(given, call_of(unet))
                whole = call_of(unet)(given)
                assert split.shape == whole.shape
                assert torch.allclose(split, whole, atol=1e-5)
    finally:
        channel.close()
    thread.join(WAIT)
    assert not thread.is_alive() and errors == []


def test_a_failing_partner_fails_the_main_part_with_its_reason(unet):
    channel = CfgChannel()
    thread, errors = partner(channel, unet, fail=True)
    hooks = CfgSplitDenoising(None, channel)
    with pytest.raises(RuntimeError, match="CFG split partner failed: OSError: the checkpoint file cannot be read"):
        try:
            with torch.no_grad():
                hooks.call_unet(guided_call(0), call_of(unet))
        finally:
            channel.close()
    thread.join(WAIT)
    assert not thread.is_alive() and isinstance(errors[0], OSError)
