"""Score candidate default models before one replaces the shipped model, and say which prompts fail.

    python -m sdstudio_eval.candidate_check --model DIR [--model DIR2 ...] [--device cuda] [--json OUT]

Each DIR is a diffusers folder (a fine-tune's output, or ``models/default/sd-studio-toy``). It is drawn
through SD Studio's own engine (AppContext -> scheduler -> txt2img at default settings), exactly as
``fidelity_report`` draws the shipped model, on the prompt-styles rows (``prompt_sets``) and the full caption
grammar on ``--prompts`` evaluation captions, with the report's seeds. Every failing prompt is listed with
the attributes that came out wrong, so a fine-tune can be steered by what fails (issue 23), and a GPU
machine can compare candidates within the call that trained them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sdstudio_eval import prompt_sets
from sdstudio_eval.analyzer import analyze
from sdstudio_eval.fidelity_report import PROMPT_STYLE_SEED, generate

# The fidelity report's seed for the full-grammar evaluation prompts (section 2).
FULL_GRAMMAR_SEED = 1000
Row = tuple[str, Sequence[prompt_sets.Prompt], int]  # key, prompts, first seed


def score_rows(ctx, rows: Sequence[Row]) -> dict[str, dict]:
    """Per row: prompts, correct count, per-attribute accuracy and the failing prompts with what came out."""
    results = {}
    for key, prompts, seed in rows:
        images = generate(ctx, [p.text for p in prompts], seed, [p.negative for p in prompts])
        failures, right = [], {}
        for prompt, image in zip(prompts, images):
            analysis = analyze(image)
            wrong = {name: [value, getattr(analysis, name)] for name, value in prompt.named.items()
                     if getattr(analysis, name) != value}
            for name in prompt.named:
                right.setdefault(name, []).append(name not in wrong)
            if wrong:
                failures.append({"prompt": prompt.text, "negative": prompt.negative, "wrong": wrong})
        results[key] = {"prompts": len(prompts), "correct": len(prompts) - len(failures),
                        "per_attribute": {name: sum(oks) / len(oks) for name, oks in right.items()},
                        "failures": failures}
        print(f"  {key}: {len(prompts) - len(failures)}/{len(prompts)}", flush=True)
    return results


def standard_rows(style_prompts: int, prompts: int) -> list[Row]:
    """The prompt-styles rows with the fidelity report's seeds, then the full grammar on ``prompts`` captions."""
    rows: list[Row] = [(row.key, row.prompts, PROMPT_STYLE_SEED) for row in prompt_sets.prompt_rows(style_prompts)]
    if prompts:
        rows.append((f"full_grammar_{prompts}", tuple(prompt_sets.full_grammar_prompts(prompts)), FULL_GRAMMAR_SEED))
    return rows


def check_model(model: Path, device: str, rows: Sequence[Row]) -> dict[str, dict]:
    """Score one model folder (copied into a fresh checkpoint folder, so the app loads it as its default)."""
    from webui.context import build_context
    from webui.models.default_model import DEFAULT_MODEL_NAME
    from webui.settings import settings_from_args

    with tempfile.TemporaryDirectory() as data_dir:
        checkpoints = Path(data_dir) / "checkpoints"
        shutil.copytree(model, checkpoints / DEFAULT_MODEL_NAME)
        ctx = build_context(settings_from_args(["--data-dir", data_dir, "--ckpt-dir", str(checkpoints),
                                                "--device", device]))
        try:
            return score_rows(ctx, rows)
        finally:
            ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True, help="a diffusers model folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--style-prompts", type=int, default=48, help="prompts per prompt-styles row")
    parser.add_argument("--prompts", type=int, default=200, help="full-grammar evaluation prompts (0: none)")
    parser.add_argument("--json", type=Path, help="write every result, failing prompts included, here")
    args = parser.parse_args(argv)
    for model in args.model:
        if not (model / "model_index.json").is_file():
            parser.error(f"{model} is not a diffusers model folder (it has no model_index.json)")
    everything = {}
    for model in args.model:
        print(f"{model}:", flush=True)
        everything[str(model)] = check_model(model, args.device, standard_rows(args.style_prompts, args.prompts))
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    keys = list(next(iter(everything.values())))
    print("| row | " + " | ".join(Path(m).name for m in everything) + " |")
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r[key]['correct']}/{r[key]['prompts']}" for r in everything.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
