"""txt2img's Refiner through AppContext and the queue, as the UI and the API use it: an SD1 checkpoint refined
by another SD1 checkpoint (A1111 lets any checkpoint refine), a tiny SDXL base refined by a tiny SDXL refiner
(both real single files, tests/support/sdxl_files.py), hires fix with a refiner, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine.helpers import perturbed_copy
from tests.support.sdxl_files import BASE, REFINER, write_single_file
from webui.context import build_context
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.settings import settings_from_args

SMALL = dict(width=64, height=64, steps=4, sampler_name="DPM++ 2M", prompt="a red circle", seed=11)
TOY = "sd-studio-toy"


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    from tests.conftest import with_default_model

    data = with_default_model(tmp_path_factory.mktemp("data"), default_model_folder)
    checkpoints = data / "models" / "Stable-diffusion"
    perturbed_copy(default_model_folder, checkpoints / "toy-refiner", seed=5)
    write_single_file(checkpoints / "xl_base.safetensors", BASE, seed=1)
    write_single_file(checkpoints / "xl_refiner.safetensors", REFINER, seed=2)
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context
    context.close()


def generate(ctx, **fields):
    return ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, **fields})).result(timeout=300)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_an_sd1_refiner_changes_the_picture_reproducibly_and_is_recorded(ctx):
    plain = generate(ctx, checkpoint=TOY)
    refined = generate(ctx, checkpoint=TOY, refiner_checkpoint="toy-refiner", refiner_switch_at=0.5)
    again = generate(ctx, checkpoint=TOY, refiner_checkpoint="toy-refiner", refiner_switch_at=0.5)
    assert np.abs(pixels(plain) - pixels(refined)).mean() > 1
    assert refined.images[0].tobytes() == again.images[0].tobytes()
    params = parse_infotext(refined.infotexts[0])
    assert params["Refiner"].startswith("toy-refiner [") and len(params["Refiner"]) == len("toy-refiner [") + 11
    assert params["Refiner switch at"] == "0.5" and params["Model"] == TOY
    assert "Refiner" not in parse_infotext(plain.infotexts[0])
    # A later switch leaves more of the work to the checkpoint: the picture is closer to the unrefined one.
    late = generate(ctx, checkpoint=TOY, refiner_checkpoint="toy-refiner", refiner_switch_at=0.9)
    assert np.abs(pixels(plain) - pixels(late)).mean() < np.abs(pixels(plain) - pixels(refined)).mean()


def test_switch_at_one_is_the_checkpoint_alone(ctx):
    plain = generate(ctx, checkpoint=TOY)
    never = generate(ctx, checkpoint=TOY, refiner_checkpoint="toy-refiner", refiner_switch_at=1.0)
    assert plain.images[0].tobytes() == never.images[0].tobytes()
    assert "Refiner" not in parse_infotext(never.infotexts[0])


def test_hires_fix_hands_its_second_pass_to_the_refiner(ctx):
    hires = dict(checkpoint=TOY, enable_hr=True, hr_scale=1.5, denoising_strength=0.6)
    plain = generate(ctx, **hires)
    refined = generate(ctx, **hires, refiner_checkpoint="toy-refiner", refiner_switch_at=0.6)
    assert refined.images[0].size == (96, 96)
    assert np.abs(pixels(plain) - pixels(refined)).mean() > 1
    assert parse_infotext(refined.infotexts[0])["Refiner"].startswith("toy-refiner")


def test_the_sdxl_refiner_refines_an_sdxl_base(ctx):
    plain = generate(ctx, checkpoint="xl_base", steps=3)
    refined = generate(ctx, checkpoint="xl_base", steps=3, refiner_checkpoint="xl_refiner", refiner_switch_at=0.4)
    assert refined.images[0].size == (64, 64)
    assert np.abs(pixels(plain) - pixels(refined)).mean() > 0.5
    assert parse_infotext(refined.infotexts[0])["Refiner"].startswith("xl_refiner [")


def test_incompatible_pairs_and_a_refiner_alone_are_refused_with_the_models_named(ctx):
    with pytest.raises(RequestError, match=r"refiner xl_refiner \(SDXL Refiner\) cannot refine sd-studio-toy "
                                           r"\(SD1.x\): their latents differ"):
        generate(ctx, checkpoint=TOY, refiner_checkpoint="xl_refiner")
    with pytest.raises(RequestError, match="xl_refiner is an SDXL Refiner model: it cannot make a picture from text"):
        generate(ctx, checkpoint="xl_refiner")
    with pytest.raises(RequestError, match="refiner_switch_at 0.0 is outside 0.01..1.0"):
        generate(ctx, checkpoint=TOY, refiner_checkpoint="toy-refiner", refiner_switch_at=0.0)
    with pytest.raises(RequestError, match="not found"):
        generate(ctx, checkpoint=TOY, refiner_checkpoint="no-such-model")
    # "None" is A1111's "no refiner".
    assert "Refiner" not in generate(ctx, checkpoint=TOY, refiner_checkpoint="None").infotexts[0]


def test_the_sdxl_refiner_as_the_checkpoint_refines_an_image_in_img2img(ctx):
    from PIL import Image

    source = generate(ctx, checkpoint="xl_base", steps=3).images[0]
    request = Img2ImgRequest(**{**SMALL, "steps": 4}, checkpoint="xl_refiner", init_images=(source,),
                             denoising_strength=0.5)
    result = ctx.generation.submit_img2img(request).result(timeout=300)
    assert result.images[0].size == (64, 64) and isinstance(result.images[0], Image.Image)
    assert parse_infotext(result.infotexts[0])["Model"] == "xl_refiner"
    with pytest.raises(RequestError, match="the Refiner works in txt2img only"):
        ctx.generation.submit_img2img(Img2ImgRequest(**SMALL, init_images=(source,), refiner_checkpoint="toy-refiner"))
