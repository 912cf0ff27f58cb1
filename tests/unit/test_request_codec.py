"""Stored job requests read back equal: fields, tuples and img2img's images (pixel for pixel)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.generation.request_codec import RequestCodecError, decode_request, encode_request
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest


def test_a_txt2img_request_round_trips_without_files(tmp_path):
    request = Txt2ImgRequest(prompt="a red circle", styles=("one", "two"), steps=7, seed=42, enable_hr=True,
                             hr_scale=1.5, checkpoint="toy.safetensors [abc]", extra={"sd_vae": "x"},
                             outputs_subfolder="users/anna")  # a queued job saves where its owner's images go
    data = encode_request(request, tmp_path / "images")
    assert decode_request(data, tmp_path / "images") == request
    assert not (tmp_path / "images").exists()


def test_img2img_images_are_stored_as_png_and_read_back_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
    mask = Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8), "L")
    request = Img2ImgRequest(prompt="p", init_images=(source,), mask=mask, denoising_strength=0.4, width=32, height=24)
    data = encode_request(request, tmp_path)
    assert data["fields"]["init_images"] == ["init-0.png"] and data["fields"]["mask"] == "mask.png"
    back = decode_request(data, tmp_path)
    assert isinstance(back, Img2ImgRequest) and back.denoising_strength == 0.4
    assert np.array_equal(np.asarray(back.init_images[0]), np.asarray(source))
    assert back.mask.mode == "L" and np.array_equal(np.asarray(back.mask), np.asarray(mask))


def test_bad_stored_requests_are_refused_with_the_reason(tmp_path):
    with pytest.raises(RequestCodecError, match="unknown request type"):
        decode_request({"type": "sketch", "fields": {}}, tmp_path)
    with pytest.raises(RequestCodecError, match="unknown request field"):
        decode_request({"type": "txt2img", "fields": {"prompt": "p", "pad": 1}}, tmp_path)
    with pytest.raises(RequestCodecError, match="missing"):
        decode_request({"type": "img2img", "fields": {"init_images": ["../etc.png"]}}, tmp_path)
    with pytest.raises(RequestCodecError, match="JSON"):
        encode_request(Txt2ImgRequest(extra={"image": object()}), tmp_path)


def test_a_queued_batch_keeps_whose_folders_it_may_use():
    from webui.generation.service import BatchJob, GenerationService
    from webui.security.identity import USER, User

    template = Img2ImgRequest(prompt="p", denoising_strength=0.3, outputs_subfolder="users/anna")
    job = BatchJob(template, "cats", "", "", User("anna", USER))
    back = GenerationService._decode_batch(GenerationService._encode_batch(job))
    assert back == job  # after a restart it is judged against Anna's folders again, not the whole ones
    assert GenerationService._decode_batch(GenerationService._encode_batch(BatchJob(template, "a", "b"))).user is None
