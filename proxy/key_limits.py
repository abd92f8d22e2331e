"""Shell layer: per-key limits, counted in the shared backend so they hold across replicas.

Checked before any upstream call, in this order: requests per minute, images per day (the request's
`n` is reserved up front and the part not delivered is given back), generations at once. A refused
request is a 429 naming the limit, with `Retry-After` until the window frees up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from proxy.core.errors import RateLimited
from proxy.core.limit_windows import DAY, MINUTE, Limits, window
from proxy.shared_state import Counters

log = logging.getLogger("imagegate")

# A generation never runs this long; the counter of one that never released (a crash) cannot stick.
CONCURRENCY_TTL = 3600


def _refused(limit: str, allowed: int, retry_after: float) -> RateLimited:
    return RateLimited(
        f"Rate limit reached for this key: {limit} is {allowed}. Try again in {retry_after:.0f}s.",
        code=f"{limit}_exceeded",
        type="rate_limit_exceeded",
        param=None,
        retry_after=max(1.0, retry_after),
    )


@dataclass
class Admission:
    """What one admitted request holds: released when it ends, images refunded if not delivered."""

    counters: Counters
    concurrency_key: str | None = None
    images_key: str | None = None
    reserved_images: int = 0

    async def settle(self, delivered: int) -> None:
        """Give back what was not used. Never raises: a counter blip must not turn a delivered answer into an error."""
        if self.images_key is not None and delivered < self.reserved_images:
            await _quietly(self.counters.decr(self.images_key, self.reserved_images - delivered))
        if self.concurrency_key is not None:
            await _quietly(self.counters.decr(self.concurrency_key, 1))
        self.images_key = self.concurrency_key = None  # settling twice gives back nothing twice


async def _quietly(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception as exc:
        log.warning("could not give back a limit counter: %s", type(exc).__name__)


async def admit(counters: Counters, owner: str, limits: Limits, n: int, clock: Callable[[], float] = time.time) -> Admission:
    admission = Admission(counters)
    try:
        return await _admit(admission, owner, limits, n, clock())
    except BaseException:
        # Refused, failed or cancelled halfway: what was already reserved goes back.
        await asyncio.shield(admission.settle(0))
        raise


@asynccontextmanager
async def imageless(counters: Counters, owner: str, limits: Limits) -> AsyncIterator[None]:
    """A request that makes no images (pass-through, model lists) within its key's request limits.

    It spends the operator's upstream key or the proxy's time all the same, so requests per minute and
    concurrency count it; images per day cannot (nothing here is an image).
    """
    counted = Limits(requests_per_minute=limits.requests_per_minute, concurrent=limits.concurrent)
    admission = await admit(counters, owner, counted, 0) if counted.any else None
    try:
        yield
    finally:
        if admission is not None:
            await asyncio.shield(admission.settle(0))


async def _admit(admission: Admission, owner: str, limits: Limits, n: int, now: float) -> Admission:
    counters = admission.counters
    if limits.requests_per_minute is not None:
        number, left = window(now, MINUTE)
        if await counters.incr(f"rpm:{owner}:{number}", 1, MINUTE + 1) > limits.requests_per_minute:
            raise _refused("requests_per_minute", limits.requests_per_minute, left)
    if limits.images_per_day is not None:
        number, left = window(now, DAY)
        key = f"ipd:{owner}:{number}"
        reserved = await counters.incr(key, n, DAY + 60)
        admission.images_key, admission.reserved_images = key, n  # from here on, a refusal gives them back
        if reserved > limits.images_per_day:
            raise _refused("images_per_day", limits.images_per_day, left)
    if limits.concurrent is not None:
        key = f"conc:{owner}"
        # The expiry is renewed on every admission: a busy key's counter must never lapse mid-flight.
        running = await counters.incr(key, 1, CONCURRENCY_TTL, refresh=True)
        admission.concurrency_key = key
        if running > limits.concurrent:
            raise _refused("concurrent", limits.concurrent, 1.0)
    return admission
