"""Core layer: a body as the chunks it was received in, searched and cut without joining it first.

An upstream's answer arrives in chunks of tens of kilobytes. Joined into one buffer, a 3 MB answer is
copied once before anything reads it, and once more when the base64 image is cut out of it. Searched
where it lies, only what is cut out is copied: the image once, and the small JSON around it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence


class Received:
    """Immutable bytes made of chunks, with the two operations a search needs: `find` and `span`."""

    __slots__ = ("_chunks", "_size", "_starts")

    def __init__(self, chunks: bytes | Sequence[bytes]) -> None:
        self._chunks: tuple[bytes, ...] = (chunks,) if isinstance(chunks, bytes) else tuple(c for c in chunks if c)
        # Where each chunk starts in the whole; the last entry is the whole's length.
        self._starts = [0, *itertools.accumulate(len(chunk) for chunk in self._chunks)]
        self._size = self._starts[-1]

    def __len__(self) -> int:
        return self._size

    def whole(self) -> bytes:
        """All of it in one buffer (a copy unless it came as one chunk)."""
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)

    def _chunk_at(self, position: int) -> int:
        return bisect.bisect_right(self._starts, position) - 1

    def span(self, start: int, end: int) -> bytes:
        """The bytes from `start` to `end` (clamped, as a slice is)."""
        start, end = max(0, min(start, self._size)), max(0, min(end, self._size))
        if start >= end:
            return b""
        first, last = self._chunk_at(start), self._chunk_at(end - 1)
        if first == last:
            offset = self._starts[first]
            return self._chunks[first][start - offset : end - offset]
        pieces = [self._chunks[first][start - self._starts[first] :], *self._chunks[first + 1 : last]]
        pieces.append(self._chunks[last][: end - self._starts[last]])
        return b"".join(pieces)

    def views(self, start: int, end: int) -> list[memoryview]:
        """The bytes from `start` to `end` as views of the chunks that hold them (nothing is copied)."""
        start, end = max(0, min(start, self._size)), max(0, min(end, self._size))
        views: list[memoryview] = []
        index = self._chunk_at(start)
        while start < end:
            offset = self._starts[index]
            stop = min(end, self._starts[index + 1])
            views.append(memoryview(self._chunks[index])[start - offset : stop - offset])
            start, index = stop, index + 1
        return views

    def find(self, sub: bytes, start: int = 0) -> int:
        """Where `sub` first occurs at or after `start`, or -1, as `bytes.find` on the whole would say."""
        start = max(start, 0)
        if start >= self._size:
            return -1 if sub else (self._size if start == self._size else -1)
        for index in range(self._chunk_at(start), len(self._chunks)):
            offset = self._starts[index]
            found = self._chunks[index].find(sub, max(start - offset, 0))
            if found >= 0:
                return offset + found
            across = self._across(sub, index, start)
            if across >= 0:
                return across
        return -1

    def _across(self, sub: bytes, index: int, start: int) -> int:
        """Where `sub` occurs straddling the end of chunk `index` (and possibly chunks after it), or -1."""
        if len(sub) < 2 or index + 1 >= len(self._chunks):
            return -1
        boundary = self._starts[index + 1]
        window_start = max(boundary - len(sub) + 1, start)
        found = self.span(window_start, boundary + len(sub) - 1).find(sub)
        return window_start + found if found >= 0 else -1


class Base64Chunks:
    """Base64 text, already checked to hold only base64 characters, kept as views of the chunks of the
    answer it was read from: written to a socket or decoded view by view, it is never copied whole.

    It answers what code that reads base64 asks of bytes: its length, a slice (a header to sniff, a
    copy), `decode` (text for JSON that is kept), and `bytes()` (the whole text, joined)."""

    __slots__ = ("_size", "views")

    def __init__(self, views: Sequence[memoryview]) -> None:
        self.views: tuple[memoryview, ...] = tuple(views)
        self._size = sum(len(view) for view in self.views)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self.views)

    def __getitem__(self, where: slice) -> bytes:
        start, stop, step = where.indices(self._size)
        if step != 1:
            return bytes(self)[where]
        pieces: list[memoryview] = []
        position = 0
        for view in self.views:
            end = position + len(view)
            if end > start and position < stop:
                pieces.append(view[max(start - position, 0) : stop - position])
            position = end
        return b"".join(pieces)

    def decode(self, encoding: str = "ascii") -> str:
        return bytes(self).decode(encoding)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Base64Chunks):
            other = bytes(other)
        return isinstance(other, bytes) and bytes(self) == other

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"Base64Chunks({len(self)} characters in {len(self.views)} views)"
