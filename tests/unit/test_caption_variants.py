"""Varied training captions (issue 23): they say what they name, vary the way people write, and never use the
evaluation's held-out phrasings."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from sdstudio_eval import prompt_sets, toy_world
from tools.default_model import caption_variants
from tools.default_model.caption_variants import training_caption, varied_caption
from sdstudio_eval.toy_world import ATTRIBUTES, BACKGROUNDS, Scene, parse_prompt, random_scene


@pytest.fixture(scope="module")
def training_set() -> list[tuple[Scene, caption_variants.Prompt]]:
    rng = np.random.default_rng(23)
    pairs = []
    for _ in range(6000):
        scene = random_scene(rng)
        pairs.append((scene, training_caption(scene, rng)))
    return pairs


def test_every_training_caption_parses_back_to_exactly_what_it_names(training_set) -> None:
    for scene, prompt in training_set:
        assert parse_prompt(prompt.text) == dict(prompt.named), prompt.text
        assert all(getattr(scene, name) == value for name, value in prompt.named.items()), prompt.text


def test_full_caption_grammar_keeps_its_share(training_set) -> None:
    full = sum(prompt.text == toy_world.caption(scene) for scene, prompt in training_set) / len(training_set)
    assert abs(full - caption_variants.FULL_GRAMMAR_SHARE) < 0.03


def test_captions_name_every_size_of_attribute_subset(training_set) -> None:
    sizes = Counter(len(prompt.named) for _, prompt in training_set)
    assert set(sizes) == set(range(1, len(ATTRIBUTES) + 1))
    named_sets = {frozenset(prompt.named) for _, prompt in training_set}
    assert frozenset({"background"}) in named_sets and frozenset({"shape"}) in named_sets
    assert frozenset({"shape", "count", "color", "background"}) in named_sets  # "a red circle on a blue background"


def test_connecting_words_fillers_and_plurals_occur(training_set) -> None:
    texts = " | ".join(prompt.text for _, prompt in training_set)
    for phrase in ("on a", "with a", "against a", "in front of a", "centered", "in the middle", "a picture of",
                   "high quality", "masterpiece", "simple", "circles", "two", "three"):
        assert phrase in texts, phrase
    bare_plurals = [p.text for _, p in training_set if "shape" in p.named and "count" not in p.named]
    assert bare_plurals and all(re.search(r"(circles|squares|triangles)", text) for text in bare_plurals)


def test_word_order_varies(training_set) -> None:
    starts_with_background = [p.text for _, p in training_set
                              if re.match(r"^(on a |against a )?\w+ background", p.text)]
    position_before_background = [p.text for _, p in training_set if "background" in p.named and "position" in p.named
                                  and p.text.index("background") < max(p.text.find(w) for w in toy_world.POSITIONS)]
    assert len(starts_with_background) > 100 and len(position_before_background) > 100


def test_unnamed_attributes_vary_and_unnamed_texture_is_solid(training_set) -> None:
    unnamed_backgrounds = Counter(scene.background for scene, p in training_set if "background" not in p.named)
    assert set(unnamed_backgrounds) == set(BACKGROUNDS)
    unnamed_sizes = Counter(scene.size for scene, p in training_set if "size" not in p.named)
    assert min(unnamed_sizes.values()) > 0.4 * max(unnamed_sizes.values())
    assert all(scene.texture == "solid" for scene, p in training_set if "texture" not in p.named)


def test_held_out_templates_and_positions_never_occur_in_training_captions(training_set) -> None:
    patterns = [prompt_sets.template_pattern(template) for template in prompt_sets.HELD_OUT_TEMPLATES]
    for _, prompt in training_set:
        assert not any(pattern.match(prompt.text) for pattern in patterns), prompt.text
        for phrases in prompt_sets.HELD_OUT_POSITION_PHRASES.values():
            assert not any(re.search(rf"\b{phrase}\b", prompt.text) for phrase in phrases), prompt.text
    # The patterns are not vacuous: every held-out evaluation prompt matches its template.
    for prompt in prompt_sets.held_out_prompts(40):
        assert sum(bool(pattern.match(prompt.text)) for pattern in patterns) >= 1, prompt.text


def test_varied_caption_refuses_what_no_prompt_can_name() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no prompt names exactly"):
        varied_caption(Scene("circle", "red", "blue"), {"color"}, rng)  # a colour needs the shape noun
    with pytest.raises(ValueError, match="no prompt names exactly"):
        varied_caption(Scene("circle", "red", "blue", count=1), {"shape"}, rng)  # "circles" means more than one


def test_negative_prompts_name_nothing() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        text = caption_variants.negative_prompt(rng)
        assert text and parse_prompt(text) == {}


def test_training_captions_are_seeded() -> None:
    scenes = toy_world.dataset_scenes(20, seed=3)
    first = caption_variants.training_captions(scenes, seed=5, per_scene=3)
    assert first == caption_variants.training_captions(scenes, seed=5, per_scene=3)
    assert first != caption_variants.training_captions(scenes, seed=6, per_scene=3)
    assert all(len(texts) == 3 for texts in first)


def test_number_words_count_only_at_the_head_of_the_noun_phrase() -> None:
    assert parse_prompt("a picture of red circles") == {"color": "red", "shape": "circle"}
    assert parse_prompt("a photo of two big red circles") == {"count": 2, "size": "large", "color": "red", "shape": "circle"}
    assert parse_prompt("against a blue background, three squares") == {"background": "blue", "count": 3, "shape": "square"}
    with pytest.raises(ValueError, match="plural"):
        parse_prompt("a red circles")


def test_training_chunks_carry_varied_captions_and_their_tokens() -> None:
    from tools.default_model.toy_model_training import _render_chunk, clip_tokenizer, tokenize

    images, captions, ids = _render_chunk((2026, 0, 6, 3))
    assert images.shape == (6, 128, 128, 3) and ids.shape == (6, 3, 77)
    assert sum(len(set(texts)) > 1 for texts in captions) >= 4  # an image's captions differ
    assert (tokenize(clip_tokenizer(), [captions[4][2]])[0].numpy() == ids[4, 2]).all()
    _, legacy, legacy_ids = _render_chunk((2026, 0, 6, 0))
    assert legacy_ids.shape == (6, 1, 77) and all(len(texts) == 1 for texts in legacy)
    assert all(toy_world.parse_caption(texts[0]).attributes() for texts in legacy)


def test_positions_and_leading_backgrounds_come_in_many_surroundings(training_set) -> None:
    # The first fine-tune missed positions written in phrasings it had not seen ("near the middle"): each position
    # word must occur in many phrasings, sometimes after a verb, not in a few fixed phrases.
    texts = [prompt.text for _, prompt in training_set]
    for position in toy_world.POSITIONS:
        used = {phrase for phrase in set(caption_variants.POSITION_PHRASES[position])
                if any(re.search(rf"(^|[ ,]){re.escape(phrase)}($|[ ,])", text) for text in texts)}
        assert len(used) >= 10, (position, used)
    verbs = "|".join(caption_variants.POSITION_VERBS)
    assert sum(bool(re.search(rf"\b({verbs}) (on|at|in|along|far|left|right|top|bottom|center|middle)", t))
               for t in texts) > 50
    joins = {join for join in (" with ", " and ", " featuring ", " containing ")
             for text in texts if re.match(rf"^(on a |against a |a )?\w+ background,?{join}", text)}
    assert len(joins) == 4


def test_long_prompts_with_many_unknown_words_occur(training_set) -> None:
    lengths = [len(re.findall(r"\w+", prompt.text)) for _, prompt in training_set]
    assert sum(length >= 18 for length in lengths) > 0.02 * len(lengths)
    assert max(lengths) <= 60  # well inside CLIP's 77 tokens
