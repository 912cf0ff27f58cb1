"""Waiting for a queued job over HTTP without holding a thread, and cancelling it when the client leaves.

A generation request used to wait in `job.result()` on a thread-pool thread: 80 waiting requests took
every thread, and even `GET /progress` queued behind them for half a minute. Here the wait is an
asyncio future that the job's completion resolves from the worker thread (`call_soon_threadsafe`),
so a waiting request costs the server nothing but a coroutine. Meanwhile the client connection is
watched: a client that disconnects while its job waits cancels it (it never runs), and one that
disconnects while its job runs interrupts it, so nobody's GPU time goes to answers no one will read.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import HTTPException, Request

from webui.jobs.job import Job
from webui.jobs.scheduler import Scheduler

CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away"; nobody is left to read it


async def wait_for_job(scheduler: Scheduler, job: Job, request: Request) -> Any:
    """The job's result (or its exception), awaited on the event loop; cancels the job if the client leaves."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not finished.done():
            finished.set_result(None)

    def on_done(_: Job) -> None:  # runs on the worker thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            loop.call_soon_threadsafe(settle)

    job.add_done_callback(on_done)
    client_left = asyncio.ensure_future(_client_disconnects(request))
    try:
        await asyncio.wait({finished, client_left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        client_left.cancel()
        if not finished.done():  # the client left, or this request itself was cancelled
            scheduler.stop(job.job_id)
    if not job.done:
        raise HTTPException(CLIENT_CLOSED_REQUEST, "the client disconnected; its job was cancelled")
    return job.result(timeout=0)


async def _client_disconnects(request: Request) -> None:
    """Return once the client has closed the connection. The body was read already, so the server's
    next message for this request is `http.disconnect`."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
