"""Core layer: base64 text that JSON needs no escaping for, and reading it out of an ImagesResponse unparsed.

A gpt-image answer is megabytes of base64 in `data[i].b64_json` around a few hundred bytes of JSON.
`json.loads` scans and copies every character of that string, and writing it out again with
`json.dumps` escapes every one of them: together they cost more than everything else the proxy does
with the answer. Base64 holds no character JSON escapes, so `loads_images` finds each large
`b64_json` string in the raw body, checks once (at C speed) that it holds only base64 characters,
and parses only the small JSON around it. It hands those strings out where they were received, as
views of the answer's chunks (proxy.core.received.Base64Chunks), never copied into a `str` nor into
one buffer: a Base64Chunks in a `b64_json` (proxy.core.response) is base64 checked this way, which
the answer's encoder (proxy.core.json_body) writes as it is and the image store decodes as it is.

The fast path is a special case of `json.loads`, never a second parser: anything unusual (an escape
in the string, a character outside base64, a `b64_json` anywhere but in a `data[]` item, duplicate
keys, a body that is not JSON) is parsed by `json.loads` itself, so the value and the error are the
ones the plain parser gives.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import pybase64

from proxy.core.received import Base64Chunks, Received

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
# Below this size json.loads is as fast as locating the string (and most answers are small).
SPLICE_FROM = 64 * 1024
_KEY = b'"b64_json"'
_SPACE = b" \t\r\n"  # JSON's whitespace
_LOOKAHEAD = 64  # bytes after the key where its value's opening quote must be (more spaces: parsed plainly)


def only_base64(raw: bytes | memoryview) -> bool:
    """Whether the bytes hold only base64 characters. Valid base64 (an upstream's image) is recognised by
    pybase64's SIMD decoder (3 MB: 0.25 ms); anything it refuses by deleting the alphabet (1 ms) and
    seeing whether anything is left. The decoder takes whole quads only: a tail of fewer than four
    characters is checked by the alphabet alone."""
    whole = len(raw) - len(raw) % 4
    try:
        pybase64.b64decode(raw[:whole], validate=True)
    except ValueError:  # binascii.Error included
        return not bytes(raw).translate(None, _ALPHABET)
    return not bytes(raw[whole:]).translate(None, _ALPHABET)


def _only_base64_in(views: list[memoryview]) -> bool:
    """`only_base64` of the views' concatenation, checked view by view: a chunk just received is checked
    where it lies, and the decoder's output is a chunk's size, not the image's, so it never costs fresh
    pages of memory."""
    return all(only_base64(view) for view in views)


def as_plain_base64(text: str) -> bytes | None:
    """The text's bytes when it holds only base64 characters (so it can stand in JSON as is), else None."""
    if not text.isascii():
        return None
    raw = text.encode("ascii")
    return raw if only_base64(raw) else None


def _value_start(body: Received, key_end: int) -> int | None:
    """Where the string after `"b64_json"` starts (past `:` and JSON's whitespace), or None: no string follows."""
    rest = body.span(key_end, key_end + _LOOKAHEAD)
    colon = rest.lstrip(_SPACE)
    if not colon.startswith(b":"):
        return None
    value = colon[1:].lstrip(_SPACE)
    return key_end + len(rest) - len(value) + 1 if value.startswith(b'"') else None


def _plain_values(body: Received) -> list[tuple[int, int, Base64Chunks]]:
    """Where the large `"b64_json": "..."` values of only base64 characters lie, and their bytes (a
    lexical guess that `loads_images` confirms by parsing what is around them). Found with `bytes.find`,
    which skips megabytes at memory speed, and searched on from each value's end, never through it.
    Each value stays where it was received, as views of the chunks: nothing of that size is copied."""
    values: list[tuple[int, int, Base64Chunks]] = []
    key = body.find(_KEY)
    while key >= 0:
        start = _value_start(body, key + len(_KEY))
        end = body.find(b'"', start) if start is not None else -1
        if start is not None and end - start >= SPLICE_FROM and _only_base64_in(views := body.views(start, end)):
            values.append((start, end, Base64Chunks(views)))
        key = body.find(_KEY, max(end, key + 1))
    return values


def _put_back(data: Any, values: dict[str, Base64Chunks]) -> bool:
    """Put each value where its marker stands as a `data[i].b64_json`; False when a marker is elsewhere
    (the guess was wrong, or keys repeat): the caller then parses the body plainly."""
    items = data.get("data") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else []:
        marker = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(marker, str) and marker in values:
            item["b64_json"] = values.pop(marker)
    return not values


def loads_images(received: bytes | Sequence[bytes]) -> Any:
    """`json.loads` of the body (given whole, or as the chunks it was received in), except that the large
    base64 strings of `data[i].b64_json` are their ASCII text where it was received (Base64Chunks), read
    without parsing. A body json.loads rejects raises its ValueError."""
    body = Received(received)
    found = _plain_values(body)
    if not found:
        return json.loads(body.whole())
    # A per-call random marker cannot collide with anything the upstream wrote.
    marker = "splice-" + secrets.token_hex(16)
    pieces: list[bytes] = []
    values: dict[str, Base64Chunks] = {}
    previous = 0
    for number, (start, end, value) in enumerate(found):
        name = f"{marker}-{number}"
        pieces += [body.span(previous, start), name.encode()]
        values[name] = value
        previous = end
    pieces.append(body.span(previous, len(body)))
    try:
        data = json.loads(b"".join(pieces))
    except (ValueError, RecursionError):
        return json.loads(body.whole())  # its own error, as the plain parser words it
    return data if _put_back(data, values) else json.loads(body.whole())
