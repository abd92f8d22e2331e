"""proxy.core.transcode: bytes re-encoded with Pillow, checked by magic bytes and by decoding them again."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from proxy.core.mime import sniff_image_type
from proxy.core.transcode import TranscodeError, transcode
from tests.fakes.png import encode_png

RED_BLUE = encode_png(2, 2, [b"\xff\x00\x00\x00\x00\xff", b"\x00\x00\xff\xff\x00\x00"])


def _rgba_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(out, "PNG")  # fully transparent
    return out.getvalue()


def _noise(size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), bytes((i * 7919) % 256 for i in range(size * size * 3))).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(("to", "mime", "pil"), [("webp", "image/webp", "WEBP"), ("jpeg", "image/jpeg", "JPEG"),
                                                  ("png", "image/png", "PNG")])
def test_png_becomes_each_format(to: str, mime: str, pil: str) -> None:
    out = transcode(RED_BLUE, to)
    assert sniff_image_type(out) == mime
    with Image.open(io.BytesIO(out)) as image:
        assert (image.format, image.size) == (pil, (2, 2))


def test_webp_and_jpeg_sources_convert_too() -> None:
    webp = transcode(RED_BLUE, "webp")
    assert sniff_image_type(transcode(webp, "png")) == "image/png"
    assert sniff_image_type(transcode(transcode(webp, "jpeg"), "webp")) == "image/webp"


def test_compression_changes_the_encoding() -> None:
    source = _noise()
    small, large = transcode(source, "jpeg", 5), transcode(source, "jpeg", 95)
    assert len(small) < len(large)
    assert len(transcode(source, "webp", 5)) < len(transcode(source, "webp", 95))


def test_transparency_is_kept_in_webp_and_laid_on_white_in_jpeg() -> None:
    with Image.open(io.BytesIO(transcode(_rgba_png(), "webp"))) as webp:
        assert webp.mode == "RGBA" and webp.getpixel((0, 0))[3] == 0
    with Image.open(io.BytesIO(transcode(_rgba_png(), "jpeg"))) as jpeg:
        assert jpeg.mode == "RGB" and all(channel > 245 for channel in jpeg.getpixel((0, 0)))


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_what_is_no_image_is_a_transcode_error(data: bytes) -> None:
    with pytest.raises(TranscodeError):
        transcode(data, "webp")


def test_only_the_apis_formats_are_made() -> None:
    with pytest.raises(ValueError, match="gif"):
        transcode(RED_BLUE, "gif")
