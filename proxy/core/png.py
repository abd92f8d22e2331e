"""Core layer: a minimal PNG encoder (8-bit RGB, no interlace) over zlib, per the PNG spec (RFC 2083)."""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    # Each chunk: length, type, data, CRC-32 over type and data (RFC 2083 §3.2).
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(width: int, height: int, rows: list[bytes], level: int = 6) -> bytes:
    """PNG bytes from `height` rows of `width * 3` RGB bytes each."""
    if len(rows) != height or any(len(row) != width * 3 for row in rows):
        raise ValueError("rows do not match the image dimensions")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB)
    # Filter type 0 (None) before every scanline.
    raw = b"".join(b"\x00" + row for row in rows)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")
