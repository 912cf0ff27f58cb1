"""Denoising hooks of the test pack: each acts only when the prompt carries its trigger word.

PACKFLAT zeroes the latents after the last step (a flat image); PACKRESIDUAL adds residuals to every
down block and the middle block (shapes for the default model's UNet: channels 48/96/144, two halvings);
PACKTILED runs the UNet on the left and right halves separately (a two-tile model call); PACKATTN swaps
every attention processor for one that drops the prompt (cross-attention output 0); PACKINVERT negates
the decoded pixels; PACKENCODE encodes every img2img source as the all-zero latent.
"""

import torch

from webui.extensions import api

CHANNELS = (48, 96, 144)


class DropPrompt:
    """An attention processor around the original one: self-attention unchanged, cross-attention gives 0."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        output = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        return output if encoder_hidden_states is None else torch.zeros_like(output)


def wants(request, word: str) -> bool:
    return word in request.prompt


def setup(ext: api.ExtensionSetup) -> None:
    def step(context: api.DenoisingStep):
        if wants(context.request, "PACKFLAT") and context.step == context.total_steps - 1:
            return torch.zeros_like(context.latents)
        return None

    def residuals(context: api.UNetCall):
        if not wants(context.request, "PACKRESIDUAL"):
            return None
        batch, _, height, width = context.sample.shape
        like = dict(dtype=context.sample.dtype, device=context.sample.device)
        down = [torch.full((batch, CHANNELS[0], height, width), 2.0, **like)]
        for level, channels in enumerate(CHANNELS):
            size = (height >> level, width >> level)
            down.append(torch.full((batch, channels, *size), 2.0, **like))
            if level < len(CHANNELS) - 1:
                down.append(torch.full((batch, channels, size[0] // 2, size[1] // 2), 2.0, **like))
        last = len(CHANNELS) - 1
        mid = torch.full((batch, CHANNELS[-1], height >> last, width >> last), 2.0, **like)
        return api.UNetResiduals(down=tuple(down), mid=mid)

    def model_call(context: api.ModelCall):
        if not wants(context.request, "PACKTILED"):
            return context.call()
        half = context.sample.shape[-1] // 2
        left = context.call(sample=context.sample[..., :half])
        right = context.call(sample=context.sample[..., half:])
        return torch.cat([left, right], dim=-1)

    def attention(context: api.AttentionSetup):
        if not wants(context.request, "PACKATTN"):
            return None
        return {name: DropPrompt(processor) for name, processor in context.processors.items()}

    def decode(context: api.VaeCall):
        pixels = context.call()
        return -pixels if wants(context.request, "PACKINVERT") else pixels

    def encode(context: api.VaeCall):
        parameters = context.call()
        return torch.zeros_like(parameters) if wants(context.request, "PACKENCODE") else parameters

    ext.on_denoising_step(step)
    ext.add_unet_residuals(residuals)
    ext.wrap_model_call(model_call)
    ext.set_attention_processors(attention)
    ext.wrap_vae_decode(decode)
    ext.wrap_vae_encode(encode)
