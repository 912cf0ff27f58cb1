"""Evaluation prompts in the styles people actually write, for the prompt-styles table of the fidelity report.

Rows (issue 23): the full caption grammar; prompts naming exactly 1, 2 and 3 attributes (in the training
captions' varied phrasing, ``tools.default_model.caption_variants``); free-form phrasings from the HELD-OUT templates
below, which the training captions never use (a unit test checks this on thousands of training captions);
and two fixed prompts drawn with 10 seeds each: the UI's pre-filled prompt and the README example.

Each prompt carries the attributes it names (what ``toy_world.parse_prompt`` reads back), and prompt
fidelity checks only those: an attribute a prompt leaves out may be anything.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sdstudio_eval import toy_world
from tools.default_model import caption_variants
from tools.default_model.caption_variants import Prompt
from webui.models.default_model import EXAMPLE_PROMPT, README_EXAMPLE_PROMPT

# ---------------------------------------------------------------------------
# Held out of training: evaluation only. Slots: {object} (number word, adjectives and shape noun),
# {position} (a held-out position phrase) and {background} (a background colour). Every template has
# words that no training caption contains ("placed", "over", "showing", "digital art", ...).
HELD_OUT_TEMPLATES = (
    "{object} placed {position} over a {background} background",
    "{background} background showing {object} {position}",
    "digital art of {object} {position}, {background} background, trending on artstation",
    "please draw {object} {position} on a {background} background",
    "vector icon of {object} over a {background} background",
    "{object} sitting {position} with a {background} background behind it",
    "{object} over a {background} background",
)
HELD_OUT_POSITION_PHRASES: Mapping[str, tuple[str, ...]] = {
    "left": ("toward the left", "near the left edge", "to the left"),
    "center": ("in the very center", "near the middle", "dead center"),
    "right": ("toward the right", "near the right edge", "to the right"),
    "top": ("near the top", "toward the top", "up at the top"),
    "bottom": ("near the bottom", "toward the bottom", "down at the bottom"),
}
# The fixed prompts are drawn with this many seeds; the goal is 9 of 10 right.
FIXED_PROMPT_SEEDS = 10
ROW_SEEDS: Mapping[str, int] = {"named_1": 101, "named_2": 102, "named_3": 103, "held_out": 104}


@dataclass(frozen=True)
class PromptRow:
    """One row of the prompt-styles table: a title and its prompts."""

    key: str
    title: str
    prompts: tuple[Prompt, ...]


def template_pattern(template: str) -> re.Pattern[str]:
    """A regex matching every prompt a template can produce (each slot matches any text)."""
    parts = re.split(r"\{(?:object|position|background)\}", template)
    return re.compile("^" + ".*".join(re.escape(part) for part in parts) + "$")


def full_grammar_prompts(count: int) -> list[Prompt]:
    """The first ``count`` evaluation captions (combinations left out of training); all seven attributes count."""
    return [Prompt(toy_world.caption(scene), scene.attributes()) for scene in toy_world.evaluation_scenes(count)]


def named_prompts(attribute_count: int, count: int, seed: int) -> list[Prompt]:
    """``count`` prompts naming exactly ``attribute_count`` attributes of random scenes, in training phrasing.

    The named set is drawn uniformly from the sets of that size a prompt can express for the scene (see
    ``caption_variants.expressible``), so "circles", "blue background" and "on the left" all occur.
    """
    rng = np.random.default_rng([seed, attribute_count, 0x9A3])
    prompts = []
    while len(prompts) < count:
        scene = toy_world.random_scene(rng)
        options = [frozenset(names) for names in itertools.combinations(toy_world.ATTRIBUTES, attribute_count)
                   if caption_variants.expressible(scene, set(names)) and _texture_rule_allows(scene, set(names))]
        if not options:
            continue
        names = options[int(rng.integers(len(options)))]
        prompts.append(Prompt(caption_variants.varied_caption(scene, names, rng),
                              caption_variants.named_values(scene, names)))
    return prompts


def _texture_rule_allows(scene: toy_world.Scene, names: set[str]) -> bool:
    """A prompt that names the shape of a striped scene says "striped" (unnamed texture means solid)."""
    return not ("shape" in names and scene.texture != "solid" and "texture" not in names)


def held_out_prompts(count: int, seed: int = ROW_SEEDS["held_out"]) -> list[Prompt]:
    """``count`` prompts from the held-out templates, every second one with a negative prompt.

    Each names the shape, the background and, where the template has the slot, the position; colour, size
    and count are named as often as in training captions, and a striped object is called striped.
    """
    rng = np.random.default_rng([seed, 0x4E1])
    prompts = []
    for index in range(count):
        scene = toy_world.random_scene(rng)
        template = HELD_OUT_TEMPLATES[index % len(HELD_OUT_TEMPLATES)]
        names = {"shape", "background"} | ({"position"} if "{position}" in template else set())
        if rng.random() < caption_variants.NAME_PROBABILITY["color"]:
            names.add("color")
        if rng.random() < caption_variants.NAME_PROBABILITY["size"]:
            names.add("size")
        if scene.count == 1 or rng.random() < caption_variants.NAME_PROBABILITY["plural_count"]:
            names.add("count")
        if scene.texture != "solid":
            names.add("texture")
        text = template.format(object=caption_variants.noun_phrase(scene, names, rng),
                               position=caption_variants.choose(rng, HELD_OUT_POSITION_PHRASES[scene.position]),
                               background=scene.background)
        negative = caption_variants.negative_prompt(rng) if index % 2 else ""
        prompts.append(Prompt(text, caption_variants.named_values(scene, names), negative))
    return prompts


def fixed_prompt(text: str) -> list[Prompt]:
    """One prompt, repeated for ``FIXED_PROMPT_SEEDS`` seeds."""
    return [Prompt(text, toy_world.parse_prompt(text))] * FIXED_PROMPT_SEEDS


def prompt_rows(per_row: int) -> list[PromptRow]:
    """Every row of the prompt-styles table, ``per_row`` prompts each (the fixed prompts: 10 seeds)."""
    return [
        PromptRow("full_grammar", "full caption grammar (all 7 attributes)", tuple(full_grammar_prompts(per_row))),
        *(PromptRow(f"named_{k}", f"naming {k} attribute{'s' if k > 1 else ''}",
                    tuple(named_prompts(k, per_row, ROW_SEEDS[f"named_{k}"]))) for k in (1, 2, 3)),
        PromptRow("held_out", "held-out free-form phrasings (half with a negative prompt)",
                  tuple(held_out_prompts(per_row))),
        PromptRow("prefilled", f"UI pre-filled prompt `{EXAMPLE_PROMPT}`", tuple(fixed_prompt(EXAMPLE_PROMPT))),
        PromptRow("readme", f"README example `{README_EXAMPLE_PROMPT}`", tuple(fixed_prompt(README_EXAMPLE_PROMPT))),
    ]


def check_prompts(prompts: Sequence[Prompt]) -> None:
    """Raise if a prompt does not name exactly the attributes it claims (a bug in a row builder)."""
    for prompt in prompts:
        parsed = toy_world.parse_prompt(prompt.text)
        if len(prompt.named) == len(toy_world.ATTRIBUTES):  # a full caption: no texture word means solid
            parsed = toy_world.parse_caption(prompt.text).attributes()
        if parsed != dict(prompt.named):
            raise ValueError(f"prompt {prompt.text!r} names {parsed}, not {dict(prompt.named)}")
        if toy_world.parse_prompt(prompt.negative):
            raise ValueError(f"negative prompt {prompt.negative!r} names toy-world attributes")
