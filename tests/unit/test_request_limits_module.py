"""webui.security.limits: the checked image opener, upload and generation limits, and their flags."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from webui.generation.image_ops import ImageInputError, ImageTooLargeError, open_user_image
from webui.generation.requests import GenerationLimits, RequestError, Txt2ImgRequest
from webui.security.limits import RequestLimits
from webui.settings import SettingsError, settings_from_args


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is cut off after a few bytes.

    Decoding it would fail with "truncated"; refusing it for its size proves the refusal came from the
    header, before any decoding.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def png_bytes(size=(64, 48), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_within_the_limits_decodes():
    limits = RequestLimits(max_image_pixels=64 * 48)
    image = limits.open_image(png_bytes())
    assert image.size == (64, 48) and image.mode == "RGB"
    assert limits.check_image_header(png_bytes()) == (64, 48)


@pytest.mark.parametrize("size", [(15000, 15000), (12000, 12000), (4097, 4096)])
def test_too_many_pixels_are_refused_from_the_header_before_decoding(size):
    limits = RequestLimits()  # 4096 x 4096 by default
    data = png_header_only(*size)
    with pytest.raises(ImageTooLargeError, match="pixels.*the limit is 16,777,216 pixels"):
        limits.open_image(data)
    with pytest.raises(ImageTooLargeError, match="limit is 16,777,216 pixels"):
        limits.check_image_header(data)
    if size[0] * size[1] < 2 * Image.MAX_IMAGE_PIXELS:  # below Pillow's own guard: our check names the size
        with pytest.raises(ImageTooLargeError, match=f"{size[0]}x{size[1]} = "):
            limits.open_image(data)
        # The same bytes within a larger limit reach the decoder, which finds the data truncated.
        with pytest.raises(ImageInputError, match="damaged or truncated"):
            RequestLimits(max_image_pixels=size[0] * size[1]).open_image(data)


def test_pillows_own_bomb_guard_is_a_too_large_error_too(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(15000, 15000))
    with pytest.raises(ImageTooLargeError, match="too many pixels"):
        open_user_image(path)  # no limit of ours: Pillow's DecompressionBombError, translated


def test_files_and_already_decoded_images_go_through_the_same_check(tmp_path):
    limits = RequestLimits(max_image_pixels=1000)
    path = tmp_path / "small.png"
    path.write_bytes(png_bytes((64, 48)))
    with pytest.raises(ImageTooLargeError, match="64x48 = 3,072 pixels"):
        limits.open_image(path)
    with pytest.raises(ImageTooLargeError):
        open_user_image(Image.new("RGB", (64, 48)), max_pixels=1000)


def test_upload_bytes_are_limited_before_anything_is_opened():
    limits = RequestLimits(max_upload_bytes=100)
    with pytest.raises(ImageTooLargeError, match="bytes; the limit is 100 bytes"):
        limits.open_image(png_bytes((200, 200), "RGB") + b"\x00" * 200)
    with pytest.raises(ImageInputError, match="not an image"):
        RequestLimits().check_image_header(b"hello, not an image")


def test_prompt_length_and_total_steps_are_limited():
    limits = GenerationLimits(max_prompt_chars=100, max_total_steps=200)
    base = dict(width=64, height=64)
    Txt2ImgRequest(prompt="x" * 100, steps=20, batch_count=10, **base).validate(limits)
    with pytest.raises(RequestError, match="prompt is 101 characters long; the limit is 100"):
        Txt2ImgRequest(prompt="x" * 101, **base).validate(limits)
    with pytest.raises(RequestError, match="negative_prompt"):
        Txt2ImgRequest(negative_prompt="x" * 101, **base).validate(limits)
    with pytest.raises(RequestError, match="= 220 exceeds the limit of 200 steps"):
        Txt2ImgRequest(steps=22, batch_count=5, batch_size=2, **base).validate(limits)
    with pytest.raises(RequestError, match="hires steps included"):  # 4 images x (20 + 40) steps
        Txt2ImgRequest(steps=20, batch_size=4, enable_hr=True, hr_second_pass_steps=40, **base).validate(limits)


def test_flags_build_the_limits(tmp_path):
    settings = settings_from_args(["--data-dir", str(tmp_path), "--max-image-pixels", "1000000",
                                   "--max-queue", "9", "--max-queue-per-user", "3"])
    limits = RequestLimits.from_settings(settings)
    assert (limits.max_image_pixels, limits.max_queue, limits.max_queue_per_user) == (1000000, 9, 3)
    defaults = RequestLimits.from_settings(settings_from_args(["--data-dir", str(tmp_path)]))
    assert (defaults.max_image_pixels, defaults.max_queue, defaults.max_queue_per_user) == (4096 * 4096, 64, 16)
    with pytest.raises(SettingsError, match="--max-queue-per-user must be at least 1"):
        settings_from_args(["--data-dir", str(tmp_path), "--max-queue-per-user", "0"])
