"""proxy.core.inflate: which Content-Encodings a route accepts, and decoding in bounded steps."""

from __future__ import annotations

import gzip
import zlib

import pytest

from proxy.core.errors import InvalidRequest, UnsupportedEncoding
from proxy.core.inflate import DEFLATE, GZIP, IDENTITY, Inflater, content_coding

TEXT = b'{"model": "m", "prompt": "' + b"a lighthouse at dusk " * 200 + b'"}'


@pytest.mark.parametrize(
    ("header", "coding"),
    [(None, IDENTITY), ("", IDENTITY), ("identity", IDENTITY), ("gzip", GZIP), (" GZip ", GZIP), ("x-gzip", GZIP),
     ("deflate", DEFLATE), ("identity, gzip", GZIP)],
)
def test_codings(header: str | None, coding: str) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, deflate", "gzip, gzip", "x" * 500])
def test_unsupported_codings_are_415_with_accept_encoding(header: str) -> None:
    with pytest.raises(UnsupportedEncoding) as caught:
        content_coding(header)
    assert caught.value.status == 415
    assert caught.value.headers() == {"Accept-Encoding": "gzip, deflate"}
    assert len(caught.value.message) < 120


def test_a_route_that_decodes_nothing_accepts_identity_only() -> None:
    assert content_coding("identity", ()) == IDENTITY
    with pytest.raises(UnsupportedEncoding) as caught:
        content_coding("gzip", ())
    assert caught.value.headers() == {"Accept-Encoding": "identity"}


def decode(inflater: Inflater, data: bytes, piece: int = 1000) -> list[bytes]:
    out = [chunk for start in range(0, len(data), piece) for chunk in inflater.feed(data[start : start + piece])]
    inflater.finish()
    return out


def raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [(GZIP, gzip.compress(TEXT)), (DEFLATE, zlib.compress(TEXT)), (DEFLATE, raw_deflate(TEXT)),
     (GZIP, gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:]))],
    ids=["gzip", "zlib", "raw-deflate", "gzip-two-members"],
)
@pytest.mark.parametrize("piece", [1, 7, 1000, 1 << 20])
def test_decoding_in_any_pieces_gives_the_text_back(coding: str, encoded: bytes, piece: int) -> None:
    assert b"".join(decode(Inflater(coding, step=256), encoded, piece)) == TEXT


def test_no_step_yields_more_than_its_size_even_from_a_bomb() -> None:
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9)  # 64 MiB of spaces in about 64 KiB
    inflater = Inflater(GZIP, step=4096)
    total = 0
    for piece in inflater.feed(bomb):
        assert 0 < len(piece) <= 4096
        total += len(piece)
        if total > 1 << 20:
            break  # a caller over its limit stops here: nothing more was decoded than it took
    assert total <= (1 << 20) + 4096


def test_an_empty_body_has_nothing_to_decode() -> None:
    assert decode(Inflater(GZIP), b"") == []


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [(GZIP, TEXT), (DEFLATE, b"\xff" * 40), (GZIP, gzip.compress(TEXT)[:-3]), (DEFLATE, zlib.compress(TEXT)[:-8]),
     (DEFLATE, zlib.compress(TEXT) + b"more"), (GZIP, gzip.compress(TEXT) + b"\x00\x00")],
    ids=["gzip-plain", "deflate-garbage", "gzip-truncated", "deflate-truncated", "deflate-trailing", "gzip-padding"],
)
def test_what_is_not_its_coding_is_400(coding: str, encoded: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode(Inflater(coding), encoded)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_content_encoding"


def test_only_decoded_codings_have_an_inflater() -> None:
    with pytest.raises(ValueError):
        Inflater(IDENTITY)
