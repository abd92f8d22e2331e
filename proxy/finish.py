"""Shell layer: the last step of a generation, giving the client the `output_format` and `response_format` it asked for.

A channel whose provider cannot make the client's output_format (proxy.core.formats) has its images
converted first: downloaded when the upstream gave a URL, re-encoded (proxy.core.transcode), and from then
on they are bytes like any other; `metadata.converted` says so. An image that already is in that format
is left as the upstream gave it.

Bytes from the upstream and a client that wants a URL: the image goes into the store and the URL is the
store's (the proxy's own `GET /images/{name}`, or object storage's: proxy.s3_store). A store that is down
never loses the image: it goes out as base64 and `metadata.not_hosted` says so. A URL from the upstream and a client that wants
bytes: the image is downloaded (size cap, timeout, content-type check) and base64-encoded. Decoding
and encoding megabytes runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from proxy.core import base64_codec
from proxy.core.errors import BadGateway, ProxyError, ServiceUnavailable
from proxy.core.formats import FORMAT_OF_MIME, MIME_TYPES, Conversion
from proxy.core.mime import image_dimensions, sniff_image_type
from proxy.core.received import Base64Chunks
from proxy.core.response import FETCH, HOST, Base64, GeneratedImage, ImagesResult, conversion, in_format
from proxy.core.rules import Channel, DownloadRules, Rules
from proxy.core.transcode import TranscodeError, transcode
from proxy.cpu import off_loop
from proxy.driver import Outcome
from proxy.guard import Refused, as_upstream_error, trusted_for
from proxy.guard import fetch as guarded_fetch
from proxy.image_store import FileImageStore, ImageStore
from proxy.observe import note_hosted

log = logging.getLogger("imagegate.finish")
NOT_HOSTED = "image store unavailable"
# Below this many characters base64 work is cheaper inline than a thread hop.
_INLINE_LIMIT = 256 * 1024
# Re-encoding costs far more per byte than base64: only thumbnails are converted on the event loop.
_SNIFF_CHARS = 4 * 172  # base64 characters of the first 516 bytes: all that sniff_image_type reads
_INLINE_TRANSCODE_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Finisher:
    session: aiohttp.ClientSession  # the guarded one: result URLs are the upstream's choice
    store: ImageStore
    download: DownloadRules


def public_base(request: web.Request, rules: Rules) -> str:
    """Where clients reach the proxy: `server.public_base_url`, else the request's own scheme and Host."""
    if rules.server.public_base_url:
        return rules.server.public_base_url
    return f"{request.scheme}://{request.host}"


@dataclass(frozen=True)
class Delivery:
    """Where and for how long the client will fetch what it gets."""

    response_format: str | None
    public_base: str
    keep_for: float  # seconds hosted images must stay retrievable (an async task's retention, or the store's ttl)
    trusted: frozenset[str] = frozenset()  # hosts whose result URLs may be private (see proxy.guard)
    conversion: Conversion | None = None  # the output format the proxy makes of this channel's images

    def from_channel(self, channel: Channel, download: DownloadRules) -> Delivery:
        trusted = trusted_for(channel, download)
        return self if trusted == self.trusted else replace(self, trusted=trusted)


def _decode(b64: Base64) -> bytes:
    try:
        return base64_codec.decode(bytes(b64) if isinstance(b64, Base64Chunks) else b64)
    except (binascii.Error, ValueError):
        raise _not_base64() from None


def _not_base64() -> BadGateway:
    return BadGateway("the upstream returned an image that is not valid base64", code="bad_upstream_response")


async def _off_loop_if_large(size: int, function: Any, argument: Any, limit: int = _INLINE_LIMIT) -> Any:
    if size < limit:
        return function(argument)
    return await off_loop(function, argument)


def _head(b64: Base64, chars: int) -> bytes | None:
    """The bytes of a base64 image's first `chars` characters (whether all of it is base64 is the decode's
    to say); None when they are not base64."""
    chunk = b64[:chars]
    try:
        return base64.b64decode(chunk[: len(chunk) - len(chunk) % 4])
    except (binascii.Error, ValueError):
        return None


def _sniffed(b64: Base64) -> str | None:
    """The type the first bytes of a base64 image show."""
    head = _head(b64, _SNIFF_CHARS)
    return sniff_image_type(head) if head is not None else None


def _decoded_by_store(store: ImageStore, b64: Base64) -> bool:
    """Whether the store decodes this image itself while writing it (a large one, to the directory store):
    then it never exists whole in memory, and its decode does not hold the event loop (proxy.image_store)."""
    return isinstance(store, FileImageStore) and len(b64) >= _INLINE_LIMIT and (not isinstance(b64, str) or b64.isascii())


async def _put_base64(store: FileImageStore, b64: Base64, content_type: str, keep_for: float) -> str:
    try:
        return await store.put_base64(b64.encode("ascii") if isinstance(b64, str) else b64, content_type, keep_for)
    except binascii.Error:
        raise _not_base64() from None


async def host(finisher: Finisher, image: GeneratedImage, delivery: Delivery) -> GeneratedImage:
    b64, store = image.b64_json, finisher.store
    assert b64 is not None
    data = None if _decoded_by_store(store, b64) else await _off_loop_if_large(len(b64), _decode, b64)
    content_type = (sniff_image_type(data) if data is not None else _sniffed(b64)) or image.content_type or "image/png"
    try:
        if data is not None:
            name = await store.put(data, content_type, delivery.keep_for)
        else:
            assert isinstance(store, FileImageStore)
            name = await _put_base64(store, b64, content_type, delivery.keep_for)
        url = await store.url_for(name, delivery.public_base, delivery.keep_for)
    except (ServiceUnavailable, OSError) as exc:
        if data is None:
            await _off_loop_if_large(len(b64), _decode, b64)  # the store failed first: not base64 is still a 502
        # The image was made and paid for: the client gets its bytes rather than an error.
        log.warning("the image store is unavailable, an image goes out as base64: %s", type(exc).__name__)
        return replace(image, content_type=content_type, url=None, url_ttl=None, unhosted=NOT_HOSTED)
    note_hosted(name, time.time() + delivery.keep_for)
    return replace(image, url=url, content_type=content_type, url_ttl=None)


def _encode(data: bytes) -> bytes:
    # Kept as bytes: base64 the proxy made is base64 by construction, so the answer splices it as it is
    # (proxy.core.response) instead of copying it into a str and checking it again.
    return base64_codec.encode(data)


async def fetch(finisher: Finisher, image: GeneratedImage, delivery: Delivery) -> GeneratedImage:
    assert image.url is not None
    try:
        download = await guarded_fetch(
            finisher.session,
            image.url,
            trusted=delivery.trusted,
            max_bytes=finisher.download.max_bytes,
            timeout=finisher.download.timeout,
        )
    except (Refused, ProxyError) as error:
        raise as_upstream_error(error) from None
    b64: bytes = await _off_loop_if_large(len(download.data), _encode, download.data)
    return replace(image, b64_json=b64, content_type=download.content_type)


def short_lived(image: GeneratedImage, keep_for: float) -> bool:
    """An upstream URL that dies before the client may fetch it (BFL's last 10 minutes) must be re-hosted."""
    return image.url is not None and image.url_ttl is not None and image.url_ttl < keep_for


async def rehost(finisher: Finisher, image: GeneratedImage, delivery: Delivery) -> GeneratedImage:
    fetched = await fetch(finisher, image, delivery)
    hosted = await host(finisher, replace(fetched, url=None), delivery)
    if hosted.unhosted is not None:
        return hosted  # the store is down: the fetched bytes, since the upstream's URL dies too soon
    return replace(hosted, b64_json=image.b64_json)  # only the URL changes: bytes go out only when asked for


def _transcoded(data: bytes, wanted: Conversion) -> tuple[str, bytes | None, str | None]:
    """The format the bytes are in, the bytes in the wanted format (None: they already are, or cannot be),
    and why they cannot be converted."""
    source = FORMAT_OF_MIME.get(sniff_image_type(data) or "", "unknown")
    if not wanted.needed(source):
        return source, None, None
    try:
        return source, transcode(data, wanted.to, wanted.compression), None
    except TranscodeError as error:
        return source, None, str(error)


async def reformat(finisher: Finisher, image: GeneratedImage, delivery: Delivery, wanted: Conversion) -> GeneratedImage:
    """The image in the client's output_format. A converted image is bytes; it is hosted again when the
    upstream gave a URL and the client named no response_format, so the answer keeps its shape. An image
    the proxy cannot re-encode was still made and paid for: it is delivered as the provider made it, and
    the answer says so (`metadata.not_converted`) rather than failing."""
    source = image if image.b64_json is not None else await fetch(finisher, image, delivery)
    assert source.b64_json is not None
    data: bytes = await _off_loop_if_large(len(source.b64_json), _decode, source.b64_json)
    made, converted, problem = await _off_loop_if_large(
        len(data), partial(_transcoded, wanted=wanted), data, _INLINE_TRANSCODE_LIMIT
    )
    if problem is not None:
        log.warning("an upstream image (%s) could not be converted to %s: %s", made, wanted.to, problem)
        return replace(source, unconverted=f"{made} could not be converted to {wanted.to}: {problem}")
    if converted is None:
        return image  # already what the client asked for: delivered as the upstream gave it
    b64: bytes = await _off_loop_if_large(len(converted), _encode, converted)
    out = GeneratedImage(
        b64_json=b64, revised_prompt=image.revised_prompt, content_type=MIME_TYPES[wanted.to], converted_from=made
    )
    if image.b64_json is None and delivery.response_format is None:
        hosted = await host(finisher, out, delivery)
        out = hosted if hosted.unhosted is not None else replace(hosted, b64_json=None)
    return out


async def convert(finisher: Finisher, image: GeneratedImage, delivery: Delivery) -> GeneratedImage:
    if delivery.conversion is not None:
        image = await reformat(finisher, image, delivery, delivery.conversion)
    kind = conversion(image, delivery.response_format)
    if kind == HOST:
        image = await host(finisher, image, delivery)
    elif kind == FETCH:
        image = await fetch(finisher, image, delivery)
    elif delivery.response_format != "b64_json" and short_lived(image, delivery.keep_for):
        image = await rehost(finisher, image, delivery)
    return image


# Enough base64 for any image header we read (a JPEG's frame header may follow ~64 KiB of EXIF); most
# headers (PNG, GIF, WebP, a JPEG without EXIF) are in the first few hundred bytes, so those are read first.
_HEADER_CHARS = 4 * 24 * 1024
_FIRST_HEADER_CHARS = _SNIFF_CHARS


def _dimensions(b64: Base64, chars: int) -> tuple[int, int] | None:
    head = _head(b64, chars)
    return image_dimensions(head) if head is not None else None


def measured_size(images: tuple[GeneratedImage, ...]) -> str | None:
    """The real `WxH` of the first image whose bytes are at hand, for clients to see what they got."""
    for image in images:
        if image.b64_json is not None:
            b64 = image.b64_json
            dimensions = _dimensions(b64, _FIRST_HEADER_CHARS) or _dimensions(b64, _HEADER_CHARS)
            if dimensions is not None:
                return f"{dimensions[0]}x{dimensions[1]}"
    return None


async def _converted(
    finisher: Finisher, images: tuple[GeneratedImage, ...], delivery: Delivery
) -> list[GeneratedImage | BaseException]:
    """Each image converted, or the error it failed with. One image is awaited as it is: a gather would cost
    a task and a turn of the event loop for the most common answer of all."""
    if len(images) != 1:
        return await asyncio.gather(*(convert(finisher, image, delivery) for image in images), return_exceptions=True)
    try:
        return [await convert(finisher, images[0], delivery)]
    except Exception as error:  # as gather's return_exceptions: the caller sorts expected from unexpected
        return [error]


async def deliver(finisher: Finisher, result: ImagesResult, delivery: Delivery) -> tuple[ImagesResult, tuple[ProxyError, ...]]:
    """The result with every image in the client's format (conversions run concurrently), and the
    conversions that failed: the images that did convert are delivered (they were paid for)."""
    answers = await _converted(finisher, result.images, delivery)
    unexpected = [answer for answer in answers if isinstance(answer, BaseException) and not isinstance(answer, ProxyError)]
    if unexpected:
        raise unexpected[0]
    errors = tuple(answer for answer in answers if isinstance(answer, ProxyError))
    images = tuple(answer for answer in answers if isinstance(answer, GeneratedImage))
    if not images and errors:
        raise errors[0]
    extra = {**result.extra, **converted_extra(images, delivery.conversion), **not_hosted_extra(images)}
    if "size" not in extra and (size := measured_size(images)) is not None:
        extra = {**extra, "size": size}
    return replace(result, images=tuple(in_format(image, delivery.response_format) for image in images), extra=extra), errors


def converted_extra(images: tuple[GeneratedImage, ...], wanted: Conversion | None) -> dict[str, Any]:
    """What the answer says of a conversion: the format delivered (OpenAI's response-level `output_format`)
    and, under metadata, `converted: {from, to}` when the proxy re-encoded any image, `not_converted` when
    it could not (those images keep the provider's format, so no single `output_format` is claimed)."""
    if wanted is None:
        return {}
    failed = [image.unconverted for image in images if image.unconverted is not None]
    extra: dict[str, Any] = {} if failed else {"output_format": wanted.to}
    made = next((image.converted_from for image in images if image.converted_from is not None), None)
    if made is not None:
        extra["converted"] = {"from": made, "to": wanted.to}
    if failed:
        extra["not_converted"] = {"count": len(failed), "reason": failed[0]}
    return extra


def not_hosted_extra(images: tuple[GeneratedImage, ...]) -> dict[str, Any]:
    """`metadata.not_hosted` when the store could not take some images (they went out as base64)."""
    failed = [image.unhosted for image in images if image.unhosted is not None]
    return {"not_hosted": {"count": len(failed), "reason": failed[0]}} if failed else {}


def metadata(outcome: Outcome, model: str, upstream_model: str, wanted: int) -> dict[str, Any]:
    """How the answer was made (seed 001's `metadata`): models, channel, attempts, and any missing images."""
    meta: dict[str, Any] = {"model": model, "upstream_model": upstream_model, "channel": outcome.channel}
    meta["attempts"] = outcome.attempts
    if outcome.failed:
        meta["failed"] = {
            "count": wanted - len(outcome.result.images),
            "errors": [error.envelope()["error"] for error in outcome.failed],
        }
    return meta
