"""`<lora:name:w>` in a prompt: applied for that generation, gone without a trace afterwards."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from webui.context import build_context
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Txt2ImgRequest
from webui.settings import settings_from_args

BASE = dict(width=64, height=64, steps=4, seed=21, sampler_name="Euler")


def write_kohya_lora(path, unet: torch.nn.Module, rank: int = 4, seed: int = 0) -> None:
    """A kohya-format LoRA on every attention projection of the UNet, from seeded random factors."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ".attn" in name and name.split(".")[-1] in {"to_q", "to_k", "to_v"}:
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank)})


@pytest.fixture
def ctx(data_dir):
    context = build_context(settings_from_args(["--data-dir", str(data_dir)]))
    with context.manager.checkout() as model:
        write_kohya_lora(data_dir / "models" / "Lora" / "shapes.safetensors", model.pipeline.unet)
    yield context
    context.close()


def generate(ctx, prompt: str):
    return ctx.generation.submit_txt2img(Txt2ImgRequest(prompt=prompt, **BASE)).result(timeout=300)


def unet_weights(ctx) -> dict[str, torch.Tensor]:
    with ctx.manager.checkout() as model:
        return {k: v.clone() for k, v in model.pipeline.unet.state_dict().items()}


def test_lora_tag_changes_the_image_and_its_removal_restores_it_bitwise(ctx):
    original_weights = unet_weights(ctx)
    plain = generate(ctx, "a large red circle in the center, blue background")
    with_lora = generate(ctx, "a large red circle in the center, blue background <lora:shapes:0.8>")
    assert with_lora.images[0].tobytes() != plain.images[0].tobytes()
    params = parse_infotext(with_lora.infotexts[0])
    assert params["Lora hashes"].startswith("shapes: ") and len(params["Lora hashes"].split(": ")[1]) == 12
    assert "<lora:shapes:0.8>" in params["Prompt"]  # pasting the infotext back restores the tag
    stronger = generate(ctx, "a large red circle in the center, blue background <lora:shapes:1.5>")
    assert stronger.images[0].tobytes() != with_lora.images[0].tobytes()
    again = generate(ctx, "a large red circle in the center, blue background")
    assert again.images[0].tobytes() == plain.images[0].tobytes()
    assert all(torch.equal(original_weights[k], v) for k, v in unet_weights(ctx).items())
    assert with_lora.warnings == ()
    # Adding, re-weighting and removing LoRAs never reloaded the checkpoint.
    assert ctx.manager.switch_count == {"rebuilt": 1, "copied": 0}


def test_bad_lora_tags_are_refused_with_the_tag_named(ctx):
    with pytest.raises(ValueError, match="'missing' not found"):
        generate(ctx, "a circle <lora:missing:1>")
    with pytest.raises(ValueError, match="<lora:shapes:abc> is not a number"):
        generate(ctx, "a circle <lora:shapes:abc>")
    from safetensors.torch import load_file

    extra = load_file(str(ctx.settings.lora_folder / "shapes.safetensors"))
    extra["lora_unet_no_such_block_attn1_to_q.lora_down.weight"] = torch.zeros(4, 8)
    extra["lora_unet_no_such_block_attn1_to_q.lora_up.weight"] = torch.zeros(8, 4)
    save_file(extra, str(ctx.settings.lora_folder / "partial.safetensors"))
    partial = generate(ctx, "a circle <lora:partial:1>")
    assert len(partial.warnings) == 1 and "lora_unet_no_such_block_attn1_to_q" in partial.warnings[0]
    (ctx.settings.lora_folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken"):
        generate(ctx, "a circle <lora:broken:1>")
    # The server-side state is clean: a plain generation still works and matches a fresh one.
    assert len(generate(ctx, "a circle").images) == 1


def test_textual_inversion_by_file_name_and_incompatible_width_ignored(ctx, data_dir):
    embeddings = data_dir / "models" / "embeddings"
    embeddings.mkdir(parents=True, exist_ok=True)
    with ctx.manager.checkout() as model:
        width = model.pipeline.text_encoder.get_input_embeddings().embedding_dim
    generator = torch.Generator().manual_seed(3)
    save_file({"emb_params": torch.randn(2, width, generator=generator)}, str(embeddings / "hexstyle.safetensors"))
    save_file({"emb_params": torch.randn(1, width + 8, generator=generator)}, str(embeddings / "widething.safetensors"))
    plain = generate(ctx, "a large red circle in the center, blue background")
    styled = generate(ctx, "a large red hexstyle in the center, blue background")
    assert styled.images[0].tobytes() != plain.images[0].tobytes()
    ti = parse_infotext(styled.infotexts[0])["TI hashes"]
    assert ti.startswith("hexstyle: ") and len(ti.split(": ")[1]) == 12
    # An embedding of the wrong width is not loaded: its name stays an ordinary word.
    assert "TI hashes" not in parse_infotext(generate(ctx, "a widething").infotexts[0])
    # Injected embeddings only add new token rows: prompts that do not use them are unchanged.
    again = generate(ctx, "a large red circle in the center, blue background")
    assert again.images[0].tobytes() == plain.images[0].tobytes()


def test_vae_choice_automatic_none_file_and_beside_checkpoint(ctx, data_dir):
    with ctx.manager.checkout() as model:
        vae_state = {k: v.clone() for k, v in model.pipeline.vae.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    altered = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
               for k, v in vae_state.items()}
    save_file(altered, str(data_dir / "models" / "VAE" / "sharper.safetensors"))
    own = generate(ctx, "a circle")
    external = ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="a circle", vae="sharper", **BASE)).result(300)
    assert external.images[0].tobytes() != own.images[0].tobytes()
    params = parse_infotext(external.infotexts[0])
    assert params["VAE"] == "sharper.safetensors" and len(params["VAE hash"]) == 10
    # "None" and "Automatic" (nothing beside the checkpoint) give back the checkpoint's own VAE exactly.
    for choice in ("None", "Automatic"):
        again = ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="a circle", vae=choice, **BASE)).result(300)
        assert again.images[0].tobytes() == own.images[0].tobytes()
    # A `<checkpoint>.vae.safetensors` beside the checkpoint is what Automatic picks.
    save_file(altered, str(data_dir / "models" / "Stable-diffusion" / "sd-studio-toy.vae.safetensors"))
    automatic = generate(ctx, "a circle")
    assert automatic.images[0].tobytes() == external.images[0].tobytes()
    assert ctx.manager.switch_count == {"rebuilt": 1, "copied": 0}
    with pytest.raises(ValueError, match="VAE 'missing' not found"):
        ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="x", vae="missing", **BASE))
