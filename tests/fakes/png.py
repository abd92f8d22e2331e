"""Test fakes: tiny PNGs from raw RGB rows, for fake upstreams' answers and for assertions on image bytes."""

from __future__ import annotations

import io

from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(width: int, height: int, rows: list[bytes]) -> bytes:
    """PNG bytes from `height` rows of `width * 3` RGB bytes each."""
    if len(rows) != height or any(len(row) != width * 3 for row in rows):
        raise ValueError("rows do not match the image dimensions")
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), b"".join(rows)).save(buffer, "PNG")
    return buffer.getvalue()
