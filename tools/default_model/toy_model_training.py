"""Train the toy-world default model from scratch: VAE, then text encoder + UNet, with SD1.x classes.

The result is an ordinary diffusers Stable Diffusion folder (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, the real CLIP tokenizer), so LoRA, DreamBooth, TI and pivotal tuning exercise the same
layers as on a downloaded SD1.5. Everything is seeded; step counts are fixed so a run is reproducible
up to GPU kernel nondeterminism. Run on a GPU machine:

    python -m tools.default_model.toy_model_training --out models/toy --vae-minutes 8 --time-budget-minutes 22

It renders a training set from the toy world (held-out shapes/textures excluded), trains, saves fp16
weights, and writes `training_report.json` with throughput and an evaluation on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdstudio_eval import toy_world
from tools.default_model import caption_variants

SCALED_LINEAR = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def model_configs() -> dict[str, dict]:
    """Small SD1.x-architecture components sized to fit 30 MB in fp16 and run 20 steps in under 1 s on 2 CPU cores.

    The VAE downsamples 8x like SD's (16x16 latents at 128 px). A 4x VAE (32x32 latents) with a narrower UNet
    to keep the CPU speed was trained side by side once (commit 0cff3ab, `--latent-factor 4`): its VAE was as
    exact, but the model scored 34 % against this layout's 95.5 % (see the model card).
    """
    vae_channels, unet_channels = (48, 96, 96, 96), (48, 96, 144)
    return {
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
            block_out_channels=vae_channels, down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels), sample_size=toy_world.NATIVE_SIZE,
        ),
        "unet": dict(
            sample_size=toy_world.NATIVE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=unet_channels, norm_num_groups=16, cross_attention_dim=64, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        ),
        "text_encoder": dict(
            vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407, projection_dim=64,
        ),
    }


def training_scenes(n: int, seed: int) -> list[toy_world.Scene]:
    """Base-concept scenes for training, with every evaluation caption's combination left out."""
    excluded = frozenset(toy_world.caption(s) for s in toy_world.evaluation_scenes())
    return toy_world.dataset_scenes(n, seed, exclude_captions=excluded)


def _render_chunk(arguments: tuple[int, int, int, int]) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    seed, start, count, caption_count = arguments
    scenes = training_scenes(start + count, seed)[start:]
    images = np.stack([np.asarray(toy_world.render(s, seed=seed * 1_000_003 + start + i)) for i, s in enumerate(scenes)])
    if caption_count == 0:  # the first models' captions: the full grammar only
        captions = [[toy_world.caption(s)] for s in scenes]
    else:
        captions = caption_variants.training_captions(scenes, seed * 1_000_003 + start, per_scene=caption_count)
    # Tokenized here, in parallel: CLIP's Python tokenizer takes minutes for a quarter million captions.
    ids = tokenize(clip_tokenizer(), [text for texts in captions for text in texts]).numpy()
    return images, captions, ids.reshape(len(scenes), len(captions[0]), -1)


def clip_tokenizer():
    """The real CLIP tokenizer the default model ships with."""
    from transformers import CLIPTokenizer

    from webui.models.model_configs import config_dir

    return CLIPTokenizer.from_pretrained(config_dir("sd1") / "tokenizer", local_files_only=True)


def chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """(start, count) of the pieces `n` items are split into, one per worker process."""
    size = math.ceil(n / workers)
    return [(start, min(size, n - start)) for start in range(0, n, size)]


def render_dataset(n: int, seed: int, workers: int,
                   caption_count: int = 0) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """``n`` training renders (uint8, NCHW), per image its captions, ``caption_count`` varied ones
    (``caption_variants.training_caption``) or with 0 the one full-grammar caption, and their token ids
    (images x captions x 77)."""
    jobs = [(seed, start, count, caption_count) for start, count in chunks(n, workers)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    token_ids = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    return images, [c for p in parts for c in p[1]], token_ids


def to_unit_range(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def image_gradient_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of horizontal and vertical pixel differences: keeps corners and stripes sharp, which a
    plain L1/MSE loss blurs (the first model's VAE turned small striped squares into smudges)."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(reconstruction), dx(target)) + F.l1_loss(dy(reconstruction), dy(target))


def random_batch(images: torch.Tensor, batch: int, generator: torch.Generator, device: str) -> torch.Tensor:
    """``batch`` images drawn with replacement from a uint8 set on ``device``, in [-1, 1]."""
    return to_unit_range(images[torch.randint(len(images), (batch,), generator=generator).to(device)])


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The autoencoder's pixel loss: L1 + MSE + image-gradient L1."""
    return F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target) + image_gradient_loss(reconstruction, target)


def cosine_factor(step: int, steps: int, start: float, deadline: float, floor: float) -> float:
    """Cosine decay to ``floor`` over the steps or the time budget, whichever runs out first.

    Decaying by steps alone left the learning rate near its peak when a time budget stopped a run (the first
    shipped UNet stopped at step 7,350 of 20,000), which leaves noisy weights.
    """
    progress = step / steps
    if deadline != math.inf:
        progress = max(progress, (time.perf_counter() - start) / (deadline - start))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def start_run(seed: int) -> tuple[float, Callable[[str], None]]:
    """Seed torch, allow TF32 and cuDNN autotuning (a training run, not a bitwise test), and give the run's
    start time with a logger that prints each line with the seconds since then."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return started, lambda message: print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)


def min_snr_loss(prediction: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, gamma: float = 5.0,
                 x0_weight_cap: float = 1.0) -> torch.Tensor:
    """Epsilon-prediction MSE with min-SNR-gamma weighting: the nearly clean timesteps, whose noise is hardest to
    guess and says least about layout, no longer dominate the loss, which speeds up convergence.

    `x0_weight_cap` > 1 also multiplies the samples noisier than SNR 1 by clamp(1/SNR, 1, cap), so they count as
    their clean-image error: at those steps the epsilon error scales down what a model could know about the clean
    image (1/20 at t=900), which starves a ControlNet of the very steps where its map decides the layout."""
    snr = alpha.view(-1) / (1 - alpha.view(-1))
    weight = torch.clamp(snr, max=gamma) / snr * torch.clamp(1 / snr, min=1.0, max=max(1.0, x0_weight_cap))
    return (weight * F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))).mean()


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: list, learning_rate: float) -> None:
    """Backward, clip the gradient norm to 1, set the learning rate of this step (times a group's "scale"), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("scale", 1.0)
    optimizer.step()


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, device: str, seed: int, log,
              deadline: float = math.inf, learning_rate: float = 5e-4) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = images.to(device)  # the whole uint8 set fits on the GPU; batches are then free to gather
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0, betas=(0.9, 0.99))
    vae.train()
    start = time.perf_counter()
    for step in range(steps):
        x = random_batch(images, batch, generator, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            reconstruction = vae.decode(z).sample
        reconstruction = reconstruction.float()
        loss = reconstruction_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimizer_step(optimizer, loss, list(vae.parameters()), learning_rate * min(1.0, (step + 1) / 500)
                       * cosine_factor(step, steps, start, deadline, floor=0.1))
        if step % 500 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f}")
        if time.perf_counter() > deadline:
            log(f"time budget reached: stopping the VAE at step {step + 1} of {steps}")
            steps = step + 1
            break
    vae.eval()
    return {"steps": steps, "seconds": time.perf_counter() - start,
            "final_loss": float(loss.item()) if steps else None}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: str, batch: int = 512) -> torch.Tensor:
    chunks = []
    for start in range(0, len(images), batch):
        x = to_unit_range(images[start:start + batch].to(device))
        chunks.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(chunks)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def train_unet(unet, text_encoder, latents: torch.Tensor, token_ids: torch.Tensor, empty_ids: torch.Tensor,
               steps: int, batch: int, device: str, seed: int, log, deadline: float = math.inf,
               learning_rate: float = 4e-4, ema_decay: float = 0.999, negative_ids: torch.Tensor | None = None,
               negative_share: float = 0.0) -> dict:
    """Train text encoder and UNet jointly; the saved weights are the exponential moving average.

    ``token_ids`` holds one or more captions per latent (N x captions x 77); each sample takes one at random.
    10 % of the samples are unconditional (caption dropout, for classifier-free guidance): their caption is
    empty, or at ``negative_share`` a typical negative prompt (``negative_ids``), so that a negative prompt of
    such words steers like an empty one instead of pulling towards an arbitrary picture.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**SCALED_LINEAR)
    alphas = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator().manual_seed(seed)
    latents, token_ids, empty_ids = latents.to(device), token_ids.to(device), empty_ids.to(device)
    if token_ids.dim() == 2:
        token_ids = token_ids.unsqueeze(1)
    if negative_ids is not None:
        negative_ids = negative_ids.to(device)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=1e-2)
    averaged = [p.detach().clone() for p in parameters]
    unet.train()
    text_encoder.train()
    start = time.perf_counter()
    for step in range(steps):
        index = torch.randint(len(latents), (batch,), generator=generator).to(device)
        x0 = latents[index]
        variant = torch.randint(token_ids.shape[1], (batch,), generator=generator).to(device)
        ids = token_ids[index, variant].clone()
        dropped = (torch.rand(batch, generator=generator) < 0.1).to(device)  # caption dropout: unconditional branch
        ids[dropped] = empty_ids
        if negative_ids is not None and negative_share > 0:
            negative = dropped & (torch.rand(batch, generator=generator) < negative_share).to(device)
            picks = torch.randint(len(negative_ids), (batch,), generator=generator).to(device)
            ids[negative] = negative_ids[picks[negative]]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        alpha = alphas[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            hidden = text_encoder(ids).last_hidden_state
            prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = min_snr_loss(prediction, noise, alpha)
        optimizer_step(optimizer, loss, parameters, learning_rate * min(1.0, (step + 1) / 300)
                       * cosine_factor(step, steps, start, deadline, floor=0.05))
        # Exponential moving average of the weights, warmed up so early steps do not dominate; the saved
        # model is the average, which samples cleaner than the last step's weights.
        torch._foreach_lerp_(averaged, [p.detach() for p in parameters], 1 - min(ema_decay, (1 + step) / (10 + step)))
        if step % 500 == 0 or step == steps - 1:
            log(f"unet step {step} loss {loss.item():.4f}")
        if time.perf_counter() > deadline:
            log(f"time budget reached: stopping the UNet at step {step + 1} of {steps}")
            steps = step + 1
            break
    with torch.no_grad():
        for parameter, average in zip(parameters, averaged):
            parameter.copy_(average)
    unet.eval()
    text_encoder.eval()
    return {"ema_decay": ema_decay, "steps": steps, "seconds": time.perf_counter() - start, "final_loss": float(loss.item())}


def evaluate(pipeline, count: int, training_captions: set[str]) -> dict:
    """Prompt fidelity on the evaluation prompts at default settings (DPM++ 2M Karras, 20 steps, CFG 7).

    Their attribute combinations were excluded from training; the report counts any that slipped in.
    """
    from diffusers import DPMSolverMultistepScheduler

    from sdstudio_eval.analyzer import analyze

    scenes = toy_world.evaluation_scenes(count)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, use_karras_sigmas=True)
    correct = {attribute: 0 for attribute in toy_world.ATTRIBUTES}
    all_correct = 0
    for start in range(0, count, 50):
        group = scenes[start:start + 50]
        images = pipeline([toy_world.caption(s) for s in group], num_inference_steps=20, guidance_scale=7.0,
                          generator=torch.Generator("cpu").manual_seed(start), height=128, width=128).images
        for scene, image in zip(group, images):
            analysis = analyze(image)
            matches = [getattr(analysis, a) == getattr(scene, a) for a in toy_world.ATTRIBUTES]
            for attribute, ok in zip(toy_world.ATTRIBUTES, matches):
                correct[attribute] += ok
            all_correct += all(matches)
    return {"prompts": count, "captions_seen_in_training": sum(toy_world.caption(s) in training_captions for s in scenes),
            "all_attributes_match": all_correct / count,
            "per_attribute": {a: c / count for a, c in correct.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--vae-steps", type=int, default=5000)
    parser.add_argument("--unet-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--unet-lr", type=float, default=4e-4)
    parser.add_argument("--vae-lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--vae-batch", type=int, default=128)
    parser.add_argument("--vae-minutes", type=float, default=math.inf, help="time budget of the VAE phase")
    parser.add_argument("--time-budget-minutes", type=float, default=math.inf,
                        help="stop UNet training early (recorded in the report) so the run fits a machine lease")
    parser.add_argument("--init-from", type=Path,
                        help="continue from a previous run's model folder (its VAE and latent scaling are kept "
                             "when --vae-steps is 0: a fine-tune of text encoder and UNet)")
    parser.add_argument("--caption-variants", type=int, default=4,
                        help="varied captions per image (tools/default_model/caption_variants.py); 0 = the full caption "
                             "grammar only, as the models before issue 23 were trained")
    parser.add_argument("--negative-share", type=float, default=0.5,
                        help="share of the unconditional (dropped) captions replaced by a typical negative prompt")
    args = parser.parse_args()

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models.model_configs import config_dir, load_component_config

    started, log = start_run(args.seed)
    images, captions, token_ids = render_dataset(args.images, args.seed, args.workers, args.caption_variants)
    log(f"rendered {len(images)} images; captions of the first: {captions[0]}")
    configs = model_configs()
    report = {"command": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "configs": configs}
    if args.init_from:
        load = lambda cls, sub: cls.from_pretrained(args.init_from, subfolder=sub, torch_dtype=torch.float32).to(args.device)  # noqa: E731
        vae = load(AutoencoderKL, "vae")
        report["init_from"] = json.loads((args.init_from / "training_report.json").read_text())
    else:
        vae = AutoencoderKL(**configs["vae"]).to(args.device)
    report["vae"] = train_vae(vae, images, args.vae_steps, args.vae_batch, args.device, args.seed, log,
                              deadline=started + 60 * args.vae_minutes, learning_rate=args.vae_lr)
    latents = encode_latents(vae, images, args.device)
    if args.init_from and args.vae_steps == 0:
        scaling = float(vae.config.scaling_factor)  # the UNet being fine-tuned learnt latents at this scale
    else:
        scaling = float(1.0 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    log(f"latents {tuple(latents.shape)} scaling {scaling:.4f}")

    tokenizer = clip_tokenizer()
    if args.init_from:
        text_encoder, unet = load(CLIPTextModel, "text_encoder"), load(UNet2DConditionModel, "unet")
    else:
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).to(args.device)
        unet = UNet2DConditionModel(**configs["unet"]).to(args.device)
    negatives = [caption_variants.negative_prompt(np.random.default_rng([args.seed, index])) for index in range(512)]
    report["unet"] = train_unet(unet, text_encoder, latents, token_ids, tokenize(tokenizer, [""])[0],
                                args.unet_steps, args.batch, args.device, args.seed, log,
                                deadline=started + 60 * args.time_budget_minutes - 90, learning_rate=args.unet_lr,
                                ema_decay=args.ema_decay, negative_ids=tokenize(tokenizer, negatives),
                                negative_share=args.negative_share if args.caption_variants else 0.0)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(load_component_config("sd1", "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    # Saved before the evaluation, so a run cut off by its machine lease still leaves the model.
    pipeline.to(dtype=torch.float16).save_pretrained(args.out, safe_serialization=True)
    # Ship CLIP's vocab/merges files (1.5 MB) rather than the 3.6 MB tokenizer.json transformers writes.
    shutil.rmtree(args.out / "tokenizer")
    shutil.copytree(config_dir("sd1") / "tokenizer", args.out / "tokenizer")
    report["parameters"] = {name: sum(p.numel() for p in getattr(pipeline, name).parameters())
                            for name in ("unet", "vae", "text_encoder")}
    report["device"] = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    report["total_seconds"] = time.perf_counter() - started
    (args.out / "training_report.json").write_text(json.dumps(report, indent=1))
    log(f"saved to {args.out}")
    if args.eval_prompts:
        try:  # on the fp16 weights as saved
            report["evaluation"] = evaluate(pipeline, args.eval_prompts, {text for texts in captions for text in texts})
            log(f"evaluation {report['evaluation']}")
        except ImportError as error:  # the analyzer needs scipy, which a bare GPU machine may lack
            log(f"evaluation skipped: {error}")
        (args.out / "training_report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
