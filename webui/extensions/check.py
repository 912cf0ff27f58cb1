"""`python -m webui.extensions.check PATH [PATH ...]`: the test kit's check of an extension folder.

It starts the real app (on a temporary data folder with the default model, UI and API on) with the
extensions, so they go through the real discovery path, manifest and API-version checks, import and
`setup`, the UI build, route mounting and the app-started hooks. Then it calls every GET route the
extension serves that needs no parameters, and runs one txt2img through the scheduler, so that every
generation hook it registered runs once, and one img2img from that image (for the VAE-encode and
img2img paths). It reports per extension what happened and every problem
(refused manifest, API range, import or setup error, a hook that raised or returned the wrong type,
a route answering 5xx) with its traceback, and warns about slow imports and slow hooks. Exit code 0
when no extension has a problem, 1 when one has, 2 when the check itself could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from webui.extensions.harness import AppDidNotStart, extension_server, is_builtin

SLOW_IMPORT_S = 1.0
TXT2IMG = {"prompt": "a red circle on a blue background", "steps": 2, "width": 64, "height": 64, "seed": 1,
           "batch_size": 1}
HTTP_TIMEOUT_S = 600


@dataclass
class Finding:
    level: str       # "ok", "note", "warning", "PROBLEM"
    text: str
    details: str = ""


@dataclass
class ExtensionReport:
    folder: Path
    name: str = ""
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, text: str, details: str = "") -> None:
        self.findings.append(Finding(level, text, details))

    @property
    def problems(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.level == "PROBLEM"]


class Client:
    """Minimal JSON over HTTP (urllib: the check needs nothing beyond the app's own dependencies)."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")


def check(folders: Sequence[Path], out=sys.stdout) -> int:
    """Run the check on `folders`; prints the report to `out` and returns the exit code."""
    reports = [ExtensionReport(folder.resolve()) for folder in folders]
    try:
        with extension_server(*folders, args=("--api",)) as app:
            client = Client(app.url)
            records = _records_by_folder(client, app.data_dir)
            for report in reports:
                _check_start(report, records.get(report.folder))
            runs = _check_routes_and_generation(client, reports, records)
            after = _records_by_folder(client, app.data_dir)
            for report in reports:
                _check_after(report, after.get(report.folder), runs)
    except (AppDidNotStart, FileNotFoundError) as error:
        print(f"the check could not run: {error}", file=out)
        return 2
    problems = 0
    for report in reports:
        print(f"== {report.name or report.folder.name} ({report.folder})", file=out)
        for finding in report.findings:
            print(f"  {finding.level:8} {finding.text}", file=out)
            if finding.details:
                print("           " + finding.details.rstrip().replace("\n", "\n           "), file=out)
        problems += len(report.problems)
    print(f"{len(reports)} extension(s) checked: {problems} problem(s)", file=out)
    return 1 if problems else 0


def _records_by_folder(client: Client, data_dir: Path) -> dict[Path, dict]:
    status, body = client.call("GET", "/api/v1/extensions")
    if status != 200:
        raise AppDidNotStart(f"GET /api/v1/extensions answered {status}: {body}")
    return {Path(row["folder"]).resolve(): row for row in body["extensions"]}


def _check_start(report: ExtensionReport, record: dict | None) -> None:
    if record is None:
        report.add("PROBLEM", "the app did not find this folder (a folder name starting with '.' or '_' is skipped)")
        return
    report.name = record["name"]
    if record["state"] == "refused":
        report.add("PROBLEM", f"refused: {record['problem']}")
        return
    report.add("ok", f"manifest: {record['name']} {record['version']}"
                     + (" (shipped in extensions-builtin)" if is_builtin(report.folder) else ""))
    if record["state"] == "failed":
        report.add("PROBLEM", f"failed at start: {record['problem']}", record["traceback"])
        return
    if record["problem"]:
        report.add("warning", record["problem"])
    seconds = record["import_seconds"]
    level = "warning" if seconds > SLOW_IMPORT_S else "ok"
    report.add(level, f"imported and set up in {seconds * 1000:.0f} ms"
                      + (" (slow: keep heavy work out of import and setup)" if level == "warning" else ""))
    report.add("ok", "registered: " + (", ".join(record["hooks"]) or "nothing"))


def _check_routes_and_generation(client: Client, reports: list[ExtensionReport],
                                 records: dict[Path, dict]) -> list[tuple[str, int, Any]]:
    status, schema = client.call("GET", "/openapi.json")
    paths = schema.get("paths", {}) if status == 200 and isinstance(schema, dict) else {}
    for report in reports:
        record = records.get(report.folder)
        if not record or record["state"] not in ("loaded", "failed"):  # a failed one's routes still answer
            continue
        for prefix in record.get("routes", []):
            for path, operations in sorted(paths.items()):
                if not (path == prefix or path.startswith(prefix + "/")):
                    continue
                for method in sorted(operations):
                    if method == "get" and "{" not in path:
                        answer, body = client.call("GET", path)
                        level = "PROBLEM" if answer >= 500 else ("ok" if answer < 400 else "note")
                        report.add(level, f"route GET {path} answered {answer}",
                                   "" if answer < 400 else str(body)[:2000])
                    else:
                        report.add("note", f"route {method.upper()} {path} not called (it needs parameters or a body)")
    runs = [("txt2img", *client.call("POST", "/sdapi/v1/txt2img", TXT2IMG))]
    _, status, body = runs[0]
    if status == 200 and isinstance(body, dict) and body.get("images"):
        img2img = {**TXT2IMG, "init_images": [body["images"][0]], "denoising_strength": 0.5}
        runs.append(("img2img", *client.call("POST", "/sdapi/v1/img2img", img2img)))
    return runs


def _check_after(report: ExtensionReport, record: dict | None, runs: list[tuple[str, int, Any]]) -> None:
    if not record or record["state"] in ("refused",) or any(f.text.startswith("failed at start") for f in report.problems):
        return
    for label, status, body in runs:
        if status == 200 and isinstance(body, dict):
            try:
                warnings = json.loads(body.get("info") or "{}").get("warnings", [])
            except (ValueError, AttributeError):
                warnings = []
            mine = [text for text in warnings if f"'{record['name']}'" in text]
            report.add("PROBLEM" if mine else "ok", f"{label} with the extension loaded: "
                       f"{len(body.get('images', []))} image(s)" + (f"; warnings: {'; '.join(mine)}" if mine else ""))
        else:
            detail = body.get("detail") if isinstance(body, dict) else body
            report.add("PROBLEM", f"{label} with the extension loaded answered {status}: {detail}")
    if record["state"] == "failed":
        report.add("PROBLEM", f"switched off while running: {record['problem']}", record["traceback"])
    for slow in record["slow_hooks"]:
        report.add("warning", f"slow hook: {slow}")
    ran = set(record["hook_calls"])
    idle = [hook for hook in record["hooks"] if hook not in ran]
    if ran:
        report.add("ok", "hooks that ran: " + ", ".join(f"{hook} ({calls}x)" for hook, calls in
                                                       sorted(record["hook_calls"].items())))
    if idle:
        report.add("note", "hooks the check did not trigger (they need a user action, a script chosen or a "
                           "prompt syntax): " + ", ".join(idle))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.extensions.check",
                                     description="Start SD Studio with extension folders and report their problems.")
    parser.add_argument("paths", nargs="+", type=Path, help="extension folders (each holding extension.toml)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.paths if not path.is_dir()]
    if missing:
        print(f"not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    return check(args.paths)


if __name__ == "__main__":
    raise SystemExit(main())
