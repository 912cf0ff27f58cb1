"""Component configs fitted to the shapes of the weights they will hold.

A single-file checkpoint holds weights only; its configs come from the shipped folder. Families whose files
come in several sizes (SD3 Medium / SD3.5 Medium / SD3.5 Large, full and reduced text encoders) read the
sizes from the diffusers-keyed tensors instead of keeping one config per variant: the shipped config gives
everything shapes cannot tell (activations, norms, head width), the weights give every size. Widths that
shapes do not pin down (attention heads of CLIP) are derived with the shipped head width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

StateDict = Mapping[str, torch.Tensor]


def count_indexed(state: StateDict, pattern: str) -> int:
    """How many numbered blocks `pattern` (a regex with one `(\\d+)` group) finds: highest index + 1."""
    compiled = re.compile(pattern)
    indices = {int(match.group(1)) for key in state if (match := compiled.match(key)) is not None}
    return max(indices) + 1 if indices else 0


def indexed(state: StateDict, pattern: str) -> list[int]:
    compiled = re.compile(pattern)
    return sorted({int(match.group(1)) for key in state if (match := compiled.match(key)) is not None})


def _text_model_key(state: StateDict, name: str) -> str:
    """CLIPTextModel keys lost the "text_model." level in transformers 5.6; accept both."""
    return f"text_model.{name}" if f"text_model.{name}" in state else name


def fit_clip_config(config: Mapping[str, Any], state: StateDict) -> dict[str, Any]:
    fitted = dict(config)
    head_width = int(config["hidden_size"]) // int(config["num_attention_heads"])
    vocab, hidden = state[_text_model_key(state, "embeddings.token_embedding.weight")].shape
    positions = state[_text_model_key(state, "embeddings.position_embedding.weight")].shape[0]
    layer_prefix = "text_model.encoder.layers" if any(k.startswith("text_model.") for k in state) else "encoder.layers"
    fitted.update(
        vocab_size=int(vocab), hidden_size=int(hidden), max_position_embeddings=int(positions),
        num_hidden_layers=count_indexed(state, re.escape(layer_prefix) + r"\.(\d+)\."),
        intermediate_size=int(state[f"{layer_prefix}.0.mlp.fc1.weight"].shape[0]),
        num_attention_heads=max(1, int(hidden) // head_width),
    )
    if "text_projection.weight" in state:
        fitted["projection_dim"] = int(state["text_projection.weight"].shape[0])
    return fitted


def fit_t5_config(config: Mapping[str, Any], state: StateDict) -> dict[str, Any]:
    fitted = dict(config)
    vocab, width = state["shared.weight"].shape
    buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    fitted.update(
        vocab_size=int(vocab), d_model=int(width), num_heads=int(heads), relative_attention_num_buckets=int(buckets),
        d_kv=int(state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) // int(heads),
        d_ff=int(state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
        num_layers=count_indexed(state, r"encoder\.block\.(\d+)\."),
    )
    return fitted


def fit_vae_config(config: Mapping[str, Any], state: StateDict) -> dict[str, Any]:
    fitted = dict(config)
    levels = count_indexed(state, r"encoder\.down_blocks\.(\d+)\.")
    fitted.update(
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        out_channels=int(state["decoder.conv_out.weight"].shape[0]),
        latent_channels=int(state["decoder.conv_in.weight"].shape[1]),
        block_out_channels=[int(state[f"encoder.down_blocks.{level}.resnets.0.conv1.weight"].shape[0])
                            for level in range(levels)],
        layers_per_block=count_indexed(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=[config["down_block_types"][0]] * levels,
        up_block_types=[config["up_block_types"][0]] * levels,
        use_quant_conv="quant_conv.weight" in state,
        use_post_quant_conv="post_quant_conv.weight" in state,
    )
    return fitted


def fit_text_time_unet_config(config: Mapping[str, Any], state: StateDict, pooled_width: int | None,
                              time_id_count: int) -> dict[str, Any]:
    """An SDXL-style UNet (`UNet2DConditionModel` with text_time added conditioning) fitted to its
    diffusers-keyed weights: levels, widths, which levels attend, transformer depths, cross-attention width,
    the added-conditioning sizes. Head counts come from the shipped config's head width (64 in every
    published SDXL model); `pooled_width` (the pooled text width, None: the shipped one) and `time_id_count`
    split the added embedding's input into pooled text and time ids. Published weights give the shipped
    config back unchanged."""
    fitted = dict(config)
    levels = count_indexed(state, r"down_blocks\.(\d+)\.")
    widths = [int(state[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0]) for level in range(levels)]
    attends = [any(key.startswith(f"down_blocks.{level}.attentions.") for key in state) for level in range(levels)]
    up_attends = [any(key.startswith(f"up_blocks.{level}.attentions.") for key in state) for level in range(levels)]
    shipped_depths = config.get("transformer_layers_per_block", 1)
    shipped_depths = (list(shipped_depths) if isinstance(shipped_depths, (list, tuple))
                      else [shipped_depths] * len(config["block_out_channels"]))
    # Levels without attention have no transformers of their own, but the middle block takes the last
    # level's depth; the others keep the shipped value unless every counted depth is the same.
    counted = {level: count_indexed(state, rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\.")
               for level in range(levels) if attends[level]}
    middle = count_indexed(state, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.")
    uniform = middle if set(counted.values()) <= {middle} else None
    depths = [counted.get(level, middle if level == levels - 1 else uniform
                          or shipped_depths[min(level, len(shipped_depths) - 1)]) for level in range(levels)]
    shipped_heads = config["attention_head_dim"]
    first_heads = shipped_heads[0] if isinstance(shipped_heads, (list, tuple)) else shipped_heads
    head_width = int(config["block_out_channels"][0]) // int(first_heads)
    heads = [max(1, width // head_width) for width in widths]
    first_attention = next(level for level in range(levels) if attends[level])
    cross = state[f"down_blocks.{first_attention}.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    added_input = int(state["add_embedding.linear_1.weight"].shape[1])
    pooled = pooled_width or int(config["projection_class_embeddings_input_dim"]) - time_id_count * int(
        config["addition_time_embed_dim"])
    fitted.update(
        in_channels=int(state["conv_in.weight"].shape[1]), out_channels=int(state["conv_out.weight"].shape[0]),
        block_out_channels=widths,
        layers_per_block=count_indexed(state, r"down_blocks\.0\.resnets\.(\d+)\."),
        down_block_types=["CrossAttnDownBlock2D" if attention else "DownBlock2D" for attention in attends],
        up_block_types=["CrossAttnUpBlock2D" if attention else "UpBlock2D" for attention in up_attends],
        transformer_layers_per_block=depths if len(set(depths)) > 1 or isinstance(
            config.get("transformer_layers_per_block"), (list, tuple)) else depths[0],
        attention_head_dim=heads,
        cross_attention_dim=int(cross.shape[1]),
        projection_class_embeddings_input_dim=added_input,
        addition_time_embed_dim=(added_input - pooled) // time_id_count,
    )
    return fitted
