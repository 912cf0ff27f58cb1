"""Control fidelity of the toy canny ControlNet: does the generated object sit where the map puts it, with
the map's shape? (issue #20 item 5; the report is docs/FIDELITY.md's "Toy ControlNet" section.)

Design: the prompt contradicts the map. For each held-out scene (`toy_world.evaluation_scenes`, whose
combinations the ControlNet never trained on) the control map is the product's canny of its render, and the
prompt is the caption of the same scene with ANOTHER shape at ANOTHER position (same colour, background, size,
count, texture). So the prompt cannot give away where and what the map says: without the ControlNet the model
draws the prompt's shape at the prompt's position, and every image that shows the map's shape at the map's
position got them from the map. The prompt alone names the colour and background (edges carry none), so
"prompt colour kept" says the ControlNet steers geometry without overriding the words. An agreeing prompt
would measure nothing: the base model places and shapes objects from the prompt alone (95 % on its
evaluation prompts). A second design leaves the position words out of that prompt ("without position"): the
map is then the only source of the position and still contradicts the prompt's shape. A third uses the empty
prompt (how the ControlNet paper measures a map alone; half the training samples have it): the map is the only
source of position and shape, and without the ControlNet both are left to chance.

Generation goes through the product's path: a `build_context` app context, the shipped controlnet extension
and `GenerationService.submit_txt2img` with an `alwayson_scripts` ControlNet unit (module canny, pixel
perfect), as an API client's request runs. Each scene runs every condition with the same seed: no ControlNet,
weights 0 / 0.25 / 0.5 / 1 / 1.5, start-end windows 0-0.5 and 0.5-1 at weight 1, and "ControlNet is more
important" at weight 1, plus the "without position" and the empty prompt, each with no ControlNet and at weight 1. Scenes run in order until their count or the time budget is reached (each scene's
conditions all run, so rows are comparable). Writes JSON and a markdown table:

    python -m sdstudio_eval.controlnet_fidelity --device cuda --scenes 200 --out-dir /tmp/cn-eval
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sdstudio_eval import toy_world
from sdstudio_eval.analyzer import analyze
from sdstudio_eval.toy_world import Scene

SIZE = toy_world.NATIVE_SIZE
STEPS, CFG = 20, 7.0
SCENE_SEED = 11  # picks each scene's contradicting shape and position
MEASURES = ("map_position", "map_shape", "map_position_and_shape", "map_count", "prompt_color", "prompt_position",
            "prompt_shape")


CONFLICT, NO_POSITION, EMPTY = "conflict", "no position", "empty"   # the prompt designs (module docstring)


# The measures of what the prompt asked, with the prompt designs that ask it (the others show "-").
PROMPT_MEASURES = {"prompt_color": (CONFLICT, NO_POSITION), "prompt_position": (CONFLICT,),
                   "prompt_shape": (CONFLICT, NO_POSITION)}


@dataclass(frozen=True)
class Condition:
    """One way of generating: without a unit (weight None) or with one canny unit, and the prompt design."""

    label: str
    weight: float | None
    start: float = 0.0
    end: float = 1.0
    mode: str = "Balanced"
    design: str = CONFLICT


CONDITIONS = (
    Condition("no ControlNet", None),
    Condition("weight 0", 0.0),
    Condition("weight 0.25", 0.25),
    Condition("weight 0.5", 0.5),
    Condition("weight 1", 1.0),
    Condition("weight 1.5", 1.5),
    Condition("weight 1, steps 0-0.5", 1.0, 0.0, 0.5),
    Condition("weight 1, steps 0.5-1", 1.0, 0.5, 1.0),
    Condition("weight 1, ControlNet is more important", 1.0, mode="ControlNet is more important"),
    Condition("no ControlNet, prompt without position", None, design=NO_POSITION),
    Condition("weight 1, prompt without position", 1.0, design=NO_POSITION),
    Condition("no ControlNet, empty prompt", None, design=EMPTY),
    Condition("weight 1, empty prompt", 1.0, design=EMPTY),
)


@dataclass(frozen=True)
class Case:
    """A held-out scene for the map and the contradicting scene whose caption is the prompt."""

    index: int
    map_scene: Scene
    prompt_scene: Scene

    def prompt(self, design: str = CONFLICT) -> str:
        """The contradicting scene's caption; for NO_POSITION without its position phrase (the map alone
        then says where, the prompt still names another shape); for EMPTY nothing."""
        if design == EMPTY:
            return ""
        text = toy_world.caption(self.prompt_scene)
        if design == NO_POSITION:
            text = text.replace(" " + toy_world.POSITION_PHRASES[self.prompt_scene.position] + ",", ",")
        return text

    @property
    def seed(self) -> int:
        return 100 + self.index

    def control_png(self) -> str:
        """The map scene's render (base64 PNG): the unit's canny preprocessor turns it into the map."""
        buffer = io.BytesIO()
        toy_world.render(self.map_scene, size=SIZE, seed=5000 + self.index).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()


def cases(count: int) -> list[Case]:
    """`count` held-out scenes, each with a prompt scene of another shape at another position (seeded)."""
    rng = np.random.default_rng([SCENE_SEED, 0xC0A7])
    found = []
    for index, scene in enumerate(toy_world.evaluation_scenes(max(count, 1))[:count]):
        found.append(Case(index, scene, toy_world.contradicting_scene(scene, rng)))
    return found


def score(image: Image.Image, case: Case, design: str = CONFLICT) -> dict[str, bool | None]:
    """What the analyzer finds in one image, against the map's and the prompt's scene (None: the prompt design
    does not ask for it, PROMPT_MEASURES)."""
    analysis = analyze(image)
    found = {"map_position": analysis.position == case.map_scene.position,
             "map_shape": analysis.shape == case.map_scene.shape,
             "map_position_and_shape": analysis.position == case.map_scene.position and analysis.shape == case.map_scene.shape,
             "map_count": analysis.count == case.map_scene.count,
             "prompt_color": analysis.color == case.prompt_scene.color,
             "prompt_position": analysis.position == case.prompt_scene.position,
             "prompt_shape": analysis.shape == case.prompt_scene.shape}
    return {measure: None if not asked(measure, design) else ok for measure, ok in found.items()}


def asked(measure: str, design: str) -> bool:
    """Whether a measure applies to images made with the prompt design (the map's always do)."""
    return measure not in PROMPT_MEASURES or design in PROMPT_MEASURES[measure]


def build_app(data_dir: Path, controlnet: Path, device: str, workers: int = 1):
    """An app context on `data_dir` (the default model is installed into its empty checkpoint folder) with the
    ControlNet file in its ControlNet folder and the extensions started, as the server has them."""
    from webui.context import build_context
    from webui.extensions.host import announce_app_started
    from webui.settings import settings_from_args

    folder = data_dir / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(controlnet, folder / controlnet.name)
    context = build_context(settings_from_args(["--data-dir", str(data_dir), "--skip-install", "--device", device,
                                                "--workers", str(workers)]))
    announce_app_started(context.extensions, "http://127.0.0.1:0", context, data_dir / "extension-data")
    return context


def submit(context, case: Case, condition: Condition, model: str, control: str):
    """Queue one image through the product's txt2img path, with the condition's canny unit; the job."""
    from webui.extensions.scripts import ExtensionScripts
    from webui.generation.requests import Txt2ImgRequest

    request = Txt2ImgRequest(prompt=case.prompt(condition.design), width=SIZE, height=SIZE, steps=STEPS,
                             cfg_scale=CFG, seed=case.seed, save_images=False)
    if condition.weight is not None:
        unit = {"enabled": True, "image": control, "module": "canny", "model": model, "weight": condition.weight,
                "guidance_start": condition.start, "guidance_end": condition.end, "control_mode": condition.mode,
                "pixel_perfect": True}
        request = ExtensionScripts(context.extensions).with_alwayson(request, {"controlnet": [unit]})
    return context.generation.submit_txt2img(request)


SHEET_SCENES = 6   # scenes shown in the sample sheet


def sample_sheet(rows: list[list[Image.Image]]) -> Image.Image:
    """One row per scene: the control render, then each condition's image (in CONDITIONS' order)."""
    width = max(len(row) for row in rows)
    sheet = Image.new("RGB", (width * SIZE, len(rows) * SIZE), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            sheet.paste(image.convert("RGB").resize((SIZE, SIZE)), (x * SIZE, y * SIZE))
    return sheet


def run(context, model: str, count: int, deadline: float, conditions: Sequence[Condition] = CONDITIONS,
        log=print) -> dict:
    """Every condition on each scene in turn (a scene's jobs queued together, so several workers share them),
    until `count` scenes or the deadline; counts, each condition's job seconds, the overall images/s, and the
    first scenes' images ("sheet": render, then one image per condition) for a person to look at."""
    tallies = {c.label: {measure: 0 for measure in MEASURES} for c in conditions}
    seconds = {c.label: 0.0 for c in conditions}
    identical_at_zero = 0
    done = 0
    sheet: list[list[Image.Image]] = []
    all_cases = cases(count)
    if all_cases:  # untimed: the first calls load the checkpoint and build the ControlNet
        submit(context, all_cases[0], Condition("warm-up", 1.0), model, all_cases[0].control_png()).result(timeout=600)
    began = time.perf_counter()
    for case in all_cases:
        if time.perf_counter() > deadline:
            log(f"time budget reached after {done} scenes")
            break
        control = case.control_png()
        jobs = {condition.label: submit(context, case, condition, model, control) for condition in conditions}
        images = {}
        for condition in conditions:
            job = jobs[condition.label]
            images[condition.label] = job.result(timeout=600).images[0]
            seconds[condition.label] += (job.finished_at or 0.0) - (job.started_at or 0.0)
            for measure, ok in score(images[condition.label], case, condition.design).items():
                tallies[condition.label][measure] += bool(ok)
        if len(sheet) < SHEET_SCENES:
            sheet.append([Image.open(io.BytesIO(base64.b64decode(control))), *images.values()])
        if "no ControlNet" in images and "weight 0" in images:
            identical_at_zero += np.array_equal(np.asarray(images["no ControlNet"]), np.asarray(images["weight 0"]))
        done += 1
        if done % 10 == 0:
            log(f"{done} scenes: weight 1 map position+shape {tallies.get('weight 1', {}).get('map_position_and_shape')}")
    wall = time.perf_counter() - began
    rows = [{"condition": c.label, "prompt_design": c.design, "weight": c.weight, "start": c.start, "end": c.end,
             "control_mode": c.mode, "images": done,
             "counts": {m: tallies[c.label][m] if asked(m, c.design) else None for m in MEASURES},
             "seconds_per_image": seconds[c.label] / done if done else None} for c in conditions]
    return {"scenes": done, "weight_0_bitwise_equal_to_no_controlnet": identical_at_zero, "rows": rows,
            "images_per_second": done * len(conditions) / wall if done else None, "sheet": sheet}


def markdown(report: dict) -> str:
    """The table docs/FIDELITY.md shows."""
    workers = report["settings"]["workers"]
    speed = report["images_per_second"]
    lines = [f"Toy ControlNet `{report['model']}` ({report['file_sha256'][:12]}), {report['scenes']} held-out scenes, "
             f"{STEPS} steps DPM++ 2M, CFG {CFG:g}, {SIZE}x{SIZE}, on {report['device']} ({workers} worker"
             f"{'s' if workers > 1 else ''}: {speed:.2f} images/s overall). " if speed else "no scene ran. ",
             f"Prompts contradict the map (another shape at another position; \"without position\": another shape, no "
             f"position words; \"empty prompt\": the map alone). Weight 0 gave the no-ControlNet image bitwise on "
             f"{report['weight_0_bitwise_equal_to_no_controlnet']} of {report['scenes']} scenes.", "",
             "| condition | map position | map shape | map position + shape | map count | prompt colour kept | "
             "prompt position | prompt shape | s/image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        n = row["images"]
        cells = [f"{100 * row['counts'][m] / n:.0f} % ({row['counts'][m]}/{n})" if n and row["counts"][m] is not None
                 else "-" for m in MEASURES]
        timing = f"{row['seconds_per_image']:.2f}" if row["seconds_per_image"] else "-"
        lines.append(f"| {row['condition']} | {' | '.join(cells)} | {timing} |")
    return "\n".join([lines[0] + lines[1], *lines[2:]]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from webui.settings import PROJECT_ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controlnet", type=Path,
                        default=PROJECT_ROOT / "models" / "default" / "controlnet" / "control_sdstudio_toy_canny.safetensors")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes (at most 200)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-budget-minutes", type=float, default=math.inf,
                        help="stop starting new scenes after this long (the report says how many ran)")
    parser.add_argument("--workers", type=int, default=1,
                        help="app workers on the device (--workers): a scene's jobs run side by side")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args(list(argv) if argv is not None else None)
    started = time.perf_counter()
    if not 1 <= args.scenes <= len(toy_world.evaluation_scenes()):
        parser.error(f"--scenes must be 1 to {len(toy_world.evaluation_scenes())}: the scenes the ControlNet never trained on")
    if not args.controlnet.is_file():
        parser.error(f"no ControlNet file at {args.controlnet}")
    log = lambda message: print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="cn-fidelity-") as temporary:
        context = build_app(Path(temporary), args.controlnet, args.device, args.workers)
        try:
            result = run(context, args.controlnet.stem, args.scenes, started + 60 * args.time_budget_minutes, log=log)
        finally:
            context.close()
    sheet = result.pop("sheet")
    report = {"model": args.controlnet.stem, "file_sha256": hashlib.sha256(args.controlnet.read_bytes()).hexdigest(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "design": "prompt contradicts the map: same colour/background/size/count/texture, another shape at "
                        "another position (\"without position\" rows: another shape, no position words); map = "
                        "the product's canny (pixel perfect) of the held-out scene's render",
              "settings": {"steps": STEPS, "sampler": "DPM++ 2M", "cfg_scale": CFG, "size": SIZE,
                           "scenes_asked": args.scenes, "time_budget_minutes": args.time_budget_minutes,
                           "workers": args.workers},
              **result, "seconds": time.perf_counter() - started}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "controlnet_fidelity.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (args.out_dir / "controlnet_fidelity.md").write_text(markdown(report), encoding="utf-8")
    if sheet:
        sample_sheet(sheet).save(args.out_dir / "controlnet_fidelity_samples.png")
    log(f"wrote {args.out_dir / 'controlnet_fidelity.json'}\n{markdown(report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
