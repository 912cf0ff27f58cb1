"""Train the toy canny ControlNet for the embedded default model (issue #20 item 5).

A ControlNet (`ControlNetModel.from_unet`, arXiv 2302.05543) is trained on toy-world renders with their
canny edge maps as the control image, while the default model's UNet, VAE and text encoder stay frozen. The
edge maps come from `webui.generation.control_maps.canny`, the very function the app's `canny`
preprocessor runs, at the generation's size (the unit's "pixel perfect"), so a user's canny unit feeds the
model the maps it learnt from. 40 % of the captions are dropped to "" (the paper drops 50 %), so the map alone
has to place and shape the object, and 30 % (`--conflict-share`) name the scene with another shape at another
position (`toy_world.contradicting_scene`, colour and the rest kept), so the map learns to keep its geometry
against a prompt that names another one, as users expect of a canny unit at weight 1 in "Balanced" mode (without
them, run 2a, the prompt's shape won in 19 of 20 held-out scenes). Scenes whose caption is one of the
evaluation combinations (`toy_world.evaluation_scenes`, used by `sdstudio_eval.controlnet_fidelity`) are kept out.

Seeded; a fixed step count or a time budget (`--time-budget-minutes`), whichever ends first, with the learning
rate's cosine decay following the budget. fp32 weights with bf16 autocast on CUDA. Writes the fp16 ControlNet
in diffusers' key layout as one `.safetensors` file (what the app's ControlNet loader reads as SD1.x, checked
before the script ends) and `<name>.training.json` beside it (with the reports of the runs it continues). The
shipped weights are GPU run 4 of docs/FIDELITY.md, which continued run 3a, which continued run 2a (time budgets
of 5, 5 and 6.5 minutes on one H100, rendering included; their maps came from the canny function's earlier,
grey-image version):

    python -m tools.controlnet.train_toy_controlnet --images 20000 --batch 128 --workers 7 --time-budget-minutes 5 \
        --prompt-drop 0.5 --conflict-share 0 --out 2a.safetensors                                 # 2a
    python -m tools.controlnet.train_toy_controlnet --images 20000 --batch 128 --workers 7 --time-budget-minutes 5 \
        --init 2a.safetensors --out 3a.safetensors                                                # 3a
    python -m tools.controlnet.train_toy_controlnet --images 30000 --batch 256 --workers 14 --time-budget-minutes 6.5 \
        --init 3a.safetensors                                                                     # 4

CPU check: `python -m tools.controlnet.train_toy_controlnet --device cpu --images 512 --steps 20 --batch 8 --out /tmp/cn.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdstudio_eval import toy_world
from tools.default_model import caption_variants
from tools.default_model.toy_model_training import (
    SCALED_LINEAR, chunks, clip_tokenizer, cosine_factor, min_snr_loss, optimizer_step, render_dataset, start_run,
    tokenize, training_scenes)
from webui.generation.control_maps import canny
from webui.models.default_model import SHIPPED_DEFAULT_MODEL
from webui.settings import PROJECT_ROOT

MODEL_NAME = "control_sdstudio_toy_canny"
DEFAULT_OUT = PROJECT_ROOT / "models" / "default" / "controlnet" / f"{MODEL_NAME}.safetensors"
MAX_FILE_BYTES = 10 * 1024 * 1024
PROMPT_DROP = 0.4   # share of samples trained with the empty prompt
CONFLICT_SHARE = 0.3   # share trained with a caption naming another shape at another position
# Share of samples whose timestep is drawn from the noisier half only: where an object goes and what shape it
# has is decided in the early, noisy steps, so the map matters most there. The first GPU run (uniform
# timesteps, learning rate 2e-4, batch 256, 2748 steps) left the zero convolutions near zero and the
# ControlNet without any effect on the images.
HIGH_NOISE_SHARE = 0.5
# Samples noisier than SNR 1 weigh their clean-image error, up to this factor (`min_snr_loss`). Without it (the
# first GPU run's plain MSE, and min-SNR-5 alone in a CPU probe) the zero convolutions barely moved; with it the
# second GPU run's ControlNet places and shapes the objects.
X0_WEIGHT_CAP = 20.0


def canny_maps(images: np.ndarray) -> np.ndarray:
    """Edge maps (N x H x W, uint8 0/1) of uint8 NHWC renders, by the product's canny at the image's size."""
    return np.stack([np.asarray(canny(Image.fromarray(image), min(image.shape[:2])))[..., 0] > 127
                     for image in images]).astype(np.uint8)


def edge_dataset(images: torch.Tensor, workers: int) -> torch.Tensor:
    """Canny maps of uint8 NCHW renders, computed in `workers` processes: N x 1 x H x W uint8 (0/1)."""
    pixels = images.permute(0, 2, 3, 1).numpy()
    chunks = np.array_split(pixels, max(1, min(workers * 4, len(pixels))))
    with ProcessPoolExecutor(workers) as pool:
        maps = np.concatenate(list(pool.map(canny_maps, chunks)))
    return torch.from_numpy(maps).unsqueeze(1)


def _contradicting_chunk(arguments: tuple[int, int, int]) -> np.ndarray:
    seed, start, count = arguments
    scenes = training_scenes(start + count, seed)[start:]
    rng = np.random.default_rng([seed, start, 0xC0A7])
    prompts = [toy_world.contradicting_scene(scene, rng) for scene in scenes]
    texts = caption_variants.training_captions(prompts, seed * 1_000_003 + start + 1, per_scene=1)
    return tokenize(clip_tokenizer(), [variants[0] for variants in texts]).numpy()


def contradicting_token_ids(n: int, seed: int, workers: int) -> torch.Tensor:
    """Token ids (n x 77) of one contradicting caption per training render: the render's scene with another
    shape at another position, in the varied caption grammar. Row i belongs to render i of `render_dataset(n,
    seed, ...)`: both take the first n of `training_scenes(..., seed)`."""
    jobs = [(seed, start, count) for start, count in chunks(n, workers)]
    with ProcessPoolExecutor(workers) as pool:
        return torch.from_numpy(np.concatenate(list(pool.map(_contradicting_chunk, jobs))))


def parameter_groups(controlnet, learning_rate: float, encoder_learning_rate: float) -> list[dict]:
    """The new parts (map embedding, zero convolutions) at `learning_rate`; the encoder copied from the UNet at
    `encoder_learning_rate` (the paper fine-tunes the copy gently, so it keeps the UNet's features)."""
    new_parts = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
    new, copied = [], []
    for name, parameter in controlnet.named_parameters():
        (new if name.startswith(new_parts) else copied).append(parameter)
    return [{"params": new, "scale": 1.0}, {"params": copied, "scale": encoder_learning_rate / learning_rate}]


def load_frozen(model: Path, device: str):
    """The default model's UNet, VAE and text encoder in fp32, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    parts = (UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=torch.float32),
             AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32),
             CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=torch.float32))
    for part in parts:
        part.requires_grad_(False)
        part.eval()
        part.to(device)
    return parts


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: str, batch: int = 512) -> torch.Tensor:
    """Scaled latent means of uint8 NCHW images (the frozen VAE gives each image one latent)."""
    chunks = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].to(device).float() / 127.5 - 1.0
        chunks.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(chunks) * float(vae.config.scaling_factor)


def train(controlnet, unet, text_encoder, latents: torch.Tensor, edges: torch.Tensor, token_ids: torch.Tensor,
          empty_ids: torch.Tensor, steps: int, batch: int, device: str, seed: int, log: Callable[[str], None],
          deadline: float = math.inf, learning_rate: float = 1e-3, prompt_drop: float = PROMPT_DROP,
          ema_decay: float = 0.998, high_noise_share: float = HIGH_NOISE_SHARE, x0_weight_cap: float = X0_WEIGHT_CAP,
          encoder_learning_rate: float | None = None, contradicting_ids: torch.Tensor | None = None,
          conflict_share: float = 0.0) -> dict:
    """Train the ControlNet on (latent, edge map, caption) triples with the frozen UNet's epsilon loss.

    The saved weights are an exponential moving average (warmed up, as the default model's UNet): it samples
    cleaner than the last step's weights. A `prompt_drop` share of the samples has the empty prompt and a
    `conflict_share` share the render's row of `contradicting_ids`. Returns step count, seconds, images/s and a loss-curve summary.
    """
    scheduler_alphas = _alphas(device)
    generator = torch.Generator().manual_seed(seed)
    latents, edges, token_ids, empty_ids = latents.to(device), edges.to(device), token_ids.to(device), empty_ids.to(device)
    if conflict_share and contradicting_ids is None:
        raise ValueError("conflict_share needs contradicting_ids")
    contradicting_ids = contradicting_ids.to(device) if conflict_share else None
    encoder_learning_rate = encoder_learning_rate or learning_rate
    parameters = list(controlnet.parameters())
    groups = parameter_groups(controlnet, learning_rate, encoder_learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=1e-2)
    averaged = [p.detach().clone() for p in parameters] if ema_decay > 0 else None
    controlnet.train()
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=generator).to(device)
        x0, control = latents[index], edges[index].float().expand(-1, 3, -1, -1)
        variant = torch.randint(token_ids.shape[1], (batch,), generator=generator).to(device)
        ids = token_ids[index, variant].clone()
        pick = torch.rand(batch, generator=generator).to(device)
        if contradicting_ids is not None:
            contradicted = (pick >= prompt_drop) & (pick < prompt_drop + conflict_share)
            ids[contradicted] = contradicting_ids[index][contradicted]
        ids[pick < prompt_drop] = empty_ids
        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.where(torch.rand(batch, generator=generator) < high_noise_share,
                                torch.randint(500, 1000, (batch,), generator=generator),
                                torch.randint(0, 1000, (batch,), generator=generator)).to(device)
        alpha = scheduler_alphas[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            with torch.no_grad():
                hidden = text_encoder(ids).last_hidden_state
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=control,
                                   return_dict=False)
            prediction = unet(noisy, timesteps, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid).sample
        loss = min_snr_loss(prediction, noise, alpha, x0_weight_cap=x0_weight_cap)
        optimizer_step(optimizer, loss, parameters, learning_rate * min(1.0, (step + 1) / 200)
                       * cosine_factor(step, steps, start, deadline, floor=0.05))
        if averaged is not None:
            torch._foreach_lerp_(averaged, [p.detach() for p in parameters], 1 - min(ema_decay, (1 + step) / (10 + step)))
        losses.append(float(loss.item()) if step % 10 == 0 or step == steps - 1 else math.nan)
        if step % 250 == 0 or step == steps - 1:
            log(f"controlnet step {step} loss {loss.item():.4f}")
        if time.perf_counter() > deadline:
            log(f"time budget reached: stopping at step {step + 1} of {steps}")
            break
    done = step + 1 if steps else 0
    seconds = time.perf_counter() - start
    if averaged is not None:
        with torch.no_grad():
            for parameter, average in zip(parameters, averaged):
                parameter.copy_(average)
    controlnet.eval()
    return {"steps": done, "planned_steps": steps, "batch": batch, "seconds": seconds,
            "images_per_second": done * batch / seconds if seconds else None, "learning_rate": learning_rate,
            "encoder_learning_rate": encoder_learning_rate, "x0_weight_cap": x0_weight_cap,
            "high_noise_share": high_noise_share, "prompt_drop": prompt_drop, "conflict_share": conflict_share,
            "ema_decay": ema_decay,
            "loss_curve": loss_summary(losses)}


def _alphas(device: str) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCALED_LINEAR).alphas_cumprod.to(device)


def loss_summary(losses: list[float], points: int = 10) -> list[dict]:
    """Mean loss over `points` equal stretches of the run (the logged steps of each stretch)."""
    values = np.array(losses, dtype=np.float64)
    if not len(values):
        return []
    stretches = np.array_split(np.arange(len(values)), min(points, len(values)))
    return [{"steps": f"{int(part[0])}-{int(part[-1])}", "mean_loss": float(np.nanmean(values[part]))}
            for part in stretches if np.isfinite(values[part]).any()]


def save(controlnet, out: Path) -> int:
    """The ControlNet as fp16 tensors in diffusers' key layout, one `.safetensors` file; returns its size."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in controlnet.state_dict().items()}
    save_file(tensors, str(out), metadata={"format": "pt", "base_model": "sd-studio-toy", "preprocessor": "canny"})
    size = out.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SystemExit(f"{out} is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
    return size


def check_loadable(out: Path, controlnet, unet_config: dict) -> dict:
    """Read the saved file back the way the app does (layout and family detection, module build) and check it
    computes what the trained module computes (up to fp16 rounding)."""
    from webui.models.controlnet_files import build_controlnet, inspect_file

    found = inspect_file(out)
    built = build_controlnet(found, "sd1", dict(unet_config), "sd-studio-toy", torch.float32)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 16, 16, generator=generator)
    hidden = torch.randn(1, 77, int(unet_config["cross_attention_dim"]), generator=generator)
    control = (torch.rand(1, 3, 128, 128, generator=generator) > 0.9).float()
    reference = controlnet.to("cpu", torch.float32)
    with torch.no_grad():
        expected = reference(sample, 500, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False)[1]
        got = built(sample, 500, encoder_hidden_states=hidden, controlnet_cond=control, return_dict=False)[1]
    error = float((expected - got).abs().max() / expected.abs().max().clamp_min(1e-8))
    if error > 0.02:
        raise SystemExit(f"the app's loader builds a different ControlNet from {out} (relative error {error:.3g})")
    return {"layout": found.layout, "family": found.family, "relative_error_after_fp16": error}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .safetensors file to write")
    parser.add_argument("--model", type=Path, default=SHIPPED_DEFAULT_MODEL, help="the base model's diffusers folder")
    parser.add_argument("--images", type=int, default=40_000, help="training renders")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA (more steps in the budget), 8 on CPU")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--encoder-learning-rate", type=float, default=1e-4,
                        help="learning rate of the encoder copied from the UNet (the new parts use --learning-rate)")
    parser.add_argument("--x0-weight-cap", type=float, default=X0_WEIGHT_CAP,
                        help="samples noisier than SNR 1 weigh their clean-image error, up to this factor (1: off)")
    parser.add_argument("--high-noise-share", type=float, default=HIGH_NOISE_SHARE,
                        help="share of samples with timesteps from the noisier half (500-999) only")
    parser.add_argument("--prompt-drop", type=float, default=PROMPT_DROP, help="share of samples with the prompt \"\"")
    parser.add_argument("--conflict-share", type=float, default=CONFLICT_SHARE,
                        help="share of samples captioned as the scene with another shape at another position")
    parser.add_argument("--ema-decay", type=float, default=0.998, help="0: save the last step's weights")
    parser.add_argument("--caption-variants", type=int, default=4, help="varied captions per render")
    parser.add_argument("--hint-init", choices=("zero", "random"), default="zero",
                        help="the map embedding's last convolution: zero (the paper's) or randomly initialised")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this ControlNet file (one this script wrote) instead of the UNet's copy")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--workers", type=int, default=8, help="processes rendering scenes and edge maps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-budget-minutes", type=float, default=math.inf,
                        help="stop training after this long (from the script's start; recorded in the report)")
    args = parser.parse_args(argv)
    batch = args.batch or (64 if args.device == "cuda" else 8)

    started, log = start_run(args.seed)
    images, captions, token_ids = render_dataset(args.images, args.seed, args.workers, args.caption_variants)
    edges = edge_dataset(images, args.workers)
    contradicting_ids = contradicting_token_ids(args.images, args.seed, args.workers) if args.conflict_share else None
    log(f"rendered {len(images)} images and their canny maps (mean edge share {edges.float().mean():.3f}); "
        f"captions of the first: {captions[0]}")
    from diffusers import ControlNetModel

    unet, vae, text_encoder = load_frozen(args.model, args.device)
    latents = encode_latents(vae, images, args.device)
    del vae
    controlnet = ControlNetModel.from_unet(unet)
    if args.init:
        from safetensors.torch import load_file

        controlnet.load_state_dict({key: value.float() for key, value in load_file(str(args.init)).items()})
        log(f"continuing from {args.init}")
    elif args.hint_init == "random":
        # The map's embedding normally ends in a zero convolution like the outputs, so at first the copied encoder
        # ignores the map and the output convolutions learn from map-free features; a random last convolution
        # lets them see the map from step one. The outputs stay zero: the first step still adds nothing.
        controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    controlnet = controlnet.to(args.device)
    log(f"latents {tuple(latents.shape)}; ControlNet parameters {sum(p.numel() for p in controlnet.parameters()):,}")
    report: dict = {"command": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"batch": batch},
                    "base_model": str(args.model.name), "control": "canny (webui.generation.control_maps.canny, "
                    "thresholds 100/200, at the render's 128 px: the canny unit with pixel perfect)",
                    "held_out": "scenes whose caption is one of toy_world.evaluation_scenes() are not trained on",
                    "images": len(images)}
    if args.init:   # the run it continues, so the shipped file's report covers its whole training
        earlier = args.init.with_suffix(".training.json")
        report["continues"] = json.loads(earlier.read_text(encoding="utf-8")) if earlier.is_file() else str(args.init)
    # The deadline leaves time to save; the budget counts from the script's start, rendering included.
    deadline = started + 60 * args.time_budget_minutes - 15
    report["training"] = train(controlnet, unet, text_encoder, latents, edges, token_ids,
                               tokenize(clip_tokenizer(), [""])[0], args.steps, batch, args.device, args.seed, log,
                               deadline=deadline, learning_rate=args.learning_rate, prompt_drop=args.prompt_drop,
                               ema_decay=args.ema_decay, high_noise_share=args.high_noise_share,
                               x0_weight_cap=args.x0_weight_cap, encoder_learning_rate=args.encoder_learning_rate,
                               contradicting_ids=contradicting_ids, conflict_share=args.conflict_share)
    size = save(controlnet, args.out)
    report["file"] = {"name": args.out.name, "bytes": size, "dtype": "float16", "layout": "diffusers single file"}
    report["loader_check"] = check_loadable(args.out, controlnet, dict(unet.config))
    report["device"] = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    report["total_seconds"] = time.perf_counter() - started
    report_path = args.out.with_suffix(".training.json")
    report_path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    log(f"saved {args.out} ({size / 1e6:.2f} MB) and {report_path.name}; loader check {report['loader_check']}")


if __name__ == "__main__":
    main()
