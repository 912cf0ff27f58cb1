"""Trainer features end to end on the shipped toy model (CPU, 64 px, few steps): masked loss, EMA, validation,
block-wise learning rates and text-encoder output caching, each shown by what it changes in a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdstudio_eval.toy_world import held_out_concept_images
from tests.engine.helpers import make_paths
from webui.models.catalog import CheckpointCatalog
from webui.models.checkpoint_loading import build_pipeline, read_checkpoint_weights
from webui.models.default_model import SHIPPED_DEFAULT_MODEL
from webui.models.hashing import HashCache
from webui.models.lora import LoraApplier, read_lora
from webui.models.families import family_named
from webui.models.patches import WeightPatch, WeightPatcher, weight_patches
from webui.training.config import ATTENTION_TARGETS, TrainingConfig, TrainingConfigError
from webui.training.dataset import image_to_tensor, scan_dataset, unet_latents
from webui.training.loop import encode_captions, run_training
from webui.training.export_lycoris import save_lycoris_lora
from webui.training.key_check import LOADER_COMFYUI, LOADER_DIFFUSERS, LOADER_OWN
from webui.training.methods import TrainerModels
from webui.training.methods.lora import exported_layers, inject_lora, lora_parameters, unet_conv_names

CPU = torch.device("cpu")
SIZE = 64


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    catalog = CheckpointCatalog(SHIPPED_DEFAULT_MODEL.parent, HashCache(tmp_path_factory.mktemp("hashes") / "h.json"))
    record = next(r for r in catalog.refresh() if r.name == SHIPPED_DEFAULT_MODEL.name)
    return read_checkpoint_weights(catalog.with_hash(record), torch.float32)


@pytest.fixture(scope="module")
def models(base) -> TrainerModels:
    """A pipeline of the base model to measure with (never trained: LoRAs are merged and restored)."""
    return TrainerModels(pipeline=build_pipeline(base, CPU, torch.float32), family="sd1", device=CPU, base=base,
                         base_hash="")


def hexagons(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(held_out_concept_images("hexagon", count, seed=seed)):
        path = folder / f"hexagon_{seed + index}.png"
        image.resize((SIZE, SIZE)).save(path)
        paths.append(path)
    return paths


def tiny_config(dataset: Path, **changes) -> TrainingConfig:
    values = dict(
        method="lora", output_name="hexlora", base_checkpoint="sd-studio-toy", dataset_dir=str(dataset),
        trigger_word="hxgn", class_word="shape", resolution=SIZE, min_bucket_resolution=32, max_bucket_resolution=128,
        bucket_step=32, rank=4, alpha=4.0, unet_lr=1e-3, train_batch_size=2, max_train_steps=2, seed=7,
        save_state=False,
    )
    values.update(changes)
    return TrainingConfig(**values)


def half_errors(models: TrainerModels, paths: list[Path], caption: str) -> tuple[float, float]:
    """The denoiser's squared error on the left and right halves of the images' latents, at fixed noise
    and timesteps (what training lowers where it learns)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(models.base.scheduler_config)
    pixels = torch.stack([image_to_tensor(Image.open(path).convert("RGB")) for path in paths])
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        latents = unet_latents(models.vae.encode(pixels).latent_dist.parameters, models.vae.config)
        latents = latents.repeat(3, 1, 1, 1)
        timesteps = torch.tensor([150, 400, 650]).repeat_interleave(len(paths))
        noise = torch.randn(latents.shape, generator=generator)
        hidden, _ = encode_captions(models, [caption] * len(latents), 1)
        prediction = models.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden).sample
    error = (prediction - noise) ** 2
    half = error.shape[-1] // 2
    return float(error[..., :half].mean()), float(error[..., half:].mean())


def with_lora(models: TrainerModels, path: Path, measure):
    lora = read_lora(path, {"unet": models.unet, "text_encoder": models.pipeline.text_encoder}, "sd1")
    patcher = WeightPatcher({"unet": models.unet, "text_encoder": models.pipeline.text_encoder})
    patcher.apply(weight_patches(lora.patches, 1.0, 1.0, str(path)))
    try:
        return measure()
    finally:
        patcher.restore()


def checkered_hexagons(folder: Path, count: int) -> list[Path]:
    """Hexagons whose right half is a coloured checkerboard: a pattern the left half says nothing about."""
    paths = hexagons(folder, count)
    generator = torch.Generator().manual_seed(5)
    for path in paths:
        image = Image.open(path).convert("RGB")
        colours = (torch.rand(2, 3, generator=generator) * 255).int().tolist()
        for x in range(SIZE // 2, SIZE, 8):
            for y in range(0, SIZE, 8):
                image.paste(tuple(colours[(x // 8 + y // 8) % 2]), (x, y, x + 8, y + 8))
        image.save(path)
    return paths


def test_the_masked_half_of_the_pictures_learns_less(base, models, tmp_path):
    paths = checkered_hexagons(tmp_path / "data", 4)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))  # learn the left half only
    for path in paths:
        mask.save(path.with_name(f"{path.stem}_mask.png"))
    config = tiny_config(tmp_path / "data", masked_loss=True, max_train_steps=8, unet_lr=4e-3)
    result = run_training(config, base, make_paths(tmp_path), CPU)
    assert result.summary.image_count == 4  # the masks are not training images

    caption = "hxgn, a shape"
    left_before, right_before = half_errors(models, paths, caption)
    left_after, right_after = with_lora(models, result.files[-1], lambda: half_errors(models, paths, caption))
    # Measured: left 0.744 -> 0.391, right 0.989 -> 1.023. Trained on the same pictures without masks (12 steps
    # at lr 3e-3) the right half learns as much as the left: right 0.989 -> 0.512, left 0.744 -> 0.446.
    assert left_before - left_after > 0.2
    assert right_before - right_after < 0.2 * (left_before - left_after)


def up_matrices(path: Path) -> dict[str, torch.Tensor]:
    return {key: tensor.float() for key, tensor in load_file(str(path)).items() if key.endswith("lora_up.weight")}


def test_ema_weights_are_the_decayed_average_of_the_raw_weights(base, tmp_path):
    """Two images at batch 2 make one step per epoch, so the epoch files hold the raw weights of every step.
    LoRA's up matrices start at zero, so their EMA after step 3 is (1-d)(d^2 B1 + d B2 + B3)."""
    hexagons(tmp_path / "data", 2)
    decay = 0.6
    config = tiny_config(tmp_path / "data", use_ema=True, ema_decay=decay, max_train_steps=0, max_train_epochs=3,
                         save_every_n_epochs=1, unet_lr=1e-2)
    paths = make_paths(tmp_path)
    result = run_training(config, base, paths, CPU)
    names = sorted(path.name for path in result.files)
    assert names == ["hexlora-000001.safetensors", "hexlora-000002.safetensors", "hexlora.safetensors",
                     "hexlora_ema-000001.safetensors", "hexlora_ema-000002.safetensors", "hexlora_ema.safetensors"]
    raw = [up_matrices(paths.lora_dir / name) for name in
           ("hexlora-000001.safetensors", "hexlora-000002.safetensors", "hexlora.safetensors")]
    ema = up_matrices(paths.lora_dir / "hexlora_ema.safetensors")
    first_ema = up_matrices(paths.lora_dir / "hexlora_ema-000001.safetensors")
    assert ema.keys() == raw[0].keys() and len(ema) > 10
    for key in ema:
        expected = (1 - decay) * (decay ** 2 * raw[0][key] + decay * raw[1][key] + raw[2][key])
        assert torch.allclose(ema[key], expected, atol=1e-4), key  # files hold fp16
        assert torch.allclose(first_ema[key], (1 - decay) * raw[0][key], atol=1e-4), key
    # the average lags: it is smaller than the raw weights by about the decay's share
    raw_norm = sum(float(raw[2][key].norm()) for key in ema)
    assert sum(float(ema[key].norm()) for key in ema) < 0.8 * raw_norm

    instead = run_training(config.replace(ema_output="instead", max_train_epochs=1, output_name="hexinstead"), base,
                           paths, CPU)
    assert [path.name for path in instead.files] == ["hexinstead.safetensors"]  # only the EMA, under the plain name
    only_ema = up_matrices(instead.files[0])
    assert all(torch.allclose(only_ema[key], first_ema[key], atol=1e-4) for key in ema)


def test_validation_loss_is_recorded_and_falls(base, tmp_path):
    hexagons(tmp_path / "data", 6)
    reports = []
    config = tiny_config(tmp_path / "data", validation_split=0.34, validation_every_n_steps=3,
                         validation_images_every_n_steps=6, sample_steps=2, max_train_steps=6, unet_lr=3e-3)
    paths = make_paths(tmp_path)
    result = run_training(config, base, paths, CPU, on_progress=reports.append)

    steps = [step for step, _ in result.validation_losses]
    losses = [loss for _, loss in result.validation_losses]
    print("validation", result.validation_losses)
    assert steps == [0, 3, 6]
    assert losses[-1] < 0.9 * losses[0]
    assert [(r.step, r.validation_loss) for r in reports if r.validation_loss is not None] == result.validation_losses
    assert result.summary.image_count == 4  # two of the six are held out
    validation_images = sorted((paths.samples_dir / "hexlora").glob("*-validation-*.png"))
    assert [path.name for path in validation_images] == ["000006-validation-0.png"]
    assert reports[-1].samples and reports[-1].samples[0][0].startswith("validation: hxgn")


def test_a_unet_block_weighted_0_does_not_move(base, tmp_path):
    hexagons(tmp_path / "data", 2)
    config = tiny_config(tmp_path / "data", down_lr_weight=0.0, up_lr_weight=0.5, unet_lr=1e-2, max_train_steps=2)
    result = run_training(config, base, make_paths(tmp_path), CPU)
    ups = up_matrices(result.files[-1])
    by_block = {block: [tensor for key, tensor in ups.items() if f"_{block}_" in key] for block in
                ("down_blocks", "mid_block", "up_blocks")}
    assert all(by_block.values())
    assert all(tensor.abs().max() == 0 for tensor in by_block["down_blocks"])  # LoRA up matrices start at zero
    assert all(tensor.abs().max() > 0 for tensor in by_block["mid_block"] + by_block["up_blocks"])
    assert '"down_lr_weight": "0.0"' in read_lora_metadata(result.files[-1])["ss_network_args"]


def read_lora_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_cached_text_encoder_runs_once_per_distinct_caption(base, tmp_path):
    paths = hexagons(tmp_path / "data", 3)
    for path, caption in zip(paths, ("hxgn, red, large", "hxgn, blue, small", "hxgn, red, large")):
        path.with_suffix(".txt").write_text(caption)
    config = tiny_config(tmp_path / "data", cache_text_encoder_outputs=True, shuffle_captions=True, keep_tokens=1,
                         train_batch_size=3, max_train_steps=0, max_train_epochs=4)
    dataset = scan_dataset(config)
    seen = [sample.caption for epoch in range(4) for batch in dataset.epoch_batches(epoch, 3, config.seed)
            for sample in batch]
    encoded_rows = []

    def count_rows(module, inputs, output):
        if type(module).__name__ == "CLIPTextModel":
            encoded_rows.append(inputs[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(count_rows)
    try:
        result = run_training(config, base, make_paths(tmp_path), CPU)
    finally:
        handle.remove()
    assert result.steps_done == 4 and len(seen) == 12
    assert sum(encoded_rows) == len(set(seen)) < len(seen)


@pytest.mark.parametrize("network_type", ["loha", "lokr"])
def test_a_lycoris_file_reproduces_exactly_what_peft_trained(base, models, tmp_path, network_type):
    """Factors set at random in PEFT's LoHa / LoKr layers (attention and 3x3 convs), written as a LyCORIS file
    and read back by the app's LoRA reader, give every layer PEFT's own weight update."""
    unet = build_pipeline(base, CPU, torch.float32).unet
    targets = family_named("sd1").lora_training_targets(unet, ATTENTION_TARGETS)
    convs = unet_conv_names(unet)[:3]
    inject_lora(unet, targets, 4, 2.0, convs, 2, 1.0, network_type=network_type)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in lora_parameters(unet).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    expected = {name: module.get_delta_weight("default") for name, module in unet.named_modules()
                if hasattr(module, "get_delta_weight") and "default" in getattr(module, "r", {})}
    path = save_lycoris_lora(tmp_path / f"{network_type}.safetensors", exported_layers("unet", unet), {}, "sd1",
                             dtype=torch.float32)
    lora = read_lora(path, {"unet": models.unet, "text_encoder": models.pipeline.text_encoder}, "sd1")
    assert lora.unmatched_keys == [] and lora.notes == []
    assert {patch.target for patch in lora.patches} == {f"unet.{name}" for name in expected}
    assert len(expected) == len(targets) + 3
    for patch in lora.patches:
        want = expected[patch.target.removeprefix("unet.")]
        got = WeightPatch(patch.target, "weight", patch, 1.0, "test").delta(want.shape, CPU)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), patch.target


def test_loha_trains_and_is_refused_for_a_family_saved_with_diffusers_keys(base, models, tmp_path):
    hexagons(tmp_path / "data", 2)
    result = run_training(tiny_config(tmp_path / "data", network_type="loha", unet_lr=1e-2), base,
                          make_paths(tmp_path), CPU)
    lora = read_lora(result.files[-1], {"unet": models.unet, "text_encoder": models.pipeline.text_encoder}, "sd1")
    assert lora.unmatched_keys == [] and {patch.kind for patch in lora.patches} == {"loha"}
    assert any(float(patch.tensors["hada_w2_b"].abs().max()) > 0 for patch in lora.patches)  # it trained
    metadata = read_lora_metadata(result.files[-1])
    assert '"algo": "loha"' in metadata["ss_network_args"] and metadata["ss_network_module"] == "lycoris.kohya"
    with pytest.raises(TrainingConfigError, match="network_type: SD3.* have no lokr; .*LoHa and LoKr train for .*SD1"):
        tiny_config(tmp_path / "data", network_type="lokr").check_family(family_named("sd3"))


def render(models: TrainerModels, prompt: str):
    """A 64 px picture from fixed noise (4 steps of the toy pipeline's scheduler), as float pixels."""
    with torch.no_grad():
        return models.pipeline(prompt, height=SIZE, width=SIZE, num_inference_steps=4, guidance_scale=5.0,
                               generator=torch.Generator().manual_seed(3), output_type="np").images[0]


def test_a_dora_run_saves_a_file_the_app_and_comfyui_apply(base, models, tmp_path):
    """DoRA through PEFT: the file keeps kohya's names with a dora_scale per layer; the app applies it (the
    picture changes, half strength lies between, removing it gives the base picture back exactly), the key check
    finds every key read by the app and ComfyUI, and says that diffusers drops the DoRA magnitudes."""
    hexagons(tmp_path / "data", 2)
    result = run_training(tiny_config(tmp_path / "data", network_type="dora", unet_lr=1e-2),
                          base, make_paths(tmp_path), CPU)
    path = result.files[-1]
    keys = list(load_file(str(path)))
    dora_keys = [key for key in keys if key.endswith(".dora_scale")]
    assert len(dora_keys) == sum(key.endswith(".lora_down.weight") for key in keys) > 0
    assert '"dora_wd": "True"' in read_lora_metadata(path)["ss_network_args"]
    check = {loader.loader: loader for loader in result.key_checks[-1].loaders}
    assert check[LOADER_OWN].complete and check[LOADER_COMFYUI].complete
    assert sorted(check[LOADER_DIFFUSERS].ignored) == sorted(dora_keys)
    assert "drops kohya DoRA keys" in check[LOADER_DIFFUSERS].note

    applier = LoraApplier({"unet": models.unet, "text_encoder": models.pipeline.text_encoder}, "sd1")
    lora = applier.read(path)
    assert lora.unmatched_keys == [] and all("dora_scale" in patch.tensors for patch in lora.patches)
    prompt = "hxgn, a shape"
    plain = render(models, prompt)
    try:
        applier.set_active([(lora, 1.0, 1.0)])
        full = render(models, prompt)
        applier.set_active([(lora, 0.5, 0.5)])
        half = render(models, prompt)
    finally:
        applier.restore()
    assert (render(models, prompt) == plain).all()
    to_full, to_half, half_to_full = (abs(a - b).mean() for a, b in ((full, plain), (half, plain), (full, half)))
    assert to_full > 1e-3
    assert 0 < to_half < to_full and half_to_full < to_full
