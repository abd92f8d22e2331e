"""Shell layer: an ImagesResponse sent as the pieces it was encoded in (proxy.core.json_body).

A 3 MB answer is mostly one piece: the upstream's own base64 bytes. Joined into one buffer it would
be copied once more, and handed to the transport whole, the part the socket cannot take at once
would be copied again into the transport's buffer. Written in slices, with the writer's drain
between them, only a slice is ever pending. The length is known up front, so the answer goes out
with a Content-Length, as a joined body would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from proxy.core.json_body import encode_pieces

_SLICE = 256 * 1024
JSON = "application/json"


class PiecesPayload(payload.Payload):
    """A body made of byte strings (and views of the chunks an upstream's answer arrived in), written in
    slices without joining them."""

    def __init__(self, pieces: Sequence[bytes | memoryview], **kwargs: Any) -> None:
        super().__init__(pieces, **kwargs)
        self._pieces = pieces
        self._size = sum(len(piece) for piece in pieces)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._pieces).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for piece in self._pieces:
            view = memoryview(piece)
            for start in range(0, len(view), _SLICE):
                await writer.write(view[start : start + _SLICE])


def json_answer(body: dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """An ImagesResponse as JSON; megabytes of base64 are spliced in rather than escaped (proxy.core.json_body)."""
    pieces = encode_pieces(body)
    content = pieces[0] if len(pieces) == 1 else PiecesPayload(pieces)
    return web.Response(body=content, status=status, headers=headers, content_type=JSON)


def answer_text(response: web.Response) -> str | None:
    """The text of an answer made here (to be kept and replayed), or None for a body of another kind."""
    body = response.body
    if isinstance(body, bytes):
        return body.decode()
    return body.decode() if isinstance(body, PiecesPayload) else None
