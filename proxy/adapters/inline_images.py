"""Adapter layer: input images given inline (a data URI or bare base64), read the way providers need them; pure.

- `sniff_base64(text)`: the image type of base64 text from its first characters (megabytes are never decoded
  to learn a type).
- `inline_image(value)`: the base64 and declared type of an image a channel needs as bytes; a URL, or text
  that does not start as base64, is the client's 400 naming `image`.

The shell has already checked that inline images are images (proxy.input_images); these are the adapters'
own readings of the same values.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from proxy.core.errors import InvalidRequest
from proxy.core.mime import sniff_image_type

# Base64 characters decoded to sniff a type: 32 characters are 24 bytes, enough for every signature but SVG's.
SNIFF_CHARS = 32


def _head(text: str) -> bytes | None:
    try:
        return base64.b64decode(text[:SNIFF_CHARS], validate=True)
    except (binascii.Error, ValueError):
        return None


def sniff_base64(text: str) -> str | None:
    """The MIME type of the image `text` is the base64 of, from its head; None when unknown or not base64."""
    head = _head(text)
    return None if head is None else sniff_image_type(head)


@dataclass(frozen=True)
class InlineImage:
    payload: str  # the base64, whitespace removed
    declared: str | None  # the data URI's media type, lower-cased; None for bare base64

    def media_type(self) -> str | None:
        """The type its first bytes are, else the one the data URI declared."""
        return sniff_base64(self.payload) or self.declared


def inline_image(value: str) -> InlineImage:
    """An input image for a channel that takes bytes only: a data URI or bare base64, never a URL."""
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidRequest("This channel needs the image bytes: send the image as base64 or a data URI, not a URL.",
                             param="image", code="invalid_value")
    declared: str | None = None
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        declared = header[5:].split(";")[0].strip().lower() or None
    payload = "".join(text.split())
    if _head(payload) is None:
        raise InvalidRequest("'image' is neither valid base64 nor a base64 data URI.", param="image",
                             code="invalid_value")
    return InlineImage(payload, declared)
