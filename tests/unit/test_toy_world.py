"""The toy world: seeded renders, captions that parse back, datasets trainers can read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdstudio_eval import toy_world
from sdstudio_eval.toy_world import (
    BACKGROUNDS,
    BASE_SHAPES,
    BASE_TEXTURES,
    COLOR_RGB,
    HELD_OUT_SHAPES,
    HELD_OUT_TEXTURES,
    SHAPES,
    TEXTURES,
    Scene,
    caption,
    concept_scenes,
    degrade,
    held_out_concept_images,
    parse_caption,
    parse_prompt,
    random_scene,
    read_dataset_scenes,
    render,
    scene_from_attributes,
    write_dataset,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_render_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    scene = Scene("triangle", "red", "blue", "left", "large", 2, "striped")
    first = render(scene, seed=7)
    assert first.mode == "RGB" and first.size == (128, 128)
    assert first.tobytes() == render(scene, seed=7).tobytes()
    assert first.tobytes() != render(scene, seed=8).tobytes()


def test_render_paints_background_and_object_colours() -> None:
    scene = Scene("square", "yellow", "blue", "center", "large", 1, "solid")
    image = pixels(render(scene, seed=0))
    assert tuple(image[0, 0]) == COLOR_RGB["blue"]
    assert tuple(image[64, 64]) == COLOR_RGB["yellow"]
    # The right-hand anchor is empty for a centred object.
    assert tuple(image[64, 120]) == COLOR_RGB["blue"]


def test_render_places_objects_by_position() -> None:
    for position, (anchor_x, anchor_y) in toy_world.POSITION_ANCHORS.items():
        image = pixels(render(Scene("circle", "white", "black", position, "small"), seed=3))
        ys, xs = np.nonzero(image[..., 0] > 128)
        assert abs(xs.mean() / 128 - anchor_x) < 0.03, position
        assert abs(ys.mean() / 128 - anchor_y) < 0.03, position


def test_render_at_64_is_the_same_picture_smaller() -> None:
    scene = Scene("star", "green", "white", "right", "large", 1, "solid")
    small = render(scene, size=64, seed=5)
    assert small.size == (64, 64)
    downscaled = render(scene, size=128, seed=5).resize((64, 64), Image.Resampling.BOX)
    assert np.abs(pixels(small) - pixels(downscaled)).mean() < 2.0


def test_textures_show_a_second_tone_inside_the_object() -> None:
    base = dict(shape="square", color="red", background="white", position="center", size="large")
    solid = pixels(render(Scene(**base, texture="solid"), seed=1))[52:76, 52:76]
    striped = pixels(render(Scene(**base, texture="striped"), seed=1))[52:76, 52:76]
    dotted = pixels(render(Scene(**base, texture="dotted"), seed=1))[52:76, 52:76]
    assert np.all(solid == solid[0, 0])
    shade = np.array(toy_world.shade_rgb("red"))
    for patterned in (striped, dotted):
        assert np.any(np.all(patterned == shade, axis=-1))
    # Stripes are horizontal: every row is uniform, rows differ.
    assert np.all(striped == striped[:, :1]) and not np.all(striped == striped[:1])


def test_caption_wording() -> None:
    assert caption(Scene("circle", "red", "blue", "left", "small")) == "a small red circle on the left, blue background"
    assert (
        caption(Scene("square", "green", "yellow", "center", "large", 2, "striped"))
        == "two large striped green squares in the center, yellow background"
    )
    assert (
        caption(Scene("hexagon", "black", "white", "top", "small", 3, "dotted"))
        == "three small dotted black hexagons at the top, white background"
    )


def test_every_caption_parses_back_to_its_scene() -> None:
    rng = np.random.default_rng(11)
    scenes = {random_scene(rng, include_held_out=True) for _ in range(600)}
    for scene in scenes:
        assert parse_caption(caption(scene)) == scene
    assert len({caption(scene) for scene in scenes}) == len(scenes)


def test_hand_written_prompts_parse() -> None:
    scene = parse_caption("A photo of two big striped green squares at the top, on a yellow background, masterpiece")
    assert scene == Scene("square", "green", "yellow", "top", "large", 2, "striped")
    assert parse_prompt("a red hexagon") == {"count": 1, "color": "red", "shape": "hexagon"}
    assert parse_prompt("three stars, black background") == {"count": 3, "shape": "star", "background": "black"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a red circle on the left", "background"),
        ("a small red blue circle on the left, white background", "two different color"),
        ("a small red circles on the left, white background", "plural"),
        ("a small red circle and a square on the left, white background", "more than one shape"),
        ("a small blue circle on the left, blue background", "must differ"),
        ("a small blue circle on the left, red background", "invalid background 'red'; valid values: white"),
    ],
)
def test_bad_captions_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_scene_rejects_invalid_values_and_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="pentagon.*circle, square, triangle, hexagon, star"):
        Scene("pentagon", "red", "blue")
    with pytest.raises(ValueError, match="count"):
        Scene("circle", "red", "blue", count=4)
    with pytest.raises(ValueError, match="must differ"):
        Scene("circle", "blue", "blue")


def test_scene_from_attributes_validates_names_and_values() -> None:
    with pytest.raises(ValueError, match="unknown attribute.*colour.*valid attributes: shape, color"):
        scene_from_attributes(shape="circle", colour="red")
    with pytest.raises(ValueError, match="purple.*red, green, blue, yellow, white, black"):
        scene_from_attributes(color="purple")
    assert scene_from_attributes(shape="star", count="2") == Scene("star", "red", "white", count=2)
    assert scene_from_attributes(color="white").background == "black"


def test_random_scenes_hold_out_concepts_unless_asked() -> None:
    rng = np.random.default_rng(0)
    base = [random_scene(rng) for _ in range(400)]
    assert {scene.shape for scene in base} == set(BASE_SHAPES)
    assert {scene.texture for scene in base} == set(BASE_TEXTURES)
    assert not any(scene.is_held_out for scene in base)
    everything = [random_scene(rng, include_held_out=True) for _ in range(400)]
    assert {scene.shape for scene in everything} == set(SHAPES)
    assert {scene.texture for scene in everything} == set(TEXTURES)
    assert {scene.background for scene in everything} == set(BACKGROUNDS)
    assert all(scene.color != scene.background for scene in everything)


def test_write_dataset_is_deterministic_and_readable(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path / "a", n=12, seed=4)
    again = write_dataset(tmp_path / "b", n=12, seed=4)
    other = write_dataset(tmp_path / "c", n=12, seed=5)
    assert [path.name for path in paths] == [f"{index:05d}.png" for index in range(12)]
    assert [path.read_bytes() for path in paths] == [path.read_bytes() for path in again]
    assert [path.read_bytes() for path in paths] != [path.read_bytes() for path in other]
    scenes = read_dataset_scenes(tmp_path / "a")
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (128, 128)
        sidecar = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert sidecar == caption(scenes[path.name])
        assert not scenes[path.name].is_held_out
    records = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert [record["file_name"] for record in records] == [path.name for path in paths]
    assert all(record["text"] == caption(scenes[record["file_name"]]) for record in records)


def test_held_out_concept_images_vary_context_but_keep_the_shape() -> None:
    scenes = concept_scenes("star", n=8, seed=2)
    assert {scene.shape for scene in scenes} == {"star"}
    assert len({(scene.color, scene.background, scene.position) for scene in scenes}) > 4
    images = held_out_concept_images("star", n=8, seed=2)
    assert len(images) == 8 and all(image.size == (128, 128) for image in images)
    assert [image.tobytes() for image in images] == [image.tobytes() for image in held_out_concept_images("star", n=8, seed=2)]
    dotted = concept_scenes("hexagon", n=3, seed=0, texture="dotted", color="blue")
    assert all(scene.texture == "dotted" and scene.color == "blue" for scene in dotted)
    assert set(HELD_OUT_SHAPES) <= set(SHAPES) and set(HELD_OUT_TEXTURES) <= set(TEXTURES)
    with pytest.raises(ValueError, match="valid values"):
        held_out_concept_images("pentagon")


def test_degrade_blurs_and_adds_noise_deterministically() -> None:
    clean = render(Scene("circle", "red", "white"), seed=0)
    noisy = degrade(clean, blur_radius=1.0, noise_sigma=8.0, seed=3)
    assert noisy.tobytes() == degrade(clean, blur_radius=1.0, noise_sigma=8.0, seed=3).tobytes()
    difference = pixels(noisy) - pixels(clean)
    assert 5 < difference[:20, :20].std() < 11  # the flat corner only shows the noise


def test_evaluation_combinations_can_be_kept_out_of_a_training_set():
    from sdstudio_eval.toy_world import caption, dataset_scenes, evaluation_scenes

    evaluation = {caption(s) for s in evaluation_scenes(200)}
    assert len(evaluation) == 200
    assert all(not s.is_held_out for s in evaluation_scenes(200))
    training = {caption(s) for s in dataset_scenes(5000, seed=3, exclude_captions=frozenset(evaluation))}
    assert not training & evaluation
    assert {caption(s) for s in dataset_scenes(5000, seed=3)} & evaluation  # without exclusion they do occur
