"""A1111-compatible generation-parameters text ("infotext").

A1111 stores how an image was made as plain text: the prompt lines, an optional
``Negative prompt: ...`` line, and a last line of ``Key: value`` pairs. The text
lives in the PNG text chunk ``parameters`` or, for JPEG/WebP, in the EXIF
UserComment. Keeping this format byte-compatible is what lets users drag our
images into A1111's PNG Info tab (and theirs into ours), so the writer and the
parser here follow A1111 v1.10's rules exactly, including its quirks.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

PNG_TEXT_KEY = "parameters"
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

EXIF_IFD_POINTER_TAG = 0x8769
EXIF_USER_COMMENT_TAG = 0x9286
_TIFF_TYPE_LONG = 4
_TIFF_TYPE_UNDEFINED = 7
# JPEG stores EXIF in one APP1 segment: 65535 bytes minus the length field.
JPEG_MAX_EXIF_BYTES = 65533

# The 8-byte character-code prefixes the EXIF standard defines for UserComment.
_USER_COMMENT_UNICODE = b"UNICODE\x00"
_USER_COMMENT_ASCII = b"ASCII\x00\x00\x00"
_USER_COMMENT_JIS = b"JIS\x00\x00\x00\x00\x00"
_USER_COMMENT_UNDEFINED = b"\x00" * 8

# One "Key: value" pair of the parameters line. The key grammar (a word
# character, then at least one word character, space, hyphen or slash) and the
# value grammar (a JSON string, or everything up to the next comma) are A1111's;
# readers elsewhere use the same rules, so they must not be widened here.
_PARAMETER_PAIR = re.compile(
    r"""
    \s*
    (?P<key>\w[\w \-/]+)
    :\s*
    (?P<value>"(?:\\.|[^\\"])+"|[^,]*)
    (?:,|$)
    """,
    re.VERBOSE,
)
_VALID_KEY = re.compile(r"\w[\w \-/]+")
_DIMENSIONS_VALUE = re.compile(r"^(\d+)x(\d+)$")
# A1111 only treats the last line as parameters when it holds this many pairs,
# so a prompt line that happens to contain "a: b" is not mistaken for settings.
MIN_PARAMETER_PAIRS = 3


def readable_key(key: str) -> bool:
    """Whether `parse_infotext` reads a pair with this key back (what extensions' keys must satisfy)."""
    return bool(_VALID_KEY.fullmatch(key))


def quote_value(value: Any) -> str:
    """Render one parameter value, JSON-quoting it when it would break the line.

    A1111 quotes values containing ``,``, ``:`` or a newline. We also quote
    values containing ``"``, empty values and values with edge whitespace,
    because the parser would otherwise change them (a value that is a quoted
    string would be unquoted, an empty one dropped by A1111, edge spaces eaten);
    A1111's own parser reads all of these back correctly.
    """
    text = str(value)
    needs_quotes = (
        text == ""
        or text != text.strip()
        or any(character in text for character in (",", ":", "\n", '"'))
    )
    return json.dumps(text, ensure_ascii=False) if needs_quotes else text


def unquote_value(text: str) -> str:
    """Undo :func:`quote_value`; text that is not a valid JSON string stays as is."""
    if len(text) < 2 or not (text.startswith('"') and text.endswith('"')):
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def is_valid_infotext_key(key: str) -> bool:
    """Whether `key` can be written into an infotext and read back (see `create_infotext`)."""
    return isinstance(key, str) and _VALID_KEY.fullmatch(key) is not None


def create_infotext(prompt: str, negative_prompt: str, parameters: Mapping[str, Any]) -> str:
    """Build the A1111 infotext for one image.

    ``parameters`` keeps its order on the last line; ``None`` values are left out
    (A1111's way of saying "not applicable"). A value equal to its key is written
    as the bare key, as A1111 does for flags. Keys must fit the grammar the
    parser accepts, otherwise the setting would silently vanish on read-back.
    """
    rendered_pairs: list[str] = []
    for key, value in parameters.items():
        if value is None:
            continue
        if not is_valid_infotext_key(key):
            raise ValueError(
                f"infotext key {key!r} cannot be read back: keys must start with a letter, digit or "
                "underscore and contain only those, spaces, '-' or '/' (at least 2 characters)"
            )
        rendered_pairs.append(key if key == value else f"{key}: {quote_value(value)}")

    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{', '.join(rendered_pairs)}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Parse an infotext into ``{"Prompt", "Negative prompt", <parameters>}``.

    Follows A1111's ``parse_generation_parameters``: each prompt line is
    stripped; the last line counts as parameters only with at least three
    ``Key: value`` pairs; quoted values are unquoted; a ``WxH`` value (Size,
    Hires resize, First pass size, ...) becomes ``<Key>-1`` and ``<Key>-2``
    instead of ``<Key>``. Unlike A1111 this does not fill in UI defaults
    (``Clip skip: 1`` and the like) for missing keys: that is the caller's
    business, since defaults differ per tab, and empty values are kept as ``""``
    where A1111 drops them.
    """
    *leading_lines, last_line = text.replace("\r\n", "\n").strip().split("\n")
    if len(_PARAMETER_PAIR.findall(last_line)) < MIN_PARAMETER_PAIRS:
        leading_lines.append(last_line)
        last_line = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    inside_negative = False
    for raw_line in leading_lines:
        line = raw_line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            inside_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        (negative_lines if inside_negative else prompt_lines).append(line)

    result: dict[str, str] = {
        "Prompt": "\n".join(prompt_lines),
        "Negative prompt": "\n".join(negative_lines),
    }
    for match in _PARAMETER_PAIR.finditer(last_line):
        key = match.group("key")
        value = unquote_value(match.group("value"))
        dimensions = _DIMENSIONS_VALUE.match(value)
        if dimensions is not None:
            result[f"{key}-1"] = dimensions.group(1)
            result[f"{key}-2"] = dimensions.group(2)
        else:
            result[key] = value
    return result


def write_png_info(infotext: str) -> PngImagePlugin.PngInfo:
    """PNG text chunks carrying the infotext under A1111's ``parameters`` key.

    Pillow picks tEXt for Latin-1 text and iTXt (UTF-8) otherwise, which is what
    A1111 writes too, so non-Latin prompts survive.
    """
    png_info = PngImagePlugin.PngInfo()
    png_info.add_text(PNG_TEXT_KEY, infotext)
    return png_info


def encode_user_comment(infotext: str) -> bytes:
    """EXIF UserComment payload as A1111 (piexif ``encoding="unicode"``) writes it."""
    return _USER_COMMENT_UNICODE + infotext.encode("utf-16-be")


def build_exif_with_user_comment(infotext: str) -> bytes:
    """A minimal EXIF block (``Exif\\0\\0`` + big-endian TIFF) holding only UserComment.

    Built by hand because Pillow stores tag 0x9286 as BYTE, while A1111 and
    piexif expect UNDEFINED; it carries the same tags and types as piexif.dump output.
    """
    payload = encode_user_comment(infotext)
    tiff_header_size = 8
    one_entry_ifd_size = 2 + 12 + 4  # entry count, one 12-byte entry, next-IFD offset
    exif_ifd_offset = tiff_header_size + one_entry_ifd_size
    payload_offset = exif_ifd_offset + one_entry_ifd_size

    tiff = bytearray(b"MM\x00\x2a" + struct.pack(">I", tiff_header_size))
    tiff += struct.pack(">H", 1)
    tiff += struct.pack(">HHII", EXIF_IFD_POINTER_TAG, _TIFF_TYPE_LONG, 1, exif_ifd_offset)
    tiff += struct.pack(">I", 0)
    tiff += struct.pack(">H", 1)
    tiff += struct.pack(">HHII", EXIF_USER_COMMENT_TAG, _TIFF_TYPE_UNDEFINED, len(payload), payload_offset)
    tiff += struct.pack(">I", 0)
    tiff += payload
    return b"Exif\x00\x00" + bytes(tiff)


def decode_user_comment(raw: bytes | str) -> str:
    """Decode an EXIF UserComment whatever charset prefix the writer used.

    ``UNICODE`` should be UTF-16 in the file's byte order; piexif (A1111) always
    writes big-endian, some Windows tools little-endian, so a BOM wins and
    otherwise the zero bytes of ASCII characters reveal the order.
    """
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    prefix, body = raw[:8], raw[8:]
    if prefix == _USER_COMMENT_UNICODE:
        text = body.decode(_utf16_codec_for(body), errors="replace")
    elif prefix == _USER_COMMENT_ASCII:
        text = body.decode("ascii", errors="replace")
    elif prefix == _USER_COMMENT_JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix == _USER_COMMENT_UNDEFINED:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = raw.decode("utf-8", errors="ignore")
    return text.rstrip("\x00")


def _utf16_codec_for(body: bytes) -> str:
    """Pick the UTF-16 byte order of a UserComment body."""
    if body.startswith((b"\xfe\xff", b"\xff\xfe")):
        return "utf-16"
    zeros_at_even_positions = body[0::2].count(0)
    zeros_at_odd_positions = body[1::2].count(0)
    return "utf-16-le" if zeros_at_odd_positions > zeros_at_even_positions else "utf-16-be"


def read_infotext(image: Image.Image) -> str | None:
    """The infotext stored in an opened image, or None when it carries none.

    Looks where A1111 writes: the PNG ``parameters`` text chunk (also honoured
    in any format's info dict), then the EXIF UserComment of JPEG/WebP.
    """
    text_chunks = image.text if isinstance(image, PngImagePlugin.PngImageFile) else image.info
    parameters = text_chunks.get(PNG_TEXT_KEY)
    if parameters:
        return str(parameters)

    if "exif" not in image.info:
        return None
    try:
        exif_ifd = image.getexif().get_ifd(EXIF_IFD_POINTER_TAG)
    except (OSError, ValueError, SyntaxError, struct.error):
        return None  # unreadable EXIF is "no metadata", not a reason to refuse the image
    raw_comment = exif_ifd.get(EXIF_USER_COMMENT_TAG)
    if not raw_comment:
        return None
    return decode_user_comment(raw_comment) or None
