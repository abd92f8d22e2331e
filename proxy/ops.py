"""Shell layer: what operators and orchestrators talk to. Health, readiness, metrics, reload, draining.

    GET /healthz   the process answers (liveness)
    GET /readyz    rules loaded, image store writable, not shutting down (503 otherwise), and which
                   channels have their credentials
    GET /metrics   Prometheus text format; loopback clients only unless `server.metrics` says otherwise
    SIGHUP         re-read the rules file: a valid one applies to new requests, an invalid one is
                   logged and the old rules stay
    probe_channels the optional start-up check (`--probe`): does each channel's base URL answer?
None of these is behind client auth: orchestrators do not hold API keys.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.adapters import SCHEMAS
from proxy.core.errors import AuthenticationFailed, NotFound
from proxy.core.rules import Channel, Rules, RulesError, parse_rules
from proxy.image_store import FileImageStore
from proxy.metrics import CONTENT_TYPE
from proxy.services import RULES_PATH, SERVICES, Services

log = logging.getLogger("imagegate")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def store_writable(services: Services) -> bool:
    store = services.store
    # One access() call: cheap enough for probes every second.
    return not isinstance(store, FileImageStore) or os.access(store.directory, os.W_OK)


def channel_states(rules: Rules) -> dict[str, str]:
    return {
        name: "ready" if channel.usable else f"missing {', '.join(channel.missing_key)}"
        for name, channel in rules.channels.items()
    }


async def readyz(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is None:
        return web.json_response({"status": "starting"}, status=503)
    checks = {"rules": "loaded", "image_store": "writable" if store_writable(services) else "not writable"}
    ready = not services.draining and checks["image_store"] == "writable"
    body = {
        "status": "ready" if ready else ("draining" if services.draining else "not ready"),
        "checks": checks,
        "channels": channel_states(services.rules),
    }
    return web.json_response(body, status=200 if ready else 503)


def loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


# What a reverse proxy adds: its client is elsewhere, however local the connection and the Host look.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")


def local_client(request: web.Request) -> bool:
    """A client on this machine talking to the proxy itself: from loopback, and not through a reverse proxy."""
    return loopback(request.remote) and not any(name in request.headers for name in FORWARDING_HEADERS)


def _metrics_allowed(request: web.Request, services: Services) -> bool:
    settings = services.rules.server.metrics
    if settings.token:
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(presented.encode(), settings.token.encode())
    return settings.public or local_client(request)


async def metrics_endpoint(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if not _metrics_allowed(request, services):
        raise AuthenticationFailed("Metrics are not served to this client.", code="metrics_forbidden", status=403)
    if services.metrics is None:
        raise NotFound("Metrics need the `metrics` extra: pip install 'imagegate[metrics]'.", code="metrics_unavailable")
    return web.Response(body=services.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def on_shutdown(app: web.Application) -> None:
    """Runs once the listeners are closed, before in-flight requests are awaited: say we are draining."""
    services = app.get(SERVICES)
    if services is not None:
        services.draining = True
        log.info("shutting down: waiting up to %gs for requests in flight", services.rules.server.shutdown_grace)


def read_rules(path: str, env: Mapping[str, str]) -> Rules:
    """The rules file, parsed; RulesError for what is wrong in it, or (as its cause, with no problems listed)
    why it cannot be read: missing, unreadable, not UTF-8."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError([]) from exc
    return parse_rules(text, env, SCHEMAS)


async def reload_rules(app: web.Application) -> bool:
    """Re-read the rules file; True when the new rules took effect."""
    path = app[RULES_PATH]
    try:
        rules = await asyncio.to_thread(read_rules, path, dict(os.environ))
    except RulesError as exc:
        why = exc.__cause__ if exc.__cause__ is not None else "; ".join(map(str, exc.problems))
        log.error("reload of %s rejected, keeping the current rules: %s", path, why)
        return False
    app[SERVICES].use_rules(rules)
    for warning in rules.warnings:
        log.warning("%s", warning)
    log.info("reloaded %s: %d channels, %d models", path, len(rules.channels), len(rules.models))
    return True


async def watch_reload_signal(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: while serving from a file, SIGHUP reloads it."""
    loop = asyncio.get_running_loop()
    if RULES_PATH not in app or not hasattr(signal, "SIGHUP"):
        yield
        return
    pending: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload_rules(app))
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    except RuntimeError:
        # Not the main thread, or a loop without signal support: reload stays off, serving goes on.
        yield
        return
    yield
    loop.remove_signal_handler(signal.SIGHUP)



# -- the start-up probe ---------------------------------------------------------------------------

PROBE_TIMEOUT = 2.0


def unreachable_reason(exc: BaseException) -> str:
    """Why a channel did not answer, in a few words (never a URL, never a header)."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, socket.gaierror):
        return "unknown host"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()
    return type(exc).__name__


async def probe_channel(session: aiohttp.ClientSession, channel: Channel, timeout: float) -> str | None:
    """None when the channel's base URL answers HTTP at all (any status: a 401 or 404 is an answer), else why not.

    No key is sent: the probe spends nothing and proves only that something listens and speaks HTTP.
    """
    try:
        async with session.get(channel.base_url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)):
            return None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return unreachable_reason(exc)


async def probe_channels(channels: Iterable[Channel], timeout: float = PROBE_TIMEOUT) -> dict[str, str | None]:
    """Probe every channel that has a base URL, all at once: name -> None (answers) or the reason it does not."""
    targets = [channel for channel in channels if channel.base_url]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": "imagegate"}) as session:
        results = await asyncio.gather(*(probe_channel(session, channel, timeout) for channel in targets))
    return {channel.name: result for channel, result in zip(targets, results, strict=True)}
