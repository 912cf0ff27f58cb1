"""Tiny SD3.5 models of the exact architecture (MMDiT/MMDiT-X, 16-channel VAE, CLIP-L + bigG with projections,
T5 encoder), seeded, and writers for the layouts people download them in: a single `.safetensors` in
Stability/ComfyUI names (with or without `text_encoders.*`), the separate `clip_l`/`clip_g`/`t5xxl` files of
models/text_encoder, and a diffusers folder. The single-file writer is the inverse of diffusers' SD3
converters, key by key, so loading a written file is checked against the modules it was written from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from webui.models.ldm_conversion import _vae_to_ldm  # the project's tested VAE writer (LDM names)

CLIP_WIDTH = 64   # one 64-wide head, as the published encoders' heads are 64 wide
T5_WIDTH = 128
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
MEDIUM, LARGE = "sd3.5-medium", "sd3.5-large"


def tiny_sd3_modules(variant: str = MEDIUM, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Seeded tiny components; MEDIUM has the MMDiT-X second attention in block 0, LARGE only q/k norms."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_WIDTH, pos_embed_max_size=32,
        dual_attention_layers=(0,) if variant == MEDIUM else (), qk_norm="rms_norm")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=16, norm_num_groups=32, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False)

    def clip(hidden_act: str) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=CLIP_WIDTH, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=1, max_position_embeddings=77, projection_dim=CLIP_WIDTH, hidden_act=hidden_act,
            bos_token_id=0, eos_token_id=2, pad_token_id=1))

    t5 = T5EncoderModel(T5Config(
        vocab_size=32128, d_model=T5_WIDTH, d_kv=16, d_ff=96, num_layers=2, num_heads=8,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
        is_gated_act=True, layer_norm_epsilon=1e-6))
    modules = {"transformer": transformer, "vae": vae, "text_encoder": clip("quick_gelu"),
               "text_encoder_2": clip("gelu"), "text_encoder_3": t5}
    # SD3's CLIP-L projection is the identity (its files usually leave it out).
    modules["text_encoder"].text_projection.weight.data = torch.eye(CLIP_WIDTH)
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def _swap_halves(weight: Tensor) -> Tensor:
    """diffusers' AdaLayerNormContinuous orders (scale, shift); the original MMDiT (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def transformer_to_original(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers SD3Transformer2DModel names -> the original MMDiT names (`model.diffusion_model.` added)."""
    out: dict[str, Tensor] = {
        "pos_embed": state["pos_embed.pos_embed"],
        "x_embedder.proj.weight": state["pos_embed.proj.weight"], "x_embedder.proj.bias": state["pos_embed.proj.bias"],
        "context_embedder.weight": state["context_embedder.weight"],
        "context_embedder.bias": state["context_embedder.bias"],
        "final_layer.linear.weight": state["proj_out.weight"], "final_layer.linear.bias": state["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_halves(state["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_halves(state["norm_out.linear.bias"]),
    }
    for ours, theirs in (("timestep_embedder", "t_embedder"), ("text_embedder", "y_embedder")):
        for index, mlp in (("1", "0"), ("2", "2")):
            for kind in ("weight", "bias"):
                out[f"{theirs}.mlp.{mlp}.{kind}"] = state[f"time_text_embed.{ours}.linear_{index}.{kind}"]
    blocks = sorted({int(key.split(".")[1]) for key in state if key.startswith("transformer_blocks.")})
    last = blocks[-1]
    for i in blocks:
        d, o = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{o}x_block.attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.to_{p}.{kind}"] for p in "qkv"])
            out[f"{o}context_block.attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.add_{p}_proj.{kind}"] for p in "qkv"])
            out[f"{o}x_block.attn.proj.{kind}"] = state[f"{d}attn.to_out.0.{kind}"]
            out[f"{o}x_block.adaLN_modulation.1.{kind}"] = state[f"{d}norm1.linear.{kind}"]
            context_norm = state[f"{d}norm1_context.linear.{kind}"]
            context_norm = _swap_halves(context_norm) if i == last else context_norm
            out[f"{o}context_block.adaLN_modulation.1.{kind}"] = context_norm
            out[f"{o}x_block.mlp.fc1.{kind}"] = state[f"{d}ff.net.0.proj.{kind}"]
            out[f"{o}x_block.mlp.fc2.{kind}"] = state[f"{d}ff.net.2.{kind}"]
            if i != last:
                out[f"{o}context_block.attn.proj.{kind}"] = state[f"{d}attn.to_add_out.{kind}"]
                out[f"{o}context_block.mlp.fc1.{kind}"] = state[f"{d}ff_context.net.0.proj.{kind}"]
                out[f"{o}context_block.mlp.fc2.{kind}"] = state[f"{d}ff_context.net.2.{kind}"]
            if f"{d}attn2.to_q.{kind}" in state:
                out[f"{o}x_block.attn2.qkv.{kind}"] = torch.cat([state[f"{d}attn2.to_{p}.{kind}"] for p in "qkv"])
                out[f"{o}x_block.attn2.proj.{kind}"] = state[f"{d}attn2.to_out.0.{kind}"]
        for ours, block, theirs in (("norm_q", "x_block.attn", "ln_q"), ("norm_k", "x_block.attn", "ln_k"),
                                    ("norm_added_q", "context_block.attn", "ln_q"),
                                    ("norm_added_k", "context_block.attn", "ln_k")):
            if f"{d}attn.{ours}.weight" in state:
                out[f"{o}{block}.{theirs}.weight"] = state[f"{d}attn.{ours}.weight"]
        for ours, theirs in (("norm_q", "ln_q"), ("norm_k", "ln_k")):
            if f"{d}attn2.{ours}.weight" in state:
                out[f"{o}x_block.attn2.{theirs}.weight"] = state[f"{d}attn2.{ours}.weight"]
    return {"model.diffusion_model." + key: value for key, value in out.items()}


def clip_file_state(module: torch.nn.Module, with_projection: bool = True) -> dict[str, Tensor]:
    """A CLIP encoder as ComfyUI's clip_l/clip_g files hold it (transformers names, no position ids)."""
    return {key: value for key, value in module.state_dict().items()
            if not key.endswith("position_ids") and (with_projection or not key.startswith("text_projection"))}


def t5_file_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """T5 as t5xxl_*.safetensors holds it: the token table once, as `shared.weight`."""
    return {key: value for key, value in module.state_dict().items() if key != "encoder.embed_tokens.weight"}


def write_single_file(path: Path, modules: dict[str, torch.nn.Module], bundle: tuple[str, ...] = (
        "text_encoder", "text_encoder_2", "text_encoder_3"), dtype: torch.dtype = torch.float16) -> Path:
    """Transformer + VAE (+ the bundled encoders under `text_encoders.*`), as Stability/ComfyUI ship them."""
    state = transformer_to_original(modules["transformer"].state_dict())
    state.update(_vae_to_ldm(modules["vae"].state_dict()))
    prefixes = {"text_encoder": CLIP_L_PREFIX, "text_encoder_2": CLIP_G_PREFIX, "text_encoder_3": T5_PREFIX}
    for name in bundle:
        part = t5_file_state(modules[name]) if name == "text_encoder_3" else clip_file_state(modules[name])
        state.update({prefixes[name] + key: value for key, value in part.items()})
    save_file({key: value.to(dtype).contiguous() for key, value in state.items()}, str(path))
    return path


def write_text_encoder_files(folder: Path, modules: dict[str, torch.nn.Module], t5: bool = True,
                             clip_l_projection: bool = False, dtype: torch.dtype = torch.float16) -> None:
    """models/text_encoder as people fill it: clip_l (often without its identity projection), clip_g, t5xxl_fp16."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"clip_l.safetensors": clip_file_state(modules["text_encoder"], clip_l_projection),
             "clip_g.safetensors": clip_file_state(modules["text_encoder_2"])}
    if t5:
        files["t5xxl_fp16.safetensors"] = t5_file_state(modules["text_encoder_3"])
    for name, state in files.items():
        save_file({key: value.to(dtype).contiguous() for key, value in state.items()}, str(folder / name))


def to_scaled_fp8(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """ComfyUI's fp8_scaled layout: each 2-D `.weight` as float8_e4m3fn divided by its `.scale_weight`,
    plus the `scaled_fp8` marker (under `prefix`, as the files put it beside the weights)."""
    out: dict[str, Tensor] = {prefix + "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / 448
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    return out
