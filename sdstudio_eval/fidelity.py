"""Fidelity metrics for generated toy-world images, after the DreamBooth paper.

* prompt fidelity: does the image show what the prompt asked for?
* subject fidelity: does the personalized concept (e.g. a held-out shape
  taught by DreamBooth/LoRA/TI) appear?
* prior preservation: do plain class prompts still give ordinary images
  instead of the concept?

All three are shares of images in [0, 1], computed with ``analyzer``; the
subject similarity compares outline geometry only, so it is independent of
colour, texture, position and size and needs no shape label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from sdstudio_eval import toy_world
from sdstudio_eval.analyzer import ANALYSIS_SIZE, SUPERSAMPLE, Analysis, ObjectReport, analyze
from sdstudio_eval.toy_world import ATTRIBUTES, COLOR_RGB, HELD_OUT_SHAPES, Scene

# Shape signature: bounding-box fill, convex-hull solidity, aspect and the
# outline harmonics k = 2..8 (k = 1 only measures centroid offset, k > 8 is
# mostly pixel noise at small sizes). Differences are divided by a tolerance,
# the spread one shape shows across sizes, textures, blur and noise: a fixed
# part plus, for harmonics, a share of the harmonic itself (a star's strong 5th
# harmonic varies more in absolute terms than a circle's near-zero ones).
SIGNATURE_HARMONICS = slice(1, 8)
SIGNATURE_ABSOLUTE_TOLERANCE = np.array([0.1, 0.1, 0.02] + [0.016] * 7)
SIGNATURE_RELATIVE_TOLERANCE = np.array([0.0, 0.0, 0.0] + [0.3] * 7)
SOLIDITY_INDEX, ASPECT_INDEX = 1, 2
ASPECT_SPIKINESS_TOLERANCE = 0.25
# Similarity is 0.5 ** ((d / DISTANCE_AT_HALF_SIMILARITY) ** 2) for the
# tolerance-scaled Euclidean signature distance d, so the threshold below sits
# exactly at d = 2.4, the distance that best separated every toy-world shape
# from every other one on clean and on blurred+noisy renders (the tolerances
# came out of the same search).
DISTANCE_AT_HALF_SIMILARITY = 2.4
# Calibrated on renders (numbers in docs/TOY_WORLD.md): renders of a concept's
# own shape pass 99-100 % of the time, renders of other shapes 0-2 % (up to 6 %
# for circle vs hexagon on blurred, noisy renders).
SUBJECT_SIMILARITY_THRESHOLD = 0.5
# Concept outlines are redrawn at these sizes (8 % .. 50 % of the side), sharp
# and blurred; an image is compared with redraws within this size ratio.
REFERENCE_EXTENTS = tuple(0.08 * 1.3**step for step in range(8))
REFERENCE_BLURS = (0.0, 1.0)
REFERENCE_SIZE_RATIO = 1.2

ExpectedAttributes = Scene | Mapping[str, object]


def _analyses(images: Sequence[Image.Image | Analysis]) -> list[Analysis]:
    """Analyze images, passing through ones already analyzed (callers may reuse analyses)."""
    return [image if isinstance(image, Analysis) else analyze(image) for image in images]


def attribute_accuracy(images: Sequence[Image.Image | Analysis], expected: Sequence[ExpectedAttributes]) -> dict[str, float]:
    """Per attribute, the share of images that show the expected value, plus "all".

    ``expected`` holds one Scene or attribute mapping per image; a mapping may
    name only some attributes (e.g. ``parse_prompt("a red hexagon")``), and an
    attribute's share counts only the images whose expectation names it.
    "all" is the share of images matching every attribute they name.
    """
    if len(images) != len(expected):
        raise ValueError(f"got {len(images)} images but {len(expected)} expected scenes")
    if not images:
        raise ValueError("no images to evaluate")
    hits = {attribute: 0 for attribute in ATTRIBUTES}
    totals = {attribute: 0 for attribute in ATTRIBUTES}
    all_match = 0
    for analysis, wanted in zip(_analyses(images), expected):
        matches = analysis.matches(wanted)
        for attribute, matched in matches.items():
            hits[attribute] += matched
            totals[attribute] += 1
        all_match += bool(matches) and all(matches.values())
    report = {attribute: hits[attribute] / totals[attribute] for attribute in ATTRIBUTES if totals[attribute]}
    report["all"] = all_match / len(images)
    return report


def prompt_fidelity(images: Sequence[Image.Image | Analysis], expected: Sequence[ExpectedAttributes]) -> float:
    """Share of images whose analyzed attributes ALL match their prompt's scene (1.0 = perfect).

    Use ``attribute_accuracy`` for the per-attribute breakdown.
    """
    return attribute_accuracy(images, expected)["all"]


@dataclass(frozen=True)
class ConceptReference:
    """A concept's outline, redrawn at many sizes, for scale-fair similarity checks.

    A 20 px star has blunter points than a 40 px one, so comparing a small
    generated object with large training photos would penalize size, not
    shape. Each concept image's main outline is therefore redrawn (white on
    black, sharp and blurred) at sizes from 8 % to 50 % of the image, and an
    image is compared with the redraws of similar size.
    """

    extents: np.ndarray  # measured extent of each redraw (fraction of the image side)
    signatures: np.ndarray  # one shape signature per redraw, same order

    @classmethod
    def from_images(cls, concept_images: Sequence[Image.Image | Analysis]) -> ConceptReference:
        """Measure the concept images; at least one must show a measurable object."""
        outlines = []
        for analysis in _analyses(concept_images):
            main = _main_object(analysis)
            if main is not None and main.outline is not None:
                outlines.append(main.outline)
        if not outlines:
            raise ValueError("none of the concept images shows an object the analyzer can measure")
        extents, signatures = [], []
        for outline in outlines:
            for extent in REFERENCE_EXTENTS:
                for blur in REFERENCE_BLURS:
                    redraw = analyze(_redraw_outline(outline, extent, blur))
                    main = _main_object(redraw)
                    signature = shape_signature(redraw)
                    if main is not None and signature is not None:
                        extents.append(main.extent)
                        signatures.append(signature)
        if not signatures:
            raise ValueError("the concept's outline could not be measured at any size")
        return cls(np.array(extents), np.stack(signatures))

    def distance(self, signature: np.ndarray, extent: float) -> float:
        """Tolerance-scaled signature distance to the nearest redraw of about the same size."""
        size_gap = np.abs(np.log(self.extents / max(extent, 1e-6)))
        comparable = size_gap <= np.log(REFERENCE_SIZE_RATIO)
        if not comparable.any():
            comparable = size_gap <= size_gap.min() + 1e-9
        candidates = self.signatures[comparable]
        tolerance = SIGNATURE_ABSOLUTE_TOLERANCE + SIGNATURE_RELATIVE_TOLERANCE * np.maximum(np.abs(candidates), np.abs(signature))
        # Thin points (low solidity) blur away or lose their tips to a stripe,
        # so a spiky shape's bounding-box aspect is less reliable.
        spikiness = 1.0 - np.minimum(candidates[:, SOLIDITY_INDEX], signature[SOLIDITY_INDEX])
        tolerance[:, ASPECT_INDEX] += ASPECT_SPIKINESS_TOLERANCE * np.clip(spikiness, 0.0, 1.0)
        distances = np.sqrt(np.sum(((candidates - signature) / tolerance) ** 2, axis=1))
        return float(distances.min())


def _main_object(analysis: Analysis) -> ObjectReport | None:
    """The largest measurable object of an analysis."""
    measured = [report for report in analysis.objects if report.features is not None]
    return max(measured, key=lambda report: report.area) if measured else None


def _redraw_outline(outline: np.ndarray, extent: float, blur: float) -> Image.Image:
    """A white-on-black toy-world-like image of ``outline`` whose larger side is ``extent`` of the image."""
    canvas_side = ANALYSIS_SIZE * SUPERSAMPLE
    height, width = outline.shape
    scale = extent * canvas_side / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    shape = Image.fromarray(outline.astype(np.uint8) * 255).resize(new_size, Image.Resampling.BILINEAR)
    canvas = Image.new("L", (canvas_side, canvas_side), 0)
    canvas.paste(shape, ((canvas_side - new_size[0]) // 2, (canvas_side - new_size[1]) // 2))
    coverage = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float64) / 255.0
    dark, light = np.array(COLOR_RGB["black"], dtype=np.float64), np.array(COLOR_RGB["white"], dtype=np.float64)
    pixels = dark + coverage[..., None] * (light - dark)
    image = Image.fromarray(pixels.round().astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else image


def shape_signature(image: Image.Image | Analysis) -> np.ndarray | None:
    """Scale-, colour- and position-free outline signature of an image's largest object."""
    analysis = image if isinstance(image, Analysis) else analyze(image)
    main = _main_object(analysis)
    if main is None or main.features is None:
        return None
    features = main.features
    values = [features.fill, features.solidity, features.aspect, *features.harmonics[SIGNATURE_HARMONICS]]
    return np.array(values, dtype=np.float64)


Concept = ConceptReference | Sequence[Image.Image | Analysis]


def concept_reference(concept: Concept) -> ConceptReference:
    """A ConceptReference from concept images (or the reference itself); build it once, reuse it."""
    return concept if isinstance(concept, ConceptReference) else ConceptReference.from_images(concept)


def subject_similarity(image: Image.Image | Analysis, concept: Concept) -> float:
    """How closely the image's main object matches the concept's shape, in [0, 1].

    ``0.5 ** ((d / DISTANCE_AT_HALF_SIMILARITY) ** 2)`` for the tolerance-scaled
    signature distance d to the nearest same-size redraw of a concept image; 0
    when the image shows no measurable object.
    """
    reference = concept_reference(concept)
    analysis = image if isinstance(image, Analysis) else analyze(image)
    main = _main_object(analysis)
    signature = shape_signature(analysis)
    if main is None or signature is None:
        return 0.0
    distance = reference.distance(signature, main.extent)
    return float(0.5 ** ((distance / DISTANCE_AT_HALF_SIMILARITY) ** 2))


def subject_similarities(images: Sequence[Image.Image | Analysis], concept: Concept) -> list[float]:
    """``subject_similarity`` for many images against one concept (measured once)."""
    reference = concept_reference(concept)
    return [subject_similarity(analysis, reference) for analysis in _analyses(images)]


def subject_fidelity(images: Sequence[Image.Image | Analysis], concept_images: Concept) -> float:
    """Share of images in which the concept appears (similarity >= SUBJECT_SIMILARITY_THRESHOLD).

    ``concept_images`` are the personalization training images (or a
    ConceptReference built from them); colour, texture, size and position of
    the generated objects do not matter, only their outline.
    """
    if not images:
        raise ValueError("no images to evaluate")
    similarities = subject_similarities(images, concept_images)
    return sum(value >= SUBJECT_SIMILARITY_THRESHOLD for value in similarities) / len(similarities)


def prior_preservation(images_for_class_prompts: Sequence[Image.Image | Analysis], concept_images: Concept) -> float:
    """Share of class-prompt images that did NOT turn into the concept (1.0 = perfect preservation).

    Exactly ``1 - subject_fidelity(images_for_class_prompts, concept_images)``:
    an image counts as "turned into the concept" when its main object passes the
    subject-similarity threshold. Images with no measurable object count as
    preserved, so a model that draws nothing would score 1.0; judge the same
    images with ``prompt_fidelity`` against their class prompts to catch that.
    """
    return 1.0 - subject_fidelity(images_for_class_prompts, concept_images)


def validate_subject_fidelity(
    concept_shapes: Sequence[str] = HELD_OUT_SHAPES,
    n: int = 300,
    seed: int = 0,
    *,
    concept_image_count: int = 10,
    blur_radius: float = 0.0,
    noise_sigma: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Calibration check of ``subject_fidelity``, per concept shape.

    Renders ``n`` random scenes (every shape, colour, size, count, texture and
    position; optionally blurred and noisy) and, for each concept shape, scores
    them against ``concept_image_count`` concept images of that shape:
    ``"own"`` is the subject fidelity of the scenes showing the concept's shape
    (should be >= 0.9), ``"others"`` that of the scenes showing any other shape,
    i.e. what a model that never learned the concept would draw (should be <= 0.1).
    """
    rng = np.random.default_rng([seed, 0x5B1])
    scenes = [toy_world.random_scene(rng, include_held_out=True) for _ in range(n)]
    analyses = []
    for index, scene in enumerate(scenes):
        image = toy_world.render(scene, seed=seed * 100_003 + index)
        if blur_radius > 0 or noise_sigma > 0:
            image = toy_world.degrade(image, blur_radius, noise_sigma, seed=seed * 100_003 + index)
        analyses.append(analyze(image))
    report = {}
    for shape in concept_shapes:
        reference = concept_reference(toy_world.held_out_concept_images(shape, n=concept_image_count, seed=seed + 1))
        own = [analysis for analysis, scene in zip(analyses, scenes) if scene.shape == shape]
        others = [analysis for analysis, scene in zip(analyses, scenes) if scene.shape != shape]
        report[shape] = {
            "own": subject_fidelity(own, reference) if own else float("nan"),
            "others": subject_fidelity(others, reference) if others else float("nan"),
            "own_images": float(len(own)),
            "other_images": float(len(others)),
        }
    return report
