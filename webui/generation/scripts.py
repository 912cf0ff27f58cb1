"""Scripts of the txt2img/img2img "Script" dropdown as ONE queued job: the engine's side of the seam.

A selectable script takes the tab's request plus its own values and makes the images itself, generating
inline on the worker that took the job (a job never queues jobs; X/Y/Z runs its cells the same way).
The engine knows scripts only as `ScriptRunner`s in a table that the app fills (the extension layer wraps
each extension's script in one); it never imports the extensions. Values travel as a JSON-able dict by
field name, so a queued script job is stored and survives a restart like any other job.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from PIL import Image

from webui.generation.outputs import dated_folder, save_grid
from webui.generation.request_codec import decode_request, encode_request
from webui.generation.requests import RequestError, Txt2ImgRequest
from webui.generation.txt2img import GenerationResult
from webui.jobs.job import Job
from webui.jobs.progress import JobControl
from webui.jobs.spec import JobKind, JobSpec
from webui.security.identity import User, name_of

if TYPE_CHECKING:
    from webui.generation.service import GenerationService
    from webui.jobs.worker import Worker
    from webui.models.manager import ModelManager

JOB_KIND = "script"


@dataclass
class ScriptOutput:
    """What a script made: its images with their infotexts, and a grid (shown and saved first) or None."""

    images: list[Image.Image]
    infotexts: list[str]
    grid: Image.Image | None = None


class InlineGeneration:
    """Generation on the worker running the script's job; remembers every result for the job's answer."""

    def __init__(self, generation: GenerationService, manager: ModelManager, control: JobControl | None):
        self._generation, self._manager, self.control = generation, manager, control
        self.results: list[GenerationResult] = []

    def generate(self, request: Txt2ImgRequest) -> GenerationResult:
        """Validate and generate `request` now (no grid of its own: the script draws the grid it wants)."""
        if self.interrupted:
            raise RequestError("the job was interrupted")
        result = self._generation.generate_inline(self._manager, dataclasses.replace(request, save_grid=False),
                                                  self.control)
        self.results.append(result)
        return result

    @property
    def interrupted(self) -> bool:
        return self.control is not None and self.control.interrupted

    def set_message(self, message: str) -> None:
        if self.control is not None:
            self.control.set_message(message)


class ScriptRunner(Protocol):
    """One selectable script as the engine runs it (the app's extension layer provides these)."""

    title: str

    def run(self, request: Txt2ImgRequest, values: dict[str, Any], inline: InlineGeneration) -> ScriptOutput:
        """Make the images; RequestError (a ValueError) refuses the request with its message."""
        ...


@dataclass(frozen=True)
class ScriptJob:
    title: str
    request: Txt2ImgRequest
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScriptService:
    """Queues script jobs and runs them. `runners()` gives the scripts available now, keyed by title in
    lower case (read at each use: a script whose extension failed is gone)."""

    generation: GenerationService
    runners: Callable[[], dict[str, ScriptRunner]] = dict

    def runner(self, title: str) -> ScriptRunner:
        runners = self.runners()
        try:
            return runners[title.strip().casefold()]
        except KeyError:
            known = ", ".join(runner.title for runner in runners.values()) or "none"
            raise RequestError(f"script {title!r} is unknown; scripts on this server: {known}") from None

    def submit(self, title: str, request: Txt2ImgRequest, values: dict[str, Any], owner: User | None = None,
               webhook_url: str | None = None) -> Job:
        """Check the request now (errors raise, nothing is queued), then queue ONE job running the script;
        its images are saved in `owner`'s outputs folder, like a plain generation's."""
        runner = self.runner(title)
        request = self.generation.prepare(self.generation.owned_by(request, owner))
        return self.generation.scheduler.submit(JobSpec(JOB_KIND, ScriptJob(runner.title, request, dict(values)),
                                                        name_of(owner)), webhook_url)

    def job_kinds(self) -> list[JobKind]:
        return [JobKind(JOB_KIND, run=self._run, encode=self._encode, decode=self._decode, forget=self._forget,
                        model_key=lambda job: self.generation.models.model_key(job.request.checkpoint),
                        summary=lambda job: f"{job.title}: {job.request.prompt[:70]}",
                        result_record=lambda result: {"images": [str(path) for path in result.saved_paths],
                                                      "infotexts": list(result.infotexts),
                                                      "interrupted": result.interrupted})]

    def _encode(self, job: ScriptJob) -> dict[str, Any]:
        folder = uuid.uuid4().hex  # img2img's images are kept as files beside the job store, like img2img jobs
        return {"title": job.title, "request": encode_request(job.request, self.generation.inputs_folder / folder),
                "values": job.values, "folder": folder}

    def _decode(self, data: dict[str, Any]) -> ScriptJob:
        request = decode_request(data["request"], self.generation.inputs_folder / str(data.get("folder", "")))
        return ScriptJob(data["title"], request, dict(data["values"]))

    def _forget(self, data: dict[str, Any]) -> None:
        folder = self.generation.inputs_folder / str(data.get("folder", ""))
        if data.get("folder") and folder.parent == self.generation.inputs_folder and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def _run(self, worker: Worker, job: ScriptJob, control: JobControl) -> GenerationResult:
        inline = InlineGeneration(self.generation, worker.resources, control)
        output = self.runner(job.title).run(job.request, job.values, inline)
        return script_result(self.generation.outputs_root_of(job.request), job.request, output, inline)


def script_result(outputs_folder: Path, request: Txt2ImgRequest, output: ScriptOutput,
                  inline: InlineGeneration) -> GenerationResult:
    """The job's answer in the shape of a plain generation (grid first), the grid saved when asked for."""
    done = inline.results
    result = GenerationResult(
        images=list(output.images), infotexts=list(output.infotexts),
        seeds=[seed for one in done for seed in one.seeds], subseeds=[seed for one in done for seed in one.subseeds],
        prompt=request.prompt, negative_prompt=request.negative_prompt,
        saved_paths=[path for one in done for path in one.saved_paths], grid=output.grid,
        interrupted=inline.interrupted,
        warnings=tuple(dict.fromkeys(warning for one in done for warning in one.warnings)),
    )
    if done:
        first = done[0]
        result.model_name, result.model_hash = first.model_name, first.model_hash
        result.vae_name, result.vae_hash, result.parameters = first.vae_name, first.vae_hash, dict(first.parameters)
    if output.grid is not None and request.save_images and request.save_grid and output.infotexts:
        folder = dated_folder(outputs_folder, "img2img-grids" if hasattr(request, "init_images") else "txt2img-grids")
        result.grid_path = save_grid([output.grid], folder, result.seeds[0] if result.seeds else 0,
                                     output.infotexts[0])
        result.saved_paths.insert(0, result.grid_path)
    return result


