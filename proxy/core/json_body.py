"""Core layer: JSON bodies in and out. Upstream objects decoded defensively; answers encoded fast.

Decoding: anything that is not a JSON object (or nests past the recursion limit) is None, never an
exception, so a broken upstream is a 502, not a 500.

Encoding an ImagesResponse without scanning megabytes of base64 twice:
`json.dumps` escapes every character of every string; a 3 MB `b64_json` costs more to encode than
everything else the proxy does with it. Base64 text needs no escaping, so each `b64_json` value is
spliced into the JSON that `json.dumps` made of the rest: as it is when it is bytes or Base64Chunks
(base64 already checked, proxy.core.plain_base64), after one C-speed check when it is a large str. A str that is
not pure base64 (a broken or hostile upstream) goes through `json.dumps` like any other string, so
the output is always valid JSON. The answer comes out in pieces, so megabytes are never joined into
one more copy only to be written to a socket.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from proxy.core.plain_base64 import SPLICE_FROM, as_plain_base64
from proxy.core.received import Base64Chunks


def _spliceable(item: Any) -> tuple[bytes | memoryview, ...] | None:
    """The pieces a `b64_json` is written as when it needs no escaping, else None."""
    value = item.get("b64_json") if isinstance(item, dict) else None
    if isinstance(value, Base64Chunks):
        return value.views  # checked base64, written from the chunks it was received in
    if isinstance(value, bytes):
        return (value,)  # checked base64 (proxy.core.response): nothing to escape, whatever its size
    if not isinstance(value, str) or len(value) < SPLICE_FROM:
        return None
    raw = as_plain_base64(value)
    return None if raw is None else (raw,)


def encode_pieces(body: dict[str, Any]) -> list[bytes | memoryview]:
    """The body as JSON, in pieces whose concatenation is `json.dumps(body, ensure_ascii=False)` (with
    bytes and Base64Chunks values written as the text they hold)."""
    items = body.get("data")
    listed = items if isinstance(items, list) else []
    found = [(index, raw) for index, item in enumerate(listed) if (raw := _spliceable(item)) is not None]
    if not found:
        return [utf8_json(body)]
    # A per-call random marker cannot collide with anything a client or upstream wrote.
    marker = "splice-" + secrets.token_hex(16)
    data = list(body["data"])
    for index, _ in found:
        data[index] = {**data[index], "b64_json": marker}
    pieces = utf8_json({**body, "data": data}).split(f'"{marker}"'.encode())
    # The quotes go with the small JSON around each value: every piece is one write to the socket.
    out: list[bytes | memoryview] = []
    around = pieces[0]
    for (_, raw), piece in zip(found, pieces[1:], strict=True):
        out += [around + b'"', *raw]
        around = b'"' + piece
    return [*out, around]


def utf8_json(value: Any) -> bytes:
    """`json.dumps(value, ensure_ascii=False)` in UTF-8. A lone surrogate (an upstream's `"\\ud800"`, which
    json.loads accepts) has no UTF-8 form: it is written back as that same escape, which is valid JSON since
    json.dumps only ever puts such a character inside a string."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")


def encode_body(body: dict[str, Any]) -> bytes:
    """The body as JSON in one piece (for a body that is kept or signed rather than sent)."""
    return b"".join(encode_pieces(body))


def decode_object(body: bytes | str) -> dict[str, Any] | None:
    """An upstream's JSON object, or None for anything else (not JSON, not an object, nested past recursion)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
