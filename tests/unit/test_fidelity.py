"""DreamBooth-style metrics: prompt fidelity, subject fidelity, prior preservation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sdstudio_eval.analyzer import Analysis, analyze
from sdstudio_eval.fidelity import (
    SUBJECT_SIMILARITY_THRESHOLD,
    attribute_accuracy,
    concept_reference,
    prior_preservation,
    prompt_fidelity,
    subject_fidelity,
    subject_similarity,
    validate_subject_fidelity,
)
from sdstudio_eval.toy_world import (
    ATTRIBUTES,
    BASE_SHAPES,
    COLORS,
    HELD_OUT_SHAPES,
    Scene,
    held_out_concept_images,
    parse_prompt,
    random_scene,
    render,
)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(99)
    return [random_scene(rng, include_held_out=True) for _ in range(40)]


@pytest.fixture(scope="module")
def images(scenes: list[Scene]) -> list[Image.Image]:
    return [render(scene, seed=index) for index, scene in enumerate(scenes)]


@pytest.fixture(scope="module")
def analyses(images: list[Image.Image]) -> list[Analysis]:
    return [analyze(image) for image in images]


def test_prompt_fidelity_is_perfect_for_matching_renders(images: list[Image.Image], scenes: list[Scene]) -> None:
    assert prompt_fidelity(images, scenes) == 1.0
    assert set(attribute_accuracy(images, scenes).values()) == {1.0}


def test_prompt_fidelity_drops_when_one_attribute_is_wrong(analyses: list[Analysis], scenes: list[Scene]) -> None:
    wrong_colors = [
        replace(scene, color=next(color for color in COLORS if color not in (scene.color, scene.background)))
        for scene in scenes
    ]
    assert prompt_fidelity(analyses, wrong_colors) == 0.0
    breakdown = attribute_accuracy(analyses, wrong_colors)
    assert breakdown["color"] == 0.0 and breakdown["all"] == 0.0
    assert all(breakdown[attribute] == 1.0 for attribute in ATTRIBUTES if attribute != "color")


def test_partial_prompts_check_only_what_they_name() -> None:
    image = render(Scene("star", "red", "white", "left", "small", 2, "striped"), seed=3)
    assert prompt_fidelity([image], [parse_prompt("two red stars")]) == 1.0
    assert prompt_fidelity([image], [parse_prompt("a red star")]) == 0.0
    assert attribute_accuracy([image, image], [{"shape": "star"}, {"shape": "star", "color": "blue"}]) == {
        "shape": 1.0,
        "color": 0.0,
        "all": 0.5,
    }


def test_prompt_fidelity_needs_one_scene_per_image(analyses: list[Analysis], scenes: list[Scene]) -> None:
    with pytest.raises(ValueError, match="40 images but 39"):
        prompt_fidelity(analyses, scenes[:-1])
    with pytest.raises(ValueError, match="no images"):
        prompt_fidelity([], [])


def test_subject_fidelity_separates_held_out_concepts_from_other_shapes() -> None:
    # Renders of the concept's shape must pass >= 90 %, renders of every other
    # shape (what a base model draws for the same prompts) <= 10 %.
    report = validate_subject_fidelity(HELD_OUT_SHAPES, n=160, seed=31, concept_image_count=5)
    print("clean:", report)
    for concept in HELD_OUT_SHAPES:
        assert report[concept]["own_images"] >= 20 and report[concept]["other_images"] >= 100
        assert report[concept]["own"] >= 0.9, (concept, report[concept])
        assert report[concept]["others"] <= 0.1, (concept, report[concept])


def test_subject_fidelity_separation_survives_blur_and_noise() -> None:
    report = validate_subject_fidelity(HELD_OUT_SHAPES, n=120, seed=8, concept_image_count=5, blur_radius=1.0, noise_sigma=8.0)
    print("blur 1 + noise 8:", report)
    for concept in HELD_OUT_SHAPES:
        assert report[concept]["own"] >= 0.9 and report[concept]["others"] <= 0.1, (concept, report[concept])


def test_subject_similarity_ignores_colour_texture_and_size() -> None:
    reference = concept_reference(held_out_concept_images("hexagon", n=5, seed=4, color="red"))
    variants = [
        Scene("hexagon", "blue", "yellow", "left", "small", 1, "solid"),
        Scene("hexagon", "white", "black", "top", "large", 3, "striped"),
        Scene("hexagon", "green", "white", "center", "small", 2, "dotted"),
    ]
    for scene in variants:
        assert subject_similarity(render(scene, seed=1), reference) >= SUBJECT_SIMILARITY_THRESHOLD, scene
    for shape in BASE_SHAPES + ("star",):
        assert subject_similarity(render(Scene(shape, "red", "white"), seed=1), reference) < SUBJECT_SIMILARITY_THRESHOLD


def test_prior_preservation_counts_class_images_that_did_not_become_the_concept() -> None:
    reference = concept_reference(held_out_concept_images("star", n=5, seed=6))
    rng = np.random.default_rng(17)
    class_images = [render(random_scene(rng), seed=index) for index in range(30)]  # base shapes only
    assert prior_preservation(class_images, reference) == 1.0
    collapsed = class_images[:20] + [render(Scene("star", "red", "white", size="small"), seed=index) for index in range(10)]
    assert prior_preservation(collapsed, reference) == pytest.approx(20 / 30)
    assert prior_preservation(collapsed, reference) == pytest.approx(1 - subject_fidelity(collapsed, reference))
    # An empty image did not turn into the concept; prompt fidelity is what catches that.
    assert prior_preservation([Image.new("RGB", (128, 128), (245, 245, 245))], reference) == 1.0


def test_analyses_can_be_reused_across_metrics(analyses: list[Analysis], scenes: list[Scene]) -> None:
    assert prompt_fidelity(analyses, scenes) == 1.0
    reference = concept_reference(held_out_concept_images("hexagon", n=3, seed=0))
    hexagons = [scene.shape == "hexagon" for scene in scenes]
    assert subject_fidelity(analyses, reference) == pytest.approx(sum(hexagons) / len(hexagons))


def test_concept_images_without_an_object_are_rejected() -> None:
    with pytest.raises(ValueError, match="none of the concept images"):
        concept_reference([Image.new("RGB", (128, 128), (25, 25, 25))])
