"""Training through a real AppContext, as the Train tab and the training API drive it.

One tiny LoRA run on the toy model (four hexagon renders, 64 px, a few steps) is shared by the tests
that look at its results: listed at once, usable in txt2img, the app's loaded UNet untouched, epochs to
compare, an export with a model card. The other tests check what must be refused before anything is
queued, and the small pure helpers behind the tab (captions, uploads, the form, progress text).
"""

from __future__ import annotations

import dataclasses
import shutil

import gradio as gr
import pytest
import torch
from PIL import Image

from tests.support.fake_jobs import Studio, paint
from tests.support.oversized_png import oversized_png
from webui.context import build_context
from sdstudio_eval.toy_world import held_out_concept_images
from webui.generation.requests import Txt2ImgRequest
from webui.security.identity import ADMIN, LOCAL_ADMIN, User
from webui.security.limits import RequestLimits
from webui.security.network import HubDisabled
from webui.security.paths import PathRefused
from webui.settings import settings_from_args
from webui.training.config import TrainingConfig, TrainingConfigError
from webui.training.dataset import DatasetError
from webui.ui.train_fields import all_specs, config_from_widgets, JOB_WIDGET_FIELDS
from webui.ui.train_progress import loss_frame, progress_html, result_markdown
from webui.training.monitor import TrainingBusyError
from webui.training.service import (
    caption_rows,
    cancel_training,
    confine_config,
    dataset_folder,
    dataset_folder_for,
    dataset_images,
    export_run,
    import_images,
    preset_names,
    result_record,
    save_caption_rows,
    start_training,
    training_status,
    upload_run,
)
from webui.ui.train_tab import compare_epochs_request

IMAGE = dict(width=64, height=64, steps=4, seed=321, sampler_name="Euler")


def tiny_config(dataset, **changes) -> TrainingConfig:
    values = dict(method="lora", output_name="hexsvc", dataset_dir=str(dataset), trigger_word="hxgn",
                  class_word="shape", resolution=64, min_bucket_resolution=32, max_bucket_resolution=128,
                  bucket_step=32, rank=4, alpha=4.0, unet_lr=2e-3, max_train_epochs=2, max_train_steps=0,
                  train_batch_size=2, save_every_n_epochs=1, sample_every_n_steps=2,
                  sample_prompts=("hxgn, a shape",), sample_steps=2, seed=3)
    values.update(changes)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    data = tmp_path_factory.mktemp("train-service")
    checkpoints = data / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shutil.copytree(default_model_folder, checkpoints / default_model_folder.name)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context
    context.close()


@pytest.fixture(scope="module")
def hexagons(ctx):
    folder = ctx.settings.datasets_folder / "hexagons"  # datasets come from uploads or from folders in datasets/
    folder.mkdir(parents=True)
    for index, image in enumerate(held_out_concept_images("hexagon", 4)):
        image.save(folder / f"hexagon_{index}.png")
    return folder


def unet_snapshot(ctx) -> dict[str, torch.Tensor]:
    with ctx.manager.checkout() as model:
        return {key: value.detach().clone() for key, value in model.pipeline.unet.state_dict().items()}


@pytest.fixture(scope="module")
def trained(ctx, hexagons):
    """(UNet before training, the finished job's result) of one tiny LoRA run through `start_training`, with
    one held-out hexagon as its validation set."""
    held_out = ctx.settings.datasets_folder / "hexagons_validation"
    held_out.mkdir()
    held_out_concept_images("hexagon", 1, seed=77)[0].save(held_out / "held_out.png")
    before = unet_snapshot(ctx)
    job = start_training(ctx.training, tiny_config(hexagons, validation_dir="hexagons_validation",
                                                   validation_every_n_steps=2))
    return before, job.result(timeout=600)


def test_the_lora_is_listed_at_once_and_changes_txt2img(ctx, trained):
    _, result = trained
    assert not result.cancelled and result.steps_done == 4 and result.epochs_done == 2
    assert {"hexsvc", "hexsvc-000001"} <= set(ctx.loras.files())
    plain = ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="hxgn, a shape", **IMAGE)).result(timeout=300)
    with_lora = ctx.generation.submit_txt2img(Txt2ImgRequest(prompt="hxgn, a shape <lora:hexsvc:1>", **IMAGE)).result(timeout=300)
    assert plain.images[0].tobytes() != with_lora.images[0].tobytes()
    assert "hexsvc" in with_lora.infotexts[0]


def test_training_leaves_the_loaded_unet_bitwise_unchanged(ctx, trained):
    before, _ = trained
    after = unet_snapshot(ctx)
    assert before.keys() == after.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == []


def test_status_reports_the_finished_run_with_files_usage_and_losses(ctx, trained):
    status = training_status(ctx.training)
    assert status["state"] == "done" and status["finished"] and status["error"] is None
    assert status["step"] == status["total"] == 4 and status["epoch"] == 2
    assert [name.rsplit("/", 1)[-1] for name in status["files"]] == ["hexsvc-000001.safetensors", "hexsvc.safetensors"]
    assert status["usage"] == "<lora:hexsvc:1> hxgn"
    assert len(ctx.training.monitor.losses()) == 4 and ctx.training.monitor.samples()
    assert "Use it in a prompt: `<lora:hexsvc:1> hxgn`" in result_markdown(status)
    epoch_check, final_check = status["key_checks"]  # every saved file, epochs included, is checked
    assert [epoch_check["file"], final_check["file"]] == ["hexsvc-000001.safetensors", "hexsvc.safetensors"]
    total = final_check["total"]
    assert final_check["summary"] == f"hexsvc.safetensors: {total} of {total} keys load in SD Studio, diffusers, ComfyUI"
    assert f"- {final_check['summary']}" in result_markdown(status) and status["key_problems"] == []
    assert 'data-percent="100"' in progress_html(status) and "step 4/4" in progress_html(status)


def test_a_run_whose_file_a_loader_would_read_in_part_is_saved_with_warnings(ctx, trained, tmp_path):
    """The finished run's LoRA with one layer no loader knows: the record says "saved with warnings", not done,
    and lists the ignored keys per loader (status, Train tab)."""
    from safetensors.torch import load_file, save_file

    from webui.models.checkpoint_loading import meta_modules
    from webui.training.key_check import check_lora
    from webui.training.monitor import TrainingMonitor

    _, result = trained
    path = tmp_path / "hexsvc.safetensors"
    tensors = load_file(str(result.files[-1]))
    save_file({**tensors, "lora_unet_not_a_layer.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_not_a_layer.lora_up.weight": torch.zeros(8, 4)}, str(path))
    base = ctx.manager.weights_of(ctx.models.catalog.find(ctx.training.monitor.config.base_checkpoint))
    check = check_lora(path, "sd1", meta_modules(base), standard_layout=False)
    flagged = dataclasses.replace(result, files=[path], key_checks=[check])
    record = result_record(flagged)  # what the job history keeps
    assert record["outcome"] == "saved_with_warnings" and record["key_problems"] == flagged.key_problems
    assert record["key_checks"] == [check.to_dict()] and not record["key_checks"][0]["complete"]
    monitor = TrainingMonitor(ctx.training.monitor.config)
    monitor.finish(flagged)
    status = training_status(dataclasses.replace(ctx.training, monitor=monitor))
    assert status["state"] == "saved_with_warnings" and status["finished"] and status["error"] is None
    assert len(status["key_problems"]) == 3  # SD Studio, diffusers, ComfyUI
    assert all("would ignore 2 of" in line and "lora_unet_not_a_layer.lora_up.weight" in line
               for line in status["key_problems"])
    text = result_markdown(status)
    assert "saved with warnings" in text and "lora_unet_not_a_layer.lora_down.weight" in text
    assert f"{len(tensors)} of {len(tensors) + 2} keys load in SD Studio, diffusers, ComfyUI" in text
    assert "Saved with warnings hexsvc" in progress_html(status)


def test_validation_losses_reach_the_loss_plot_and_the_job_record(ctx, trained):
    _, result = trained
    assert [step for step, _ in result.validation_losses] == [0, 2, 4]
    status = training_status(ctx.training)
    assert status["validation_losses"] == [[step, loss] for step, loss in result.validation_losses]
    frame = loss_frame(ctx.training.monitor)
    validation_rows = frame[frame["series"] == "validation loss"]
    assert validation_rows["step"].tolist() == [0, 2, 4]
    assert f"validation {result.validation_losses[-1][1]:.4f}" in progress_html(status)
    record = ctx.scheduler.history(kind="train")[0]
    assert record.result["validation_losses"] == status["validation_losses"]


def test_compare_epochs_names_each_epoch_lora_in_order(ctx, trained):
    prompt, names, weights = compare_epochs_request(ctx)
    assert prompt == "hxgn, a shape"
    assert names == ["hexsvc-000001", "hexsvc"]
    assert weights == [0.6, 0.8, 1.0]


def test_export_writes_a_model_card_with_the_sample_grid_beside_the_lora(ctx, trained):
    folder, card = export_run(ctx.training, "mit")
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "hexsvc.safetensors", "samples.png"]
    text = card.read_text()
    assert 'license: "mit"' in text and "<lora:hexsvc:0.8> hxgn" in text and "dataset_dir" not in text
    folder, _ = export_run(ctx.training, "mit", include_epochs=True)
    assert (folder / "hexsvc-000001.safetensors").is_file()


@pytest.mark.parametrize("changes,field_or_reason", [
    ({"unet_lr": 0.0}, "unet_lr"),
    ({"unet_lr": float("nan")}, "unet_lr"),
    ({"rank": 0}, "rank"),
    ({"output_name": "bad/name"}, "output_name"),
    ({"max_train_epochs": 0, "max_train_steps": 0}, "max_train_steps"),
])
def test_a_bad_config_raises_before_anything_is_queued(ctx, hexagons, trained, changes, field_or_reason):
    monitor = ctx.training.monitor
    with pytest.raises(TrainingConfigError) as caught:
        start_training(ctx.training, tiny_config(hexagons, **changes))
    assert caught.value.field == field_or_reason
    assert ctx.training.monitor is monitor and ctx.scheduler.pending == 0


def test_a_folder_without_usable_images_raises_before_queueing(ctx, trained):
    broken = ctx.settings.datasets_folder / "broken-set"
    broken.mkdir()
    (broken / "notes.txt").write_text("not an image")
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    monitor = ctx.training.monitor
    with pytest.raises(DatasetError, match="broken.png"):
        start_training(ctx.training, tiny_config("broken-set"))  # a plain name means datasets/<name>
    with pytest.raises(DatasetError, match="does not exist"):
        start_training(ctx.training, tiny_config("missing"))
    assert ctx.training.monitor is monitor and ctx.scheduler.pending == 0


def test_folders_outside_datasets_and_training_states_are_refused_before_queueing(ctx, trained, tmp_path):
    for index, image in enumerate(held_out_concept_images("hexagon", 2)):
        image.save(tmp_path / f"outside_{index}.png")
    (ctx.settings.datasets_folder / "leads-out").symlink_to(tmp_path, target_is_directory=True)
    monitor = ctx.training.monitor
    refusals = [str(ctx.settings.data_dir), str(tmp_path), "leads-out", "../hexagons/../..", "~/x", "%2e%2e%2f"]
    for dataset in refusals:
        with pytest.raises(PathRefused, match="datasets/"):
            start_training(ctx.training, tiny_config(dataset))
    with pytest.raises(PathRefused, match="training/states/"):
        start_training(ctx.training, tiny_config("hexagons", resume_from=str(ctx.settings.datasets_folder / "hexagons")))
    with pytest.raises(TrainingConfigError, match="caption_extension"):
        start_training(ctx.training, tiny_config("hexagons", caption_extension=".json"))
    assert ctx.training.monitor is monitor and ctx.scheduler.pending == 0
    confined = confine_config(ctx.training, tiny_config("hexagons", resume_from="hexsvc-state"), None)
    assert confined.dataset_dir == str((ctx.settings.datasets_folder / "hexagons").resolve())
    assert confined.resume_from == str((ctx.settings.training_folder / "states" / "hexsvc-state").resolve())


def test_uploading_to_the_hub_is_refused_before_exporting_without_allow_hub(ctx, trained):
    exports = ctx.settings.training_folder / "exports"
    before = sorted(str(path) for path in exports.rglob("*")) if exports.exists() else []
    with pytest.raises(HubDisabled, match="--allow-hub"):
        upload_run(ctx.training, "someone/hexsvc", "hf_token", private=True, license_name="mit")
    assert (sorted(str(path) for path in exports.rglob("*")) if exports.exists() else []) == before


def test_cancel_stops_only_training_and_a_second_run_is_refused_while_one_is_active(ctx, hexagons, trained):
    studio = Studio()
    ctx.scheduler.kinds.register(studio.kind())
    other = ctx.scheduler.submit(paint("someone's txt2img", owner="carol", hold=True))
    assert studio.started("someone's txt2img").wait(60)
    try:
        job = start_training(ctx.training, tiny_config(hexagons, output_name="hexlong", max_train_steps=500,
                                              sample_every_n_steps=0, save_every_n_epochs=0),
                             User("alice", ADMIN))  # an admin: the shared datasets/ folder is hers to use
        assert job.owner == "alice"
        assert training_status(ctx.training)["state"] == "queued"
        with pytest.raises(TrainingBusyError, match="hexlong"):
            start_training(ctx.training, tiny_config(hexagons, output_name="another"))
        assert "has not started" in cancel_training(ctx.training, User("alice"))
        assert not other.control.interrupted  # the Train tab never stops someone's txt2img
    finally:
        studio.release("someone's txt2img").set()
    while not job.done and ctx.training.monitor.latest is None:
        job.wait(0.2)
    assert "belongs to another user" in cancel_training(ctx.training, User("bob"))  # only its owner or an admin
    assert not job.control.interrupted
    assert "Cancelling" in cancel_training(ctx.training, User("alice"))
    result = job.result(timeout=300)
    assert result.cancelled and result.steps_done < 500
    status = training_status(ctx.training)
    assert status["state"] == "cancelled" and "cancelled" in result_markdown(status)
    assert "No training is running" in cancel_training(ctx.training, LOCAL_ADMIN)
    with pytest.raises(gr.Error, match="No epoch files"):  # the cancelled run saved no epoch
        compare_epochs_request(ctx)


# ---- the pure helpers behind the tab ----


def test_uploads_copy_readable_images_and_name_the_rest(tmp_path):
    sources = tmp_path / "picked"
    sources.mkdir()
    Image.new("RGB", (32, 48), "red").save(sources / "a.png")
    (sources / "a.txt").write_text("hxgn, a red thing")
    (sources / "b.jpg").write_bytes(b"not really a jpeg")
    (sources / "c.pdf").write_bytes(b"%PDF")
    (sources / "d.png").write_bytes(oversized_png(2000, 1000, channels=1))
    names = ("a.png", "a.txt", "b.jpg", "c.pdf", "d.png")
    result = import_images([sources / name for name in names], tmp_path / "ds", RequestLimits(max_image_pixels=10**6))
    assert [path.name for path in result.copied] == ["a.png"]
    assert any("d.png (too large: " in s and "2000x1000 = 2,000,000 pixels" in s for s in result.skipped)
    assert (tmp_path / "ds" / "a.txt").read_text() == "hxgn, a red thing"
    assert any("b.jpg (unreadable" in s for s in result.skipped) and any("c.pdf (not an image" in s for s in result.skipped)
    assert caption_rows(tmp_path / "ds", ".txt") == [["a.png", "hxgn, a red thing"]]


def test_caption_table_saves_sidecars_removes_emptied_ones_and_refuses_other_paths(tmp_path):
    for name in ("one.png", "two.png"):
        Image.new("RGB", (16, 16)).save(tmp_path / name)
    (tmp_path / "two.txt").write_text("old caption")
    assert save_caption_rows(tmp_path, [["one.png", "  hxgn,  a   shape "], ["two.png", ""]], ".txt") == (1, 1)
    assert (tmp_path / "one.txt").read_text() == "hxgn, a shape\n" and not (tmp_path / "two.txt").exists()
    with pytest.raises(ValueError, match="not an image"):
        save_caption_rows(tmp_path, [["../outside.png", "x"]], ".txt")
    assert not (tmp_path.parent / "outside.txt").exists()
    for extension in (".json", ".pth", ".png", "/../../x.txt"):
        with pytest.raises(ValueError, match="caption_extension"):
            save_caption_rows(tmp_path, [["one.png", "API_KEY=x"]], extension)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one.png", "one.txt", "two.png"]


def test_symlinks_leading_out_of_a_dataset_are_not_listed_read_or_written(tmp_path):
    dataset, outside = tmp_path / "set", tmp_path / "outside"
    (dataset / "10_sks dog").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (16, 16)).save(dataset / "inside.png")
    Image.new("RGB", (16, 16)).save(outside / "secret.png")
    (outside / "secret.txt").write_text("API_KEY=do-not-leak")
    (dataset / "linked").symlink_to(outside, target_is_directory=True)  # a kohya-looking subfolder elsewhere
    (dataset / "linked.png").symlink_to(outside / "secret.png")
    (dataset / "inside.txt").symlink_to(outside / "secret.txt")  # a sidecar that is a link
    assert [path.name for path in dataset_images(dataset)] == ["inside.png"]
    assert caption_rows(dataset, ".txt") == [["inside.png", ""]]
    with pytest.raises(ValueError, match="links outside"):
        save_caption_rows(dataset, [["inside.png", "overwrite"]], ".txt")
    assert (outside / "secret.txt").read_text() == "API_KEY=do-not-leak"


def test_upload_folder_needs_a_usable_output_name(ctx):
    assert dataset_folder_for(ctx.training, "my lora", None) == (ctx.settings.datasets_folder / "my lora").resolve()
    assert dataset_folder(ctx.training, "my lora", None) == dataset_folder_for(ctx.training, "my lora", None)
    for bad in ("", "a/b", "x:y"):
        with pytest.raises(ValueError, match="output_name"):
            dataset_folder_for(ctx.training, bad, None)


def test_every_config_field_has_exactly_one_widget_and_values_convert_back():
    names = list(JOB_WIDGET_FIELDS) + [spec.name for spec in all_specs()]
    assert sorted(names) == sorted(field.name for field in dataclasses.fields(TrainingConfig))
    assert len(names) == len(set(names))
    config = config_from_widgets({"method": "pivotal", "rank": 8.0, "unet_lr": 0.0002, "sample_prompts": "a\n\n b \n",
                                  "target_modules": ["to_k", "to_v"], "output_name": " hx ", "flip_augment": 1})
    assert (config.method, config.rank, config.unet_lr) == ("pivotal", 8, 0.0002)
    assert config.sample_prompts == ("a", "b") and config.target_modules == ("to_k", "to_v")
    assert config.output_name == "hx" and config.flip_augment is True
    with pytest.raises(TrainingConfigError, match="rank: must be a whole number"):
        config_from_widgets({"rank": 4.5})
    with pytest.raises(TrainingConfigError, match="seed: enter a number"):
        config_from_widgets({"seed": None})


def test_the_default_model_offers_its_own_presets_first_then_the_sd1_ones(ctx):
    names = preset_names(ctx.training, None)
    assert names[:5] == sorted(name for name in names if name.startswith("toy_")) and len(names[:5]) == 5
    assert "sd1_lora" in names and not any(name.startswith("sdxl_") for name in names)
