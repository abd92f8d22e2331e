"""Core layer: a pure multipart/form-data encoder (RFC 7578) whose output depends only on its parts.

The boundary is derived from a SHA-256 of the parts, not from randomness, so the same form always
encodes to the same bytes (golden tests stay stable), and it is checked against every part so that it
never occurs inside one (RFC 2046 §5.1.1). Field names and filenames are escaped as browsers do
(WHATWG HTML "multipart/form-data encoding algorithm": `"` -> %22, CR -> %0D, LF -> %0A).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

BOUNDARY_PREFIX = "imagegate-"
CRLF = b"\r\n"
_ESCAPES = {ord('"'): "%22", ord("\r"): "%0D", ord("\n"): "%0A"}


@dataclass(frozen=True)
class Part:
    """One form field: a text value (no filename) or a file (filename and, usually, a content type)."""

    name: str
    # A client upload is kept in the bytearray it was read into: converting it to bytes would copy megabytes.
    data: bytes | bytearray
    filename: str | None = None
    content_type: str | None = None

    def __repr__(self) -> str:
        # Parts can hold megabytes of image bytes: keep them out of reprs and tracebacks.
        return f"Part(name={self.name!r}, filename={self.filename!r}, bytes={len(self.data)})"


@dataclass(frozen=True)
class EncodedForm:
    body: bytes
    boundary: str

    @property
    def content_type(self) -> str:
        """The value of the request's Content-Type header."""
        return f"multipart/form-data; boundary={self.boundary}"


def text_part(name: str, value: str) -> Part:
    return Part(name, value.encode("utf-8"))


def file_part(name: str, data: bytes, filename: str, content_type: str) -> Part:
    return Part(name, data, filename=filename, content_type=content_type)


def _quote(value: str) -> str:
    return '"' + value.translate(_ESCAPES) + '"'


def _headers(part: Part) -> bytes:
    disposition = f"Content-Disposition: form-data; name={_quote(part.name)}"
    if part.filename is not None:
        disposition += f"; filename={_quote(part.filename)}"
    lines = [disposition]
    if part.content_type is not None:
        if "\r" in part.content_type or "\n" in part.content_type:
            raise ValueError(f"content type of part '{part.name}' contains a line break")
        lines.append(f"Content-Type: {part.content_type}")
    # Header values are UTF-8, as browsers send them and RFC 7578 §5.1.3 allows.
    return "\r\n".join(lines).encode("utf-8") + CRLF + CRLF


def _digest(pieces: Sequence[bytes | bytearray]) -> bytes:
    """SHA-256 over every piece, length-prefixed so that no two different forms hash alike by concatenation."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(len(piece).to_bytes(8, "big"))
        digest.update(piece)
    return digest.digest()


def _candidates(digest: bytes) -> Iterator[str]:
    attempt = 0
    while True:
        seed = digest + attempt.to_bytes(4, "big")
        yield BOUNDARY_PREFIX + hashlib.sha256(seed).hexdigest()[:40]
        attempt += 1


def pick_boundary(digest: bytes, contents: Sequence[bytes | bytearray]) -> str:
    """The first boundary derived from `digest` that occurs in none of `contents`."""
    # A collision needs 40 hex digits of SHA-256 inside the content, so the first candidate nearly always wins.
    return next(b for b in _candidates(digest) if not any(b.encode("ascii") in content for content in contents))


def encode(parts: Sequence[Part]) -> EncodedForm:
    """The form body and its boundary. Part order is kept (some servers read fields in order)."""
    heads = [_headers(part) for part in parts]
    pieces = [piece for head, part in zip(heads, parts, strict=True) for piece in (head, part.data)]
    boundary = pick_boundary(_digest(pieces), pieces)
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes | bytearray] = []
    for head, part in zip(heads, parts, strict=True):
        chunks += [delimiter, CRLF, head, part.data, CRLF]
    chunks += [delimiter, b"--", CRLF]
    return EncodedForm(b"".join(chunks), boundary)
