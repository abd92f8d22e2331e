"""Shell layer: the one HTTP client session, and every byte the proxy reads from an upstream.

All reads are bounded: an answer that must be parsed is capped, an image download is capped and timed.
Transport failures become ProxyErrors here, so nothing above this module sees an aiohttp exception:
a deadline is a 504 (not retried: the upstream may still be working and billing), a connection
failure is a 502 that another attempt may fix.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import aiohttp
from aiohttp import payload, web
from aiohttp.abc import AbstractStreamWriter

from proxy.adapters.base import Call, UpstreamResponse
from proxy.core.errors import BadGateway, GatewayTimeout, ProxyError
from proxy.core.multipart import Part
from proxy.observe import REQUEST_ID_HEADER, current_request_id

# An upstream answer that is parsed (JSON with base64 images) may be large, but not unbounded.
MAX_ANSWER_BYTES = 128 * 1024 * 1024
# One encoder for every call: json.dumps with options builds a new encoder each time.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
_SLICE = 256 * 1024


@dataclass(frozen=True)
class SessionSettings:
    # No pool cap: each upstream connection serves a client request already admitted (and bounded by
    # descriptors and per-key limits); a cap would queue long generations behind each other in waves.
    limit: int = 0
    limit_per_host: int = 0  # 0: no per-host cap beyond `limit`
    keepalive_timeout: float = 30.0


def make_session(settings: SessionSettings = SessionSettings()) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.limit,
        limit_per_host=settings.limit_per_host,
        keepalive_timeout=settings.keepalive_timeout,
    )
    # No session-wide timeout: each call carries its channel's own (image generation takes minutes).
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        # A proxy serves many clients: cookies an upstream sets must never be replayed for another.
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        # A User-Agent among the default headers keeps aiohttp's own out; `skip_auto_headers` would do the
        # same at the cost of a header copy per call.
        headers={"User-Agent": "imagegate"},
    )


SESSION = web.AppKey("session", aiohttp.ClientSession)


async def read_chunks(content: aiohttp.StreamReader, limit: int, what: str) -> tuple[bytes, ...]:
    """The whole body as the chunks it arrived in, or BadGateway once it passes `limit` bytes (the rest is
    never read). Kept as they arrived: cut to a fixed size, every chunk and its remainder would be copied
    again, and joined, megabytes of base64 would be copied before anything reads them."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BadGateway(f"{what} is larger than {limit} bytes", code="upstream_too_large")
        chunks.append(chunk)
    return tuple(chunks)


async def read_capped(content: aiohttp.StreamReader, limit: int, what: str) -> bytes:
    """The whole body in one buffer, or BadGateway once it passes `limit` bytes (see read_chunks)."""
    return b"".join(await read_chunks(content, limit, what))


class UploadPayload(payload.Payload):
    """An upload's own buffer, written in slices.

    Handed to the transport whole, the part the socket cannot take at once would be copied into the
    transport's buffer (a second copy of a 30 MB upload); in slices, with the writer's drain between
    them, only a slice is ever pending.
    """

    def __init__(self, value: bytes | bytearray, **kwargs: Any) -> None:
        super().__init__(value, **kwargs)
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = memoryview(self._value)
        end = len(view) if content_length is None else min(len(view), content_length)
        for start in range(0, end, _SLICE):
            await writer.write(view[start : min(start + _SLICE, end)])


def form_data(parts: tuple[Part, ...]) -> aiohttp.FormData:
    """A streamed multipart body over the parts' own buffers (built per attempt: aiohttp consumes it once)."""
    form = aiohttp.FormData(quote_fields=False)
    for part in parts:
        if part.filename is None:
            form.add_field(part.name, part.data.decode("utf-8"), content_type=part.content_type)
        else:
            upload = UploadPayload(part.data, content_type=part.content_type or "application/octet-stream")
            form.add_field(part.name, upload, filename=part.filename)
    return form


def with_request_id(headers: Mapping[str, str]) -> dict[str, str]:
    """The call's headers plus the client request's id, so upstream logs can be matched with ours."""
    out = dict(headers)
    request_id = current_request_id()
    if request_id is not None and not any(name.lower() == "x-request-id" for name in out):
        out[REQUEST_ID_HEADER] = request_id
    return out


def _content_type(call: Call) -> str | None:
    return next((value for name, value in call.headers.items() if name.lower() == "content-type"), None)


def body_payload(body: bytes, content_type: str) -> payload.Payload:
    """A body under one slice goes out in one write as it is; a larger one in slices (UploadPayload)."""
    if len(body) <= _SLICE:
        return payload.BytesPayload(body, content_type=content_type)
    return UploadPayload(body, content_type=content_type)


def _request_kwargs(call: Call) -> dict[str, object]:
    kwargs: dict[str, object] = {"headers": with_request_id(call.headers), "allow_redirects": False}
    if call.json is not None:
        # Encoded here, and sent in slices when large: a prompt or base64 image can make a body of megabytes.
        body = _ENCODE(call.json).encode()
        kwargs["data"] = body_payload(body, "application/json")
    elif call.data is not None:
        kwargs["data"] = body_payload(call.data, _content_type(call) or "application/octet-stream")
    elif call.form is not None:
        kwargs["data"] = form_data(call.form)
    return kwargs


def transport_error(exc: Exception, channel: str, timeout: float) -> ProxyError | None:
    """The proxy's own error for an aiohttp or asyncio failure (ARCHITECTURE.md §3); None for any other."""
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"channel '{channel}' did not answer within {timeout:g} seconds", code="upstream_timeout")
    if isinstance(exc, aiohttp.ClientError | OSError):
        # The exception text names only host and port; never the headers that carry the key.
        return BadGateway(
            f"channel '{channel}' could not be reached: {type(exc).__name__}", code="upstream_unreachable", retryable=True
        )
    return None


def reraise(exc: Exception, channel: str, timeout: float) -> NoReturn:
    """Raise `exc` again: as the proxy's own error when it is a transport failure (`transport_error`)."""
    error = None if isinstance(exc, ProxyError) else transport_error(exc, channel, timeout)
    if error is None:
        raise exc
    raise error from None


@asynccontextmanager
async def transport_errors(channel: str, timeout: float) -> AsyncIterator[None]:
    """`reraise` around a block."""
    try:
        yield
    except Exception as exc:
        reraise(exc, channel, timeout)


@functools.lru_cache(maxsize=64)
def client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    # A frozen value: one per distinct channel timeout rather than one per call.
    return aiohttp.ClientTimeout(total=seconds)


# Told how long a call took, whether it succeeded or not (proxy.driver times calls with it).
Took = Callable[[float], None]


async def send(
    session: aiohttp.ClientSession, call: Call, *, channel: str, timeout: float, took: Took | None = None
) -> UpstreamResponse:
    """Perform one adapter call; the answer is read whole (capped) so the adapter can parse it."""
    seconds = call.timeout if call.timeout is not None else timeout
    started = time.perf_counter()
    request = session.request(call.method, call.url, timeout=client_timeout(seconds), **_request_kwargs(call))  # type: ignore[arg-type]
    try:  # `reraise` by hand rather than `transport_errors`: a held call carries no generator for it
        async with request as resp:
            body = await read_chunks(resp.content, MAX_ANSWER_BYTES, f"the answer of channel '{channel}'")
            headers = {name.lower(): value for name, value in resp.headers.items()}
            return UpstreamResponse(status=resp.status, headers=headers, body=body)
    except Exception as exc:
        reraise(exc, channel, seconds)
    finally:
        if took is not None:
            took(time.perf_counter() - started)
