"""Test and benchmark helper: small PNG files that declare huge images (decompression bombs).

A 12000x12000 black image compresses to about 140 KB as grayscale or 420 KB as RGB, yet decodes to
144 MB or 432 MB. The file is written row by row through zlib, so making one costs no memory.
"""

from __future__ import annotations

import base64
import struct
import zlib


def oversized_png(width: int, height: int, channels: int = 3) -> bytes:
    """A valid, fully decodable black PNG of width x height pixels (channels 1 = gray, 3 = RGB)."""
    color_type = {1: 0, 3: 2}[channels]
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels)  # filter byte "none" + the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def oversized_png_base64(width: int, height: int, channels: int = 3) -> str:
    return base64.b64encode(oversized_png(width, height, channels)).decode("ascii")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
