"""Shell layer: every other `/v1/*` request goes to the default channel unchanged, streamed both ways.

So the proxy is a drop-in base URL even for clients that also call chat or files. The request
body is streamed to the upstream as it arrives and the answer is streamed back chunk by chunk with
`await write()` as backpressure (aiohttp#2557); nothing is buffered whole. Hop-by-hop headers and
those named in `Connection` are dropped (RFC 9110 §7.6.1), the client's credentials are replaced by
the channel's, and compressed answers are relayed compressed (no decompression, so
`Content-Encoding` and `Content-Length` stay true).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.adapters.base import AdapterSpec
from proxy.core.errors import NotFound
from proxy.core.rules import Channel
from proxy.upstream import transport_errors, with_request_id

# RFC 9110 §7.6.1 connection-specific fields, plus Host (the upstream's own is set by the client lib).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Client credentials for the proxy itself, never for the upstream.
CLIENT_AUTH = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key", "x-key"})
_CHUNK = 64 * 1024


def _named_in_connection(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection") or headers.get("connection") or ""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def forward_headers(headers: Iterable[tuple[str, str]], connection: set[str], drop: frozenset[str]) -> CIMultiDict[str]:
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection or lower in drop:
            continue
        kept.add(name, value)
    return kept


def upstream_url(channel: Channel, path: str, query: str) -> str:
    """`/v1/models?x=1` on a channel whose base_url ends in `/v1` -> `{base_url}/models?x=1`."""
    tail = path[len("/v1") :] if path.startswith("/v1/") else path
    return f"{channel.base_url}{tail}" + (f"?{query}" if query else "")


def _channel_auth(spec: AdapterSpec, channel: Channel, client_key: str | None) -> dict[str, str]:
    if spec.auth_headers is None:
        return {}
    key = client_key if channel.passthrough_key else channel.api_key
    return spec.auth_headers(key)


async def relay(
    request: web.Request,
    session: aiohttp.ClientSession,
    channel: Channel | None,
    spec: AdapterSpec | None,
    client_key: str | None,
) -> web.StreamResponse:
    if channel is None or spec is None or spec.auth_headers is None or not channel.base_url:
        raise NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
    headers = forward_headers(request.headers.items(), _named_in_connection(request.headers), CLIENT_AUTH)
    headers.update(channel.headers)
    headers.update(_channel_auth(spec, channel, client_key))
    headers.update(with_request_id(headers))
    body = request.content if request.body_exists else None
    # An idle read timeout rather than a total: a streamed chat answer may legitimately run for minutes.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=channel.timeout)
    async with (
        transport_errors(channel.name, channel.timeout),
        session.request(
            request.method,
            upstream_url(channel, request.path, request.query_string),
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=False,
            timeout=timeout,
        ) as upstream,
    ):
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        connection = _named_in_connection(upstream.headers)
        for name, value in forward_headers(upstream.headers.items(), connection, frozenset()).items():
            response.headers.add(name, value)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientError, TimeoutError):
            # Either side broke mid-body. The status line is already sent, so the only honest signal
            # left is to cut the client's connection rather than end the body as if it were complete.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
