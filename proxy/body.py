"""Shell layer: request bodies the proxy reads, refused from their head when they cannot be accepted.

Routes that read a body (generations, edits, variations) look at the request head first: a
`Content-Length` over `server.max_request_bytes` is 413 and a `Content-Encoding` the route cannot
decode is 415, before a byte of the body is read (so neither the transfer nor `server.body_timeout`
is waited for) and, for a client that sent `Expect: 100-continue`, instead of `100 Continue`: these
routes' expect handler (`defer_continue`) leaves the interim answer to `continue_if_expected`.

A JSON body is then read as it arrives. A compressed one is decoded in bounded steps
(proxy.core.inflate) and its decoded size counts against the same limit, so a small gzip that
expands to gigabytes costs at most the limit. This needs the server's own decoding off
(`auto_decompress=False`, proxy.serving): with it on, aiohttp would have expanded the body already.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from proxy.core.errors import PayloadTooLarge
from proxy.core.inflate import DECODED, IDENTITY, Inflater, content_coding

CONTINUE = "100-continue"


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.", code="request_too_large")


async def defer_continue(request: web.Request) -> None:
    """Expect handler of the body routes: unlike aiohttp's default it sends no `100 Continue` yet.

    The head is checked first (auth, size, encoding, content type), so a client told 413 never sends
    the body. An expectation other than 100-continue is refused as aiohttp's default does (417).
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() != CONTINUE:
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect[:100]}")


def check_head(request: web.Request, limit: int, accepted: tuple[str, ...]) -> str:
    """The body's content coding, if the head says the body may be accepted; 413 or 415 otherwise."""
    length = request.content_length
    if length is not None and length > limit:
        # Compressed or not, the bytes received are bounded too: a body this large is never read.
        raise too_large(limit)
    return content_coding(request.headers.get(hdrs.CONTENT_ENCODING), accepted)


async def continue_if_expected(request: web.Request) -> None:
    """`100 Continue` for a client that waits for it, now that the body is wanted (RFC 9110 §10.1.1)."""
    if request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() == CONTINUE:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the interim answer is not the response


async def read_body(request: web.Request, limit: int) -> bytearray:
    """The whole body, decoded when it was compressed, at most `limit` bytes once decoded."""
    coding = check_head(request, limit, DECODED)
    await continue_if_expected(request)
    inflater = Inflater(coding) if coding != IDENTITY else None
    body = bytearray()
    async for chunk in request.content.iter_any():
        for piece in inflater.feed(chunk) if inflater is not None else (chunk,):
            body += piece
            if len(body) > limit:
                raise too_large(limit)
    if inflater is not None:
        inflater.finish()
    return body  # not copied into bytes: a body near the limit would briefly cost twice its size
