"""Core: base64 at memory speed. Images are megabytes of base64; pybase64's SIMD codec decodes and encodes
them about fifty times faster than the standard library (2.25 MB: 0.24 ms against 15 ms to decode).

The standard library stays the judge of what is valid: pybase64 refuses a few inputs it accepts (padding
after a complete quad, `QUJD=`), so a refusal is asked again of the standard library, and an upstream's
image is never refused here that was delivered before. Valid base64, the only kind on the fast path, costs
one pass.
"""

from __future__ import annotations

import base64
import binascii

import pybase64


def decode(data: str | bytes) -> bytes:
    """`base64.b64decode(data, validate=True)`: binascii.Error (a ValueError) for what it refuses."""
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(data, validate=True)


def decode_slice(data: bytes | memoryview) -> bytes:
    """`binascii.a2b_base64(data, strict_mode=True)`, for one slice of a longer base64 text."""
    try:
        return pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return binascii.a2b_base64(data, strict_mode=True)


def encode(data: bytes) -> bytes:
    return pybase64.b64encode(data)
