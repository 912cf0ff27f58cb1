"""The batch loop txt2img and img2img share: per-image prompts, seeds, sub-batches, the per-image and
per-batch hooks, infotexts and saving.

A mode (txt2img, img2img) only says how to draw a group of images that share one prompt (`draw`) and
which infotext fields an image gets (`parameters_for`); everything else happens here, once:

* prompt expansion runs before any seed is used: image i gets prompt i and seed + i, and the number of
  images may change (a combinatorial expansion); images of one batch with different prompts are drawn as
  consecutive sub-batches, so each keeps its own seed;
* each image goes through `after_image` (which may replace it, add infotext fields, or run an inpaint pass
  through this same model) before its infotext is written and it is saved;
* each batch goes through `after_batch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from webui.generation.hooks import GenerationHooks, ImageInfo, JobInfo, SamplersOnly
from webui.generation.infotext import create_infotext
from webui.generation.outputs import save_image
from webui.jobs.progress import JobControl

if TYPE_CHECKING:
    from webui.generation.txt2img import GenerationResult, PreparedPrompts
    from webui.models.manager import LoadedModel

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class SubBatch:
    """Images of one batch that share a prompt: drawn by one pipeline call."""

    first_index: int            # the job-wide index of the first image
    prompts: "PreparedPrompts"
    seeds: list[int]
    subseeds: list[int]


def prompt_preparer(first: "PreparedPrompts",
                    prepare: Callable[[str, str], "PreparedPrompts"]) -> Callable[[str], "PreparedPrompts"]:
    """Prepared prompts for each image prompt, once per distinct text. Expanded prompts come from the styled
    prompt, so `prepare(prompt, negative_prompt)` must not apply the styles again."""
    cache = {first.prompt: first}

    def get(text: str) -> "PreparedPrompts":
        if text not in cache:
            cache[text] = prepare(text, first.negative_prompt)
        return cache[text]

    return get


def image_prompts(hooks: GenerationHooks, job: JobInfo, prompt: str, negative_prompt: str, count: int,
                  seed: int) -> list[str]:
    """One prompt per image: the expansion's when an extension expands the prompt, else `prompt` x count."""
    expanded = hooks.expand_prompts(job, prompt, negative_prompt, count, seed)
    return list(expanded) if expanded else [prompt] * count


def sub_batches(prompts: list[str], batch_size: int,
                images: tuple[int, int | None] | None = None) -> list[list[tuple[int, str]]]:
    """Batches of (index, prompt), `batch_size` images each (the last may be smaller). `images` = (start,
    stop) keeps only those images (a part of a job split over several workers; stop None: to the end), in
    the batches one worker would put them in, so the part draws them as the whole job would."""
    indexed = list(enumerate(prompts))
    batches = [indexed[start:start + batch_size] for start in range(0, len(indexed), batch_size)]
    if images is None:
        return batches
    first, stop = images
    kept = [[item for item in batch if item[0] >= first and (stop is None or item[0] < stop)] for batch in batches]
    return [batch for batch in kept if batch]


def _groups(batch: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """Consecutive images with the same prompt, in order."""
    groups: list[list[tuple[int, str]]] = []
    for item in batch:
        if groups and groups[-1][-1][1] == item[1]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def run_batches(model: "LoadedModel", request: Any, result: "GenerationResult", *, hooks: GenerationHooks,
                job: JobInfo, seed: int, subseed: int, prepare: Callable[[str], "PreparedPrompts"],
                draw: Callable[[SubBatch], list[Image.Image]],
                parameters_for: Callable[["PreparedPrompts", int, int], dict[str, Any]],
                steps_per_batch: int, images_folder: Path | None, control: JobControl | None,
                images: tuple[int, int | None] | None = None) -> None:
    """Draw, hook, describe and save every image of the request into `result` (only images start..stop-1
    of them when `images` is given: a part of a split job; prompts and seeds are still the whole job's)."""
    prompts = image_prompts(hooks, job, result.prompt, result.negative_prompt, request.image_count, seed)
    batches = sub_batches(prompts, request.batch_size, images)
    if control is not None:
        control.start(len(batches), steps_per_batch)
    for batch_index, batch in enumerate(batches):
        if control is not None:
            if control.interrupted:
                break
            control.begin_batch(batch_index)
        drawn: list[tuple[int, "PreparedPrompts", Image.Image]] = []
        for group in _groups(batch):
            prepared = prepare(group[0][1])
            indices = [index for index, _ in group]
            images = draw(SubBatch(indices[0], prepared, [(seed + i) % MAX_SEED for i in indices],
                                   [(subseed + i) % MAX_SEED for i in indices]))
            drawn += [(index, prepared, image) for index, image in zip(indices, images)]
            if control is not None and control.should_stop_batch:
                break
        batch_images, batch_seeds, batch_prompts = [], [], []
        for index, prepared, image in drawn:
            image_seed, image_subseed = (seed + index) % MAX_SEED, (subseed + index) % MAX_SEED
            parameters = parameters_for(prepared, image_seed, image_subseed)
            info = ImageInfo(index, image_seed, image_subseed, prepared.prompt, prepared.negative_prompt,
                             dict(parameters), inline_inpaint(model, request, image_seed, prepared, hooks))
            image, added = hooks.after_image(job, image, info)
            parameters.update(added)
            infotext = create_infotext(prepared.prompt, prepared.negative_prompt, parameters)
            collect_image(result, image, infotext, image_seed, image_subseed, images_folder, parameters,
                          prepared.prompt)
            batch_images.append(image)
            batch_seeds.append(image_seed)
            batch_prompts.append(prepared.prompt)
        if batch_images:
            hooks.after_batch(job, batch_images, batch_seeds, batch_prompts)
    result.warnings = tuple(job.warnings)


def collect_image(result: "GenerationResult", image: Image.Image, infotext: str, seed: int, subseed: int,
                  save_to: Path | None, parameters: dict[str, Any] | None = None, prompt: str | None = None) -> None:
    if parameters is not None and not result.images:
        result.parameters = dict(parameters)
    result.images.append(image)
    result.infotexts.append(infotext)
    result.seeds.append(seed)
    result.subseeds.append(subseed)
    result.prompts.append(result.prompt if prompt is None else prompt)
    if save_to is not None:
        result.saved_paths.append(save_image(image, save_to, seed, infotext))


# What an inline inpaint pass takes from the job's request; hires fix never applies to it.
_NOT_INHERITED = {"enable_hr", "batch_count", "batch_size", "save_images", "save_grid", "styles", "extra",
                  "subseed_strength", "denoising_strength"}
INPAINT_DEFAULTS = dict(denoising_strength=0.4, inpaint_full_res=True, inpaint_full_res_padding=32, mask_blur=4)


def inline_inpaint(model: "LoadedModel", request: Any, seed: int, prompts: "PreparedPrompts",
                   hooks: GenerationHooks) -> Callable[[Image.Image, Image.Image, dict[str, Any]], Image.Image]:
    """An inpaint pass over one image through the job's own model, on the calling (worker) thread: the
    image's own (expanded, styled) prompts, the request's sampler, steps and CFG unless `changes` say
    otherwise; the image's seed; "only masked" at the request's size by default (what face detailers do).
    No hooks but the added samplers run inside it."""

    def inpaint(image: Image.Image, mask: Image.Image, changes: dict[str, Any]) -> Image.Image:
        # Imported here: img2img's run builds on this module's loop.
        from webui.generation.img2img import run_img2img
        from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest

        inherited = {f.name: getattr(request, f.name) for f in fields(Txt2ImgRequest) if f.name not in _NOT_INHERITED}
        values = {**inherited, **INPAINT_DEFAULTS, "seed": seed, "prompt": prompts.prompt,
                  "negative_prompt": prompts.negative_prompt, **changes}
        samplers = hooks.samplers()
        inpaint_request = Img2ImgRequest(**values, init_images=(image,), mask=mask, save_images=False,
                                         save_grid=False).validate(added_samplers=tuple(samplers))
        scheduler = model.pipeline.scheduler  # the job's own sampler state goes back in place afterwards
        try:
            done = run_img2img(model, inpaint_request, outputs_root=None, hooks=SamplersOnly(samplers))
        finally:
            model.pipeline.scheduler = scheduler
        return done.images[0]

    return inpaint
