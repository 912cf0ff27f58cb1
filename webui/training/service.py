"""Training use cases the Train tab and the training HTTP API share: `TrainingService` and plain functions over it.

Both front ends need the same answers (where datasets and user presets live, which presets fit the loaded
model, what the latest run is doing, whether Cancel may interrupt the current job), so they are decided
once here, without gradio, and both layers stay thin. Errors are `ValueError`s whose message is shown to
the user as it is.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from webui.generation.image_ops import ImageTooLargeError
from webui.generation.requests import RequestError
from webui.jobs.progress import JobControl
from webui.jobs.job import RUNNING, Job
from webui.jobs.scheduler import Scheduler
from webui.jobs.spec import JobKind, JobSpec
from webui.jobs.worker import Worker
from webui.models.families import DEFAULT_FAMILY, ModelFamily, family_named
from webui.models.lora_catalog import LoraCatalog
from webui.models.service import ModelService
from webui.security.network import NetworkPolicy
from webui.security.identity import USER, User, name_of
from webui.security.limits import RequestLimits
from webui.models.default_model import DEFAULT_MODEL_NAME
from webui.security.paths import (
    DATASET,
    RESUME_STATE,
    TRAINING_EXPORT,
    TRAINING_EXPORTS,
    TRAINING_PRESETS,
    FileAccess,
    is_within,
)
from webui.training.config import (
    IMAGE_SUFFIXES,
    PRESETS_FOLDER,
    TrainingConfig,
    TrainingConfigError,
    check_caption_extension,
    list_presets,
)
from webui.training.dataset import dataset_subfolders, fill_template, read_sidecar
from webui.training.hub_upload import check_upload_allowed, upload_to_hub
from webui.training.launcher import check_gpus, cuda_device_count, run_on_processes, uses_several_processes
from webui.training.loop import TrainingPaths, TrainingResult, run_training
from webui.training.model_card import write_model_card
from webui.training.monitor import TrainingBusyError, TrainingMonitor
from webui.training.validation import training_sets

TRAIN_JOB_KIND = "train"  # the kind `TrainingService.submit` queues its job under
# A finished run whose saved files some loader would read only in part: saved, but not "done".
SAVED_WITH_WARNINGS = "saved_with_warnings"
MAX_LOG_MESSAGES = 200
# Fields that describe one job rather than a way of training: kept out of presets and model cards.
JOB_FIELDS = ("output_name", "dataset_dir", "trigger_word", "class_word", "resume_from", "token", "base_checkpoint",
              "masks_dir", "validation_dir", "gpus")
_EPOCH_NAME = re.compile(r"^(?P<base>.+)-(?P<epoch>\d{6})$")  # kohya's `name-000002` per-epoch files


@dataclass(frozen=True)
class TrainingJob:
    """A queued run: its config and the user it runs for, whose role decides where its states, samples and
    class images go (`FileAccess.training_for`); kept through the job store like a batch job's user."""

    config: TrainingConfig
    user: User | None = None

    def encode(self) -> dict[str, Any]:
        user = {"name": self.user.name, "role": self.user.role} if self.user is not None else None
        return {"config": self.config.to_dict(), "user": user}

    @classmethod
    def decode(cls, data: dict[str, Any]) -> TrainingJob:
        """A stored job; a record from before jobs kept their user (a bare config) runs as the app's own."""
        if "config" not in data:
            return cls(TrainingConfig.from_dict(data))
        user = data.get("user")
        return cls(TrainingConfig.from_dict(data["config"]),
                   User(str(user["name"]), str(user.get("role", USER))) if user else None)


@dataclass
class TrainingService:
    """Queues training runs (one at a time) and keeps the latest run's monitor for reconnecting UIs."""

    models: ModelService
    scheduler: Scheduler
    files: FileAccess        # datasets and resume states are confined to the app's folders
    loras: LoraCatalog
    network: NetworkPolicy   # whether the Hub upload may run (webui.security.network)
    paths: TrainingPaths     # where results go (models/); the work folder is each run's owner's (`work_paths`)
    monitor: TrainingMonitor | None = None  # the latest run
    data_dir: Path | None = None  # the app's --data-dir, handed to the processes of a multi-GPU run
    _claim_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def submit(self, config: TrainingConfig, user: User | None = None, webhook_url: str | None = None) -> Job:
        """Check the config and dataset now (errors reach the user at once), then train on a worker for
        `user` (None: the app's own), whose training folder receives the run's states and samples.

        The base checkpoint defaults to the loaded one. Results are listed as soon as the job ends.
        Callers that take paths from a request go through `start_training`, which confines them first.
        """
        owner = name_of(user)  # a bare name is refused: the role decides which folders are the user's
        config = self._checked(config)
        with self._claim_lock:  # check and claim in one step: two clicks must not start two runs
            if self.monitor is not None and not self.monitor.finished:
                raise TrainingBusyError(f"training {self.monitor.config.output_name!r} is still running: "
                                        "cancel it or wait until it finishes")
            previous, self.monitor = self.monitor, TrainingMonitor(config, owner, user)
        try:
            job = self.scheduler.submit(JobSpec(TRAIN_JOB_KIND, TrainingJob(config, user), owner), webhook_url)
        except Exception:  # queue full, shutting down, a request it cannot store: nothing was queued
            with self._claim_lock:  # give the claim back
                self.monitor = previous
            raise
        job.add_done_callback(_end_unstarted_run(self.monitor))
        return job

    def _checked(self, config: TrainingConfig) -> TrainingConfig:
        base_name = config.base_checkpoint or self.models.current_checkpoint_title() or ""
        record = self.models.catalog.find(base_name)
        if not record.usable:
            raise RequestError(f"checkpoint {record.name} cannot be trained: {record.error}")
        config = config.replace(base_checkpoint=record.title).validate()
        check_gpus(config, cuda_device_count())
        if record.architecture is not None:
            config.check_family(family_named(record.architecture.family))
        training_sets(config)  # raises DatasetError with the reason (also a validation overlap) before anything is queued
        return config

    def work_paths(self, user: User | None) -> TrainingPaths:
        """Where a run for `user` writes: the shared model folders, and `user`'s training work folder."""
        return replace(self.paths, work_dir=self.files.training_for(user))

    def job_kinds(self) -> list[JobKind]:
        return [JobKind(TRAIN_JOB_KIND, run=self._run, encode=TrainingJob.encode, decode=TrainingJob.decode,
                        summary=lambda job: f"train {job.config.method} {job.config.output_name!r}",
                        cost=lambda job: float(job.config.max_train_steps or 1),
                        result_record=result_record)]

    def _run(self, worker: Worker, job: TrainingJob, control: JobControl) -> TrainingResult:
        config = job.config
        with self._claim_lock:  # a run queued before a restart has no monitor yet
            if self.monitor is None or self.monitor.config != config:
                self.monitor = TrainingMonitor(config, name_of(job.user), job.user)
            monitor = self.monitor
        try:
            config = self._checked(config)
            record = self.models.catalog.find(config.base_checkpoint)

            def report(progress) -> None:
                monitor.record(progress)
                control.report_step(progress.step, total=max(progress.total_steps, 1))
                control.set_message(progress.message)

            if uses_several_processes(config):  # one process per GPU, followed through the same report
                result = run_on_processes(config, self.work_paths(job.user), self.data_dir or self.paths.work_dir,
                                          on_progress=report, should_stop=lambda: control.interrupted)
            else:
                manager = worker.resources
                result = run_training(config, manager.weights_of(record), self.work_paths(job.user), manager.device,
                                      on_progress=report, should_stop=lambda: control.interrupted)
        except Exception as error:
            monitor.finish(error=str(error))
            raise
        self.models.refresh_trained_models()
        monitor.finish(result)
        return result


def _end_unstarted_run(monitor: TrainingMonitor) -> Callable[[Job], None]:
    """A done-callback that ends `monitor` as cancelled when its job was cancelled while it waited: the
    run never reaches the worker, and an unfinished monitor would hold the trainer busy until a restart."""

    def ended(job: Job) -> None:
        if job.cancelled and not monitor.finished:
            monitor.finish(TrainingResult(files=[], cancelled=True, steps_done=0, epochs_done=0, final_loss=None))

    return ended


# --------------------------------------------------------------------------------------------
# Folders and presets
# --------------------------------------------------------------------------------------------


def run_outcome(result: TrainingResult) -> str:
    """How a run that returned ended: "cancelled", "saved_with_warnings" (a loader would ignore keys of a saved
    file) or "done"."""
    return "cancelled" if result.cancelled else SAVED_WITH_WARNINGS if result.key_problems else "done"


def result_record(result: TrainingResult) -> dict[str, Any]:
    """What the job history keeps of a run: its files, how it ended, and which loaders read which keys."""
    return {"files": [str(path) for path in result.files], "cancelled": bool(result.cancelled),
            "outcome": run_outcome(result), "key_checks": [check.to_dict() for check in result.key_checks],
            "key_problems": result.key_problems, "validation_losses": _loss_points(result.validation_losses)}


def user_presets_folder(service: TrainingService, user: User | None) -> Path:
    """Where `user`'s own presets are: training/presets for an admin, training/users/<name>/presets otherwise."""
    return service.files.root_for(TRAINING_PRESETS, user)


def exports_root(service: TrainingService, user: User | None) -> Path:
    """Where runs of `user` are exported: training/exports for an admin, training/users/<name>/exports otherwise."""
    return service.files.root_for(TRAINING_EXPORTS, user)


def _current_record(service: TrainingService, base_checkpoint: str | None = None):
    """The record of `base_checkpoint` (a title or name the catalog knows), else the loaded checkpoint's, else
    the one that loads first (None with no usable model)."""
    records = service.models.catalog.usable_records()
    if base_checkpoint:
        chosen = next((r for r in records if r.matches(base_checkpoint)), None)
        if chosen is not None:
            return chosen
    title = service.models.current_checkpoint_title()
    return next((r for r in records if r.title == title), None) or (records[0] if records else None)


def model_family(service: TrainingService, base_checkpoint: str | None = None) -> ModelFamily:
    """The family of `base_checkpoint` (the one chosen to train on), else of the loaded checkpoint, else of
    the one that loads first."""
    record = _current_record(service, base_checkpoint)
    if record is None or record.architecture is None:
        return DEFAULT_FAMILY
    return family_named(record.architecture.family)


def shipped_preset_names(service: TrainingService, base_checkpoint: str | None = None) -> list[str]:
    """The presets that ship with the app for the base model's family; the same for every user."""
    record = _current_record(service, base_checkpoint)
    prefixes = (model_family(service, base_checkpoint).preset_prefix,)
    if record is not None and record.name == DEFAULT_MODEL_NAME:
        prefixes = ("toy_",) + prefixes
    return [name for prefix in prefixes
            for name in sorted(path.stem for path in PRESETS_FOLDER.glob(f"{prefix}*.json"))]


def preset_names(service: TrainingService, user: User | None, base_checkpoint: str | None = None) -> list[str]:
    """Shipped presets for the base model's family (SD2 shares the SD1 ones; `base_checkpoint`, else the loaded
    model), then `user`'s own presets (another user's are never listed: they are in that user's training folder).

    On the embedded default model its own `toy_*` presets come first (128 px; values chosen by the sweep in
    docs/TRAINING_PRESET_SWEEP.md).
    """
    shipped = shipped_preset_names(service, base_checkpoint)
    folder = user_presets_folder(service, user)
    own = [name for name in list_presets(folder) if (folder / f"{name}.json").is_file()]
    return shipped + [name for name in own if name not in shipped]


def saved_states(service: TrainingService, user: User | None) -> list[str]:
    """Names of the training states `user` may resume from (`resume_from`), newest first: the folders in
    their own states folder (training/states for an admin, training/users/<name>/states otherwise)."""
    folder = service.work_paths(user).states_dir
    if not folder.is_dir():
        return []
    states = [entry for entry in folder.iterdir()
              if entry.is_dir() and not entry.name.startswith(".") and is_within(entry, folder)]
    return [entry.name for entry in sorted(states, key=lambda entry: entry.stat().st_mtime, reverse=True)]


def exported_runs(service: TrainingService, user: User | None) -> dict[str, list[str]]:
    """{export name: its files} in `user`'s exports folder (an admin's: training/exports)."""
    root = exports_root(service, user)
    if not root.is_dir():
        return {}
    return {folder.name: sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                                if path.is_file() and is_within(path, folder))
            for folder in sorted(root.iterdir()) if folder.is_dir() and is_within(folder, root)}


def export_file(service: TrainingService, user: User | None, name: str, file: str) -> Path:
    """One file of one of `user`'s exports, through the file-access rule (`TRAINING_EXPORT`); a file that
    is missing and one that is not theirs get the same `LookupError`, so names cannot be probed."""
    try:
        path = service.files.resolve(f"{name}/{file}", TRAINING_EXPORT, user)
    except ValueError:
        path = None
    if path is None or not path.is_file() or not (name or "").strip() or "/" in name:
        raise LookupError(f"no exported file {file!r} in an export named {name!r} of yours; "
                          "GET /sdapi/v1/train/exports lists them")
    return path


# --------------------------------------------------------------------------------------------
# Dataset folder: importing images, captions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    folder: Path
    copied: list[Path]
    skipped: list[str] = field(default_factory=list)  # "name (reason)"

    def describe(self) -> str:
        text = f"Copied {len(self.copied)} image(s) to `{self.folder}`."
        if self.skipped:
            text += " Skipped: " + "; ".join(self.skipped) + "."
        return text


def dataset_folder_for(service: TrainingService, output_name: str, user: User | None) -> Path:
    """The upload folder of a run, `datasets/<output name>` in `user`'s part of datasets/; the name must be
    usable as a file name, by the config's own rule, and the folder goes through the file-access rule like
    a typed one."""
    name = (output_name or "").strip()
    if not name:
        raise ValueError("output_name: enter an output name first; uploaded images go to a folder of that name")
    try:
        TrainingConfig(output_name=name).validate()
    except TrainingConfigError as error:
        if error.field == "output_name":
            raise
    return service.files.resolve(name, DATASET, user)


def dataset_folder(service: TrainingService, typed: str, user: User | None) -> Path:
    """A dataset folder typed by `user` or sent by their client, confined to their part of `datasets/`
    (all of it for an admin; relative names start there)."""
    return service.files.resolve(typed, DATASET, user)


def confine_config(service: TrainingService, config: TrainingConfig, user: User | None) -> TrainingConfig:
    """The config with `dataset_dir` and `resume_from` mapped into `user`'s folders, and a fixed caption extension.

    Every config that arrives from a request (Train tab, HTTP API) passes here before its folders are read;
    `python -m webui.train`, run by the machine's owner, does not.
    """
    check_caption_extension(config.caption_extension)
    changes = {}
    for name in ("dataset_dir", "masks_dir", "validation_dir"):
        if getattr(config, name).strip():
            changes[name] = str(dataset_folder(service, getattr(config, name), user))
    if config.resume_from.strip():
        state = service.files.resolve(config.resume_from, RESUME_STATE, user)
        if not state.is_dir():  # said now, not when the queued job fails on the worker
            raise TrainingConfigError("resume_from", f"no saved state {config.resume_from.strip()!r} in "
                                                     f"{service.files.describe(RESUME_STATE, user)} (yours are listed "
                                                     "by GET /sdapi/v1/train/states)")
        changes["resume_from"] = str(state)
    return config.replace(**changes)


def import_images(files: list[str | Path], folder: Path, limits: RequestLimits) -> ImportResult:
    """Copy uploaded images into `folder`, checking each one decodes (through the request limits' checked
    opener, so an oversized image is refused before decoding); unusable files are named, not copied.

    Files keep their names (a caption sidecar uploaded with them stays paired); a name already in the
    folder is replaced, so uploading the same set twice does not duplicate it.
    """
    if not files:
        raise ValueError("no files were uploaded")
    folder.mkdir(parents=True, exist_ok=True)
    copied: list[Path] = []
    skipped: list[str] = []
    for source in (Path(file) for file in files):
        name = _upload_name(source)
        suffix = Path(name).suffix.lower()
        if suffix in (".txt", ".caption"):
            shutil.copyfile(source, folder / name)
            continue
        if suffix not in IMAGE_SUFFIXES:
            skipped.append(f"{name} (not an image: use {', '.join(IMAGE_SUFFIXES)})")
            continue
        try:
            limits.open_image(source, name).close()
        except ImageTooLargeError as error:
            skipped.append(f"{name} (too large: {str(error)[:160]})")
            continue
        except (OSError, ValueError) as error:
            skipped.append(f"{name} (unreadable: {str(error).splitlines()[0][:120] if str(error) else type(error).__name__})")
            continue
        target = folder / name
        shutil.copyfile(source, target)
        copied.append(target)
    if not copied and not skipped:
        raise ValueError("the upload held no images")
    return ImportResult(folder, copied, skipped)


def _upload_name(path: Path) -> str:
    """The file name to store: the uploaded name without any folder part or leading dots."""
    name = path.name.lstrip(".") or "image"
    return re.sub(r"[\x00-\x1f/\\]", "_", name)


def dataset_images(folder: Path) -> list[Path]:
    """Every image of a dataset folder and its kohya `N_name` subfolders, in a stable order.

    `folder` is an already confined path (`dataset_folder`); entries that are symlinks leading out of it
    are skipped, so a confined folder never lists or reads anything elsewhere.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"dataset_dir: {folder} does not exist or is not a folder")
    images = []
    for directory in [folder] + dataset_subfolders(folder):
        images += sorted(p for p in directory.iterdir()
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                         and is_within(p, folder))
    return images


def caption_rows(folder: Path, extension: str) -> list[list[str]]:
    """[file relative to the folder, caption] for each image; an empty caption means the template is used."""
    check_caption_extension(extension)
    rows = []
    for image in dataset_images(folder):
        found = read_sidecar(image, extension)
        rows.append([image.relative_to(Path(folder)).as_posix(), found[0] if found else ""])
    return rows


def save_caption_rows(folder: Path, rows: list[list[Any]], extension: str) -> tuple[int, int]:
    """Write each row's caption to the image's sidecar; an emptied caption deletes it. Returns (written, removed).

    Every row must name an image inside the folder, so a table edit cannot write files elsewhere, and the
    extension is one of the fixed caption extensions, so it cannot write anything but captions.
    """
    check_caption_extension(extension)
    root = Path(folder).resolve()
    known = {image.resolve() for image in dataset_images(root)}
    planned: list[tuple[Path, str]] = []
    for row in rows:
        if not row or all(cell in (None, "") for cell in row):
            continue
        name = str(row[0] or "").strip()
        caption = " ".join(str(row[1] if len(row) > 1 and row[1] is not None else "").split())
        image = (root / name).resolve()
        if image not in known:
            raise ValueError(f"captions: {name!r} is not an image in {root}; reload the table")
        if not is_within(image.with_suffix(extension), image.parent):
            raise ValueError(f"captions: the caption file of {name!r} links outside the dataset; nothing was changed")
        planned.append((image, caption))
    written = removed = 0
    for image, caption in planned:
        sidecar = image.with_suffix(extension)
        if caption:
            sidecar.write_text(caption + "\n", encoding="utf-8")
            written += 1
        elif sidecar.is_file():
            sidecar.unlink()
            removed += 1
    return written, removed


# --------------------------------------------------------------------------------------------
# Running, watching and cancelling
# --------------------------------------------------------------------------------------------


def training_active(service: TrainingService) -> bool:
    return service.monitor is not None and not service.monitor.finished


def start_training(service: TrainingService, config: TrainingConfig, user: User | None = None,
                   webhook_url: str | None = None) -> Job:
    """Queue a run for `user` (None: the app's own) unless one is already queued or training
    (`TrainingService.submit` checks that atomically).

    The config's folders are confined to `user`'s first (`confine_config`): this is how requests start
    training. For a plain user an output name that already names a LoRA, embedding or checkpoint is
    refused: the run would replace a model everyone uses, an admin's action.
    """
    name_of(user)  # a bare name is refused: the role decides which datasets are the user's
    if user is not None and not user.is_admin:
        existing = models_named(service, config.output_name)
        if existing:
            raise ValueError(f"output name {config.output_name!r} would replace existing model file(s) "
                             f"({', '.join(sorted(path.name for path in existing)[:5])}); choose another name "
                             "(replacing models needs an admin account)")
    return service.submit(confine_config(service, config, user), user, webhook_url)


def models_named(service: TrainingService, output_name: str) -> list[Path]:
    """Files or folders in the LoRA, embedding and checkpoint folders that a run named `output_name`
    would write over: `<name>.*`, its per-epoch files `<name>-000001.*` and a `<name>` diffusers folder."""
    found = []
    for folder in (service.paths.lora_dir, service.paths.embeddings_dir, service.paths.checkpoints_dir):
        if not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            stem = entry.name if entry.is_dir() else entry.stem
            epoch = _EPOCH_NAME.match(stem)
            if stem == output_name or (epoch is not None and epoch.group("base") == output_name):
                found.append(entry)
    return found


def running_training_job(service: TrainingService) -> Job | None:
    return next((job for job in service.scheduler.jobs() if job.kind == TRAIN_JOB_KIND and job.state == RUNNING), None)


def current_job_is_training(service: TrainingService) -> bool:
    return running_training_job(service) is not None


def cancel_training(service: TrainingService, user: User) -> str:
    """Interrupt the running training job, and only that: a txt2img job must not be stopped by the Train tab,
    and only its owner or an admin may stop it."""
    job = running_training_job(service)
    if job is not None:
        if not user.may_act_on(job.owner):
            return "The running training belongs to another user; only they or an admin can cancel it."
        job.control.interrupt()
        return "Cancelling: training stops before the next step and keeps the epochs saved so far."
    if training_active(service):
        return "The training job is waiting for the worker; it has not started, so there is nothing to stop yet."
    return "No training is running."


IDLE_STATUS: dict[str, Any] = {
    "state": "idle", "name": None, "method": None, "step": 0, "total": 0, "epoch": 0, "total_epochs": 0,
    "loss": None, "smoothed_loss": None, "lr": None, "eta": None, "elapsed": 0.0, "messages": [],
    "finished": False, "cancelled": False, "files": [], "usage": "", "warnings": [], "error": None,
    "key_checks": [], "key_problems": []}
BUSY_MESSAGE = "Another user's training run is using the trainer; yours can start when it ends."


def visible_run(service: TrainingService, viewer: User | None) -> TrainingMonitor | None:
    """The latest run's monitor if `viewer` may see it (its owner or an admin; None: the app's own code)."""
    monitor = service.monitor
    if monitor is None or viewer is None or viewer.may_act_on(monitor.owner):
        return monitor
    return None


def training_status(service: TrainingService, viewer: User | None = None) -> dict[str, Any]:
    """The latest run as JSON-friendly values (the API answer and the Train tab's polling source).

    A run's config, losses, samples and files are its owner's: another plain user only learns that the
    trainer is busy (state "busy", without the owner's name) while it runs, and nothing once it ended.
    An admin sees every run, with `owner`. `viewer` None is the app's own code, which sees everything.
    """
    monitor = service.monitor
    if monitor is None:
        return dict(IDLE_STATUS, messages=[], files=[], warnings=[], key_checks=[], key_problems=[])
    if visible_run(service, viewer) is None:
        if monitor.finished:
            return dict(IDLE_STATUS, messages=[], files=[], warnings=[], key_checks=[], key_problems=[])
        return dict(IDLE_STATUS, state="busy", messages=[BUSY_MESSAGE], files=[], warnings=[], key_checks=[],
                    key_problems=[])
    latest = monitor.latest
    result = monitor.result
    if monitor.finished:
        state = "failed" if monitor.error else run_outcome(result) if result is not None else "done"
    else:
        state = "running" if latest is not None or current_job_is_training(service) else "queued"
    files = [str(path) for path in (result.files if result is not None else (latest.files_saved if latest else ()))]
    return {
        "state": state,
        "name": monitor.config.output_name,
        "method": monitor.config.method,
        "step": latest.step if latest else 0,
        "total": latest.total_steps if latest else 0,
        "epoch": latest.epoch if latest else 0,
        "total_epochs": latest.total_epochs if latest else 0,
        "loss": _finite(latest.loss if latest else None),
        "smoothed_loss": _finite(latest.smoothed_loss if latest else None),
        "lr": _finite(latest.lr if latest else None),
        "eta": _finite(latest.eta_s if latest else None),
        "elapsed": round(latest.elapsed_s, 2) if latest else 0.0,
        "messages": monitor.messages()[-MAX_LOG_MESSAGES:],
        "finished": monitor.finished,
        "cancelled": bool(result is not None and result.cancelled),
        "files": files,
        "usage": result.usage if result is not None else "",
        "warnings": list(result.warnings) if result is not None else [],
        "validation_losses": _loss_points(monitor.validation_losses()),
        "error": monitor.error,
        "key_checks": [check.to_dict() for check in result.key_checks] if result is not None else [],
        "key_problems": result.key_problems if result is not None else [],
        "owner": monitor.owner,
    }


def _loss_points(points: list[tuple[int, float]]) -> list[list[float]]:
    """(step, loss) pairs as JSON lists, leaving out a non-finite loss."""
    return [[step, float(loss)] for step, loss in points if math.isfinite(loss)]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity; a diverged loss is reported through `error` instead."""
    return float(value) if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# After a run: epochs to compare, export, model card
# --------------------------------------------------------------------------------------------


def last_run_lora_names(service: TrainingService, viewer: User | None = None) -> tuple[list[str], list[str]]:
    """(epoch LoRA names in epoch order, final LoRA names) of the latest run, as `<lora:...>` tags name them;
    nothing when `viewer` may not see that run."""
    monitor = visible_run(service, viewer)
    if monitor is None or monitor.result is None:
        return [], []
    lora_dir = Path(service.paths.lora_dir).resolve()
    by_path = {path.resolve(): name for name, path in service.loras.files().items()}
    epochs: list[tuple[int, str]] = []
    finals: list[str] = []
    for path in monitor.result.files:
        resolved = Path(path).resolve()
        if resolved.parent != lora_dir or resolved not in by_path:
            continue
        match = _EPOCH_NAME.match(resolved.stem)
        if match and match.group("base") == monitor.config.output_name:
            epochs.append((int(match.group("epoch")), by_path[resolved]))
        else:
            finals.append(by_path[resolved])
    return [name for _, name in sorted(epochs)], finals


def default_sample_prompt(config: TrainingConfig) -> str:
    """The run's first sample prompt, else its caption template filled with the trigger and class words."""
    prompts = [prompt.strip() for prompt in config.sample_prompts if prompt.strip()]
    if prompts:
        return prompts[0]
    return fill_template(config.caption_template, config.effective_trigger, config.class_word) or config.output_name


def is_epoch_file(path: Path) -> bool:
    """Whether a run's output is a per-epoch copy (`name-000002.safetensors`) rather than a final file."""
    return _EPOCH_NAME.match(Path(path).name.removesuffix(".safetensors")) is not None


def trigger_words_of(config: TrainingConfig) -> list[str]:
    """The words that call up the result: pivotal tuning names its token after the output."""
    if config.method == "pivotal":
        return [config.output_name]
    return [config.effective_trigger] if config.effective_trigger else []


def export_run(service: TrainingService, license_name: str, include_epochs: bool = False,
               viewer: User | None = None) -> tuple[Path, Path]:
    """Gather the latest run's files, a model card and a sample grid into `exports/<name>/` of the run's
    owner's training folder (`training/exports/` for an admin's run, `training/users/<name>/exports/` for
    a plain user's, also when an admin exports it: the export belongs with the run).

    Files are hard-linked where the file system allows (a DreamBooth checkpoint is gigabytes), else copied.
    Returns (export folder, card path); the folder is what "Upload to the Hub" sends. Only the run's owner
    or an admin (`viewer`) may export it.
    """
    monitor = visible_run(service, viewer)
    if monitor is None or not monitor.finished:
        raise ValueError("no finished training run to export: train first, and wait until it finishes")
    result = monitor.result
    if result is None or not result.files:
        raise ValueError("the last run wrote no files to export" + (f" ({monitor.error})" if monitor.error else ""))
    config = monitor.config
    files = [Path(f) for f in result.files if Path(f).exists()]
    chosen = files if include_epochs else [path for path in files if not is_epoch_file(path)]
    if not chosen:
        raise ValueError("the last run was cancelled before its final files were written; "
                         "tick 'Include epoch files' to export the saved epochs")
    folder = exports_root(service, monitor.user) / config.output_name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    ordered = sorted(chosen, key=is_epoch_file)  # final files first: the card's usage snippets use the first
    exported = [_link_or_copy(path, folder / path.name) for path in ordered]
    card = write_model_card(
        folder, name=config.output_name, method=config.method, base_model=_base_model_name(service, config),
        trigger_words=trigger_words_of(config),
        settings=card_settings(config, result.steps_done, result.epochs_done, result.final_loss),
        sample_images=[image for _, image in monitor.samples()], license=license_name, files=exported,
    )
    return folder, card


def upload_run(service: TrainingService, repo_id: str, token: str | None, *, private: bool, license_name: str,
               include_epochs: bool = False, viewer: User | None = None) -> tuple[Path, str]:
    """Export the latest run with its card and upload that folder to the Hub: (export folder, repo URL).

    Refused (`HubDisabled`) before exporting anything unless the server was started with --allow-hub.
    """
    check_upload_allowed(service.network)
    folder, _ = export_run(service, license_name, include_epochs, viewer)  # re-export: the Hub gets exactly the latest run
    return folder, upload_to_hub(folder, (repo_id or "").strip(), token, network=service.network, private=private)


def _base_model_name(service: TrainingService, config: TrainingConfig) -> str:
    """The checkpoint's plain name for the card (its title carries a hash); the title if it is gone."""
    try:
        return service.models.catalog.find(config.base_checkpoint).name
    except LookupError:
        return config.base_checkpoint


def card_settings(config: TrainingConfig, steps: int, epochs: int, final_loss: float | None) -> dict[str, Any]:
    """What a model card lists: the training values, without local paths or job-only fields."""
    values = {key: value for key, value in config.to_dict().items() if key not in JOB_FIELDS}
    values.update({"steps trained": steps, "epochs trained": epochs})
    if final_loss is not None and math.isfinite(final_loss):
        values["final loss"] = round(final_loss, 5)
    return values


def _link_or_copy(source: Path, target: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy_file)
    else:
        _link_or_copy_file(source, target)
    return target


def _link_or_copy_file(source: str | Path, target: str | Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
