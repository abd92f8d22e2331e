"""Core layer: JSON bodies in and out. Upstream objects decoded defensively; answers encoded fast.

Decoding: anything that is not a JSON object (or nests past the recursion limit) is None, never an
exception, so a broken upstream is a 502, not a 500.

Encoding an ImagesResponse without scanning megabytes of base64 twice:
`json.dumps` escapes every character of every string; a 3 MB `b64_json` costs more to encode than
everything else the proxy does with it. Base64 text needs no escaping, so each `b64_json` value is
checked once with C-speed byte operations and spliced into the JSON that `json.dumps` made of the
rest. A value that is not pure base64 (a broken or hostile upstream) goes through `json.dumps` like
any other string, so the output is always valid JSON.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_SPLICE_FROM = 64 * 1024  # below this, plain json.dumps is as fast


def as_plain_base64(text: str) -> bytes | None:
    """The text's bytes when it holds only base64 characters (so it can stand in JSON as is), else None."""
    if not text.isascii():
        return None
    raw = text.encode("ascii")
    return None if raw.translate(None, _ALPHABET) else raw


def plain_base64(text: str) -> bool:
    return as_plain_base64(text) is not None


def _spliceable(item: Any) -> bytes | None:
    if not isinstance(item, dict) or not isinstance(item.get("b64_json"), str) or len(item["b64_json"]) < _SPLICE_FROM:
        return None
    return as_plain_base64(item["b64_json"])


def encode_body(body: dict[str, Any]) -> bytes:
    items = body.get("data")
    found = [(index, raw) for index, item in enumerate(items if isinstance(items, list) else []) if (raw := _spliceable(item))]
    if not found:
        return json.dumps(body, ensure_ascii=False).encode()
    # A per-call random marker cannot collide with anything a client or upstream wrote.
    marker = "splice-" + secrets.token_hex(16)
    data = list(body["data"])
    for index, _ in found:
        data[index] = {**data[index], "b64_json": marker}
    pieces = json.dumps({**body, "data": data}, ensure_ascii=False).encode().split(f'"{marker}"'.encode())
    out: list[bytes] = [pieces[0]]
    for (_, raw), piece in zip(found, pieces[1:], strict=True):
        out += [b'"', raw, b'"', piece]
    return b"".join(out)


def decode_object(body: bytes | str) -> dict[str, Any] | None:
    """An upstream's JSON object, or None for anything else (not JSON, not an object, nested past recursion)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
