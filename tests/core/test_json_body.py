"""encode_body: the spliced encoding is byte-for-byte what json.dumps would make, and always valid JSON."""

from __future__ import annotations

import base64
import json
import os

from proxy.core.json_body import encode_body, encode_pieces
from proxy.core.plain_base64 import as_plain_base64


def test_large_base64_is_spliced_and_the_result_equals_json_dumps() -> None:
    b64 = base64.b64encode(os.urandom(300_000)).decode()
    body = {"created": 1, "data": [{"b64_json": b64, "revised_prompt": 'a "quoted" ☃'}, {"url": "u"}], "usage": {"x": 1}}
    assert encode_body(body) == json.dumps(body, ensure_ascii=False).encode()
    assert json.loads(encode_body(body)) == body
    assert body["data"][0]["b64_json"] == b64  # the caller's body is not changed


def test_values_that_are_not_base64_are_escaped_normally() -> None:
    hostile = "A" * 70_000 + '","injected":"yes'
    body = {"created": 1, "data": [{"b64_json": hostile}]}
    assert as_plain_base64(hostile) is None
    assert json.loads(encode_body(body)) == body


def test_a_prompt_that_mentions_a_marker_cannot_confuse_the_splice() -> None:
    b64 = base64.b64encode(os.urandom(100_000)).decode()
    body = {"created": 1, "data": [{"b64_json": b64, "revised_prompt": '"splice-00"'}]}
    assert json.loads(encode_body(body)) == body


def test_base64_bytes_are_spliced_as_the_text_they_hold() -> None:
    b64 = base64.b64encode(os.urandom(300_000))
    small = base64.b64encode(b"tiny")
    body = {"created": 1, "data": [{"b64_json": b64, "revised_prompt": "p"}, {"b64_json": small}, {"b64_json": b""}]}
    as_text = {"created": 1, "data": [{"b64_json": b64.decode(), "revised_prompt": "p"}, {"b64_json": small.decode()},
                                      {"b64_json": ""}]}
    pieces = encode_pieces(body)
    assert b64 in pieces  # the bytes themselves, not a copy joined into a larger buffer
    assert b"".join(pieces) == encode_body(body) == json.dumps(as_text, ensure_ascii=False).encode()


def test_an_answer_without_base64_is_one_piece() -> None:
    body = {"created": 1, "data": [{"url": "https://x/1.png"}]}
    assert encode_pieces(body) == [json.dumps(body, ensure_ascii=False).encode()]
