"""loads_images: the large base64 of an ImagesResponse read unparsed, with the value and the errors json.loads gives."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from proxy.core.plain_base64 import SPLICE_FROM, as_plain_base64, loads_images, only_base64
from proxy.core.received import Base64Chunks

BIG = base64.b64encode(os.urandom(SPLICE_FROM)).decode()  # over SPLICE_FROM characters, with '+', '/' and '='
OTHER = base64.b64encode(os.urandom(SPLICE_FROM + 7)).decode()


def as_text(value: Any) -> Any:
    """The value with base64 bytes as the str json.loads makes of them."""
    if isinstance(value, Base64Chunks):
        return value.decode("ascii")
    if isinstance(value, dict):
        return {key: as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_text(item) for item in value]
    return value


def raw_images(data: Any) -> list[bytes]:
    return [bytes(item["b64_json"]) for item in data["data"] if isinstance(item.get("b64_json"), Base64Chunks)]


def chunked(body: bytes) -> list[tuple[bytes, ...]]:
    """The body as received in chunks of several sizes: every key, quote and value straddles some boundary."""
    return [tuple(body[at : at + size] for at in range(0, len(body), size)) for size in (3, 7, 4096, 65536)]


def test_large_base64_is_read_as_bytes_and_the_rest_is_parsed() -> None:
    answer = {
        "created": 1700000000,
        "data": [
            {"b64_json": BIG, "revised_prompt": 'a "quoted" \\ prompt: "b64_json": "x" ☃'},
            {"b64_json": "c21hbGw="},
            {"url": "https://files.example/a.png"},
            {"b64_json": OTHER},
        ],
        "usage": {"total_tokens": 4170},
        "size": "1024x1024",
    }
    body = json.dumps(answer, ensure_ascii=False).encode()
    for received in (body, *chunked(body)):
        data = loads_images(received)
        assert raw_images(data) == [BIG.encode(), OTHER.encode()]
        assert data["data"][1]["b64_json"] == "c21hbGw="  # small values are parsed as usual
        assert as_text(data) == json.loads(body) == answer


def test_whitespace_around_the_colon_is_json_whitespace() -> None:
    body = b'{"created": 1,\n "data": [ { "b64_json" \t:\r\n "' + BIG.encode() + b'" } ]}'
    for received in (body, *chunked(body)):
        data = loads_images(received)
        assert raw_images(data) == [BIG.encode()]
        assert as_text(data) == json.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        # an escape in the string (`\/` is JSON's own spelling of `/`): parsed, so the value is unescaped
        b'{"data": [{"b64_json": "' + BIG.replace("/", "\\/").encode() + b'"}]}',
        # a character outside base64: parsed, and delivered as the upstream wrote it
        b'{"data": [{"b64_json": "' + BIG.encode() + b'!"}]}',
        # non-ASCII text is parsed as UTF-8, as json.loads does
        b'{"data": [{"b64_json": "' + BIG.encode() + '☃"}]}'.encode(),
        # `b64_json` outside a data[] item is not an image
        b'{"b64_json": "' + BIG.encode() + b'", "data": [{"url": "u"}]}',
        b'{"data": [{"url": "u", "metadata": {"b64_json": "' + BIG.encode() + b'"}}]}',
        # a repeated key: json.loads keeps the last value, whichever it is
        b'{"data": [{"b64_json": "' + BIG.encode() + b'", "b64_json": "' + OTHER.encode() + b'"}]}',
        b'{"data": [{"b64_json": "' + BIG.encode() + b'", "b64_json": "short"}]}',
        # the key text inside another string is not a key
        b'{"data": [{"revised_prompt": "\\"b64_json\\": \\"' + BIG.encode() + b'", "url": "u"}]}',
        # data is not a list of objects
        b'{"data": {"b64_json": "' + BIG.encode() + b'"}}',
        b'[{"b64_json": "' + BIG.encode() + b'"}]',
    ],
    ids=["escaped", "not-base64", "non-ascii", "top-level", "nested", "repeated", "repeated-short", "in-a-string",
         "data-object", "array"],
)
def test_anything_unusual_is_exactly_what_json_loads_gives(body: bytes) -> None:
    for received in (body, *chunked(body)):
        data = loads_images(received)
        assert data == json.loads(body)
        assert not isinstance(data, dict) or not isinstance(data.get("data"), list) or raw_images(data) == []


def error_of(parse: Any, body: bytes | tuple[bytes, ...]) -> str:
    with pytest.raises(ValueError) as caught:
        parse(body)
    return str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [{"b64_json": "' + BIG.encode() + b'\x01"}]}',  # a raw control character: not JSON
        b'{"data": [{"b64_json": "' + BIG.encode() + b'\xff"}]}',  # not UTF-8
        b'{"data": [{"b64_json": "' + BIG.encode(),  # cut short inside the string
        b'{"data": [{"b64_json": "' + BIG.encode() + b'"}',  # cut short after it
        b'{"data": [{"b64_json": "' + BIG.encode() + b'" "url": "u"}]}',  # a comma missing
    ],
    ids=["control-character", "not-utf8", "unterminated", "truncated", "missing-comma"],
)
def test_a_broken_body_raises_the_error_json_loads_raises(body: bytes) -> None:
    for received in (body, *chunked(body)):
        assert error_of(loads_images, received) == error_of(json.loads, body)


def test_only_base64_and_as_plain_base64() -> None:
    assert only_base64(BIG.encode()) and only_base64(b"")
    assert not only_base64(b"QUJD\n") and not only_base64(b'QU"JD') and not only_base64(b"QU\\JD")
    assert only_base64(b"QUJDQ") and only_base64(b"QU=") and only_base64(memoryview(b"xQUJDx")[1:5])
    assert not only_base64(b"QUJD!") and not only_base64(b"QUJDQU\n") and not only_base64(memoryview(b"QUJD\n"))
    assert as_plain_base64(BIG) == BIG.encode()
    assert as_plain_base64("QUJD☃") is None and as_plain_base64("QU JD") is None
