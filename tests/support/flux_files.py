"""Tiny Flux.1 models of the exact architecture (FluxTransformer2DModel with double- and single-stream blocks,
q/k RMS norms and, for dev, the guidance embedding; a 16-channel VAE without quant convs; CLIP-L; T5 encoder),
seeded, and writers for the layouts people download them in: BFL-named transformer files (with or without
ComfyUI's `model.diffusion_model.` prefix, plain or float8), "all in one" files bundling `vae.` and
`text_encoders.*`, `ae.safetensors`, the `clip_l`/`t5xxl` files of models/text_encoder, and a diffusers folder.
The transformer writer is the inverse of diffusers' Flux converter, key by key, so loading a written file is
checked against the modules it was written from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from webui.models.ldm_conversion import _vae_to_ldm  # the project's tested VAE writer (LDM names)

CLIP_WIDTH = 32   # one head (the loader derives CLIP heads with the published 64-wide head)
T5_WIDTH = 32
HEAD_WIDTH = 32   # rope axes 4/14/14: Flux.1's 16/56/56 split of 128 at this width
DEV, SCHNELL = "flux.1-dev", "flux.1-schnell"
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
PROMPT = "a photo of a cat"


def tiny_flux_modules(variant: str = DEV, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Seeded tiny components: 2 double-stream and 2 single-stream blocks of 2 heads."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=HEAD_WIDTH,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=variant == DEV, axes_dims_rope=(4, 14, 14))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=16, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, projection_dim=CLIP_WIDTH, hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=2, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(
        vocab_size=32128, d_model=T5_WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
        is_gated_act=True, layer_norm_epsilon=1e-6))
    modules = {"transformer": transformer, "vae": vae, "text_encoder": clip, "text_encoder_2": t5}
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def _swap_halves(weight: Tensor) -> Tensor:
    """diffusers' AdaLayerNormContinuous orders (scale, shift); BFL's final layer (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_bfl(state: dict[str, Tensor], prefix: str = "model.diffusion_model.") -> dict[str, Tensor]:
    """diffusers FluxTransformer2DModel names -> BFL's (`prefix` added): the inverse of diffusers' converter."""
    out: dict[str, Tensor] = {
        "img_in.weight": state["x_embedder.weight"], "img_in.bias": state["x_embedder.bias"],
        "txt_in.weight": state["context_embedder.weight"], "txt_in.bias": state["context_embedder.bias"],
        "final_layer.linear.weight": state["proj_out.weight"], "final_layer.linear.bias": state["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(state["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(state["norm_out.linear.bias"]),
    }
    for ours, theirs in (("timestep_embedder", "time_in"), ("text_embedder", "vector_in"),
                         ("guidance_embedder", "guidance_in")):
        for index, layer in (("1", "in_layer"), ("2", "out_layer")):
            for kind in ("weight", "bias"):
                key = f"time_text_embed.{ours}.linear_{index}.{kind}"
                if key in state:
                    out[f"{theirs}.{layer}.{kind}"] = state[key]
    doubles = sorted({int(key.split(".")[1]) for key in state if key.startswith("transformer_blocks.")})
    for i in doubles:
        d, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{o}img_attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.to_{p}.{kind}"] for p in "qkv"])
            out[f"{o}txt_attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.add_{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in (("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                                 ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                                 ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                                 ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj")):
                out[f"{o}{theirs}.{kind}"] = state[f"{d}{ours}.{kind}"]
        for ours, theirs in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                             ("norm_added_q", "txt_attn.norm.query_norm"),
                             ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{o}{theirs}.scale"] = state[f"{d}attn.{ours}.weight"]
    singles = sorted({int(key.split(".")[1]) for key in state if key.startswith("single_transformer_blocks.")})
    for i in singles:
        d, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{o}linear1.{kind}"] = torch.cat([state[f"{d}{name}.{kind}"] for name in (
                "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
            out[f"{o}linear2.{kind}"] = state[f"{d}proj_out.{kind}"]
            out[f"{o}modulation.lin.{kind}"] = state[f"{d}norm.linear.{kind}"]
        out[f"{o}norm.query_norm.scale"] = state[f"{d}attn.norm_q.weight"]
        out[f"{o}norm.key_norm.scale"] = state[f"{d}attn.norm_k.weight"]
    return {prefix + key: value for key, value in out.items()}


def ae_state(vae: torch.nn.Module, prefix: str = "") -> dict[str, Tensor]:
    """The VAE as BFL's ae.safetensors holds it (LDM names: `encoder.down.N...`, `decoder.up.N...`)."""
    return {prefix + key.removeprefix("first_stage_model."): value
            for key, value in _vae_to_ldm(vae.state_dict()).items()}


def clip_l_file_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """CLIP-L as ComfyUI's clip_l.safetensors holds it: transformers' names with the `text_model.` level and
    a text projection the Flux pipeline does not use."""
    state = {f"text_model.{key.removeprefix('text_model.')}": value for key, value in module.state_dict().items()
             if not key.endswith("position_ids")}
    state["text_projection.weight"] = torch.eye(CLIP_WIDTH)
    return state


def t5_file_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """T5 as t5xxl_*.safetensors holds it: the token table once, as `shared.weight`."""
    return {key: value for key, value in module.state_dict().items() if key != "encoder.embed_tokens.weight"}


def save(state: dict[str, Tensor], path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Floating tensors as `dtype` (float8_e4m3fn for the fp8 files people download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: (value.to(dtype) if value.is_floating_point() else value).contiguous()
               for key, value in state.items()}, str(path))
    return path


def write_transformer_file(path: Path, modules: dict[str, torch.nn.Module], prefix: str = "model.diffusion_model.",
                           dtype: torch.dtype = torch.float32) -> Path:
    """A transformer-only file (flux1-dev.safetensors is BFL-named without prefix; ComfyUI's with)."""
    return save(transformer_to_bfl(modules["transformer"].state_dict(), prefix), path, dtype)


def write_all_in_one(path: Path, modules: dict[str, torch.nn.Module], dtype: torch.dtype = torch.float32) -> Path:
    """A ComfyUI/Forge "checkpoint": transformer, `vae.` and both text encoders under `text_encoders.*`."""
    state = transformer_to_bfl(modules["transformer"].state_dict())
    state.update(ae_state(modules["vae"], prefix="vae."))
    state.update({CLIP_L_PREFIX + key: value for key, value in clip_l_file_state(modules["text_encoder"]).items()})
    state.update({T5_PREFIX + key: value for key, value in t5_file_state(modules["text_encoder_2"]).items()})
    return save(state, path, dtype)


def write_companions(models: Path, modules: dict[str, torch.nn.Module], vae: bool = True, clip: bool = True,
                     t5: bool = True, t5_name: str = "t5xxl_fp16.safetensors",
                     t5_dtype: torch.dtype = torch.float32) -> None:
    """models/VAE/ae.safetensors and models/text_encoder/clip_l + t5xxl files, as people download them."""
    if vae:
        save(ae_state(modules["vae"]), models / "VAE" / "ae.safetensors")
    if clip:
        save(clip_l_file_state(modules["text_encoder"]), models / "text_encoder" / "clip_l.safetensors")
    if t5:
        save(t5_file_state(modules["text_encoder_2"]), models / "text_encoder" / t5_name, t5_dtype)


def write_diffusers_folder(folder: Path, modules: dict[str, torch.nn.Module], schnell: bool = False) -> Path:
    """A FluxPipeline folder as `save_pretrained` writes it (with the shipped tokenizers)."""
    import diffusers

    from webui.models.model_configs import load_tokenizers

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=1.0 if schnell else 3.0, use_dynamic_shifting=not schnell, base_shift=0.5, max_shift=1.15)
    tokenizer, tokenizer_2 = load_tokenizers("flux")
    diffusers.FluxPipeline(scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer_2, **modules
                           ).save_pretrained(folder, safe_serialization=True)
    return folder


def reference_pipeline(modules: dict[str, torch.nn.Module], schnell: bool = False):
    """A FluxPipeline assembled directly from the modules (what a loaded file must denoise like)."""
    import diffusers

    from webui.models.model_configs import load_component_config, load_tokenizers

    config = load_component_config("flux", "scheduler")
    if schnell:
        config = {**config, "shift": 1.0, "use_dynamic_shifting": False}
    tokenizer, tokenizer_2 = load_tokenizers("flux")
    pipeline = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(config),
                                      tokenizer=tokenizer, tokenizer_2=tokenizer_2, **modules)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def denoise(pipeline, guidance_scale: float = 3.5):
    """Two steps at 32x32 (2x2-packed 16-channel latents: 64 tokens), seeded."""
    generator = torch.Generator().manual_seed(7)
    return pipeline(PROMPT, num_inference_steps=2, height=32, width=32, guidance_scale=guidance_scale,
                    max_sequence_length=32, generator=generator, output_type="np").images
