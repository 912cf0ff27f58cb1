"""Load and abuse benchmark for issue #14's limits: a real server on 127.0.0.1, bounded in count and time.

    python bench/security_load.py [--user NAME --password PW | --token TOKEN] [--write]

Starts `launch.py --api --skip-install --data-dir <tmp> --port <free>` on the embedded default model,
then runs, in order:

1. 200 sequential cheap requests (GET sd-models and POST png-info with a small PNG, alternating);
2. the same mix from 8 threads x 25 requests at once;
3. 6 parallel POST png-info with a 12000x12000 PNG (~420 KB, 432 MB once decoded);
4. 80 parallel tiny txt2img requests (64x64, 2 steps) while `progress` is polled every 50 ms.

It reports requests/s and p95 latency (phases 1-2), the slowest `progress` answer (phase 4), the
server's peak RSS and its RSS growth during phase 3 (psutil), how the 80 requests were answered, and
the count of 5xx answers; `--write` puts the figures into docs/BENCHMARKS.md (one section, replaced on
each run). Goals (issue #14): no 5xx, RSS growth under 300 MB with the oversized images, progress under
0.5 s under load. Everything stops by itself: every request has a timeout and the run a deadline.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server_harness import Server, publish  # noqa: E402
from tests.support.oversized_png import oversized_png_base64  # noqa: E402
from webui.models.default_model import ensure_default_model  # noqa: E402

DEADLINE_SECONDS = 900
REQUEST_TIMEOUT = 120
SECTION_START, SECTION_END = "<!-- security_load:start -->", "<!-- security_load:end -->"
DEVICE = "2-core CPU (this dev machine)"


class Client:
    """requests with the credentials given on the command line; records status and latency of every call."""

    def __init__(self, url: str, args: argparse.Namespace):
        self.url = url + "/sdapi/v1"
        self.session_args: dict = {"timeout": REQUEST_TIMEOUT}
        headers = dict(header.split(": ", 1) for header in args.header)
        if args.token:
            headers["Authorization"] = f"Bearer {args.token}"
        if args.user:
            self.session_args["auth"] = (args.user, args.password or "")
        self.session_args["headers"] = headers
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()

    def call(self, method: str, route: str, body: dict | None = None) -> tuple[int, float]:
        started = time.monotonic()
        try:
            status = requests.request(method, f"{self.url}/{route}", json=body, **self.session_args).status_code
        except requests.RequestException:
            status = 0  # no answer at all (timeout, reset): counted apart from HTTP statuses
        elapsed = time.monotonic() - started
        with self.lock:
            self.statuses[status] += 1
        return status, elapsed


def small_png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def cheap_request(client: Client, number: int, png: str) -> tuple[int, float]:
    if number % 2:
        return client.call("POST", "png-info", {"image": png})
    return client.call("GET", "sd-models")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else 0.0)


def run(args: argparse.Namespace) -> dict:
    started_run = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sdstudio-load-"))
    ensure_default_model(work / "models" / "Stable-diffusion")
    server = Server(work, args.server_arg)
    watchdog = threading.Timer(DEADLINE_SECONDS, server.stop)  # past the deadline every request fails fast
    watchdog.start()
    results: dict = {}
    try:
        server.wait_ready()
        client = Client(server.url, args)
        peak_rss = [server.rss()]
        sampling = threading.Event()

        def sample_rss() -> None:
            while not sampling.is_set():
                try:
                    peak_rss[0] = max(peak_rss[0], server.rss())
                except psutil.Error:
                    return
                time.sleep(0.01)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        client.call("POST", "txt2img", {"width": 64, "height": 64, "steps": 1})  # model loaded before timing
        png = small_png_base64()

        # 1. sequential
        begin = time.monotonic()
        sequential = [cheap_request(client, n, png) for n in range(200)]
        results["sequential"] = {"requests": 200, "seconds": time.monotonic() - begin}
        results["sequential"]["per_second"] = 200 / results["sequential"]["seconds"]
        results["sequential"]["p95_s"] = p95([t for _, t in sequential])

        # 2. concurrent: 8 threads x 25
        begin = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda n: cheap_request(client, n, png), range(200)))
        results["concurrent"] = {"requests": 200, "threads": 8, "seconds": time.monotonic() - begin}
        results["concurrent"]["per_second"] = 200 / results["concurrent"]["seconds"]
        results["concurrent"]["p95_s"] = p95([t for _, t in concurrent])

        # 3. six oversized images at once
        bomb = oversized_png_base64(12000, 12000)
        rss_before, phase_peak = server.rss(), [server.rss()]
        watching = threading.Event()

        def watch_phase() -> None:
            while not watching.is_set():
                phase_peak[0] = max(phase_peak[0], server.rss())
                time.sleep(0.01)

        watcher = threading.Thread(target=watch_phase, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(6) as pool:
            bombs = list(pool.map(lambda _: client.call("POST", "png-info", {"image": bomb}), range(6)))
        watching.set()
        watcher.join()
        results["oversized"] = {"png_kb": round(len(base64.b64decode(bomb)) / 1024),
                                "statuses": dict(Counter(status for status, _ in bombs)),
                                "rss_growth_mb": (phase_peak[0] - rss_before) / 2**20}

        # 4. 80 queued txt2img while progress is polled
        progress_times: list[float] = []
        polling = threading.Event()

        def poll() -> None:
            while not polling.is_set() and time.monotonic() - started_run < DEADLINE_SECONDS:
                _, elapsed = client.call("GET", "progress")
                progress_times.append(elapsed)
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        begin = time.monotonic()
        with ThreadPoolExecutor(80) as pool:
            queued = list(pool.map(lambda n: client.call("POST", "txt2img", {"width": 64, "height": 64, "steps": 2,
                                                                           "prompt": f"load {n}"}), range(80)))
        polling.set()
        poller.join()
        results["queued"] = {"requests": 80, "seconds": time.monotonic() - begin,
                             "statuses": dict(Counter(status for status, _ in queued)),
                             "progress_polls": len(progress_times),
                             "slowest_progress_s": max(progress_times) if progress_times else None}
        sampling.set()
        sampler.join()
        results["peak_rss_mb"] = peak_rss[0] / 2**20
        results["statuses"] = dict(client.statuses)
        results["server_errors"] = sum(count for status, count in client.statuses.items()
                                       if status >= 500 and status != 503)  # 503 = "queue full", by design
        results["no_answer"] = client.statuses.get(0, 0)
    finally:
        watchdog.cancel()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.monotonic() - started_run
    results["load_average_1min_at_end"] = os.getloadavg()[0]  # other work on the same cores skews latencies
    return results


def markdown(results: dict, note: str) -> str:
    sequential, concurrent, oversized, queued = (results[k] for k in ("sequential", "concurrent", "oversized", "queued"))
    slowest = queued["slowest_progress_s"]
    statuses_80 = ", ".join(f"{count} x {status}" for status, count in sorted(queued["statuses"].items()))
    statuses_big = ", ".join(f"{count} x {status}" for status, count in sorted(oversized["statuses"].items()))
    verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
    lines = [
        SECTION_START,
        "## Request limits under load (`bench/security_load.py`)",
        "",
        "`python bench/security_load.py --write`: a `launch.py --api` server on 127.0.0.1 with the embedded",
        "default model (no accounts: every request is the local admin, so all 80 generation requests are one",
        "user's); cheap requests are GET sd-models and POST png-info (64x64 PNG), alternating. Goals from",
        "issue #14: no 5xx, RSS growth under 300 MB with the oversized images, `progress` under 0.5 s under load.",
        "",
        f"### {datetime.date.today().isoformat()}, {DEVICE}, 1-minute load average {results['load_average_1min_at_end']:.1f} "
        f"at the end (other work shares the cores)",
        "",
        "| measure | result | goal |",
        "| --- | --- | --- |",
        f"| 200 sequential cheap requests | {sequential['per_second']:.0f} requests/s, p95 {sequential['p95_s'] * 1000:.0f} ms | |",
        f"| 8 threads x 25 cheap requests | {concurrent['per_second']:.0f} requests/s, p95 {concurrent['p95_s'] * 1000:.0f} ms | |",
        f"| 6 parallel 12000x12000 PNGs ({oversized['png_kb']} KB each) to png-info | {statuses_big}; "
        f"RSS growth {oversized['rss_growth_mb']:.0f} MB | < 300 MB: {verdict(oversized['rss_growth_mb'] < 300)} |",
        f"| 80 parallel txt2img (64x64, 2 steps), one user | {statuses_80} in {queued['seconds']:.1f} s | 429/503 when full |",
        f"| slowest `progress` during those ({queued['progress_polls']} polls) | "
        f"{slowest:.3f} s | < 0.5 s: {verdict(slowest is not None and slowest < 0.5)} |",
        f"| server peak RSS | {results['peak_rss_mb']:.0f} MB | |",
        f"| 5xx answers other than 503 \"queue full\" (of {sum(results['statuses'].values())} requests) | "
        f"{results['server_errors']}{'; ' + str(results['no_answer']) + ' without an answer' if results['no_answer'] else ''} | "
        f"none: {verdict(results['server_errors'] == 0 and not results['no_answer'])} |",
        "",
    ]
    if note:
        lines += [note, ""]
    lines.append(SECTION_END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", help="login for HTTP Basic auth, when the server requires one")
    parser.add_argument("--password", help="password for --user")
    parser.add_argument("--token", help="API token sent as `Authorization: Bearer`")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra header on every request (repeatable)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the server (repeatable)")
    parser.add_argument("--note", default="", help="a sentence written under the table (e.g. how the run differed)")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/BENCHMARKS.md")
    args = parser.parse_args()
    results = run(args)
    publish(results, markdown(results, args.note), args.write, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
