"""A full-size SD1.5-layout single-file checkpoint, as people download it, loads offline and generates.

The weights are zeros (no real weights can be downloaded here), but every key, shape and the file layout are
those of an A1111/CompVis SD1.5 `.safetensors`, so this exercises classification from the header, the LDM ->
diffusers conversion with the shipped configs and tokenizer, and generation, all with the hub unreachable.
"""

from __future__ import annotations

import gc
import pickle

import pytest
import torch
from safetensors.torch import save_file

from webui.context import build_context
from webui.generation.requests import Txt2ImgRequest
from webui.models.ldm_conversion import diffusers_to_ldm
from webui.models.model_configs import load_component_config
from webui.settings import settings_from_args


def write_zero_sd15_checkpoint(path) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        modules = {
            "unet": UNet2DConditionModel.from_config(load_component_config("sd1", "unet")),
            "vae": AutoencoderKL.from_config(load_component_config("sd1", "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(load_component_config("sd1", "text_encoder"))),
        }
    zeros = {
        name: {key: torch.zeros(tensor.shape, dtype=torch.float16) for key, tensor in module.state_dict().items()}
        for name, module in modules.items()
    }
    state_dict = {key: value.contiguous() for key, value in diffusers_to_ldm(zeros, "sd1").items()}
    save_file(state_dict, str(path))


class Payload:
    """Unpickling this would run arbitrary code in a real attack; here it only must be refused."""


def test_sd15_single_file_and_unsafe_ckpt(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    write_zero_sd15_checkpoint(checkpoints / "v1-5-pruned-emaonly.safetensors")
    gc.collect()
    with open(checkpoints / "evil.ckpt", "wb") as handle:
        pickle.dump({"state_dict": {"x": Payload()}}, handle)

    ctx = build_context(settings_from_args(["--data-dir", str(tmp_path)]))
    try:
        records = {record.name: record for record in ctx.catalog.records()}
        assert records["v1-5-pruned-emaonly"].architecture.label == "SD1.x"
        assert records["v1-5-pruned-emaonly"].format == "safetensors"
        assert not records["evil"].usable and "unpickling" in records["evil"].error
        # The default model is not created when the folder already holds a model.
        assert "sd-studio-toy" not in records

        result = ctx.generation.submit_txt2img(Txt2ImgRequest(
            prompt="a photo of a cat", width=64, height=64, steps=2, seed=1, sampler_name="Euler",
            checkpoint="v1-5-pruned-emaonly",
        )).result(timeout=600)
        assert result.images[0].size == (64, 64)
        assert "Model: v1-5-pruned-emaonly" in result.infotexts[0]
        with ctx.manager.checkout() as model:
            assert model.pipeline.unet.config.cross_attention_dim == 768
            assert sum(p.numel() for p in model.pipeline.unet.parameters()) == 859_520_964
        with pytest.raises(ValueError, match="unpickling"):
            ctx.models.select_checkpoint("evil")
    finally:
        ctx.close()
