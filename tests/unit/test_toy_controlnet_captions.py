"""The toy ControlNet's contradicting captions (tools/controlnet/train_toy_controlnet.py): the scene a control
map shows, captioned with another shape at another position, so training teaches the map to win."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from sdstudio_eval import toy_world
from tools.controlnet.train_toy_controlnet import contradicting_token_ids
from tools.default_model.toy_model_training import clip_tokenizer, training_scenes


def test_a_contradicting_scene_changes_the_shape_and_the_position_only():
    rng = np.random.default_rng(3)
    for scene in toy_world.dataset_scenes(60, seed=11):
        other = toy_world.contradicting_scene(scene, rng)
        assert other.shape in toy_world.BASE_SHAPES and other.shape != scene.shape
        assert other.position != scene.position
        kept = {key: value for key, value in asdict(scene).items() if key not in ("shape", "position")}
        assert kept == {key: value for key, value in asdict(other).items() if key not in ("shape", "position")}


def test_each_renders_contradicting_caption_belongs_to_that_render():
    """Row i contradicts training scene i (the order `render_dataset` renders them in), also across chunks."""
    scenes = training_scenes(12, 2027)
    rows = contradicting_token_ids(12, 2027, workers=2)
    tokenizer = clip_tokenizer()
    named_shape = 0
    for scene, row in zip(scenes, rows, strict=True):
        named = toy_world.parse_prompt(tokenizer.decode(row, skip_special_tokens=True))
        assert named.get("color", scene.color) == scene.color
        assert named.get("shape") != scene.shape and named.get("position") != scene.position
        named_shape += "shape" in named
    assert named_shape >= 6   # most captions name the (other) shape
