"""Shell layer: the one guard every fetch of a URL the proxy did not choose goes through.

Such URLs come from clients (an `image` to edit) and from upstreams (a result to download, a task to
poll). Fetching one is a request on someone else's behalf from inside the operator's network, so:
- only http and https;
- the host must resolve to public addresses only: private, loopback, link-local (cloud metadata at
  169.254.169.254), carrier-grade NAT, unique-local and IPv4-mapped IPv6 ranges are refused, unless
  the host is trusted: listed in `server.download.allow_hosts`, or (for an upstream's own URLs) the
  host of that channel's `base_url`, so self-hosted upstreams on a private network keep working;
- the check is made before each request and again at connection time: the session's resolver drops
  non-public addresses, so DNS cannot be rebound to an internal address between check and connect;
- redirects are followed by hand, each hop checked the same way;
- bodies are size-capped and timed, and must be images.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from proxy.core.errors import BadGateway, GatewayTimeout, InvalidRequest, ProxyError
from proxy.core.mime import sniff_image_type
from proxy.core.rules import Channel, DownloadRules, Rules
from proxy.upstream import read_capped, transport_errors

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# IPv6 addresses that carry an IPv4 address in their last 32 bits, and reach it: NAT64's well-known prefix
# (64:ff9b::a9fe:a9fe is 169.254.169.254 where a NAT64 gateway runs) and IPv4-compatible addresses (::7f00:1).
_CARRY_IPV4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))
# Never public, though Python's is_global says otherwise: NAT64 for local use, and the old site-local range.
_LOCAL_V6 = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


def public_address(address: str) -> bool:
    """True for an address on the public internet (not private, loopback, link-local, reserved...)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _LOCAL_V6):
            return False
        # ::ffff:127.0.0.1 is loopback whatever its spelling; so are 6to4's and NAT64's forms of it.
        carried = ip.ipv4_mapped or ip.sixtofour
        if carried is None and any(ip in network for network in _CARRY_IPV4):
            carried = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        ip = carried or ip
    return ip.is_global and not ip.is_multicast


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:  # "http://[::1/x": not a URL at all
        return ""


def trusted_for(channel: Channel | None, download: DownloadRules) -> frozenset[str]:
    """Hosts whose URLs from this channel may be private: the rules' list, and the channel's own host."""
    hosts = set(download.allow_hosts)
    if channel is not None and channel.base_url:
        hosts.add(host_of(channel.base_url))
    return frozenset(hosts)


def trusted_hosts(rules: Rules) -> frozenset[str]:
    """What the guarded resolver lets through: the rules' list and every channel's own host."""
    hosts = {host_of(channel.base_url) for channel in rules.channels.values() if channel.base_url}
    return frozenset(rules.server.download.allow_hosts) | hosts


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, but drops non-public addresses for hosts that are not trusted."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self._inner = DefaultResolver()
        self.trusted = frozenset(host.lower() for host in trusted)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if host.lower() in self.trusted:
            return answers
        safe = [answer for answer in answers if public_address(answer["host"])]
        if not safe:
            raise OSError(f"{host} resolves only to non-public addresses")
        return safe

    async def close(self) -> None:
        await self._inner.close()


def make_guarded_session(trusted: Iterable[str]) -> tuple[aiohttp.ClientSession, GuardedResolver]:
    """The session for URLs the proxy did not choose; its resolver's trusted set can be updated on reload."""
    resolver = GuardedResolver(trusted)
    connector = aiohttp.TCPConnector(resolver=resolver, limit=256)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
    return session, resolver


class Refused(Exception):
    """A URL the guard will not fetch; the caller decides whose mistake it is (client 400, upstream 502)."""


class Unresolved(Refused):
    """Refused for now: the host's name does not resolve at the moment (a DNS outage, or a name that
    does not exist); a caller that tries again later (a webhook) may."""


async def check(url: str, trusted: frozenset[str]) -> None:
    """Refuse a URL whose scheme is not http(s), or whose host is, or resolves only to, a non-public address."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port or 0
    except ValueError:  # a port out of range, an unclosed IPv6 bracket
        raise Refused("the URL is malformed") from None
    if parts.scheme not in ("http", "https") or not host:
        raise Refused("only http(s) URLs are fetched")
    if host in trusted:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:
        raise Refused(f"the host '{host}' is not a valid name") from None
    except OSError:
        raise Unresolved(f"the host '{host}' does not resolve") from None
    if not all(public_address(str(info[4][0])) for info in infos):
        raise Refused("the URL points at a private or local address")


@dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str


async def fetch(session: aiohttp.ClientSession, url: str, *, trusted: frozenset[str], max_bytes: int, timeout: float) -> Download:
    """An image behind a URL someone else chose, within every bound above. Raises Refused or ProxyError.

    `timeout` bounds the whole download: DNS checks and every redirect hop included.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(session, url, trusted=trusted, max_bytes=max_bytes, timeout=timeout)
    except TimeoutError:
        raise GatewayTimeout(f"the image download took longer than {timeout:g} seconds", code="image_download_timeout") from None


async def _fetch(
    session: aiohttp.ClientSession, url: str, *, trusted: frozenset[str], max_bytes: int, timeout: float
) -> Download:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    for _ in range(MAX_REDIRECTS + 1):
        await check(url, trusted)
        async with (
            transport_errors("image download", timeout),
            session.get(url, allow_redirects=False, timeout=client_timeout) as resp,
        ):
            if resp.status in _REDIRECTS and "Location" in resp.headers:
                url = urljoin(url, resp.headers["Location"])
                continue
            if resp.status != 200:
                raise BadGateway(f"the image URL answered HTTP {resp.status}", code="image_download_failed")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise BadGateway(f"the image is larger than {max_bytes} bytes", code="upstream_too_large")
            data = await read_capped(resp.content, max_bytes, "the image")
        content_type = sniff_image_type(data)
        if content_type is None:
            raise BadGateway("the URL did not return an image", code="image_download_failed")
        return Download(data, content_type)
    raise Refused("the URL redirects too many times")


def as_client_error(error: Refused | ProxyError) -> InvalidRequest:
    """A client's URL failed: the client's to fix, so a 400 naming `image`."""
    message = str(error) if isinstance(error, Refused) else error.message
    return InvalidRequest(f"The image URL could not be used: {message}.", param="image", code="invalid_image_url")


def as_upstream_error(error: Refused | ProxyError) -> ProxyError:
    """An upstream's URL failed: the upstream's fault, so a 502 (never a client error)."""
    if isinstance(error, ProxyError):
        return error
    return BadGateway(f"the upstream returned an image URL the proxy will not fetch: {error}", code="image_download_refused")
