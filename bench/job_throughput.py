"""Throughput of the scheduler through both HTTP APIs (issue #15): a real server on 127.0.0.1.

    python bench/job_throughput.py [--sequential 200 --threads 8 --per-thread 25 --steps 2 --size 64] [--write]

Starts `launch.py --api --nowebui` on the embedded default model and runs four phases of txt2img:
200 sequential and 8 threads x 25 concurrent requests through `/sdapi/v1/txt2img` (the A1111 route,
which waits for its job), then the same through `/api/v1/jobs` (submit, follow the job's server-sent
events until `finished`, download the image). Seeds cycle over 25 values; the first image of each seed
(sequential, A1111 route) is its solo reference, and every other image of that seed, from any phase,
must be pixel-identical to it. It reports requests/s, p50/p95 latency, errors and mismatches per phase
and the server's RSS before and after; `--write` puts them into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server_harness import Server, publish  # noqa: E402
from webui.models.default_model import ensure_default_model  # noqa: E402

SECTION_START, SECTION_END = "<!-- job_throughput:start -->", "<!-- job_throughput:end -->"
SEEDS = 25
TIMEOUT = 600


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def via_sdapi(url: str, body: dict) -> bytes:
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=TIMEOUT)
    answer.raise_for_status()
    return base64.b64decode(answer.json()["images"][0])


def via_jobs(url: str, body: dict) -> bytes:
    answer = requests.post(f"{url}/api/v1/jobs", json={"kind": "txt2img", "request": body}, timeout=TIMEOUT)
    answer.raise_for_status()
    job_id = answer.json()["id"]
    with requests.get(f"{url}/api/v1/jobs/{job_id}/events", stream=True, timeout=TIMEOUT) as events:
        for line in events.iter_lines(decode_unicode=True):
            if line == "event: finished":
                break
    job = requests.get(f"{url}/api/v1/jobs/{job_id}", timeout=TIMEOUT).json()
    if job["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {job['state']}: {job['error']}")
    image = requests.get(url + job["images"][0], timeout=TIMEOUT)
    image.raise_for_status()
    return image.content


def run_phase(call, url: str, bodies: list[dict], threads: int, references: dict[int, np.ndarray]) -> dict:
    latencies: list[float] = []
    errors = mismatches = 0

    def one(body: dict) -> None:
        nonlocal errors, mismatches
        started = time.monotonic()
        try:
            image = pixels(call(url, body))
        except (requests.RequestException, RuntimeError, OSError) as error:
            errors += 1
            print(f"error: {error}", file=sys.stderr)
            return
        latencies.append(time.monotonic() - started)
        reference = references.setdefault(body["seed"], image)
        if not np.array_equal(reference, image):
            mismatches += 1

    started = time.monotonic()
    if threads == 1:
        for body in bodies:
            one(body)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, bodies))
    wall = time.monotonic() - started
    ordered = sorted(latencies)
    return {"requests": len(bodies), "threads": threads, "seconds": round(wall, 2),
            "per_second": round(len(latencies) / wall, 2) if wall else 0.0,
            "p50": round(statistics.median(ordered), 3) if ordered else None,
            "p95": round(ordered[max(0, int(0.95 * len(ordered)) - 1)], 3) if ordered else None,
            "errors": errors, "mismatches": mismatches}


def run(args: argparse.Namespace) -> dict:
    data = Path(tempfile.mkdtemp(prefix="job-throughput-"))
    try:
        ensure_default_model(data / "models" / "Stable-diffusion")
        total = args.sequential + args.threads * args.per_thread
        server = Server(data, ["--nowebui", "--max-queue", str(total + 10), "--max-queue-per-user", str(total + 10)])
        try:
            server.wait_ready()
            body = {"prompt": "a red circle on a blue background", "width": args.size, "height": args.size,
                    "steps": args.steps, "sampler_name": "DPM++ 2M"}
            requests.post(f"{server.url}/sdapi/v1/txt2img", json={**body, "seed": 0}, timeout=TIMEOUT)  # warm-up
            rss_before = server.rss()
            references: dict[int, np.ndarray] = {}
            sequential = [{**body, "seed": index % SEEDS} for index in range(args.sequential)]
            concurrent = [{**body, "seed": index % SEEDS} for index in range(args.threads * args.per_thread)]
            phases = {}
            for name, call in (("/sdapi/v1/txt2img", via_sdapi), ("/api/v1/jobs", via_jobs)):
                phases[f"{name}, sequential"] = run_phase(call, server.url, sequential, 1, references)
                phases[f"{name}, {args.threads} threads"] = run_phase(call, server.url, concurrent, args.threads,
                                                                    references)
                print(json.dumps(phases, indent=1), flush=True)
            rss_after = server.rss()
        finally:
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {"phases": phases, "rss_before_mb": round(rss_before / 2**20), "rss_after_mb": round(rss_after / 2**20),
            "size": args.size, "steps": args.steps, "seeds": SEEDS,
            "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} logical CPU(s)"}


def markdown(results: dict, note: str) -> str:
    lines = [SECTION_START, "## Scheduler throughput through both HTTP APIs (issue #15)", "",
             f"`python bench/job_throughput.py` on {results['machine']} (CPU, the embedded default model), "
             f"{results['when']}: txt2img {results['size']}x{results['size']}, {results['steps']} steps, DPM++ 2M, "
             f"seeds cycling over {results['seeds']}; every image compared pixel for pixel with the first image of "
             "its seed. The job API's latency includes following the job's events and downloading the image.", "",
             "| route | requests | threads | req/s | p50 s | p95 s | errors | images unlike their reference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, phase in results["phases"].items():
        lines.append(f"| {name.split(',')[0]} | {phase['requests']} | {phase['threads']} | {phase['per_second']} | "
                     f"{phase['p50']} | {phase['p95']} | {phase['errors']} | {phase['mismatches']} |")
    lines += ["", f"Server RSS {results['rss_before_mb']} MB before the phases, {results['rss_after_mb']} MB after."]
    if note:
        lines += ["", note]
    lines.append(SECTION_END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=25)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--note", default="", help="a sentence written under the table")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/BENCHMARKS.md")
    args = parser.parse_args()
    results = run(args)
    publish(results, markdown(results, args.note), args.write, SECTION_START, SECTION_END)
    failed = sum(phase["errors"] + phase["mismatches"] for phase in results["phases"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
