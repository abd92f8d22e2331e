"""Shell layer: a process whose limit counters live in memory starts them from the ledger, so a restart does
not hand every key a fresh budget (or a fresh images-per-day allowance) for the rest of the day and month.

At start-up, for each key with a budget or an images-per-day limit, the ledger's rows of the current UTC day
and month give what the key was delivered and what it cost; those amounts go into the counters
proxy.key_limits reserves in. Rows carry the key's name, not the key: keys that share a name each start
from their names' total (the safe side of a budget). With Redis the counters outlive a process and are
left alone.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.budgets import month_window
from proxy.core.limit_windows import DAY, key_id, window
from proxy.core.rules import ADMIN_NAME, ServerRules
from proxy.database import GENERATIONS
from proxy.key_limits import DAY_TTL, MONTH_TTL, budget_counter, images_counter
from proxy.shared_state import Counters

log = logging.getLogger("imagegate")


@dataclass(frozen=True)
class Spent:
    """What one key name was delivered so far in the current windows."""

    images_today: int = 0
    micro_today: int = 0
    micro_this_month: int = 0


def _month_start(now: float) -> datetime.datetime:
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    return datetime.datetime(moment.year, moment.month, 1, tzinfo=datetime.UTC)


async def spent_by_name(engine: AsyncEngine, now: float) -> dict[str, Spent]:
    """The ledger's totals per key name for the current UTC day and month (delivered images only cost)."""
    day_start = datetime.datetime.fromtimestamp(window(now, DAY)[0] * DAY, datetime.UTC)
    month_start = _month_start(now)
    today = GENERATIONS.c.at >= day_start
    query = (
        sa.select(
            GENERATIONS.c.key_name,
            sa.func.sum(sa.case((today, GENERATIONS.c.images), else_=0)),
            sa.func.sum(sa.case((today, GENERATIONS.c.cost_micro_usd), else_=0)),
            sa.func.sum(sa.func.coalesce(GENERATIONS.c.cost_micro_usd, 0)),
        )
        .where(GENERATIONS.c.at >= min(day_start, month_start))
        .group_by(GENERATIONS.c.key_name)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return {name: Spent(int(images or 0), int(today_micro or 0), int(month_micro or 0))
            for name, images, today_micro, month_micro in rows}


def counted(server: ServerRules, spent: Mapping[str, Spent], now: float) -> Iterator[tuple[str, int, int]]:
    """(counter, amount, ttl) for each counter a restarted process must start from, as key_limits names them."""
    day, month = window(now, DAY)[0], month_window(now)[0]
    for key, name in _keys(server):
        owner, so_far = key_id(key), spent.get(name, Spent())
        limits, budget = server.limits_for(key), server.budget_for(key)
        if limits.images_per_day is not None and so_far.images_today:
            yield images_counter(owner, day), so_far.images_today, DAY_TTL
        if budget.usd_per_day is not None and so_far.micro_today:
            yield budget_counter("day", owner, day), so_far.micro_today, DAY_TTL
        if budget.usd_per_month is not None and so_far.micro_this_month:
            yield budget_counter("month", owner, month), so_far.micro_this_month, MONTH_TTL


def _keys(server: ServerRules) -> list[tuple[str | None, str]]:
    """(key, the name its ledger rows carry) for every key that generates; an open proxy's one anonymous."""
    keys: list[tuple[str | None, str]] = [(client.key, client.name) for client in server.clients]
    keys += [(key, ADMIN_NAME) for key in server.admin_keys]  # admin keys generate too (the console)
    return keys or [(None, "anonymous")]


async def seed_counters(counters: Counters, engine: AsyncEngine, server: ServerRules, now: float) -> int:
    """Start the memory counters from the ledger; returns how many were started."""
    if not _has_limits(server):
        return 0  # nothing to count: no query
    spent = await spent_by_name(engine, now)
    seeded = 0
    for counter, amount, ttl in counted(server, spent, now):
        await counters.incr(counter, amount, ttl)
        seeded += 1
    if seeded:
        log.info("limit counters started from the ledger: %d counter(s) for today and this month", seeded)
    return seeded


def _has_limits(server: ServerRules) -> bool:
    return any(server.limits_for(key).images_per_day is not None or server.budget_for(key).any for key, _ in _keys(server))
