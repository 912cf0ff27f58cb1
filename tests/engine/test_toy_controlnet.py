"""The shipped toy canny ControlNet (models/default/controlnet/) steers the default model in a real generation:
listed by the app with an empty ControlNet folder, a canny map of an object on the left puts the generated
object on the left where the prompt alone puts it on the right, and weight 0 gives the plain image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from sdstudio_eval.analyzer import analyze
from sdstudio_eval.toy_world import render, scene_from_attributes
from tests.conftest import with_default_model
from webui.context import build_context
from webui.extensions.host import announce_app_started
from webui.extensions.scripts import ExtensionScripts
from webui.generation.requests import Txt2ImgRequest
from webui.settings import SHIPPED_CONTROLNETS_FOLDER, settings_from_args

MODEL = "control_sdstudio_toy_canny"
SHIPPED_FILE = SHIPPED_CONTROLNETS_FOLDER / f"{MODEL}.safetensors"
# The prompt names the colours and another place (the right) than the map (the left).
PROMPT = "a large red circle on the right, white background"
SEEDS = (1, 2)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    assert SHIPPED_FILE.is_file(), f"the shipped toy ControlNet is missing: {SHIPPED_FILE}"
    data = with_default_model(tmp_path_factory.mktemp("toy-cn-data"), default_model_folder)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    announce_app_started(context.extensions, "http://127.0.0.1:0", context, data / "extension-data")
    yield context
    context.close()


def left_circle_png() -> str:
    scene = scene_from_attributes(shape="circle", color="black", background="white", position="left", size="large")
    buffer = io.BytesIO()
    render(scene, seed=3).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generate(ctx, seed: int, weight: float | None):
    request = Txt2ImgRequest(prompt=PROMPT, width=128, height=128, steps=20, seed=seed, save_images=False)
    if weight is not None:
        unit = {"enabled": True, "image": left_circle_png(), "module": "canny", "model": MODEL, "weight": weight,
                "pixel_perfect": True}
        request = ExtensionScripts(ctx.extensions).with_alwayson(request, {"controlnet": [unit]})
    return ctx.generation.submit_txt2img(request).result(timeout=300).images[0]


def test_the_shipped_controlnet_is_listed_with_an_empty_controlnet_folder(ctx):
    found = ctx.controlnets.find(MODEL)
    assert found.path == SHIPPED_FILE and found.family == "sd1"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_left_canny_map_moves_the_object_left_and_weight_zero_is_the_plain_image(ctx, seed):
    plain = generate(ctx, seed, None)
    assert analyze(plain).position == "right"            # the prompt alone: where it says
    controlled = analyze(generate(ctx, seed, 1.0))
    assert (controlled.position, controlled.shape) == ("left", "circle")
    assert controlled.color == "red"                     # the colour still comes from the prompt
    assert np.array_equal(np.asarray(generate(ctx, seed, 0.0)), np.asarray(plain))
