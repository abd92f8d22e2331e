"""Shell layer: `Idempotency-Key` on POSTs. A retried request gets the first one's answer, not a new bill.

The key is scoped to the client's API key. The first request with a key claims it and runs; a
successful answer is kept for `server.idempotency.retention` seconds and replayed (with
`Idempotent-Replayed: true`) to every retry with the same key and the same request. A retry that
arrives while the first is still running waits for its answer. The same key with a different request
is a 422. A failed request releases its key, so a retry runs again (nothing was delivered or paid for).
Streams cannot be replayed, so a streamed request with a key is refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from aiohttp import web

from proxy.core.errors import InvalidRequest, ServiceUnavailable
from proxy.json_answer import answer_text
from proxy.shared_state import DONE, RUNNING, Idempotency, IdempotentRecord

log = logging.getLogger("imagegate")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
POLL = 0.1
# A claim is a lease its run renews every LEASE / 3 seconds: a run may take longer than any one lease
# (failover over channels and rounds), and a claim a crashed process left frees within a minute.
LEASE = 60
_KEPT_HEADERS = ("Content-Type", "X-Imagegate-Ignored-Params")
_LETTING_GO: set[asyncio.Task[None]] = set()  # releases of claims whose client left, kept until they end


def fingerprint(parts: Iterable[bytes | bytearray]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def check_header(value: str) -> str:
    if not 1 <= len(value) <= 255 or not value.isprintable():
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable characters.", param=HEADER, code="invalid_value")
    return value


def _replay(record: IdempotentRecord) -> web.Response:
    headers = {**record.headers, REPLAYED: "true"}
    return web.Response(status=record.status, body=record.body.encode(), headers=headers)


async def _wait_for(store: Idempotency, key: str, seconds: float) -> IdempotentRecord | None:
    """The finished record, or None once the first request failed and released the key."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        record = await store.get(key)
        if record is None or record.state == DONE:
            return record
        await asyncio.sleep(POLL)
    raise ServiceUnavailable("The first request with this Idempotency-Key is still running.", code="idempotency_in_progress")


async def _forget(store: Idempotency, key: str, claim: IdempotentRecord) -> None:
    """Release a key best-effort: a backend blip must not turn an answer into an error."""
    try:
        await store.release(key, claim)
    except Exception as exc:
        log.warning("could not release Idempotency-Key after a failed request: %s", type(exc).__name__)


async def _claim(store: Idempotency, key: str, claim: IdempotentRecord, lease: int) -> IdempotentRecord | None:
    """`store.claim`, carried through a cancellation: a claim that lands after its client left (it waited for
    another worker's write) is let go at once, or retries would wait out the lease of a run nobody started."""
    claiming = asyncio.ensure_future(store.claim(key, claim, lease))
    try:
        return await asyncio.shield(claiming)
    except asyncio.CancelledError:
        claiming.add_done_callback(functools.partial(_let_go, store, key, claim))
        raise


def _let_go(
    store: Idempotency, key: str, claim: IdempotentRecord, claiming: asyncio.Future[IdempotentRecord | None]
) -> None:
    if claiming.cancelled() or claiming.exception() is not None or claiming.result() is not None:
        return  # not claimed: nothing to let go
    release = asyncio.ensure_future(_forget(store, key, claim))
    _LETTING_GO.add(release)
    release.add_done_callback(_LETTING_GO.discard)


async def _keep_claimed(store: Idempotency, key: str, claim: IdempotentRecord) -> None:
    """Renew the claim while its run goes on (until cancelled), so that a retry waits for this run's answer
    instead of starting a second, paid generation."""
    while True:
        await asyncio.sleep(LEASE / 3)
        try:
            if not await store.renew(key, claim, LEASE):
                log.warning("an Idempotency-Key's claim lapsed while its request ran: a retry may run it again")
                return
        except Exception as exc:  # a blip: the lease has two more renewals before it lapses
            log.warning("could not renew an Idempotency-Key's claim: %s", type(exc).__name__)


async def _run(
    store: Idempotency, key: str, claim: IdempotentRecord, ttl: int, run: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    keeping = asyncio.ensure_future(_keep_claimed(store, key, claim))
    try:
        response = await run()
    except BaseException:
        keeping.cancel()
        await asyncio.shield(_forget(store, key, claim))
        raise
    keeping.cancel()
    text = answer_text(response) if 200 <= response.status < 300 else None
    if text is not None:
        headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
        done = IdempotentRecord(claim.fingerprint, DONE, response.status, text, headers)
        try:
            await store.finish(key, done, ttl)
        except Exception as exc:
            log.warning("could not keep the answer for an Idempotency-Key: %s", type(exc).__name__)
            await _forget(store, key, claim)
    else:
        await _forget(store, key, claim)
    return response


async def once(
    store: Idempotency,
    key: str,
    request_fingerprint: str,
    ttl: int,
    wait: float,
    run: Callable[[], Awaitable[web.Response]],
    spawn: Callable[[Coroutine[Any, Any, web.Response]], asyncio.Task[web.Response]],
) -> web.Response:
    """Run `run` once per key. The run is detached (`spawn`): a client that disconnects and retries must
    find the first run finishing and its answer kept, not a cancelled generation it paid for."""
    # Each claim its own token: only its run renews or releases it. The claim is a lease (LEASE); the answer
    # is kept for the full retention once it exists.
    claim = IdempotentRecord(request_fingerprint, RUNNING, claim=secrets.token_hex(16))
    while True:
        existing = await _claim(store, key, claim, LEASE)
        if existing is None:
            return await asyncio.shield(spawn(_run(store, key, claim, ttl, run)))
        if existing.fingerprint != request_fingerprint:
            raise InvalidRequest(
                "This Idempotency-Key was already used with a different request.",
                param=HEADER,
                code="idempotency_key_reused",
                status=422,
            )
        finished = existing if existing.state == DONE else await _wait_for(store, key, wait)
        if finished is not None:
            return _replay(finished)
        # The first request failed and let the key go: this one runs (claiming it again).
