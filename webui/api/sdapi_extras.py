"""A1111 routes beside generation: `embeddings`, `memory`, `extra-single-image`, `extra-batch-images`.

Shapes follow A1111's modules/api/models.py so clients read them unchanged. Images are decoded through
the request limits' checked opener (413 before decoding an oversized one) and the upscaled size is
judged against the same pixel limit before resizing; the upscaling itself is an `extras` job on the
scheduler's workers (model upscalers use a worker's device), awaited like a generation.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from webui.api.common import caller
from webui.api.job_wait import wait_for_job
from webui.api.sdapi import STRICT_JSON, ReasonedValidationRoute, decode_image, encode_png, translate_errors
from webui.context import AppContext
from webui.generation.extras import ExtrasRequest
from webui.models.embeddings import Embedding
from webui.security.identity import User


class ExtrasBody(BaseModel):
    """A1111's ExtrasBaseRequest; face restoration is refused when asked for (no restorer exists)."""

    model_config = STRICT_JSON

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False

    def extras_request(self) -> ExtrasRequest:
        if self.gfpgan_visibility > 0 or self.codeformer_visibility > 0:
            raise HTTPException(422, "face restoration (gfpgan_visibility, codeformer_visibility) is not "
                                     "available on this server; send 0")
        return ExtrasRequest(
            resize_mode=self.resize_mode, upscaling_resize=self.upscaling_resize,
            upscaling_resize_w=self.upscaling_resize_w, upscaling_resize_h=self.upscaling_resize_h,
            upscaling_crop=self.upscaling_crop, upscaler_1=self.upscaler_1, upscaler_2=self.upscaler_2,
            extras_upscaler_2_visibility=self.extras_upscaler_2_visibility,
        )


class ExtrasSingleBody(ExtrasBody):
    image: str = ""


class FileData(BaseModel):
    model_config = STRICT_JSON

    data: str
    name: str = ""


class ExtrasBatchBody(ExtrasBody):
    imageList: list[FileData] = Field(default_factory=list)


def embedding_entry(embedding: Embedding) -> dict[str, Any]:
    """A1111's EmbeddingItem. The checkpoint an embedding was trained on is not kept by this reader."""
    widths = list(embedding.width().values())
    return {"step": embedding.step, "sd_checkpoint": None, "sd_checkpoint_name": None,
            "shape": widths[0] if widths else None, "vectors": embedding.vector_count}


def memory_report() -> dict[str, Any]:
    """A1111's MemoryResponse: this process's RAM, and CUDA memory or `{"error": "unavailable"}` on CPU."""
    return {"ram": _ram_report(), "cuda": _cuda_report()}


def _ram_report() -> dict[str, Any]:
    """A1111's fields: `used` is this process's resident memory, `total` the machine's, `free` the rest."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if sys.platform.startswith("linux"):
            with open("/proc/self/statm") as statm:
                used = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        else:
            import psutil  # optional elsewhere

            used = psutil.Process(os.getpid()).memory_info().rss
    except (OSError, ValueError, ImportError, AttributeError) as error:
        return {"error": str(error) or type(error).__name__}
    return {"free": total - used, "used": used, "total": total}


def _cuda_report() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "unavailable"}
    try:
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
    except RuntimeError as error:
        return {"error": str(error)}

    def pair(key: str) -> dict[str, int]:
        return {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}

    return {"system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"), "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}


def build_extras_router(ctx: AppContext) -> APIRouter:
    router = APIRouter(route_class=ReasonedValidationRoute)
    limits = ctx.request_limits

    @router.get("/embeddings")
    @translate_errors
    def embeddings() -> dict[str, Any]:
        """`loaded`: embeddings usable with the current checkpoint; `skipped`: those made for another
        text-encoder width (A1111's split)."""
        catalog = ctx.manager.embedding_catalog
        if catalog is None:
            return {"loaded": {}, "skipped": {}}
        catalog.refresh()
        widths = ctx.manager.encoder_widths
        everything = catalog.embeddings
        loaded = catalog.compatible(widths) if widths is not None else everything
        return {"loaded": {name: embedding_entry(e) for name, e in loaded.items()},
                "skipped": {name: embedding_entry(e) for name, e in everything.items() if name not in loaded}}

    @router.get("/memory")
    @translate_errors
    def memory() -> dict[str, Any]:
        return memory_report()

    async def upscale(images_data: list[tuple[str, str]], body: ExtrasBody, http: Request, user: User) -> Any:
        """Decode (413 for an oversized upload), check and queue one extras job; its ExtrasResult."""
        if ctx.extras is None:
            raise HTTPException(503, "upscaling is not available on this server")
        request = await run_in_threadpool(ctx.extras.validate, body.extras_request())  # before decoding
        images = await run_in_threadpool(
            lambda: [decode_image(data, limits, field_name) for data, field_name in images_data])
        job = await run_in_threadpool(ctx.extras.submit, images, request, user)
        return await wait_for_job(ctx.scheduler, job, http)

    @router.post("/extra-single-image")
    @translate_errors
    async def extra_single_image(body: ExtrasSingleBody, http: Request, user: User = Depends(caller)) -> dict[str, Any]:
        if not body.image:
            raise HTTPException(422, "image must hold a base64 image")
        result = await upscale([(body.image, "image")], body, http, user)
        if not result.images:
            raise HTTPException(409, "the upscaling was interrupted")
        image = await run_in_threadpool(encode_png, result.images[0])
        return {"html_info": result.infotexts[0], "image": image}

    @router.post("/extra-batch-images")
    @translate_errors
    async def extra_batch_images(body: ExtrasBatchBody, http: Request, user: User = Depends(caller)) -> dict[str, Any]:
        if not body.imageList:
            raise HTTPException(422, "imageList must hold at least one {\"data\": base64, \"name\": ...} item")
        if len(body.imageList) > ctx.limits.max_images:
            raise HTTPException(422, f"imageList holds {len(body.imageList)} images; the limit is {ctx.limits.max_images}")
        result = await upscale([(item.data, f"imageList[{index}]") for index, item in enumerate(body.imageList)],
                               body, http, user)
        images = await run_in_threadpool(lambda: [encode_png(image) for image in result.images])
        return {"html_info": result.infotexts[0] if result.infotexts else "", "images": images}

    return router
