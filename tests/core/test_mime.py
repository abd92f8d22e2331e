"""Image type sniffing and header dimensions, over real encoder output and hand-built headers."""

from __future__ import annotations

import struct

import pytest

from proxy.core.mime import image_dimensions, sniff_image_type
from tests.fakes.png import encode_png


def test_png_dimensions_come_from_ihdr() -> None:
    data = encode_png(7, 3, [b"\x00\x00\x00" * 7] * 3)
    assert sniff_image_type(data) == "image/png"
    assert image_dimensions(data) == (7, 3)


def test_jpeg_dimensions_skip_app_segments() -> None:
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 100) + b"E" * 100  # an EXIF-like segment before the frame
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 480, 640, 3) + b"\x00" * 3
    data = b"\xff\xd8" + app1 + sof0
    assert sniff_image_type(data) == "image/jpeg"
    assert image_dimensions(data) == (640, 480)


def test_gif_and_webp_dimensions() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 4
    assert image_dimensions(gif) == (320, 200)
    vp8x = b"RIFF" + b"\x00" * 4 + b"WEBP" + b"VP8X" + b"\x00" * 8 + (1023).to_bytes(3, "little") + (767).to_bytes(3, "little")
    assert image_dimensions(vp8x) == (1024, 768)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0"])
def test_unknown_or_truncated_headers_give_none(data: bytes) -> None:
    assert image_dimensions(data) is None


def test_bmp_and_tiff_are_recognised_by_their_headers() -> None:
    bmp = b"BM" + struct.pack("<I", 70) + b"\x00" * 4 + struct.pack("<II", 54, 40) + b"\x00" * 40
    assert sniff_image_type(bmp) == "image/bmp"
    assert sniff_image_type(b"II*\x00\x08\x00\x00\x00") == "image/tiff"
    assert sniff_image_type(b"MM\x00*\x00\x00\x00\x08") == "image/tiff"


@pytest.mark.parametrize("data", [b"BMW drivers love this text file", b"BM", b"BM" + b"\x00" * 16])
def test_text_starting_with_bm_is_not_a_bmp(data: bytes) -> None:
    assert sniff_image_type(data) is None
