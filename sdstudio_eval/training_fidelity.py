"""What each training method learns: a DreamBooth-paper-style table on the toy world.

    python -m sdstudio_eval.training_fidelity                       # every method, writes docs/FIDELITY_TRAINING.md
    python -m sdstudio_eval.training_fidelity --methods lora --prompts 16 --out /tmp/lora.md

Every method (LoRA, DreamBooth with and without prior preservation, DreamBooth-LoRA, textual inversion,
pivotal tuning) learns the held-out concept `hexagon` from ten renders whose captions name every other
attribute and use the trigger word in place of the shape ("a large red hxgn on the left, blue
background"), so the trigger can only bind to the shape. Training runs through the app's own job
(`AppContext.submit_training`, the Train tab's path) with the method's default preset for the embedded
model (`presets/toy_*.json`: 128 px, full precision, values from docs/TRAINING_PRESET_SWEEP.md), changed
only as the report lists (no intermediate saves). The results are then used the way a user uses them,
through `AppContext.submit_txt2img`: `<lora:name:1>` tags, the embedding's word, or the trained checkpoint.
Three prompt sets are generated:

(a) the trigger in fresh contexts (colour, background, position combinations absent from the training
    captions): subject fidelity, and prompt fidelity for those attributes;
(b) the trigger with attributes the ten photos never varied (two or three objects, small, striped):
    prompt fidelity when the concept must combine with new attributes;
(c) ordinary toy-world captions without the trigger: prior preservation (the share that did not turn into
    the concept) and those captions' own prompt fidelity (the base skills survive training).

Each method trains in its own data folder, so a textual-inversion embedding named like the trigger can
never leak into another method's prompts. Metric definitions: docs/TOY_WORLD.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sdstudio_eval import toy_world
from sdstudio_eval.analyzer import Analysis, analyze
from sdstudio_eval.fidelity_report import TRAINING_SECTION_TITLE, with_training_section
from sdstudio_eval.fidelity import (
    ConceptReference,
    attribute_accuracy,
    concept_reference,
    subject_fidelity,
)
from sdstudio_eval.toy_world import Scene

if TYPE_CHECKING:
    from webui.context import AppContext
    from webui.training.config import TrainingConfig

BASE_CHECKPOINT = "sd-studio-toy"
GOAL = 0.8
DEFAULT_PROMPT_COUNT = 32
SUBJECT_PROMPT_SEED = 101
ATTRIBUTE_PROMPT_SEED = 202
CLASS_PROMPT_SEED = 303
# First txt2img seed of each prompt set (one image per prompt, seeds counting up).
SUBJECT_IMAGE_SEED = 5000
ATTRIBUTE_IMAGE_SEED = 6000
CLASS_IMAGE_SEED = 7000
# The attributes every concept photo shares (one large solid object), varied one at a time in set (b).
NEW_ATTRIBUTE_VARIATIONS: tuple[tuple[str, object], ...] = (
    ("count", 2), ("count", 3), ("size", "small"), ("texture", "striped"),
)


@dataclass(frozen=True)
class ConceptSetup:
    """The concept to learn and how its training photos are captioned."""

    shape: str = "hexagon"
    trigger: str = "hxgn"          # a word the toy model never saw; it replaces the shape noun in captions
    class_word: str = "shape"      # DreamBooth class prompt "a shape" and the embeddings' init word
    image_count: int = 10
    seed: int = 0

    def scenes(self) -> list[Scene]:
        return toy_world.concept_scenes(self.shape, self.image_count, self.seed)

    def images(self) -> list[Image.Image]:
        return toy_world.held_out_concept_images(self.shape, self.image_count, self.seed)

    def caption(self, scene: Scene) -> str:
        """The toy-world caption with the trigger in place of the shape noun.

        Every other attribute stays named, so the only thing left for the trigger to mean is the shape.
        The trigger is never inflected ("two large red hxgn ..."): "hxgns" would be other tokens, and an
        embedding is only found by its exact word.
        """
        noun = scene.shape if scene.count == 1 else toy_world.PLURAL_SHAPES[scene.shape]
        return toy_world.caption(scene).replace(noun, self.trigger, 1)


@dataclass(frozen=True)
class PresetChange:
    """One value changed from a shipped preset, with the reason the report prints."""

    setting: str
    value: object
    reason: str


@dataclass(frozen=True)
class MethodPlan:
    """A row of the table: which preset trains it and what was changed for the toy model / CPU."""

    key: str
    label: str
    preset: str
    changes: tuple[PresetChange, ...] = ()


# Changes every method gets: the experiment evaluates only the final result. The toy_* presets are the
# Train tab's defaults for the embedded model (128 px, values from docs/TRAINING_PRESET_SWEEP.md).
COMMON_CHANGES: tuple[PresetChange, ...] = (
    PresetChange("save_every_n_epochs", 0, "only the final result is evaluated"),
    PresetChange("save_state", False, "no resuming in an experiment"),
)
PRIOR_OFF = PresetChange("with_prior_preservation", False, "the variant without prior preservation")
METHOD_PLANS: tuple[MethodPlan, ...] = (
    MethodPlan("lora", "LoRA", "toy_lora"),
    MethodPlan("dreambooth", "DreamBooth, prior preservation", "toy_dreambooth"),
    MethodPlan("dreambooth_no_prior", "DreamBooth, no prior preservation", "toy_dreambooth", (PRIOR_OFF,)),
    MethodPlan("dreambooth_lora", "DreamBooth-LoRA (prior preservation)", "toy_dreambooth_lora"),
    MethodPlan("textual_inversion", "Textual inversion", "toy_textual_inversion"),
    MethodPlan("pivotal", "Pivotal tuning (embedding + LoRA)", "toy_pivotal"),
)
METHOD_KEYS = tuple(plan.key for plan in METHOD_PLANS)


def method_plan(key: str) -> MethodPlan:
    """The plan for a CLI method name; unknown names raise with the valid ones."""
    for plan in METHOD_PLANS:
        if plan.key == key:
            return plan
    raise ValueError(f"unknown method {key!r}; choose from {', '.join(METHOD_KEYS)}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def write_concept_dataset(folder: Path, setup: ConceptSetup) -> list[Path]:
    """The training photos with kohya/A1111 `.txt` caption sidecars; returns the image paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (scene, image) in enumerate(zip(setup.scenes(), setup.images())):
        path = folder / f"{setup.shape}_{index:02d}.png"
        image.save(path, format="PNG")
        path.with_suffix(".txt").write_text(setup.caption(scene) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def output_name(plan: MethodPlan, setup: ConceptSetup) -> str:
    """File name of the result. Pivotal's must be the trigger: the app finds an embedding by file name."""
    return setup.trigger if plan.preset == "toy_pivotal" else f"{setup.trigger}-{plan.key.replace('_', '-')}"


def training_config(plan: MethodPlan, setup: ConceptSetup, dataset_dir: Path) -> TrainingConfig:
    """The plan's preset with the job's fields, the common changes and the plan's own changes."""
    from webui.training.config import load_preset

    config = load_preset(plan.preset)
    job = dict(output_name=output_name(plan, setup), base_checkpoint=BASE_CHECKPOINT, dataset_dir=str(dataset_dir),
               trigger_word=setup.trigger, class_word=setup.class_word)
    if config.uses_embedding:
        job.update(token=setup.trigger, init_word=setup.class_word)
    changes = {change.setting: change.value for change in COMMON_CHANGES + plan.changes}
    return config.replace(**job, **changes).validate()


@dataclass(frozen=True)
class TrainedConcept:
    """How to call up what a run learned in a txt2img prompt, and what the run cost."""

    plan: MethodPlan | None          # None: the untrained base model
    lora_name: str | None = None     # `<lora:name:1>` appended to every prompt
    checkpoint: str | None = None    # generate with this checkpoint instead of the base
    steps: int = 0
    train_seconds: float = 0.0
    image_count: int = 0
    warnings: tuple[str, ...] = ()

    def prompt(self, text: str) -> str:
        return f"{text} <lora:{self.lora_name}:1>" if self.lora_name else text


def train_concept(ctx: AppContext, plan: MethodPlan, setup: ConceptSetup, dataset_dir: Path) -> TrainedConcept:
    """Train through the app's training job (as the Train tab does) and time it on this machine."""
    config = training_config(plan, setup, dataset_dir)
    started = time.perf_counter()
    result = ctx.training.submit(config).result()
    seconds = time.perf_counter() - started
    if result.cancelled:
        raise RuntimeError(f"{plan.label}: training was cancelled")
    return TrainedConcept(
        plan=plan,
        lora_name=config.output_name if config.uses_lora else None,
        checkpoint=config.output_name if config.method == "dreambooth" else None,
        steps=result.steps_done, train_seconds=seconds, image_count=result.summary.image_count,
        warnings=tuple(result.warnings),
    )


# --------------------------------------------------------------------------------------------
# Evaluation prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationPrompt:
    """A prompt (with the trigger where it belongs) and the attributes it names, for prompt fidelity."""

    text: str
    expected: Mapping[str, object]


def _named_attributes(scene: Scene) -> dict[str, object]:
    """What a caption names besides the shape: a solid texture is implied by leaving the word out."""
    named = {key: value for key, value in scene.attributes().items() if key != "shape"}
    if scene.texture == "solid":
        del named["texture"]
    return named


def _context(scene: Scene) -> tuple[str, str, str]:
    return scene.color, scene.background, scene.position


def subject_prompts(setup: ConceptSetup, count: int, seed: int = SUBJECT_PROMPT_SEED) -> list[EvaluationPrompt]:
    """(a) One large object like the photos, in colour/background/position combinations they never show."""
    seen = {_context(scene) for scene in setup.scenes()}
    rng = np.random.default_rng([seed, 0xA])
    prompts: list[EvaluationPrompt] = []
    while len(prompts) < count:
        drawn = toy_world.random_scene(rng)
        scene = Scene(shape=setup.shape, color=drawn.color, background=drawn.background, position=drawn.position)
        if _context(scene) not in seen:
            prompts.append(EvaluationPrompt(setup.caption(scene), _named_attributes(scene)))
    return prompts


def attribute_prompts(setup: ConceptSetup, count: int, seed: int = ATTRIBUTE_PROMPT_SEED) -> list[EvaluationPrompt]:
    """(b) Fresh contexts plus one attribute the photos never varied (count 2 or 3, small, striped), in turn."""
    rng = np.random.default_rng([seed, 0xB])
    prompts = []
    for index in range(count):
        drawn = toy_world.random_scene(rng)
        values = dict(shape=setup.shape, color=drawn.color, background=drawn.background, position=drawn.position)
        attribute, value = NEW_ATTRIBUTE_VARIATIONS[index % len(NEW_ATTRIBUTE_VARIATIONS)]
        values[attribute] = value
        scene = Scene(**values)
        prompts.append(EvaluationPrompt(setup.caption(scene), _named_attributes(scene)))
    return prompts


def class_prompts(count: int, seed: int = CLASS_PROMPT_SEED) -> list[EvaluationPrompt]:
    """(c) Ordinary base-world captions (circles, squares, triangles), no trigger: full scenes to match."""
    return [EvaluationPrompt(toy_world.caption(scene), scene.attributes())
            for scene in toy_world.dataset_scenes(count, seed)]


# --------------------------------------------------------------------------------------------
# Generation and scores
# --------------------------------------------------------------------------------------------


def generate(ctx: AppContext, concept: TrainedConcept, prompts: Sequence[EvaluationPrompt],
             first_seed: int) -> list[Image.Image]:
    """One image per prompt through the app's txt2img queue at default settings, native size, fixed seeds."""
    from webui.generation.requests import Txt2ImgRequest

    images = []
    for index, prompt in enumerate(prompts):
        request = Txt2ImgRequest(prompt=concept.prompt(prompt.text), width=toy_world.NATIVE_SIZE,
                                 height=toy_world.NATIVE_SIZE, seed=first_seed + index, checkpoint=concept.checkpoint,
                                 save_images=False, save_grid=False)
        images.extend(ctx.generation.submit_txt2img(request).result().images)
    return images


@dataclass(frozen=True)
class PromptSetScores:
    """Scores of one prompt set's images."""

    subject_fidelity: float
    prompt_fidelity: float
    per_attribute: Mapping[str, float]


def score_images(images: Sequence[Image.Image | Analysis], prompts: Sequence[EvaluationPrompt],
                 reference: ConceptReference) -> PromptSetScores:
    """Subject fidelity against the concept photos, and prompt fidelity against what each prompt names."""
    analyses = [image if isinstance(image, Analysis) else analyze(image) for image in images]
    expected = [prompt.expected for prompt in prompts]
    per_attribute = attribute_accuracy(analyses, expected)
    return PromptSetScores(subject_fidelity(analyses, reference), per_attribute["all"], per_attribute)


@dataclass(frozen=True)
class MethodScores:
    """One row of the report."""

    label: str
    concept: TrainedConcept
    subject: PromptSetScores        # (a)
    attributes: PromptSetScores     # (b)
    classes: PromptSetScores        # (c)

    @property
    def prior_preservation(self) -> float:
        """1 - subject fidelity of the class prompts (see `fidelity.prior_preservation`)."""
        return 1.0 - self.classes.subject_fidelity


@dataclass(frozen=True)
class PromptSets:
    """The three prompt sets, built once so every method is judged on the same prompts and seeds."""

    subject: list[EvaluationPrompt]
    attributes: list[EvaluationPrompt]
    classes: list[EvaluationPrompt]

    @classmethod
    def build(cls, setup: ConceptSetup, count: int) -> PromptSets:
        return cls(subject_prompts(setup, count), attribute_prompts(setup, count), class_prompts(count))


def evaluate_concept(ctx: AppContext, label: str, concept: TrainedConcept, prompts: PromptSets,
                     reference: ConceptReference) -> MethodScores:
    """Generate every prompt set with what was trained and score it."""
    return MethodScores(
        label=label, concept=concept,
        subject=score_images(generate(ctx, concept, prompts.subject, SUBJECT_IMAGE_SEED),
                             prompts.subject, reference),
        attributes=score_images(generate(ctx, concept, prompts.attributes, ATTRIBUTE_IMAGE_SEED),
                                prompts.attributes, reference),
        classes=score_images(generate(ctx, concept, prompts.classes, CLASS_IMAGE_SEED),
                             prompts.classes, reference),
    )


def build_data_context(data_dir: Path, device: str = "cpu") -> AppContext:
    """An app context over a fresh data folder (the default model is copied in on first use)."""
    from webui.context import build_context
    from webui.settings import settings_from_args

    return build_context(settings_from_args(["--data-dir", str(data_dir), "--skip-install", "--device", device]))


def vae_round_trip_fidelity(ctx: AppContext, setup: ConceptSetup, count: int, seed: int = 77) -> float:
    """Subject fidelity of fresh concept renders after the model's own VAE encode + decode.

    Generation ends in the same decoder, so no method can be expected to beat this: it is the
    ceiling the autoencoder sets for subject fidelity at the native resolution.
    """
    from tools.default_model.toy_decoder_finetune import vae_round_trip

    renders = toy_world.held_out_concept_images(setup.shape, count, seed)
    with ctx.manager.checkout(ctx.manager.state_for(BASE_CHECKPOINT)) as model:
        decoded = vae_round_trip(model.pipeline.vae, renders)
    return subject_fidelity(decoded, concept_reference(setup.images()))


@dataclass
class Experiment:
    """The whole run: base model, VAE ceiling and every chosen method, each in its own data folder."""

    setup: ConceptSetup
    prompt_count: int
    work_dir: Path
    device: str = "cpu"
    on_message: Callable[[str], None] = print
    rows: list[MethodScores] = field(default_factory=list)
    vae_ceiling: float | None = None

    def run(self, plans: Sequence[MethodPlan]) -> list[MethodScores]:
        prompts = PromptSets.build(self.setup, self.prompt_count)
        reference = concept_reference(self.setup.images())
        base_ctx = build_data_context(self.work_dir / "base", self.device)
        try:
            self.vae_ceiling = vae_round_trip_fidelity(base_ctx, self.setup, count=100)
            self.on_message(f"VAE round trip subject fidelity: {self.vae_ceiling:.3f}")
            self.rows.append(evaluate_concept(base_ctx, "Base model, no training", TrainedConcept(plan=None),
                                              prompts, reference))
            self.on_message(describe_row(self.rows[-1]))
        finally:
            base_ctx.close()
        for plan in plans:
            folder = self.work_dir / plan.key
            dataset = folder / "dataset"
            write_concept_dataset(dataset, self.setup)
            ctx = build_data_context(folder, self.device)
            try:
                self.on_message(f"training {plan.label} ...")
                concept = train_concept(ctx, plan, self.setup, dataset)
                self.on_message(f"  {concept.steps} steps in {concept.train_seconds:.0f} s")
                self.rows.append(evaluate_concept(ctx, plan.label, concept, prompts, reference))
                self.on_message(describe_row(self.rows[-1]))
            finally:
                ctx.close()
        return self.rows


def describe_row(row: MethodScores) -> str:
    return (f"{row.label}: subject {row.subject.subject_fidelity:.3f}, prompt {row.subject.prompt_fidelity:.3f}, "
            f"new attributes {row.attributes.prompt_fidelity:.3f}, prior preservation {row.prior_preservation:.3f}, "
            f"class prompts {row.classes.prompt_fidelity:.3f}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def current_load() -> float | None:
    """The 1-minute load average (None where the OS has none): other work on a shared CPU slows training."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_description(load_at_start: float | None = None, device: str = "cpu") -> str:
    """CPU model, cores and torch threads (and the GPU): train seconds only compare on the same machine."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load, load_at_end = "", current_load()
    if load_at_start is not None and load_at_end is not None:
        load = (f"; 1-minute load average {load_at_start:.1f} at the start and {load_at_end:.1f} at the end "
                "(other work shared the CPU: timings are noisy)")
    gpu = f"{torch.cuda.get_device_name()} with " if device == "cuda" else ""
    return (f"{gpu}{model}, {os.cpu_count()} logical CPU(s), torch {torch.__version__} with {torch.get_num_threads()} "
            f"thread(s), {platform.system()} {platform.release()}{load}")


def _fmt(value: float) -> str:
    mark = "" if value >= GOAL else " ✗"
    return f"{value:.2f}{mark}"


def summary_table(rows: Sequence[MethodScores]) -> list[str]:
    """The DreamBooth-paper-style table: one row per method (also copied into docs/FIDELITY.md)."""
    lines = [
        "| method | images | steps | train s | subject fidelity | prompt fidelity | new attributes | "
        "prior preservation | class prompts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        concept = row.concept
        trained = concept.plan is not None
        lines.append(
            f"| {row.label} | {concept.image_count if trained else '-'} | {concept.steps if trained else '-'} | "
            f"{f'{concept.train_seconds:.0f}' if trained else '-'} | {_fmt(row.subject.subject_fidelity)} | "
            f"{_fmt(row.subject.prompt_fidelity)} | {row.attributes.prompt_fidelity:.2f} | "
            f"{row.prior_preservation:.2f} | {row.classes.prompt_fidelity:.2f} |"
        )
    return lines


def format_report(experiment: Experiment, command: str, plans: Sequence[MethodPlan], started: datetime.datetime,
                  finished: datetime.datetime, load_at_start: float | None = None) -> str:
    setup, rows = experiment.setup, experiment.rows
    example = setup.caption(setup.scenes()[0])
    lines = [
        "# What each training method learns (toy world)",
        "",
        f"Generated by `{command}` from {started:%Y-%m-%d %H:%M} to {finished:%Y-%m-%d %H:%M} on "
        f"{machine_description(load_at_start, experiment.device)}.",
        "",
        f"Each method learns the held-out shape **{setup.shape}** from {setup.image_count} renders "
        f"(`toy_world.held_out_concept_images(\"{setup.shape}\", n={setup.image_count}, seed={setup.seed})`: one large "
        "solid object, varied colour, background and position). Captions name every other attribute and put the "
        f"trigger word `{setup.trigger}` where the shape noun goes, e.g. `{example}`. DreamBooth's class prompt and the "
        f"embeddings' init word are `{setup.class_word}` (\"a {setup.class_word}\"). Results are used as a user would: "
        "LoRA via `<lora:name:1>`, embeddings via their word, DreamBooth via its checkpoint; images come from the app's "
        "txt2img queue at default settings (DPM++ 2M, 20 steps, CFG 7, 128x128, fixed seeds). Metric definitions: "
        "[TOY_WORLD.md](TOY_WORLD.md).",
        "",
        f"Prompt sets ({experiment.prompt_count} prompts each):",
        "",
        "* **subject fidelity** and **prompt fidelity**: the trigger in colour/background/position combinations that "
        f"no training photo shows, e.g. `{subject_prompts(setup, 1)[0].text}`. Prompt fidelity is the share of images "
        "whose colour, background, position, size and count all match.",
        "* **new attributes**: the same, plus one attribute the photos never varied (two objects, three objects, "
        f"small, striped, in turn), e.g. `{attribute_prompts(setup, 2)[1].text}`: prompt fidelity over every named "
        "attribute.",
        "* **prior preservation**: ordinary captions of circles, squares and triangles without the trigger "
        "(`toy_world.dataset_scenes`), generated with the trained result active; the share that did *not* turn into "
        "the concept. **class prompts** is those images' prompt fidelity (every attribute): the base skills after "
        "training.",
        "",
        f"Goal: {GOAL:.2f} for subject and prompt fidelity (✗ marks a miss). Train seconds include generating "
        "the class images for prior preservation.",
        "",
    ]
    lines += summary_table(rows)
    if experiment.vae_ceiling is not None:
        lines += [
            "",
            f"**Ceiling set by the autoencoder:** 100 fresh {setup.shape} renders passed through the model's own VAE "
            f"(encode, decode, no diffusion) reach a subject fidelity of **{experiment.vae_ceiling:.2f}**. Every "
            "generated image goes through the same decoder, so no training method can be expected to score higher.",
        ]
        if experiment.vae_ceiling < GOAL:
            lines[-1] += (f" This is below the {GOAL:.2f} goal: it needs a better autoencoder first, and the methods "
                          "can only be compared below this ceiling.")
    lines += ["", "## Per-attribute accuracy", ""]
    attributes = [name for name in toy_world.ATTRIBUTES if name != "shape"]
    lines += ["| method | prompt set | " + " | ".join(attributes) + " | shape | all |",
              "| --- | --- | " + " | ".join("---" for _ in attributes) + " | --- | --- |"]
    for row in rows:
        for name, scores in (("subject", row.subject), ("new attributes", row.attributes), ("class", row.classes)):
            cells = [f"{scores.per_attribute[a]:.2f}" if a in scores.per_attribute else "-" for a in attributes]
            shape = f"{scores.per_attribute['shape']:.2f}" if "shape" in scores.per_attribute else "-"
            everything = f"{scores.per_attribute['all']:.2f}"
            lines.append(f"| {row.label} | {name} | " + " | ".join(cells) + f" | {shape} | {everything} |")
    lines += ["", "## Changes to the shipped presets", "",
              "All methods:", ""]
    lines += [f"* `{c.setting}` = `{c.value!r}`: {c.reason}" for c in COMMON_CHANGES]
    for plan in plans:
        own = ", ".join(f"`{c.setting}` = `{c.value!r}` ({c.reason})" for c in plan.changes) or "none"
        lines.append(f"* {plan.label} (`presets/{plan.preset}.json`): {own}")
    warnings = sorted({w for row in rows for w in row.concept.warnings})
    if warnings:
        lines += ["", "Training warnings:", ""] + [f"* {w}" for w in warnings]
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from webui.settings import PROJECT_ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHOD_KEYS, default=list(METHOD_KEYS))
    parser.add_argument("--prompts", type=int, default=DEFAULT_PROMPT_COUNT, help="prompts per prompt set")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "FIDELITY_TRAINING.md")
    parser.add_argument("--summary-in", type=Path, default=PROJECT_ROOT / "docs" / "FIDELITY.md",
                        help="the fidelity report whose section 4 receives the summary table")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data folders here (default: a temp dir)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    command = "python -m sdstudio_eval.training_fidelity " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    plans = [method_plan(key) for key in args.methods]
    started, load_at_start = datetime.datetime.now(), current_load()
    with tempfile.TemporaryDirectory(prefix="training-fidelity-") as temporary:
        work_dir = args.work_dir or Path(temporary)
        experiment = Experiment(ConceptSetup(), args.prompts, work_dir, args.device)
        experiment.run(plans)
    report = format_report(experiment, command.strip(), plans, started, datetime.datetime.now(), load_at_start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"wrote {args.out}")
    if args.summary_in.is_file():
        section = "\n".join([
            TRAINING_SECTION_TITLE, "",
            f"DreamBooth-paper-style table from `{command.strip()}` on {machine_description(device=args.device)}, "
            f"{started:%Y-%m-%d}: each method learns the held-out shape `{experiment.setup.shape}` from "
            f"{experiment.setup.image_count} images with its default preset. Prompt sets, per-attribute accuracy and "
            f"preset details: [{args.out.name}]({args.out.name}).", "",
            *summary_table(experiment.rows), "",
        ])
        document = args.summary_in.read_text(encoding="utf-8")
        args.summary_in.write_text(with_training_section(document, section), encoding="utf-8")
        print(f"updated {args.summary_in}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
