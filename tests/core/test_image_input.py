"""Checking the client's input images: URLs pass, inline base64 must decode to an image that is what it says."""

from __future__ import annotations

import base64
import binascii
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.errors import InvalidRequest
from proxy.core.image_input import (
    base64_problem,
    check_image_fields,
    check_image_value,
    check_uploads,
    inline_size,
    parse_data_uri,
)
from proxy.core.multipart import Part
from tests.fakes.png import encode_png

PNG = encode_png(2, 2, [b"\x00\x00\x00" * 2] * 2)
JPEG = b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + b"\xff\xd9"
WEBP = b"RIFF" + struct.pack("<I", 30) + b"WEBP" + b"VP8 " + b"\x00" * 18
GIF = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00" * 10
HTML = b"<!doctype html><html><body>hello</body></html>"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rejected(param: str, value: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_image_value(param, value)
    error = info.value
    assert (error.status, error.param, error.code) == (400, param, "invalid_image")
    assert error.message.startswith(f"Invalid '{param}': ")
    return error


@pytest.mark.parametrize(
    "value",
    [
        "data:image/png;base64," + b64(PNG),
        "data:image/jpeg;base64," + b64(JPEG),
        "data:image/jpg;base64," + b64(JPEG),  # the common misspelling of image/jpeg
        "data:image/webp;base64," + b64(WEBP),
        "data:image/gif;base64," + b64(GIF),
        "DATA:IMAGE/PNG;BASE64," + b64(PNG),
        "data:image/png;name=cat.png;base64," + b64(PNG),  # RFC 2397 parameters before ;base64
        "data:image/png;charset=utf-8;base64," + b64(PNG),
        b64(PNG),
        b64(JPEG),
        b64(WEBP),
        "  " + b64(PNG) + "\n",
        "\n".join(b64(PNG * 3)[i : i + 76] for i in range(0, len(b64(PNG * 3)), 76)),  # MIME line breaks
        "https://example.com/cat.png",
        "http://127.0.0.1/anything",  # URLs are the channel's business (the guard downloads, or it forwards)
        "oss://bucket/key.png",
    ],
)
def test_urls_and_true_images_pass(value: str) -> None:
    assert check_image_value("image", value) is None


def test_undecodable_base64_is_refused_with_the_reason() -> None:
    assert "outside the base64 alphabet" in rejected("image", "!!!not base64!!!").message
    assert "outside the base64 alphabet" in rejected("image", "data:image/png;base64,@@@@").message
    assert "multiple of 4" in rejected("image", "iVBORw0KGgo").message
    assert "padding" in rejected("image", b64(PNG)[:-4] + "A=AA").message
    assert "outside the base64 alphabet" in rejected("image", b64(PNG).replace("+", "-").replace("/", "_") + "-_").message
    assert "outside the base64 alphabet" in rejected("image", "iVBORw0K\u00e9GgoAAAA").message


def test_bytes_that_are_no_image_are_refused() -> None:
    error = rejected("image", b64(b"MZ\x90\x00 a program, not an image"))
    assert "the decoded bytes are not an image" in error.message
    assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in error.message
    assert "not an image" in rejected("mask", "data:text/html;base64," + b64(HTML)).message
    assert "SVG, which is not taken as an input image" in rejected("image", "data:image/svg+xml;base64," + b64(SVG)).message
    assert "no image data" in rejected("image", "data:image/png;base64,").message


def test_a_declared_type_that_lies_is_refused() -> None:
    error = rejected("image", "data:image/png;base64," + b64(HTML))
    assert "not an image" in error.message
    error = rejected("image[1]", "data:image/png;base64," + b64(JPEG))
    assert error.message == "Invalid 'image[1]': the data URI declares image/png but holds a JPEG image (image/jpeg)."
    error = rejected("image", "data:application/octet-stream;base64," + b64(PNG))
    assert "declares application/octet-stream but holds a PNG image" in error.message
    # RFC 2397: a data URI without a type is text/plain.
    assert "declares text/plain" in rejected("image", "data:;base64," + b64(PNG)).message


def test_data_uris_must_be_base64_and_other_text_is_no_url() -> None:
    assert "must be base64-encoded" in rejected("image", "data:image/png,rawbytes").message
    assert "not valid base64" in rejected("image", "javascript:alert(1)").message
    assert "not valid base64" in rejected("image", "//evil.example/a.png").message


def test_data_uri_parts() -> None:
    assert parse_data_uri("data:Image/PNG;x=y;base64,QUJD") == parse_data_uri("data:image/png;x=y;BASE64,QUJD")
    uri = parse_data_uri("data:image/png;x=y;base64,QUJD")
    assert uri is not None and (uri.media_type, uri.base64, uri.payload) == ("image/png", True, "QUJD")
    uri = parse_data_uri("data:,hello")
    assert uri is not None and (uri.media_type, uri.base64) == ("text/plain", False)
    assert parse_data_uri("QUJD") is None


@given(st.text(alphabet="ABCab09+/= \n-_é", max_size=24))
def test_base64_problem_agrees_with_the_strict_decoder(text: str) -> None:
    compact = "".join(text.split(" ")).replace("\n", "")
    try:
        binascii.a2b_base64(compact, strict_mode=True)
        strict_ok = compact.isascii()
    except (binascii.Error, ValueError):
        strict_ok = False
    # Python's strict decoder also takes surplus '=' after a complete group ("AAAA=", "AAAA===="); RFC 4648 does not.
    canonical = len(compact) % 4 == 0 and not compact.endswith("===")
    assert (base64_problem(text) is None) == (strict_ok and canonical)


@pytest.mark.parametrize("text", ["AAAA=", "AAAA==", "AAAA====", "QQ==="])
def test_surplus_padding_is_refused(text: str) -> None:
    assert base64_problem(text) is not None


def test_fields_name_list_items_by_index() -> None:
    check_image_fields({"image": [b64(PNG), "https://example.com/a.png"], "mask": b64(PNG), "size": "1024x1024"})
    with pytest.raises(InvalidRequest) as info:
        check_image_fields({"image": [b64(PNG), "https://example.com/a.png", b64(HTML)]})
    assert info.value.param == "image[2]"
    with pytest.raises(InvalidRequest) as info:
        check_image_fields({"image": b64(PNG), "mask": "data:image/png;base64," + b64(GIF)})
    assert info.value.param == "mask"
    assert "declares image/png but holds a GIF image" in info.value.message
    assert inline_size({"image": ["ab", "cde"], "mask": "f", "prompt": "x" * 100}) == 6


def test_uploads_must_be_images() -> None:
    check_uploads((Part("image", bytearray(PNG), "a.png", "image/png"),), Part("mask", PNG, "m.png", "image/png"))
    # The declared content type of a file part is not judged: clients send application/octet-stream for anything.
    check_uploads((Part("image[]", JPEG, "a.png", "application/octet-stream"),), None)
    with pytest.raises(InvalidRequest) as info:
        check_uploads((Part("image", HTML, "a.png", "image/png"),), None)
    assert (info.value.param, info.value.message) == (
        "image", "Invalid 'image': the file is not an image; expected a PNG, JPEG, WebP, GIF, BMP or TIFF image.")
    with pytest.raises(InvalidRequest) as info:
        check_uploads((Part("image[]", PNG, "a.png"), Part("image[]", b"", "b.png")), None)
    assert (info.value.param, info.value.message) == ("image[1]", "Invalid 'image[1]': the file is empty.")
    with pytest.raises(InvalidRequest) as info:
        check_uploads((Part("image", PNG, "a.png"),), Part("mask", SVG, "m.svg", "image/svg+xml"))
    assert info.value.param == "mask"
