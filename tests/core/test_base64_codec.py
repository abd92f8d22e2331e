"""The fast codec answers exactly as the standard library does, refusals included."""

from __future__ import annotations

import base64
import binascii
import os

import pytest

from proxy.core import base64_codec

EDGES = [b"", b"QQ==", b"QQ=", b"QQ", b"Q", b"QUJD", b"QUJD=", b"QUJD==", b"QQ==QQ==", b"Q===", b"=QQ=", b"QU JD", b"QUJ\n",
         b"QUI=", b"QUJ=", b"QR==", b"////", b"-_-_", b"QQ=\x00", "QUJD", "QUJ\u00e9"]


def verdict(decode: object, data: str | bytes) -> bytes | str:
    try:
        return decode(data)  # type: ignore[operator,no-any-return]
    except (binascii.Error, ValueError):
        return "refused"


@pytest.mark.parametrize("data", EDGES)
def test_decode_is_the_standard_librarys_validated_decode(data: str | bytes) -> None:
    assert verdict(base64_codec.decode, data) == verdict(lambda d: base64.b64decode(d, validate=True), data)


@pytest.mark.parametrize("data", [item for item in EDGES if isinstance(item, bytes)])
def test_a_slice_is_decoded_as_binascii_strict_mode_decodes_it(data: bytes) -> None:
    strict = verdict(lambda d: binascii.a2b_base64(d, strict_mode=True), data)
    assert verdict(base64_codec.decode_slice, data) == strict
    assert verdict(base64_codec.decode_slice, memoryview(data)) == strict


def test_megabytes_round_trip_as_the_standard_library_encodes_them() -> None:
    data = os.urandom(3_000_001)
    encoded = base64_codec.encode(data)
    assert encoded == base64.b64encode(data)
    assert base64_codec.decode(encoded) == data
