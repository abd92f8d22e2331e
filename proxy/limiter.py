"""Shell layer: per-key limits, counted in the shared backend so they hold across replicas.

Checked before any upstream call, in this order: requests per minute, images per day (the request's
`n` is reserved up front and the part not delivered is given back), generations at once. A refused
request is a 429 naming the limit, with `Retry-After` until the window frees up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.core.errors import RateLimited
from proxy.core.limits import DAY, MINUTE, Limits, window
from proxy.state import Counters

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
        if self.images_key is not None and delivered < self.reserved_images:
            await self.counters.decr(self.images_key, self.reserved_images - delivered)
        if self.concurrency_key is not None:
            await self.counters.decr(self.concurrency_key, 1)


async def admit(counters: Counters, owner: str, limits: Limits, n: int, clock: Callable[[], float] = time.time) -> Admission:
    now = clock()
    admission = Admission(counters)
    if limits.requests_per_minute is not None:
        number, left = window(now, MINUTE)
        if await counters.incr(f"rpm:{owner}:{number}", 1, MINUTE + 1) > limits.requests_per_minute:
            raise _refused("requests_per_minute", limits.requests_per_minute, left)
    if limits.images_per_day is not None:
        number, left = window(now, DAY)
        key = f"ipd:{owner}:{number}"
        if await counters.incr(key, n, DAY + 60) > limits.images_per_day:
            await counters.decr(key, n)
            raise _refused("images_per_day", limits.images_per_day, left)
        admission.images_key, admission.reserved_images = key, n
    if limits.concurrent is not None:
        key = f"conc:{owner}"
        if await counters.incr(key, 1, CONCURRENCY_TTL) > limits.concurrent:
            await counters.decr(key, 1)
            await admission.settle(0)
            raise _refused("concurrent", limits.concurrent, 1.0)
        admission.concurrency_key = key
    return admission
