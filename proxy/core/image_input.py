"""Core layer: the client's input images are images, checked once per request before any upstream sees them.

`image` (a string or a list of strings) and `mask` are, per the Images API, "an image URL or base64 data":
- a value with a URL scheme (`https://...`) is left to the channel: downloaded through the guard when the
  adapter needs the bytes, forwarded otherwise, refused by adapters that take no URLs;
- anything else is inline data, a `data:<type>;base64,...` URI or bare base64, and must be standard
  base64 (RFC 4648 §4; ASCII whitespace between characters is tolerated, as MIME line breaks are) of a
  PNG, JPEG, WebP, GIF, BMP or TIFF image, and a data URI's declared type must be the one its bytes are.
SVG is recognised in results but refused here: no provider takes it as an input image.

Multipart uploads are checked the same way from the first bytes already in memory.

The megabytes of an inline image are scanned, not decoded: only the head is decoded (to sniff the type),
so the one full decode stays with the adapters that need the bytes (Stability's file part).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.errors import InvalidRequest
from proxy.core.mime import sniff_image_type
from proxy.core.multipart import Part

INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"})
KINDS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP", "image/gif": "GIF", "image/bmp": "BMP",
         "image/tiff": "TIFF", "image/svg+xml": "SVG"}
# Clients often write image/jpg for a JPEG: a common misspelling, not a lie about the bytes.
_ALIASES = {"image/jpg": "image/jpeg"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WHITESPACE = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on
_HEAD_CHARS = 64  # base64 characters decoded to sniff: 48 bytes hold the signature of every accepted type
_EXPECTED = "expected an http(s) URL, a data:image/...;base64, URI or base64 of a PNG, JPEG, WebP, GIF, BMP or TIFF image"


@dataclass(frozen=True)
class DataUri:
    media_type: str  # lower-cased; RFC 2397's text/plain when the URI names none
    base64: bool
    payload: str


def parse_data_uri(text: str) -> DataUri | None:
    """The parts of a `data:` URI (RFC 2397: `data:[<type>][;param=value]*[;base64],<data>`), or None for other text."""
    if text[:5].lower() != "data:":
        return None
    header, _, payload = text[5:].partition(",")
    pieces = [piece.strip() for piece in header.split(";")]
    is_base64 = len(pieces) > 1 and pieces[-1].lower() == "base64"
    return DataUri(media_type=pieces[0].lower() or "text/plain", base64=is_base64, payload=payload)


def _compact(text: str) -> bytes | str:
    """The base64 characters of `text` as bytes, or why it cannot be standard base64."""
    if not text.isascii():
        return "it holds characters outside the base64 alphabet"
    data = text.encode("ascii")
    leftover = data.translate(None, _ALPHABET + b"=")
    if leftover.translate(None, _WHITESPACE):
        return "it holds characters outside the base64 alphabet"
    if leftover:
        data = b"".join(data.split())  # a copy only when there is whitespace to drop
    body = data.rstrip(b"=")
    if b"=" in body or len(data) - len(body) > 2:
        return "'=' padding may only end it, at most twice"
    if len(data) % 4:
        return "its length is not a multiple of 4 (is '=' padding missing?)"
    return data


def base64_problem(text: str) -> str | None:
    """Why `text` is not standard base64 (RFC 4648 §4, ASCII whitespace dropped), or None.

    What `base64.b64decode(validate=True)` takes, less the surplus '=' it tolerates after a complete group.
    """
    compact = _compact(text)
    return compact if isinstance(compact, str) else None


def _invalid(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {reason}.", param=param, code="invalid_image")


def _what(found: str | None) -> str:
    return "not an image" if found is None else f"{KINDS.get(found, found)}, which is not taken as an input image"


def check_image_value(param: str, value: str) -> None:
    """Raise InvalidRequest naming `param` unless `value` is a URL or inline base64 of an image that is what it says."""
    text = value.strip()
    if _URL.match(text):
        return
    uri = parse_data_uri(text)
    if uri is not None and not uri.base64:
        raise _invalid(param, "a data URI must be base64-encoded (data:image/png;base64,...)")
    compact = _compact(uri.payload if uri is not None else text)
    if isinstance(compact, str):
        raise _invalid(param, f"not valid base64: {compact}; {_EXPECTED}")
    if not compact:
        raise _invalid(param, f"it holds no image data; {_EXPECTED}")
    found = sniff_image_type(binascii.a2b_base64(compact[:_HEAD_CHARS]))
    if found is None or found not in INPUT_TYPES:
        raise _invalid(param, f"the decoded bytes are {_what(found)}; {_EXPECTED}")
    if uri is not None and _ALIASES.get(uri.media_type, uri.media_type) != found:
        raise _invalid(param, f"the data URI declares {uri.media_type} but holds a {KINDS[found]} image ({found})")


def image_params(name: str, value: Any) -> list[tuple[str, Any]]:
    """(param, item) for a field that is one value or a list: `image` alone, `image[0]`, `image[1]` in a list."""
    if isinstance(value, list):
        return [(f"{name}[{index}]", item) for index, item in enumerate(value)]
    return [(name, value)]


def check_image_fields(options: Mapping[str, Any]) -> None:
    """Check `image` and `mask` as the client sent them (parse_image_request has already checked their types)."""
    for name in ("image", "mask"):
        if name in options:
            for param, item in image_params(name, options[name]):
                if isinstance(item, str):
                    check_image_value(param, item)


def inline_size(options: Mapping[str, Any]) -> int:
    """Characters of `image` and `mask` text: what checking them costs."""
    return sum(
        len(item) for name in ("image", "mask") for _, item in image_params(name, options.get(name)) if isinstance(item, str)
    )


def check_upload(param: str, part: Part) -> None:
    """A file part must hold an image; its first bytes (already in memory) say what it is."""
    if not part.data:
        raise _invalid(param, "the file is empty")
    found = sniff_image_type(bytes(part.data[:512]))
    if found is None or found not in INPUT_TYPES:
        raise _invalid(param, f"the file is {_what(found)}; expected a PNG, JPEG, WebP, GIF, BMP or TIFF image")


def check_uploads(images: Sequence[Part], mask: Part | None) -> None:
    """Every uploaded image (`image` alone, `image[0]`, `image[1]`... when there are several) and the mask."""
    for param, part in image_params("image", images[0] if len(images) == 1 else list(images)):
        check_upload(param, part)
    if mask is not None:
        check_upload("mask", mask)
