"""Extras results as A1111 keeps them: numbered files in outputs/extras-images whose PNG keeps the source's
parameters plus the postprocessing ones; folders confined to the app's folders; a batch goes on past a bad image."""

from __future__ import annotations

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.generation.extras import ExtrasRequest
from webui.generation.extras_jobs import ExtrasService
from webui.generation.extras_outputs import (
    ExtrasSource, directory_batch, extras_folder, extras_infotext, upscale_and_save,
)
from webui.generation.infotext import parse_infotext
from webui.generation.requests import RequestError
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKinds
from webui.jobs.store import JobStore
from webui.jobs.worker import Worker
from webui.security.identity import User
from webui.security.paths import FileAccess, PathRefused
from webui.upscaling.catalog import UpscalerCatalog
from webui.upscaling.service import UpscalerService

SOURCE = "a red circle\nNegative prompt: blurry\nSteps: 6, Sampler: Euler, Seed: 41, Size: 24x16"
POSTPROCESS = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


def test_the_postprocessing_parameters_join_the_source_parameter_line():
    combined = extras_infotext(SOURCE, POSTPROCESS)
    assert combined == SOURCE + ", " + POSTPROCESS
    parsed = parse_infotext(combined)
    assert parsed["Seed"] == "41" and parsed["Postprocess upscaler"] == "Lanczos" and parsed["Prompt"] == "a red circle"


def test_upscaling_an_extras_result_again_replaces_its_postprocessing_parameters():
    again = extras_infotext(extras_infotext(SOURCE, POSTPROCESS), "Postprocess upscale by: 3, Postprocess upscaler: Nearest")
    assert again == SOURCE + ", Postprocess upscale by: 3, Postprocess upscaler: Nearest"
    assert extras_infotext(POSTPROCESS, "Postprocess upscale by: 4, Postprocess upscaler: Nearest") == \
        "Postprocess upscale by: 4, Postprocess upscaler: Nearest"


def test_a_source_without_parameters_gets_the_postprocessing_text_alone_or_below_its_prompt():
    assert extras_infotext(None, POSTPROCESS) == POSTPROCESS
    assert extras_infotext("just a prompt", POSTPROCESS) == "just a prompt\n" + POSTPROCESS
    assert extras_infotext(SOURCE, "") == SOURCE


@pytest.fixture
def extras(tmp_path):
    """The extras use case as the app builds it: jobs on a real scheduler with one CPU worker (at most two
    images per job, 64x64 pixels at most per result)."""
    kinds = JobKinds()
    scheduler = Scheduler(kinds, JobStore(tmp_path / "jobs.sqlite3"))
    service = ExtrasService(UpscalerService(UpscalerCatalog([])), scheduler, tmp_path / "inputs",
                            max_pixels=64 * 64, max_images=2)
    for kind in service.job_kinds():
        kinds.register(kind)
    scheduler.add_worker(Worker("w0", "cpu", None))
    yield service
    scheduler.shutdown(interrupt_running=True)


def run(extras, sources, folder, keep_going: bool, images_kept: int | None = None, submitted: list | None = None):
    """upscale_and_save as the Extras tab calls it; `submitted` collects the names of each queued job."""
    request = extras.validate(ExtrasRequest(upscaling_resize=2, upscaler_1="Lanczos"))

    def submit(images, names):
        job = extras.submit(images, request, None, names)
        if submitted is not None:
            submitted.append(list(names))
        return job

    return upscale_and_save(sources, submit, lambda job: job.result(60), folder,
                            check=lambda image: extras.check_sizes(image, request), images_per_job=extras.max_images,
                            keep_going=keep_going, images_kept=images_kept)


def test_results_are_numbered_like_a1111_and_keep_the_parameters(tmp_path, extras):
    info = PngInfo()
    info.add_text("parameters", SOURCE)
    Image.new("RGB", (24, 16), "red").save(tmp_path / "in.png", pnginfo=info)
    with Image.open(tmp_path / "in.png") as source:
        source.load()
        sources = [ExtrasSource.of(source), ExtrasSource.of(source, "my photo/1"), ExtrasSource.of(source, "third")]
        outputs = run(extras, sources, tmp_path / "out", keep_going=False, images_kept=2).outputs
    assert [output.path.name for output in outputs] == ["00000.png", "00001-my photo_1.png", "00002-third.png"]
    assert [output.image is not None for output in outputs] == [True, True, False]  # saved, not held for display
    with Image.open(outputs[0].path) as saved:
        assert saved.size == (48, 32)
        assert saved.text["parameters"] == SOURCE + ", " + POSTPROCESS == outputs[0].infotext


def test_a_batch_skips_what_cannot_be_upscaled_and_a_single_image_is_refused(tmp_path, extras):
    def damaged():
        raise OSError("'broken.png' is damaged or truncated")

    small = [ExtrasSource.of(Image.new("RGB", (8, 8)), f"small{n}") for n in range(2)]
    large = ExtrasSource.of(Image.new("RGB", (40, 40)), "large")
    submitted: list[list[str]] = []
    outcome = run(extras, [large, small[0], ExtrasSource(damaged, "broken"), small[1]], tmp_path, keep_going=True,
                  submitted=submitted)
    assert [output.path.name for output in outcome.outputs] == ["00000-small0.png", "00001-small1.png"]
    assert [note.split(":")[0] for note in outcome.skipped] == ["large", "broken"]
    assert "pixels" in outcome.skipped[0] and "80x80" in outcome.skipped[0]
    assert submitted == [["small0"], ["small1"]]  # the large image was left out before queueing, never retried
    with pytest.raises(ValueError, match="pixels"):
        run(extras, [large], tmp_path, keep_going=False)
    with pytest.raises(ValueError, match="pixels"):
        run(extras, [large, large], tmp_path, keep_going=True)  # nothing could be done: the reason, not silence


def test_directory_batch_folders_stay_inside_the_users_folders(tmp_path):
    files = FileAccess({"outputs": tmp_path / "outputs", "datasets": tmp_path / "datasets"}, tmp_path)
    (tmp_path / "datasets" / "photos").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "datasets" / "photos" / "a.png")
    (tmp_path / "datasets" / "photos" / "notes.txt").write_text("not an image")
    images, output = directory_batch(files, "photos", "", None)
    assert [path.name for path in images] == ["a.png"]
    assert output == extras_folder(files, None) == tmp_path / "outputs" / "extras-images"
    bob = User("bob")
    with pytest.raises(PathRefused):
        directory_batch(files, str(tmp_path / "datasets" / "photos"), "", bob)  # the admin's folder, not bob's
    with pytest.raises(PathRefused):
        directory_batch(files, "photos", "/tmp", None)
    with pytest.raises(RequestError, match="does not exist"):
        directory_batch(files, "missing", "", None)
