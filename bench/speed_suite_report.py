"""The speed suite's JSON as the Markdown tables of docs/BENCHMARKS.md (a heading with device, date and
versions, then one table per section). Missing sections and failed measurements show as "-" or their error."""

from __future__ import annotations

NAMES = {"sd1": "SD1.5", "sdxl": "SDXL", "toy": "sd-studio-toy (smoke)"}


def _s(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3f} s" if value >= 0.1 else f"{value * 1000:.1f} ms"


def _n(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 1024:.1f} GiB"


def _ratio(studio, plain) -> str:
    return "-" if not studio or not plain else f"{studio / plain:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"] + [
        "| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown_report(results: dict) -> str:
    env = results["environment"]
    lines = [f"### {env['date']}, {env['device']}, torch {env['torch']}, diffusers {env['diffusers']}, "
             f"transformers {env['transformers']}" + (" (SMOKE: code paths only, not results)" if env["smoke"] else ""), ""]
    families = results["families"]
    lines += _txt2img(families) + _first_image(families) + _switch(families) + _lora(families) + _training(families)
    return "\n".join(lines)


def _txt2img(families: dict) -> list[str]:
    rows, best_rows = [], []
    for family, result in families.items():
        if "txt2img" not in result:
            continue
        plain, studio = result["txt2img"].get("plain", {}), result["txt2img"].get("studio", {})
        p1, s1 = plain.get("batch1") or {}, studio.get("batch1") or {}
        rows.append([NAMES[family], f"{result['size']}x{result['size']}, {result['steps']}",
                     _n(p1.get("s_per_image"), 3), _n(s1.get("s_per_image"), 3),
                     _ratio(s1.get("s_per_image"), p1.get("s_per_image")), _n(p1.get("it_per_s"), 1),
                     _n(s1.get("it_per_s"), 1), _mib(p1.get("peak_gpu_mib")), _mib(s1.get("peak_gpu_mib"))])
        pb, sb = (plain.get("sweep") or {}).get("best") or {}, (studio.get("sweep") or {}).get("best") or {}
        tried = ", ".join(str(row["batch"]) + (" OOM" if "error" in row else "")
                          for row in (studio.get("sweep") or {}).get("rows", []))
        best_rows.append([NAMES[family], f"{pb.get('batch', '-')}: {_n(pb.get('images_per_s'))}",
                          f"{sb.get('batch', '-')}: {_n(sb.get('images_per_s'))}",
                          _ratio(pb.get("images_per_s"), sb.get("images_per_s")),
                          _mib(pb.get("peak_gpu_mib")), _mib(sb.get("peak_gpu_mib")), tried])
    if not rows:
        return []
    return (["txt2img, batch 1 (DPM++ 2M Karras, CFG 7; it/s = steps / s per image, end to end; ratio = SD Studio "
             "time / plain time):", ""]
            + _table(["model", "size, steps", "plain diffusers s/image", "SD Studio s/image", "ratio", "plain it/s",
                      "SD Studio it/s", "plain peak GPU", "SD Studio peak GPU"], rows)
            + ["Best batch (images/s; ratio = SD Studio time / plain time per image):", ""]
            + _table(["model", "plain best batch: images/s", "SD Studio best batch: images/s", "ratio",
                      "plain peak GPU", "SD Studio peak GPU", "SD Studio batches tried"], best_rows))


def _first_image(families: dict) -> list[str]:
    rows = []
    for family, result in families.items():
        runs = result.get("first_image")
        if not runs:
            continue
        rows.append([NAMES[family], _first_cell(runs["studio"]["start"]), _first_cell(runs["studio"]["restart"]),
                     _first_cell(runs["plain"]["start"]), _first_cell(runs["plain"]["restart"]),
                     _mib(runs["studio"]["start"].get("peak_gpu_mib"))])
    if not rows:
        return []
    return (["Time to first image of a fresh process (spawn to image done; plain diffusers: `from_pretrained` of a "
             "diffusers folder); the restart reuses the data folder:", ""]
            + _table(["model", "SD Studio start", "SD Studio restart", "plain start", "plain restart",
                      "SD Studio peak GPU"], rows))


def _first_cell(run: dict) -> str:
    return "failed (see the JSON)" if "error" in run else _s(run.get("first_image_s"))


def _switch(families: dict) -> list[str]:
    rows = []
    for family, result in families.items():
        switch = result.get("switch")
        if not switch:
            continue
        resident = switch["gpu_resident_s"]
        rows.append([NAMES[family], "not supported" if isinstance(resident, str) and resident.startswith("not") else _s(resident),
                     _s(switch["pinned_ram_s"]), _s(switch["page_cache_s"]), _s(switch["cold_disk_s"]),
                     switch["cold_disk_method"], _mib(switch["peak_gpu_mib"])])
    if not rows:
        return []
    return (["Checkpoint switch through the queue (`select_checkpoint`; pinned RAM: median of a <-> b; cold: the "
             "file dropped from the page cache first, hashing included):", ""]
            + _table(["model", "GPU-resident", "pinned RAM", "page cache", "cold disk", "how cold", "peak GPU"], rows))


def _lora(families: dict) -> list[str]:
    rows = []
    for family, result in families.items():
        lora = result.get("lora")
        if not lora or "studio" not in lora:
            continue
        studio, plain = lora["studio"], lora.get("plain", {})
        plain_cost = (plain["error"][:60] if "error" in plain
                      else f"{_pct(plain.get('cost_percent_1'))} / {_pct(plain.get('cost_percent_3'))}")
        rows.append([NAMES[family], str(result.get("lora_modules", "-")), _s(studio["first_load_s"]),
                     _s(studio["apply_cached_s"]), _s(studio["reweight_s"]), _s(studio["remove_s"]),
                     "yes" if studio["removal_exact"] else "NO",
                     f"{_pct(studio['cost_percent_1'])} / {_pct(studio['cost_percent_3'])}", plain_cost,
                     _mib(studio["peak_gpu_mib"])])
    if not rows:
        return []
    return (["LoRA (random rank-32 kohya files; times of `ModelManager.checkout`; cost = s/image with 1 / 3 LoRAs "
             "active vs none; plain diffusers: PEFT adapters):", ""]
            + _table(["model", "modules", "first load", "apply (cached)", "re-weight", "remove", "removal exact",
                      "SD Studio cost 1 / 3", "plain cost 1 / 3", "peak GPU"], rows))


def _training(families: dict) -> list[str]:
    rows = []
    for family, result in families.items():
        training = result.get("training")
        if not training:
            continue
        cell = lambda row: "-" if not row else f"{row['images_per_s']:.2f} ({_mib(row['peak_gpu_mib'])})"  # noqa: E731
        best = training["best"] or {}
        rows.append([NAMES[family], f"{training['preset']}, {training['resolution']}", cell(training["batch1"]),
                     cell(training["batch4"]), f"{best.get('batch', '-')}: {cell(training['best'])}"])
    if not rows:
        return []
    return (["LoRA training images/s (the shipped preset through `run_training`; peak GPU memory in brackets):", ""]
            + _table(["model", "preset, resolution", "batch 1", "batch 4", "best batch"], rows))
