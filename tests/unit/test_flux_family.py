"""The Flux.1 family's facts that need no files: full-size meta builds against the published transformer size
(dev and schnell), configs fitted back from a model's own tensor shapes, detection from BFL tensor names, the
shared tokenizers, and the prompt encoding rule against diffusers' own Flux prompt encoding."""

from __future__ import annotations

import diffusers
import pytest
import torch
from accelerate import init_empty_weights

from tests.support.flux_files import DEV, SCHNELL, tiny_flux_modules, transformer_to_bfl
from webui.models.families import FAMILIES, family_named, family_of_ldm_keys
from webui.models.families.flux import fit_transformer_config
from webui.models.ldm_conversion import UnsupportedCheckpointError, detect_architecture
from webui.models.model_configs import load_component_config, load_tokenizers

FLUX = family_named("flux")
# Black Forest Labs: "FLUX.1 [dev] is a 12 billion parameter rectified flow transformer"; diffusers' build of
# the published config holds 11.90 billion parameters, schnell 11.89 (no guidance embedding).
GUIDANCE_EMBEDDER = (256 * 3072 + 3072) + (3072 * 3072 + 3072)


def meta_transformer(config: dict) -> torch.nn.Module:
    with init_empty_weights():
        return diffusers.FluxTransformer2DModel.from_config(config)


def tensor_count(module: torch.nn.Module) -> int:
    return sum(tensor.numel() for tensor in module.state_dict().values())


@pytest.mark.parametrize("variant", [DEV, SCHNELL])
def test_full_size_meta_builds_match_the_published_size_and_fit_back_from_their_shapes(variant):
    shipped = load_component_config("flux", "transformer")
    config = {**shipped, "guidance_embeds": variant == DEV}
    transformer = meta_transformer(config)
    assert all(parameter.device.type == "meta" for parameter in transformer.parameters())
    count = tensor_count(transformer)
    assert round(count / 1e9, 1) == 11.9
    assert count == tensor_count(meta_transformer({**shipped, "guidance_embeds": True})) - (
        0 if variant == DEV else GUIDANCE_EMBEDDER)
    fitted = fit_transformer_config(shipped, transformer.state_dict())
    assert {key: fitted[key] for key in config if not key.startswith("_")} == {
        key: value for key, value in config.items() if not key.startswith("_")}
    assert FLUX.variant_of_denoiser_config(fitted) == variant


def test_the_shipped_vae_and_text_encoders_have_their_published_sizes():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    vae_config = load_component_config("flux", "vae")
    assert (vae_config["scaling_factor"], vae_config["shift_factor"], vae_config["latent_channels"]) == (
        0.3611, 0.1159, 16)
    with init_empty_weights():
        vae = diffusers.AutoencoderKL.from_config(vae_config)
        clip = CLIPTextModel(CLIPTextConfig.from_dict(load_component_config("flux", "text_encoder")))
        t5 = T5EncoderModel(T5Config.from_dict(load_component_config("flux", "text_encoder_2")))
    assert round(tensor_count(vae) / 1e6, 1) == 83.8  # the 16-channel autoencoder
    assert round(sum(p.numel() for p in clip.parameters()) / 1e6) == 123  # CLIP ViT-L/14's text tower
    tied = set(t5._tied_weights_keys)
    assert round(sum(p.numel() for n, p in t5.named_parameters() if n not in tied) / 1e9, 2) == 4.76
    assert len(FLUX.preview_coefficients) == FLUX.latent_channels == 16
    assert FLUX.denoiser_in_channels == 64 and not FLUX.uses_clip_skip


def test_the_tokenizers_are_sd3s_shipped_files_not_copies():
    sd3 = family_named("sd3")
    assert FLUX.shipped_tokenizer_folder("tokenizer") == sd3.shipped_tokenizer_folder("tokenizer")
    assert FLUX.shipped_tokenizer_folder("tokenizer_2") == sd3.shipped_tokenizer_folder("tokenizer_3")
    assert not (FLUX.config_folder / "tokenizer").exists() and not (FLUX.config_folder / "tokenizer_2").exists()
    clip, t5 = load_tokenizers("flux")
    assert type(clip).__name__ == "CLIPTokenizer" and type(t5).__name__.startswith("T5Tokenizer")
    assert t5("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bfl", "comfyui"])
@pytest.mark.parametrize("variant", [DEV, SCHNELL])
def test_bfl_tensor_names_are_detected_as_flux_with_their_variant(prefix, variant):
    transformer = tiny_flux_modules(variant)["transformer"]
    key_shapes = {key: tuple(value.shape) for key, value in transformer_to_bfl(transformer.state_dict(),
                                                                               prefix).items()}
    assert FAMILIES[0] is FLUX and family_of_ldm_keys(list(key_shapes)) is FLUX
    architecture = detect_architecture(key_shapes)
    assert (architecture.family, architecture.variant, architecture.unet_in_channels) == ("flux", variant, 64)
    assert architecture.label == {DEV: "Flux.1 dev", SCHNELL: "Flux.1 schnell"}[variant]
    assert FLUX.scheduler_overrides(list(key_shapes)) == (
        {} if variant == DEV else {"shift": 1.0, "use_dynamic_shifting": False})


def test_flux_fill_and_flux_derivatives_are_refused_with_a_reason():
    transformer = tiny_flux_modules(DEV)["transformer"]
    state = transformer_to_bfl(transformer.state_dict())
    fill = {key: tuple(value.shape) for key, value in state.items()}
    fill["model.diffusion_model.img_in.weight"] = (64, 384)  # FLUX.1 Fill's image + mask conditioning
    with pytest.raises(UnsupportedCheckpointError, match="384 input channels"):
        detect_architecture(fill)
    chroma = {key: shape for key, shape in fill.items() if ".vector_in." not in key}  # Chroma has no vector_in
    with pytest.raises(UnsupportedCheckpointError, match="Flux derivative"):
        detect_architecture(chroma)
    nf4 = {key: tuple(value.shape) for key, value in state.items()}  # Forge's flux1-dev-bnb-nf4 layout
    nf4["model.diffusion_model.double_blocks.0.img_attn.qkv.weight.absmax"] = (1024,)
    nf4["model.diffusion_model.double_blocks.0.img_attn.qkv.weight.quant_state.bitsandbytes__nf4"] = (200,)
    with pytest.raises(UnsupportedCheckpointError, match="NF4.*fp8, fp16 or bf16"):
        detect_architecture(nf4)


def test_the_family_encoding_rule_is_diffusers_flux_encoding():
    modules = tiny_flux_modules(DEV, seed=3)
    tokenizers = load_tokenizers("flux")
    pipeline = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), **modules,
                                      tokenizer=tokenizers[0], tokenizer_2=tokenizers[1])
    prompt = "a red car beside a tree"
    expected, expected_pooled, text_ids = pipeline.encode_prompt(prompt, None, max_sequence_length=64)
    token_ids = [tokenizer(prompt, padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt").input_ids for tokenizer, length in zip(tokenizers, (77, 64))]
    with torch.no_grad():
        hidden, pooled = FLUX.encode_token_ids([modules["text_encoder"], modules["text_encoder_2"]], token_ids,
                                               clip_skip=1)
    torch.testing.assert_close(hidden, expected)
    torch.testing.assert_close(pooled, expected_pooled)
    assert text_ids.shape == (64, 3)  # FluxPipeline builds the text position ids itself
    with pytest.raises(ValueError, match="T5-XXL.*t5xxl_fp16.safetensors"):
        FLUX.encode_token_ids([modules["text_encoder"], None], token_ids, clip_skip=1)


def test_the_engine_gets_each_variants_published_call_arguments():
    assert FLUX.pipeline_arguments(DEV) == {"guidance_scale": 3.5, "max_sequence_length": 512}
    assert FLUX.pipeline_arguments(DEV, 5.0) == {"guidance_scale": 5.0, "max_sequence_length": 512}
    assert FLUX.pipeline_arguments(SCHNELL, 5.0) == {"guidance_scale": 0.0, "max_sequence_length": 256}
    assert (FLUX.generation_defaults(DEV).steps, FLUX.generation_defaults(SCHNELL).steps) == (28, 4)
    assert FLUX.distilled_guidance and not any(family.distilled_guidance for family in FAMILIES if family is not FLUX)
    assert all(family.pipeline_arguments(None, 7.0) == {} for family in FAMILIES if family is not FLUX)
    assert FLUX.generation_defaults(SCHNELL).sampler == "Euler"
    assert FLUX.pipeline_class_name("txt2img") == "FluxPipeline"
    assert FLUX.pipeline_class_name("img2img") == "FluxImg2ImgPipeline"
    assert FLUX.pipeline_class_name("inpaint") == "FluxInpaintPipeline"


@pytest.mark.parametrize("variant", [DEV, SCHNELL])
def test_full_size_bfl_names_convert_to_exactly_the_published_models_tensors(variant):
    """At Flux.1's own width (3072, which diffusers' converter assumes) on the meta device: BFL names of the
    full-size model (19 + 38 blocks) are detected with their variant and convert to every tensor of the
    diffusers model, shape for shape."""
    from webui.models.ldm_conversion import flux_transformer_from_bfl

    shipped = load_component_config("flux", "transformer")
    transformer = meta_transformer({**shipped, "guidance_embeds": variant == DEV})
    expected = transformer.state_dict()
    bfl = transformer_to_bfl(dict(expected))
    assert len([key for key in bfl if key.endswith("linear1.weight")]) == 38
    architecture = detect_architecture({key: tuple(value.shape) for key, value in bfl.items()})
    assert (architecture.family, architecture.variant) == ("flux", variant)
    converted = flux_transformer_from_bfl({key.removeprefix("model.diffusion_model."): value
                                           for key, value in bfl.items()})
    assert {key: tuple(value.shape) for key, value in converted.items()} == {
        key: tuple(value.shape) for key, value in expected.items()}


def test_packed_latents_unpack_for_the_live_preview_as_the_pipeline_packs_them():
    latents = torch.randn(1, 16, 128, 96)  # a 1024x768 image's latents
    packed = diffusers.FluxPipeline._pack_latents(latents, 1, 16, 128, 96)
    assert packed.shape == (1, 64 * 48, 64)
    torch.testing.assert_close(FLUX.unpack_latents(packed, 1024, 768), latents, rtol=0, atol=0)
    assert FLUX.unpack_latents(latents, 1024, 768) is latents
    sd3 = family_named("sd3")
    assert sd3.unpack_latents(latents, 1024, 768) is latents


def test_at_the_published_width_our_conversion_equals_diffusers_own_converter():
    """Flux.1's 3072-wide blocks (one double, one single: the converter's hard-coded width applies): the
    wrapper that splits the single-stream `linear1` itself gives diffusers' converter's result, tensor for
    tensor."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from webui.models.ldm_conversion import flux_transformer_from_bfl

    shipped = load_component_config("flux", "transformer")
    layout = meta_transformer({**shipped, "num_layers": 1, "num_single_layers": 1}).state_dict()
    # Every element a different number (the conversion only moves, splits and joins tensors): any misplaced
    # element shows.
    state, start = {}, 0
    for key, value in layout.items():
        state[key] = torch.arange(start, start + value.numel(), dtype=torch.int32).view(value.shape)
        start += value.numel()
    bfl = transformer_to_bfl(state, prefix="")
    ours = flux_transformer_from_bfl(bfl)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert set(ours) == set(theirs) == set(state)
    assert all(torch.equal(ours[key], theirs[key]) and torch.equal(ours[key], state[key]) for key in state)
