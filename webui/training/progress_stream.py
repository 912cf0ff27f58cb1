"""A training run's progress and result as JSON lines, so a run in other processes reports like one in the app's.

A multi-GPU run from the app trains in processes the app starts (`webui.training.launcher`). Their first
process writes every `TrainingProgress` and, at the end, the `TrainingResult` to a progress file, one JSON
object a line; the app reads them back into the same objects and hands them to the same callback the in-process
run uses, so the Train tab, the job queue and the API follow one progress path either way. Sample images travel
as PNG files beside the progress file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from PIL import Image

from webui.training.key_check import KeyCheck, LoaderKeys
from webui.training.loop import TrainingProgress, TrainingResult


class ProgressWriter:
    """Appends a run's reports to `path` (flushed per line, so a reader sees each step as it happens)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")
        self._samples: tuple = ()
        self._sample_files: list[list[str]] = []
        self._written = 0

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def progress(self, progress: TrainingProgress) -> None:
        if progress.samples is not self._samples:  # new images: written once, referred to by file name after
            self._samples = progress.samples
            self._sample_files = []
            for label, image in progress.samples:
                name = f"{self.path.stem}-sample-{self._written:05d}.png"
                self._written += 1
                image.save(self.path.with_name(name), format="PNG")
                self._sample_files.append([label, name])
        self._write({"progress": {
            "step": progress.step, "total_steps": progress.total_steps, "epoch": progress.epoch,
            "total_epochs": progress.total_epochs, "loss": progress.loss, "smoothed_loss": progress.smoothed_loss,
            "lr": progress.lr, "elapsed_s": progress.elapsed_s, "eta_s": progress.eta_s,
            "samples": self._sample_files, "files_saved": [str(path) for path in progress.files_saved],
            "message": progress.message, "validation_loss": progress.validation_loss}})

    def result(self, result: TrainingResult) -> None:
        self._write({"result": {
            "files": [str(path) for path in result.files], "cancelled": result.cancelled,
            "steps_done": result.steps_done, "epochs_done": result.epochs_done, "final_loss": result.final_loss,
            "warnings": list(result.warnings), "state_dir": str(result.state_dir) if result.state_dir else None,
            "usage": result.usage, "key_checks": [_key_check_record(check) for check in result.key_checks],
            "validation_losses": [list(point) for point in result.validation_losses]}})

    def close(self) -> None:
        self._file.close()


def _key_check_record(check: KeyCheck) -> dict[str, Any]:
    return {"file": check.file, "kind": check.kind, "total": check.total, "not_checked": check.not_checked,
            "notes": list(check.notes), "loaders": [loader.to_dict() for loader in check.loaders]}


def _key_check(record: dict[str, Any]) -> KeyCheck:
    loaders = tuple(LoaderKeys(item["loader"], item["loaded"], item["total"], tuple(item["ignored"]), item["note"])
                    for item in record["loaders"])
    return KeyCheck(record["file"], record["kind"], record["total"], loaders, record["not_checked"],
                    tuple(record["notes"]))


class ProgressReader:
    """Reads what a `ProgressWriter` appended since the last call (a line still being written waits)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._images: dict[str, Image.Image] = {}
        self.result: TrainingResult | None = None

    def new_progress(self) -> list[TrainingProgress]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        reports = []
        for line in complete.decode("utf-8").splitlines():
            record = json.loads(line)
            if "result" in record:
                self.result = self._result(record["result"])
            else:
                reports.append(self._progress(record["progress"]))
        return reports

    def _image(self, name: str) -> Image.Image:
        if name not in self._images:
            with Image.open(self.path.with_name(os.path.basename(name))) as image:
                self._images[name] = image.convert("RGB")
        return self._images[name]

    def _progress(self, data: dict[str, Any]) -> TrainingProgress:
        samples = tuple((label, self._image(name)) for label, name in data.pop("samples"))
        files = tuple(Path(path) for path in data.pop("files_saved"))
        return TrainingProgress(samples=samples, files_saved=files, **data)

    @staticmethod
    def _result(data: dict[str, Any]) -> TrainingResult:
        return TrainingResult(
            files=[Path(path) for path in data["files"]], cancelled=data["cancelled"], steps_done=data["steps_done"],
            epochs_done=data["epochs_done"], final_loss=data["final_loss"], warnings=list(data["warnings"]),
            state_dir=Path(data["state_dir"]) if data["state_dir"] else None, usage=data["usage"],
            key_checks=[_key_check(item) for item in data["key_checks"]],
            validation_losses=[(int(step), float(loss)) for step, loss in data["validation_losses"]])
