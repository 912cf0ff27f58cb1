"""A1111 infotext: writing, parsing and embedding in PNG / JPEG / WebP."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from webui.generation.infotext import (
    create_infotext,
    decode_user_comment,
    parse_infotext,
    read_infotext,
    write_png_info,
)
from webui.generation.outputs import save_image

# The parameters line of an SD1.5 + hires fix + LoRA + embedding generation, as A1111 v1.10 writes it.
A1111_SAMPLE = """masterpiece, best quality, 1girl, (smile:1.2), <lora:detail_tweaker:0.5>
looking at viewer
Negative prompt: (worst quality, low quality:1.4), easynegative
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, \
VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, \
Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, Lora hashes: "detail_tweaker: 0e4a3bf5a7c2", \
TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1"""

# piexif.dump({"Exif": {UserComment: UserComment.dump(text, encoding="unicode")}}) for the text
# "a cat\nSteps: 20, Sampler: Euler a, Seed: 7": the exact EXIF bytes A1111 inserts into its JPEG/WebP files.
A1111_EXIF_HEX = (
    "4578696600004d4d002a00000008000187690004000000010000001a000000000001928600070000005c00000028554e49434f4445"
    "0000610020006300610074000a00530074006500700073003a002000320030002c002000530061006d0070006c00650072003a0020"
    "00450075006c0065007200200061002c00200053006500650064003a00200037"
)

ROUND_TRIP_PARAMETERS = {
    "Steps": 20,
    "Sampler": "Euler a",
    "Schedule type": "Karras",
    "CFG scale": 7.5,
    "Seed": 42,
    "Size": "512x768",
    "Model hash": "6ce0161689",
    "Hires resize": "1024x1536",
    "Lora hashes": "a: 123, b: 456",
    "Note": 'she said "hi"',
    "Title": '"Mona Lisa"',
    "Weird": "line one\nline two: yes",
    "Unused": None,
}
ROUND_TRIP_PROMPT = "a cat sitting on a mat\n(detailed fur:1.2), 日本語のプロンプト"
ROUND_TRIP_NEGATIVE = "blurry, lowres\nbad anatomy"


def expected_round_trip_fields() -> dict[str, str]:
    return {
        "Prompt": ROUND_TRIP_PROMPT,
        "Negative prompt": ROUND_TRIP_NEGATIVE,
        "Steps": "20",
        "Sampler": "Euler a",
        "Schedule type": "Karras",
        "CFG scale": "7.5",
        "Seed": "42",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Hires resize-1": "1024",
        "Hires resize-2": "1536",
        "Lora hashes": "a: 123, b: 456",
        "Note": 'she said "hi"',
        "Title": '"Mona Lisa"',
        "Weird": "line one\nline two: yes",
    }


def test_create_infotext_layout_matches_a1111() -> None:
    text = create_infotext(
        "a cat",
        "ugly",
        {"Steps": 20, "Sampler": "Euler a", "Seed": None, "Lora hashes": "a: 123, b: 456", "CFG scale": 7.0},
    )
    assert text == (
        "a cat\n"
        "Negative prompt: ugly\n"
        'Steps: 20, Sampler: Euler a, Lora hashes: "a: 123, b: 456", CFG scale: 7.0'
    )


def test_create_infotext_omits_empty_negative_prompt_line() -> None:
    text = create_infotext("a cat", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1})
    assert text == "a cat\nSteps: 20, Sampler: Euler, Seed: 1"
    assert "Negative prompt" not in text


def test_create_infotext_rejects_keys_the_parser_could_not_read_back() -> None:
    with pytest.raises(ValueError, match="cannot be read back"):
        create_infotext("a cat", "", {"Steps": 20, "Bad:key": 1})


def test_parse_literal_a1111_sample() -> None:
    fields = parse_infotext(A1111_SAMPLE)
    assert fields == {
        "Prompt": "masterpiece, best quality, 1girl, (smile:1.2), <lora:detail_tweaker:0.5>\nlooking at viewer",
        "Negative prompt": "(worst quality, low quality:1.4), easynegative",
        "Steps": "25",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "1234567890",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
        "Denoising strength": "0.45",
        "Clip skip": "2",
        "Hires upscale": "2",
        "Hires steps": "10",
        "Hires upscaler": "R-ESRGAN 4x+ Anime6B",
        "Lora hashes": "detail_tweaker: 0e4a3bf5a7c2",
        "TI hashes": "easynegative: c74b4e810b03",
        "Version": "v1.10.1",
    }


def test_last_line_with_fewer_than_three_pairs_is_prompt_text() -> None:
    fields = parse_infotext("a portrait\nstyle: cinematic, mood: dark")
    assert fields == {"Prompt": "a portrait\nstyle: cinematic, mood: dark", "Negative prompt": ""}


def test_parse_handles_windows_line_endings_and_multiline_negative() -> None:
    fields = parse_infotext("a cat\r\nNegative prompt: ugly\r\nblurry\r\nSteps: 20, Sampler: Euler, Seed: 3")
    assert fields["Prompt"] == "a cat"
    assert fields["Negative prompt"] == "ugly\nblurry"
    assert fields["Seed"] == "3"


def test_png_round_trip_preserves_every_field(tmp_path: Path) -> None:
    text = create_infotext(ROUND_TRIP_PROMPT, ROUND_TRIP_NEGATIVE, ROUND_TRIP_PARAMETERS)
    saved = save_image(Image.new("RGB", (32, 32), "green"), tmp_path, 42, text)

    with Image.open(saved) as reopened:
        read_back = read_infotext(reopened)

    assert read_back == text
    assert parse_infotext(read_back) == expected_round_trip_fields()


def test_write_png_info_is_what_pillow_stores_under_parameters() -> None:
    buffer = io.BytesIO()
    png_info = write_png_info("prompt é 日本\nSteps: 1, A: 2, B: 3")
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_info)
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        assert reopened.text["parameters"] == "prompt é 日本\nSteps: 1, A: 2, B: 3"


@pytest.mark.parametrize("extension", ["jpg", "webp"])
def test_exif_round_trip(tmp_path: Path, extension: str) -> None:
    text = create_infotext(ROUND_TRIP_PROMPT, ROUND_TRIP_NEGATIVE, ROUND_TRIP_PARAMETERS)
    saved = save_image(Image.new("RGB", (32, 32), "green"), tmp_path, 42, text, extension=extension)

    with Image.open(saved) as reopened:
        assert reopened.format == ("JPEG" if extension == "jpg" else "WEBP")
        user_comment = reopened.getexif().get_ifd(0x8769)[0x9286]
        read_back = read_infotext(reopened)

    assert user_comment.startswith(b"UNICODE\x00"), "A1111 writes UserComment with the UNICODE charset prefix"
    # Tag 0x9286 with TIFF type 7 (UNDEFINED), big-endian, as piexif (and so A1111) writes it.
    assert b"\x92\x86\x00\x07" in saved.read_bytes()
    assert read_back == text
    assert parse_infotext(read_back) == expected_round_trip_fields()


@pytest.mark.parametrize("pillow_format", ["JPEG", "WEBP"])
def test_reads_exif_written_by_a1111(pillow_format: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format=pillow_format, exif=bytes.fromhex(A1111_EXIF_HEX))
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        assert read_infotext(reopened) == "a cat\nSteps: 20, Sampler: Euler a, Seed: 7"


def test_user_comment_little_endian_and_ascii_variants() -> None:
    assert decode_user_comment(b"UNICODE\x00" + "Steps: 20".encode("utf-16-le")) == "Steps: 20"
    assert decode_user_comment(b"UNICODE\x00" + "Steps: 20".encode("utf-16-be")) == "Steps: 20"
    assert decode_user_comment(b"ASCII\x00\x00\x00Steps: 20\x00") == "Steps: 20"


def test_read_infotext_is_none_without_metadata(tmp_path: Path) -> None:
    for extension in ("png", "jpg", "webp"):
        saved = save_image(Image.new("RGB", (8, 8)), tmp_path, 1, None, extension=extension)
        with Image.open(saved) as reopened:
            assert read_infotext(reopened) is None, extension


def test_refiner_fields_paste_back_into_txt2img_and_their_absence_clears_the_refiner() -> None:
    from webui.ui.infotext_fields import NO_REFINER_CHOICE, txt2img_values_from_infotext

    text = ("a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 1024x1024, Model: sd_xl_base_1.0, "
            "Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.10.1")
    values = txt2img_values_from_infotext(text)
    assert values["refiner_checkpoint"] == "sd_xl_refiner_1.0 [7440042bbd]" and values["refiner_switch_at"] == 0.8
    without = txt2img_values_from_infotext("a cat\nSteps: 20, Seed: 1, Size: 64x64")
    assert without["refiner_checkpoint"] == NO_REFINER_CHOICE
