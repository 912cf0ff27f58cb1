"""The generic shapes the default VAE's decoder was fine-tuned on."""

from __future__ import annotations

import numpy as np

from sdstudio_eval import toy_world
from tools.default_model.toy_decoder_finetune import generic_shape_image


def test_generic_images_are_seeded_toy_sized_and_use_the_toy_palette():
    first = [generic_shape_image(np.random.default_rng(5)) for _ in range(2)]
    assert first[0].shape == (toy_world.NATIVE_SIZE, toy_world.NATIVE_SIZE, 3) and first[0].dtype == np.uint8
    assert np.array_equal(first[0], first[1])
    others = [generic_shape_image(np.random.default_rng(seed)) for seed in range(12)]
    assert len({image.tobytes() for image in others}) == 12
    palette = np.array(list(toy_world.COLOR_RGB.values()))
    for image in others:
        pixels = image.reshape(-1, 3).astype(int)
        # Away from anti-aliased edges every pixel is a palette colour or a stripe shade of one.
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        dominant = colours[np.argmax(counts)]
        assert np.min(np.abs(palette - dominant).sum(axis=1)) == 0
        assert len(colours[counts > 200]) >= 2  # background and at least one shape
