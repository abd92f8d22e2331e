"""Shell layer: per-key limits, counted in the shared backend so they hold across replicas.

Checked before any upstream call, in this order: requests per minute, images per day (the request's
`n` is reserved up front and the part not delivered is given back), the key's budget in USD per day
and per month (the request's highest possible cost is reserved up front, then settled to what the
delivered images really cost), generations at once. A refused request is a 429 naming the limit, with
`Retry-After` until the window frees up (a spent budget is OpenAI's `insufficient_quota`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal

from proxy.core.budgets import Budget, micro, month_window
from proxy.core.errors import RateLimited
from proxy.core.limit_windows import DAY, MINUTE, Limits, window
from proxy.core.task_checkpoint import Reserved
from proxy.shared_state import Counters

log = logging.getLogger("imagegate")

# A generation never runs this long; the counter of one that never released (a crash) cannot stick.
CONCURRENCY_TTL = 3600
MONTH_TTL = 32 * DAY
NO_BUDGET = Budget()
DAY_TTL = DAY + 60


def images_counter(owner: str, day: int) -> str:
    """The counter of a key's images in one UTC day (its window number)."""
    return f"ipd:{owner}:{day}"


def budget_counter(period: str, owner: str, number: int) -> str:
    """The counter of a key's spend in micro-dollars, for `period` "day" or "month" (its window number)."""
    return f"usd-{period}:{owner}:{number}"


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
    """What one admitted request holds: released when it ends, images refunded if not delivered, its
    budget reservation settled to what the delivered images cost."""

    counters: Counters
    concurrency_key: str | None = None
    images_key: str | None = None
    reserved_images: int = 0
    budget_keys: list[tuple[str, int]] = field(default_factory=list)  # (counter, ttl) reserved in
    reserved_micro: int = 0  # micro-dollars reserved in each budget counter
    # An async task's reservation is kept in its record and settled by whichever process ends the task: it is
    # not this process's holding, given back if it dies (its generation-at-once slot is).
    task: bool = False

    async def settle(self, delivered: int, spent: Decimal | None = None) -> None:
        """Give back what was not used. Never raises: a counter blip must not turn a delivered answer into an error.

        `spent`: what the delivered images cost; None where it is not known (then each delivered image
        is taken to cost its share of the reservation)."""
        self._unhold(reservation=not self.task)
        if self.images_key is not None and delivered < self.reserved_images:
            await _quietly(self.counters.decr(self.images_key, self.reserved_images - delivered))
        if self.budget_keys:
            share = self.reserved_micro * delivered // max(self.reserved_images, 1)
            await self._settle_budget(micro(spent) if spent is not None else share)
        if self.concurrency_key is not None:
            await _quietly(self.counters.decr(self.concurrency_key, 1))
        self.images_key = self.concurrency_key = None  # settling twice gives back nothing twice
        self.budget_keys = []

    def reserved(self) -> Reserved:
        """What this admission holds in the counters, as a task's checkpoint keeps it."""
        return Reserved(self.images_key, self.reserved_images, tuple(self.budget_keys), self.reserved_micro,
                        self.counters.lifetime)

    @staticmethod
    def of(counters: Counters, reserved: Reserved) -> Admission:
        """The admission a checkpoint kept, to settle when the task ends (a generation at once is not held)."""
        return Admission(counters, images_key=reserved.images_key, reserved_images=reserved.reserved_images,
                         budget_keys=list(reserved.budget_keys), reserved_micro=reserved.reserved_micro, task=True)

    def to_task(self) -> None:
        """The reservation becomes an async task's (see `task`)."""
        if not self.task:
            self._unhold(slot=False)
            self.task = True

    async def release_slot(self) -> None:
        """Give back only the generation-at-once slot: an async task another process ends keeps the rest of its
        reservation for that process to settle."""
        if self.concurrency_key is not None:
            self._unhold(reservation=False)
            await _quietly(self.counters.decr(self.concurrency_key, 1))
            self.concurrency_key = None

    async def reapply(self) -> None:
        """Count this reservation again, in counters that did not outlive the process that made it."""
        if self.images_key is not None:
            await _quietly(self.counters.incr(self.images_key, self.reserved_images, DAY_TTL))
        for key, ttl in self.budget_keys:
            await _quietly(self.counters.incr(key, self.reserved_micro, ttl))

    def _unhold(self, reservation: bool = True, slot: bool = True) -> None:
        """This process no longer holds the images and budget reserved, the slot, or both (given back or spent)."""
        try:
            if self.images_key is not None and reservation:
                self.counters.unhold(self.images_key, self.reserved_images)
            for key, _ in self.budget_keys if reservation else ():
                self.counters.unhold(key, self.reserved_micro)
            if self.concurrency_key is not None and slot:
                self.counters.unhold(self.concurrency_key, 1)
        except Exception as exc:  # the counters closed under a late settlement: nothing left to note
            log.warning("could not note a limit counter given back: %s", type(exc).__name__)

    async def _settle_budget(self, actual: int) -> None:
        for key, ttl in self.budget_keys:
            if actual < self.reserved_micro:
                await _quietly(self.counters.decr(key, self.reserved_micro - actual))
            elif actual > self.reserved_micro:  # tokens beyond the estimate: the spend still counts
                await _quietly(self.counters.incr(key, actual - self.reserved_micro, ttl))


async def _quietly(work: Awaitable[object]) -> None:
    try:
        await work
    except Exception as exc:
        log.warning("could not give back a limit counter: %s", type(exc).__name__)


async def admit(
    counters: Counters,
    owner: str,
    limits: Limits,
    n: int,
    clock: Callable[[], float] = time.time,
    *,
    budget: Budget = NO_BUDGET,
    reserve: Decimal = Decimal(0),
) -> Admission:
    """Count a request of `n` images against the key's limits, and `reserve` USD against its budget."""
    admission = Admission(counters, reserved_images=n)
    try:
        await _admit(admission, owner, limits, n, clock())
        if budget.any and reserve > 0:  # nothing to hold (a model without a price): not held by a spent budget
            await _reserve(admission, owner, budget, reserve, clock())
        return admission
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
        key = images_counter(owner, number)
        reserved = await counters.incr(key, n, DAY_TTL, hold=True)
        admission.images_key = key  # from here on, a refusal gives them back
        if reserved > limits.images_per_day:
            raise _refused("images_per_day", limits.images_per_day, left)
    if limits.concurrent is not None:
        key = f"conc:{owner}"
        # The expiry is renewed on every admission: a busy key's counter must never lapse mid-flight.
        running = await counters.incr(key, 1, CONCURRENCY_TTL, refresh=True, hold=True)
        admission.concurrency_key = key
        if running > limits.concurrent:
            raise _refused("concurrent", limits.concurrent, 1.0)
    return admission


def _spent(period: str, allowed: Decimal, cost: Decimal, retry_after: float) -> RateLimited:
    return RateLimited(
        f"This key's budget of ${allowed} per {period} is spent, or this request (up to ${cost:.6f}) would exceed it. "
        f"It resets in {retry_after:.0f}s.",
        code="budget_exceeded",
        type="insufficient_quota",
        param=None,
        retry_after=max(1.0, retry_after),
    )


async def _reserve(admission: Admission, owner: str, budget: Budget, reserve: Decimal, now: float) -> None:
    """Reserve `reserve` USD in the key's day and month budgets (both, or neither: a refusal gives back)."""
    amount = micro(reserve)
    admission.reserved_micro = amount
    day, day_left = window(now, DAY)
    month, month_left = month_window(now)
    for period, allowed, key, ttl, left in (
        ("day", budget.usd_per_day, budget_counter("day", owner, day), DAY_TTL, day_left),
        ("month", budget.usd_per_month, budget_counter("month", owner, month), MONTH_TTL, month_left),
    ):
        if allowed is None:
            continue
        total = await admission.counters.incr(key, amount, ttl, hold=True)
        admission.budget_keys.append((key, ttl))  # from here on, a refusal gives it back
        if total > micro(allowed):
            raise _spent(period, allowed, reserve, left)
