"""The SD3.5 family's facts that need no files: full-size meta builds against the published parameter
counts, configs fitted back from a model's own tensor shapes, the shipped T5 tokenizer, and the prompt
encoding rule (the one generation and training share) against diffusers' own SD3 prompt encoding."""

from __future__ import annotations

import diffusers
import pytest
import torch
from accelerate import init_empty_weights

from tests.support.sd3_files import MEDIUM, tiny_sd3_modules
from webui.models.families import family_named
from webui.models.families.sd3 import fit_transformer_config
from webui.models.model_configs import load_component_config, load_tokenizers

SD3 = family_named("sd3")
# Stability AI's published sizes: SD3.5 Medium "2.5 billion parameters", SD3.5 Large "8.1 billion" (the
# original checkpoints count the position-embedding table, a buffer in diffusers, as a parameter).
PUBLISHED_BILLIONS = {"medium": 2.5, "large": 8.1}
# The published SD3.5 Large transformer hyperparameters that differ from Medium's.
LARGE_OVERRIDES = {"num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
                   "pos_embed_max_size": 192, "dual_attention_layers": []}


def tensor_count(module: torch.nn.Module) -> int:
    return sum(tensor.numel() for tensor in module.state_dict().values())


def meta_transformer(config: dict) -> torch.nn.Module:
    with init_empty_weights():
        return diffusers.SD3Transformer2DModel.from_config(config)


@pytest.mark.parametrize("size", ["medium", "large"])
def test_full_size_meta_builds_match_the_published_parameter_counts(size):
    shipped = load_component_config("sd3", "transformer")
    config = shipped if size == "medium" else {**shipped, **LARGE_OVERRIDES}
    transformer = meta_transformer(config)
    assert all(parameter.device.type == "meta" for parameter in transformer.parameters())
    assert round(tensor_count(transformer) / 1e9, 1) == PUBLISHED_BILLIONS[size]
    # The loader rebuilds exactly this config from the weights' shapes (what a real file gives it).
    fitted = fit_transformer_config(shipped, transformer.state_dict())
    assert {key: fitted[key] for key in config if not key.startswith("_")} == {
        key: (list(value) if isinstance(value, tuple) else value) for key, value in config.items()
        if not key.startswith("_")}
    assert SD3.variant_of_denoiser_config(fitted) == f"sd3.5-{size}"


def test_the_other_shipped_components_have_their_published_sizes():
    from transformers import T5Config, T5EncoderModel

    with init_empty_weights():
        t5 = T5EncoderModel(T5Config.from_dict(load_component_config("sd3", "text_encoder_3")))
        vae = diffusers.AutoencoderKL.from_config(load_component_config("sd3", "vae"))
    tied = set(t5._tied_weights_keys)  # encoder.embed_tokens is the `shared` table, stored and counted once
    counted = sum(p.numel() for name, p in t5.named_parameters() if name not in tied)
    assert round(counted / 1e9, 2) == 4.76  # the T5 v1.1 XXL encoder
    assert vae.config.latent_channels == SD3.latent_channels == 16
    assert len(SD3.preview_coefficients) == 16


def test_the_shipped_t5_tokenizer_encodes_like_t5():
    tokenizer = load_tokenizers("sd3")[2]
    assert type(tokenizer).__name__.startswith("T5Tokenizer")
    assert len(tokenizer) == 32100 and tokenizer.model_max_length == 256
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    # T5's SentencePiece splits a word-initial "a" into "▁" (3) + "a" (9); "</s>" (1) ends every prompt.
    assert tokenizer("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]
    assert tokenizer("<extra_id_0>").input_ids == [32099, 1]


@pytest.mark.parametrize("with_t5", [True, False], ids=["clip+t5", "clip-only"])
def test_the_family_encoding_rule_is_diffusers_sd3_encoding(with_t5):
    modules = tiny_sd3_modules(MEDIUM, seed=3)
    tokenizers = load_tokenizers("sd3")
    encoders = [modules["text_encoder"], modules["text_encoder_2"], modules["text_encoder_3"] if with_t5 else None]
    pipeline = diffusers.StableDiffusion3Pipeline(
        transformer=modules["transformer"], vae=modules["vae"], scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        text_encoder=encoders[0], text_encoder_2=encoders[1], text_encoder_3=encoders[2],
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], tokenizer_3=tokenizers[2] if with_t5 else None)
    prompt = "a red car beside a tree"
    expected, _, expected_pooled, _ = pipeline.encode_prompt(
        prompt, None, None, do_classifier_free_guidance=False, max_sequence_length=256)
    token_ids = [tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt").input_ids
                 for tokenizer, length in zip(tokenizers, (77, 77, 256))]
    with torch.no_grad():
        # Without T5 the rule pads with zeros of the transformer's joint width (the tiny model's 128).
        hidden, pooled = SD3.encode_token_ids(encoders, token_ids, clip_skip=1,
                                              joint_width=modules["transformer"].config.joint_attention_dim)
    torch.testing.assert_close(hidden, expected)
    torch.testing.assert_close(pooled, expected_pooled)
