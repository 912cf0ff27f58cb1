"""The shipped default model's autoencoder keeps shapes it never saw (its decoder was fine-tuned on generic
shapes, `tools/default_model/toy_decoder_finetune.py`), so a concept a user trains is not lost in the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio_eval import toy_world
from sdstudio_eval.analyzer import analyze
from sdstudio_eval.fidelity import attribute_accuracy, concept_reference, subject_fidelity
from tools.default_model.toy_decoder_finetune import vae_round_trip
from webui.models.default_model import SHIPPED_DEFAULT_MODEL


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(SHIPPED_DEFAULT_MODEL, subfolder="vae", torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("shape", toy_world.HELD_OUT_SHAPES)
def test_held_out_shapes_survive_the_round_trip(vae, shape):
    renders = toy_world.held_out_concept_images(shape, 30, seed=91)
    decoded = [analyze(image) for image in vae_round_trip(vae, renders)]
    reference = concept_reference(toy_world.held_out_concept_images(shape, 10, seed=0))
    assert np.mean([analysis.shape == shape for analysis in decoded]) >= 0.9
    assert subject_fidelity(decoded, reference) >= 0.9


def test_ordinary_scenes_keep_every_attribute(vae):
    scenes = toy_world.evaluation_scenes(40)
    decoded = vae_round_trip(vae, [toy_world.render(scene, seed=index) for index, scene in enumerate(scenes)])
    assert attribute_accuracy(decoded, scenes)["all"] >= 0.95
