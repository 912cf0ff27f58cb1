"""Try preset variants for the toy model's training methods side by side; how the toy_* presets were chosen.

    python bench/training_preset_sweep.py variants.json --device cuda --parallel 8 --prompts 32 --out sweep.jsonl

`variants.json` maps a variant name to preset changes, with `"_method"` naming the method plan of
`sdstudio_eval.training_fidelity` (default "lora"), e.g. `{"lora-r8": {"rank": 8, "conv_rank": 8}}`. Each
variant trains and is scored exactly like a row of that report (same concept, prompts and seeds), each in
its own process and data folder; one JSON line per variant is appended to `--out` as it finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_variant(name: str, spec: dict, prompt_count: int, device: str, work_root: str) -> dict:
    from sdstudio_eval import training_fidelity as tf
    from sdstudio_eval.fidelity import concept_reference

    changes = dict(spec)
    plan = tf.method_plan(changes.pop("_method", "lora"))
    plan = tf.MethodPlan(plan.key, plan.label, plan.preset,
                         plan.changes + tuple(tf.PresetChange(k, v, "sweep") for k, v in changes.items()))
    setup = tf.ConceptSetup()
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
    dataset = folder / "dataset"
    tf.write_concept_dataset(dataset, setup)
    ctx = tf.build_data_context(folder, device)
    try:
        concept = tf.train_concept(ctx, plan, setup, dataset)
        row = tf.evaluate_concept(ctx, name, concept, tf.PromptSets.build(setup, prompt_count),
                                  concept_reference(setup.images()))
    finally:
        ctx.close()
    return {"name": name, "spec": spec, "steps": concept.steps, "train_s": round(concept.train_seconds, 1),
            "subject": row.subject.subject_fidelity, "prompt": row.subject.prompt_fidelity,
            "new_attributes": row.attributes.prompt_fidelity, "prior_preservation": row.prior_preservation,
            "class_prompts": row.classes.prompt_fidelity,
            "subject_per_attribute": dict(row.subject.per_attribute)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = json.loads(args.variants.read_text())
    work_root = tempfile.mkdtemp(prefix="preset-sweep-")
    started = time.perf_counter()
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_variant, name, spec, args.prompts, args.device, work_root): name
                   for name, spec in variants.items()}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception:  # one broken variant must not end the sweep
                result = {"name": futures[future], "error": traceback.format_exc(limit=3)}
            result["elapsed_s"] = round(time.perf_counter() - started)
            with args.out.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(result) + "\n")
            print(json.dumps({k: v for k, v in result.items() if k != "subject_per_attribute"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
