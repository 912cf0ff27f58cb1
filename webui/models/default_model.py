"""The embedded default checkpoint, so the app runs offline with an empty models folder.

It is a small model of the SD1.x architecture (the same diffusers classes and the real CLIP tokenizer
as a downloaded SD1.5), created deterministically from a fixed seed and saved as a diffusers folder in
the checkpoint folder, so it is loaded by the ordinary catalog/loading path like any other model.
`ensure_default_model` is the one place that decides what the default is; a trained model replaces
the random one by changing only `build_default_pipeline_folder`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL_NAME = "sd-studio-tiny"
DEFAULT_MODEL_SEED = 20261122


def _tiny_components() -> dict:
    """Randomly initialised SD1.x-architecture components, small enough to run on CPU in seconds."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(DEFAULT_MODEL_SEED)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=64,
        )
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def build_default_pipeline_folder(target: Path) -> None:
    """Write the default model as a diffusers folder (atomically: a temp folder renamed into place)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from webui.models.model_configs import config_dir, load_component_config

    components = _tiny_components()
    tokenizer = CLIPTokenizer.from_pretrained(config_dir("sd1") / "tokenizer", local_files_only=True)
    scheduler = PNDMScheduler.from_config(load_component_config("sd1", "scheduler"))
    pipeline = StableDiffusionPipeline(
        **components, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as staging:
        staged = Path(staging) / target.name
        pipeline.save_pretrained(staged, safe_serialization=True)
        (staged / "README.md").write_text(
            "# sd-studio-tiny\n\nThe embedded default model of SD Studio: SD1.x architecture, randomly "
            f"initialised from seed {DEFAULT_MODEL_SEED}. It produces abstract noise-like images; it exists so "
            "the whole app runs offline on CPU. Drop real checkpoints into models/Stable-diffusion.\n",
            encoding="utf-8",
        )
        staged.rename(target)


def ensure_default_model(checkpoint_folder: Path) -> Path | None:
    """Create the default model when the checkpoint folder holds no model; return its path if created."""
    from webui.models.catalog import SINGLE_FILE_SUFFIXES, is_diffusers_folder

    checkpoint_folder.mkdir(parents=True, exist_ok=True)
    has_models = any(
        is_diffusers_folder(path) or (path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES)
        for path in checkpoint_folder.rglob("*")
    )
    if has_models:
        return None
    target = checkpoint_folder / DEFAULT_MODEL_NAME
    if target.exists():
        shutil.rmtree(target)  # an incomplete earlier attempt
    build_default_pipeline_folder(target)
    return target
