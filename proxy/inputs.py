"""Shell layer: the client's input images, in the form each channel takes.

Two conversions happen here, per channel, just before its adapter runs:
- an edit sent to a channel without a native edit endpoint becomes a generation whose `image` field
  holds the uploads as data URIs (and `mask` the mask), when the model's rules forward those fields;
- image URLs sent to a channel that needs the bytes (Stability, Gemini, SD WebUI) are downloaded and
  inlined as data URIs.

Downloading a URL the client chose is a server-side request on the client's behalf, so it is bounded
(size cap, timeout, image content only) and refuses private, loopback and link-local addresses, at
every redirect and at connection time (the resolver filters what DNS returns, so a name cannot be
rebound to an internal address between the check and the connection), unless the rules list the host
in `server.download.allow_hosts`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from dataclasses import replace
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from proxy.adapters.base import AdapterSpec
from proxy.core.errors import InvalidRequest, ProxyError
from proxy.core.mime import sniff_image_type
from proxy.core.multipart import Part
from proxy.core.plan import EDIT, GENERATE, VARIATION, Plan, forwarded
from proxy.core.rules import Channel, DownloadRules
from proxy.upstream import read_capped, transport_errors

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def public_address(address: str) -> bool:
    """True for an address on the public internet (not private, loopback, link-local, reserved...)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, but drops non-public addresses for hosts the rules do not allow."""

    def __init__(self, allow_hosts: frozenset[str]) -> None:
        self._inner = DefaultResolver()
        self._allow = allow_hosts

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host in self._allow:
            return answers
        safe = [answer for answer in answers if public_address(answer["host"])]
        if not safe:
            raise OSError(f"{host} resolves only to non-public addresses")
        return safe

    async def close(self) -> None:
        await self._inner.close()


def make_input_session(download: DownloadRules) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(frozenset(download.allow_hosts)), limit=64)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


async def _check_url(url: str, allow_hosts: frozenset[str]) -> None:
    """Refuse a URL whose host is, or resolves only to, a non-public address (the resolver re-checks at connect)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest("Image URLs must be http(s) URLs.", param="image", code="invalid_image_url")
    if host in allow_hosts:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 0, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(
            f"The image URL's host '{host}' does not resolve.", param="image", code="invalid_image_url"
        ) from None
    if not any(public_address(str(info[4][0])) for info in infos):
        raise InvalidRequest("Image URLs may not point at private or local addresses.", param="image", code="invalid_image_url")


async def download_input(session: aiohttp.ClientSession, url: str, download: DownloadRules) -> tuple[bytes, str]:
    """The image behind a client's URL, following redirects one checked hop at a time.

    Every failure is the client's to fix (a URL it chose), so each is a 400 naming `image`.
    """
    try:
        return await _download(session, url, download)
    except ProxyError as error:
        if isinstance(error, InvalidRequest):
            raise
        raise InvalidRequest(
            f"The image URL could not be fetched: {error.message}", param="image", code="invalid_image_url"
        ) from None


async def _download(session: aiohttp.ClientSession, url: str, download: DownloadRules) -> tuple[bytes, str]:
    allow = frozenset(download.allow_hosts)
    timeout = aiohttp.ClientTimeout(total=download.timeout)
    for _ in range(MAX_REDIRECTS + 1):
        await _check_url(url, allow)
        async with (
            transport_errors("image input", download.timeout),
            session.get(url, allow_redirects=False, timeout=timeout) as resp,
        ):
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                continue
            if resp.status != 200:
                raise InvalidRequest(f"The image URL answered HTTP {resp.status}.", param="image", code="invalid_image_url")
            data = await read_capped(resp.content, download.max_bytes, "the input image")
        content_type = sniff_image_type(data)
        if content_type is None:
            raise InvalidRequest("The image URL did not return an image.", param="image", code="invalid_image_url")
        return data, content_type
    raise InvalidRequest("The image URL redirects too many times.", param="image", code="invalid_image_url")


def data_uri(data: bytes | bytearray, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


async def _upload_uri(part: Part) -> str:
    content_type = sniff_image_type(bytes(part.data[:512])) or part.content_type or "image/png"
    return await asyncio.to_thread(data_uri, part.data, content_type)


async def uploads_as_fields(plan: Plan) -> Plan:
    """An edit for a channel without an edit endpoint: the uploads travel in `image` (and `mask`)."""
    if not forwarded("image", plan.rule):
        raise InvalidRequest(f"Model '{plan.model}' does not take input images.", param="image", code="unsupported_operation")
    if plan.mask is not None and not forwarded("mask", plan.rule):
        raise InvalidRequest(f"Model '{plan.model}' does not take a mask.", param="mask", code="unsupported_operation")
    images = [await _upload_uri(part) for part in plan.uploads]
    fields: dict[str, Any] = dict(plan.fields)
    existing = fields.get("image")
    extra = [existing] if isinstance(existing, str) else list(existing or [])
    combined = extra + images
    fields["image"] = combined[0] if len(combined) == 1 else combined
    if plan.mask is not None:
        fields["mask"] = await _upload_uri(plan.mask)
    return replace(plan, fields=fields, uploads=(), mask=None, operation=GENERATE)


def _urls(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str) and item.startswith(("http://", "https://"))]


async def inline_urls(plan: Plan, session: aiohttp.ClientSession, download: DownloadRules) -> Plan:
    """`image` URLs replaced by data URIs of what they point at, for channels that need the bytes."""
    value = plan.fields.get("image")
    if not _urls(value):
        return plan
    items = value if isinstance(value, list) else [value]
    inlined: list[Any] = []
    for item in items:
        if item in _urls(item):
            data, content_type = await download_input(session, item, download)
            inlined.append(await asyncio.to_thread(data_uri, data, content_type))
        else:
            inlined.append(item)
    fields = {**plan.fields, "image": inlined if isinstance(value, list) else inlined[0]}
    return replace(plan, fields=fields)


async def plan_for(
    plan: Plan, channel: Channel, spec: AdapterSpec, session: aiohttp.ClientSession, download: DownloadRules
) -> Plan:
    """The plan as this channel's adapter can take it, or InvalidRequest when it cannot."""
    plan = replace(plan, upstream_model=plan.rule.upstream_for(channel.name, plan.model))
    if plan.operation not in spec.operations:
        if plan.operation == VARIATION:
            raise InvalidRequest(
                f"Model '{plan.model}' does not support variations.", param="model", code="unsupported_operation"
            )
        if plan.operation == EDIT:
            plan = await uploads_as_fields(plan)
    if spec.needs_image_bytes:
        plan = await inline_urls(plan, session, download)
    return plan
