"""measured_size: an image's dimensions from the head of its base64, the first few hundred bytes read first."""

from __future__ import annotations

import base64
import os

import pytest

from proxy.core.response import GeneratedImage
from proxy.finish import measured_size
from tests.fakes.openai import tiny_png


def jpeg(width: int, height: int, exif: int) -> bytes:
    """A JPEG head: SOI, an APP1 segment of `exif` bytes, then the frame header (SOF0)."""
    app1 = b"\xff\xe1" + (exif + 2).to_bytes(2, "big") + os.urandom(exif)
    sof = b"\xff\xc0" + (17).to_bytes(2, "big") + b"\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes(12)
    return b"\xff\xd8" + app1 + sof + os.urandom(1000)


@pytest.mark.parametrize(
    ("image", "size"),
    [
        (tiny_png(640, 480), "640x480"),
        (jpeg(800, 600, exif=100), "800x600"),  # found in the first bytes read
        (jpeg(1024, 768, exif=60_000), "1024x768"),  # past them: the longer head is read
        (jpeg(1024, 768, exif=65_000) + bytes(200_000), "1024x768"),
        (b"not an image" * 100, None),
    ],
    ids=["png", "jpeg", "jpeg-after-exif", "jpeg-large", "unknown"],
)
def test_the_size_is_read_from_the_head_whether_text_or_bytes(image: bytes, size: str | None) -> None:
    b64 = base64.b64encode(image)
    assert measured_size((GeneratedImage(b64_json=b64.decode()),)) == size
    assert measured_size((GeneratedImage(b64_json=b64),)) == size


def test_the_first_image_with_a_readable_head_counts() -> None:
    images = (GeneratedImage(url="https://x/1.png"), GeneratedImage(b64_json="!!!!"),
              GeneratedImage(b64_json=base64.b64encode(tiny_png(3, 5))))
    assert measured_size(images) == "3x5"
