"""Core layer: request `Content-Encoding`, decoded in bounded steps.

A body the client compressed is decoded here, not by the HTTP server: the server's own decoder would
let a small body expand to its full size before anything counts it. `Inflater.feed` never produces
more than `step` bytes at a time, so a caller that counts what it gets can stop a bomb (kilobytes
that expand to gigabytes) after at most one step past its limit.

Supported: `gzip` (also `x-gzip`, and concatenated members, as gzip allows) and `deflate` (RFC 9110
means the zlib format; raw deflate, which some clients send, is accepted too). Anything else is a 415
(RFC 7694), naming what is accepted.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from proxy.core.errors import InvalidRequest, UnsupportedEncoding

IDENTITY = "identity"
GZIP = "gzip"
DEFLATE = "deflate"
DECODED = (GZIP, DEFLATE)
ALIASES = {"x-gzip": GZIP}
STEP = 64 * 1024  # most bytes one decode step produces


def content_coding(header: str | None, accepted: tuple[str, ...] = DECODED) -> str:
    """The one coding a body is sent in: `identity`, or one of `accepted`; a 415 otherwise."""
    if not header:
        return IDENTITY  # almost every request: no Content-Encoding to parse
    codings = [ALIASES.get(token, token) for token in (part.strip().lower() for part in (header or "").split(",")) if token]
    codings = [coding for coding in codings if coding != IDENTITY]
    if not codings:
        return IDENTITY
    offered = f"accepted: {', '.join(accepted)}" if accepted else "send the body uncompressed"
    if len(codings) > 1:
        # Stacked codings (`gzip, gzip`) only multiply the work of decoding; no client needs them.
        raise UnsupportedEncoding(f"Only one Content-Encoding is supported, got {len(codings)} ({offered}).", accepted)
    if codings[0] not in accepted:
        raise UnsupportedEncoding(f"Content-Encoding '{codings[0][:40]}' is not supported here ({offered}).", accepted)
    return codings[0]


def _decompressor(coding: str, first: int) -> zlib._Decompress:
    if coding == GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # zlib format when the first byte names the deflate method (RFC 1950), else raw deflate (RFC 1951).
    return zlib.decompressobj(zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS)


class Inflater:
    """Decodes one body, fed in pieces as they arrive; every piece it yields is at most `step` bytes."""

    def __init__(self, coding: str, step: int = STEP) -> None:
        if coding not in DECODED:
            raise ValueError(f"cannot decode {coding!r}")
        self.coding = coding
        self.step = step
        self._decoder: zlib._Decompress | None = None
        self._ended = False  # the last member ended and nothing followed it yet

    def _broken(self) -> InvalidRequest:
        return InvalidRequest(
            f"The request body is not valid {self.coding} data, as its Content-Encoding says it is.",
            code="invalid_content_encoding",
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._decoder is None or self._ended:
                if self._ended and self.coding != GZIP:
                    raise self._broken()  # bytes after the end of a deflate stream
                self._decoder, self._ended = _decompressor(self.coding, data[0]), False
            try:
                yield from self._drain(data)
            except zlib.error:
                raise self._broken() from None
            data = b""
            if self._decoder.eof:
                # A gzip body may hold several members, one after the other (RFC 1952 §2.2).
                data, self._ended = self._decoder.unused_data, True

    def _drain(self, data: bytes) -> Iterator[bytes]:
        assert self._decoder is not None
        while True:
            # max_length bounds the output; input left over waits in unconsumed_tail for the next step.
            piece = self._decoder.decompress(data, self.step)
            data = self._decoder.unconsumed_tail
            if piece:
                yield piece
            # A step that filled its output may have more to give even once the input is used up.
            if self._decoder.eof or (not data and len(piece) < self.step):
                return

    def finish(self) -> None:
        """The body ended: a stream cut short is the client's mistake. An empty body has nothing to decode."""
        if self._decoder is not None and not self._decoder.eof:
            raise self._broken()
