"""The default LoRA preset (`toy_lora`) learns the held-out hexagon from ten renders, on the CPU.

Training and generation go through the app (`submit_training`, then `submit_txt2img` with
`<lora:name:1>`), with the exact setup of `python -m sdstudio_eval.training_fidelity`, so this is the LoRA
row of docs/FIDELITY.md's training table on fewer, fresh prompts, held to the Train tab's goals (subject
and prompt fidelity at least 0.8). Slow by nature: a real training run on the CPU (its time is printed and
reported in that document, not asserted).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sdstudio_eval.fidelity import concept_reference
from sdstudio_eval.training_fidelity import (
    SUBJECT_IMAGE_SEED,
    ConceptSetup,
    PromptSetScores,
    TrainedConcept,
    build_data_context,
    generate,
    method_plan,
    score_images,
    subject_prompts,
    train_concept,
    write_concept_dataset,
)

PROMPT_COUNT = 16
# Seeds the report does not use: prompts and images neither the report nor training saw.
FRESH_PROMPT_SEED = 4242
FRESH_IMAGE_SEED = SUBJECT_IMAGE_SEED + 50_000

pytestmark = pytest.mark.long


@dataclass(frozen=True)
class Outcome:
    base: PromptSetScores
    lora: PromptSetScores


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> Outcome:
    setup = ConceptSetup()
    folder = tmp_path_factory.mktemp("lora-concept")
    dataset = folder / "dataset"
    write_concept_dataset(dataset, setup)
    prompts = subject_prompts(setup, PROMPT_COUNT, seed=FRESH_PROMPT_SEED)
    training_captions = {setup.caption(scene) for scene in setup.scenes()}
    assert not training_captions & {prompt.text for prompt in prompts}
    reference = concept_reference(setup.images())
    ctx = build_data_context(folder)
    try:
        base = score_images(generate(ctx, TrainedConcept(plan=None), prompts, FRESH_IMAGE_SEED), prompts, reference)
        concept = train_concept(ctx, method_plan("lora"), setup, dataset)
        print(f"\nLoRA: {concept.steps} steps on {concept.image_count} images in {concept.train_seconds:.0f} s")
        assert concept.image_count == 10 and concept.lora_name
        lora = score_images(generate(ctx, concept, prompts, FRESH_IMAGE_SEED), prompts, reference)
    finally:
        ctx.close()
    for name, scores in (("base", base), ("LoRA", lora)):
        print(f"{name}: subject fidelity {scores.subject_fidelity:.3f}, prompt fidelity {scores.prompt_fidelity:.3f}, "
              f"per attribute {scores.per_attribute}")
    return Outcome(base, lora)


def test_lora_keeps_the_prompt_attributes_around_the_concept(outcome):
    assert outcome.lora.prompt_fidelity >= 0.8, outcome.lora.per_attribute


def test_lora_draws_the_concept_where_the_base_model_cannot(outcome):
    assert outcome.base.subject_fidelity <= 0.1  # the base model has never seen a hexagon
    assert outcome.lora.subject_fidelity >= outcome.base.subject_fidelity + 0.25


def test_lora_reaches_the_subject_fidelity_goal(outcome):
    assert outcome.lora.subject_fidelity >= 0.8
