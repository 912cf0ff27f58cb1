"""One txt2img/img2img job on several workers: which images each part draws, and the parts' images gathered
into the result one worker would have made.

The scheduler decides when to split (free workers, see `webui.jobs.fanout`); this module is the rule for a
generation request. Every part runs the whole request with the same (resolved) seeds, so prompt expansion,
per-image seeds and infotexts are the whole job's; it only draws its own images (`RequestPart.start` up to
`stop`), in the batches one worker would have put them in. Parts save nothing: the gathered images are
saved in order and the grid drawn from all of them, so the files are numbered as one worker numbers them.

How images are shared out: whole batches (batch count) when they divide evenly among the parts, so every
part draws exactly the batches one worker would (bitwise the same images on the CPU); otherwise the images
are shared out evenly, cutting batches, which changes only the batch size the UNet sees (equal within
float tolerance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from webui.generation.outputs import mode_folders, save_image
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.txt2img import GenerationResult, finish_grid, resolve_seed


@dataclass(frozen=True)
class RequestPart:
    """Images start..stop-1 of `request` (stop None: to the end; a prompt expansion may make more images
    than batch count x batch size). The request has its seeds resolved and saves nothing itself."""

    request: Txt2ImgRequest
    start: int
    stop: int | None

    @property
    def images(self) -> tuple[int, int | None]:
        return self.start, self.stop


def part_bounds(batch_size: int, batch_count: int, parts: int) -> list[tuple[int, int]]:
    """(start, stop) image ranges for `parts` parts (fewer when there are fewer images), in order."""
    images = batch_size * batch_count
    parts = max(1, min(parts, images))
    if batch_count % parts == 0:
        unit, units = batch_size, batch_count
    else:
        unit, units = 1, images
    per_part, extra = divmod(units, parts)
    bounds, start = [], 0
    for index in range(parts):
        stop = start + per_part + (1 if index < extra else 0)
        bounds.append((start * unit, stop * unit))
        start = stop
    return bounds


def fixed_request(request: Txt2ImgRequest) -> Txt2ImgRequest:
    """`request` as every part of it runs: seeds resolved once (-1 is random), saving left to the gather."""
    return request.with_changes(seed=resolve_seed(request.seed), subseed=resolve_seed(request.subseed),
                                save_images=False, save_grid=False)


def split_request(request: Txt2ImgRequest, parts: int) -> tuple[Txt2ImgRequest | RequestPart, ...]:
    """The parts of `request` for `parts` workers; the request alone when it makes one image."""
    bounds = part_bounds(request.batch_size, request.batch_count, parts)
    if len(bounds) < 2:
        return (request,)
    fixed = fixed_request(request)
    last = len(bounds) - 1
    return tuple(RequestPart(fixed, start, stop if index < last else None)
                 for index, (start, stop) in enumerate(bounds))


def gather_results(request: Txt2ImgRequest, outputs_root: Path | None,
                   results: list[GenerationResult]) -> GenerationResult:
    """The parts' results (in part order) as one worker's result for `request`: images, seeds and infotexts
    in order, saved in that order when the request saves, and the grid of them all."""
    first = results[0]
    whole = dataclasses.replace(
        first,
        images=[image for part in results for image in part.images],
        infotexts=[text for part in results for text in part.infotexts],
        seeds=[seed for part in results for seed in part.seeds],
        subseeds=[seed for part in results for seed in part.subseeds],
        prompts=[prompt for part in results for prompt in part.prompts],
        saved_paths=[], grid=None, grid_path=None,
        interrupted=any(part.interrupted for part in results),
        warnings=tuple(dict.fromkeys(warning for part in results for warning in part.warnings)),
        parameters=next((part.parameters for part in results if part.images), first.parameters),
    )
    saving = request.save_images and outputs_root is not None
    images_folder, grids_folder = (mode_folders(outputs_root, isinstance(request, Img2ImgRequest))
                                   if saving and outputs_root is not None else (None, None))
    if images_folder is not None:
        whole.saved_paths = [save_image(image, images_folder, seed, text)
                             for image, seed, text in zip(whole.images, whole.seeds, whole.infotexts)]
    finish_grid(whole, request.save_grid, grids_folder)
    return whole
