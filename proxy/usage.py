"""Shell layer: the usage API over the ledger (`GET /v1/usage`, `GET /admin/usage`, `GET /admin/generations`).

`/v1/usage` answers for the calling key only (by its name, never the key); the `/admin/` routes need a
key from `server.admin_keys` and see every key. Queries read the `generations` table through its
indexes on `at` and `(key_name, at)`: a time range is required and bounded (proxy.core.usage_query), and
the database does the sums: one row per group and latency bucket comes back, never the records themselves.
`/admin/generations` pages through the records themselves, newest first (`limit`, `before` = a
record id from the previous page).
"""

from __future__ import annotations

import hmac
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from proxy.core.errors import AuthenticationFailed, InvalidRequest, ServiceUnavailable
from proxy.core.usage_query import UsageQuery, UsageRow, parse_usage_query, percentile, usage_csv, usage_json
from proxy.database import GENERATIONS
from proxy.production import key_name
from proxy.services import CLIENT_KEY, SERVICES, Services

MAX_PAGE = 1000
_GROUP_COLUMNS = {"model": GENERATIONS.c.model, "key": GENERATIONS.c.key_name, "channel": GENERATIONS.c.channel}


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _ledger(services: Services) -> Any:
    if services.ledger is None:
        raise ServiceUnavailable("The ledger is not available on this proxy.", code="ledger_unavailable")
    return services.ledger


def _day(dialect: str) -> Any:
    """The record's UTC day as YYYY-MM-DD, computed by the database."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", GENERATIONS.c.at), "YYYY-MM-DD")
    return sa.func.substr(GENERATIONS.c.at, 1, 10)  # SQLite keeps the UTC datetimes as ISO text


def _latency_bucket() -> Any:
    """total_ms rounded to its bucket, so percentiles come from counts: 0.1 ms below 10 ms, 1 ms below a second,
    10 ms below ten seconds, 100 ms beyond (within 1%; a month of records falls in a few thousand buckets)."""
    ms = GENERATIONS.c.total_ms
    return sa.case((ms < 10, sa.func.round(ms * 10) / 10), (ms < 1000, sa.func.round(ms)),
                   (ms < 10_000, sa.func.round(ms / 10) * 10), else_=sa.func.round(ms / 100) * 100)


def _aggregate(query: UsageQuery, dialect: str, only_key: str | None) -> Any:
    """One row per group and latency bucket, with the group's totals in that bucket."""
    table = GENERATIONS
    columns = {"day": _day(dialect), **_GROUP_COLUMNS}
    groups = [columns[name].label(f"g_{name}") for name in query.group_by]
    bucket = _latency_bucket().label("ms")
    statement = sa.select(
        *groups, bucket, sa.func.count().label("requests"), sa.func.sum(table.c.images).label("images"),
        sa.func.sum(sa.func.coalesce(table.c.cost_micro_usd, 0)).label("cost"),
        sa.func.sum(sa.case((table.c.status >= 400, 1), else_=0)).label("errors"),
    ).where(table.c.at >= _when(query.start), table.c.at < _when(query.end))
    if only_key is not None:
        statement = statement.where(table.c.key_name == only_key)
    return statement.group_by(*groups, bucket)


async def report(services: Services, query: UsageQuery, only_key: str | None) -> list[UsageRow]:
    """The query's rows: totals per group, summed by the database with a latency histogram per group."""
    engine = _ledger(services).engine
    totals: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    histograms: dict[tuple[Any, ...], list[tuple[float, int]]] = defaultdict(list)
    async with engine.connect() as connection:
        rows = (await connection.execute(_aggregate(query, engine.dialect.name, only_key))).all()
    for row in rows:
        group = tuple(getattr(row, f"g_{name}") for name in query.group_by)
        figures = totals[group]
        for index, value in enumerate((row.requests, row.images, row.cost, row.errors)):
            figures[index] += int(value or 0)
        histograms[group].append((float(row.ms), int(row.requests)))
    return [_row(query, group, figures, sorted(histograms[group])) for group, figures in sorted(totals.items(), key=_order)]


def _order(item: tuple[tuple[Any, ...], list[int]]) -> tuple[str, ...]:
    return tuple("" if value is None else str(value) for value in item[0])


def _row(query: UsageQuery, group: tuple[Any, ...], figures: list[int], histogram: list[tuple[float, int]]) -> UsageRow:
    return UsageRow(dict(zip(query.group_by, group, strict=True)), figures[0], figures[1], figures[2], figures[3],
                    percentile(histogram, 0.5), percentile(histogram, 0.95))


def answer(query: UsageQuery, rows: list[UsageRow]) -> web.Response:
    if query.csv:
        return web.Response(text=usage_csv(query, rows), content_type="text/csv")
    return web.json_response(usage_json(query, rows))


async def own_usage(request: web.Request) -> web.Response:
    """GET /v1/usage: the calling key's usage."""
    services = request.app[SERVICES]
    query = parse_usage_query(dict(request.query), time.time())
    return answer(query, await report(services, query, key_name(services, request[CLIENT_KEY] or None)))


def require_admin(request: web.Request) -> None:
    """401 unless the request carries one of `server.admin_keys`."""
    presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    admin_keys = request.app[SERVICES].rules.server.admin_keys
    if not any(hmac.compare_digest(presented.encode(), key.encode()) for key in admin_keys):
        raise AuthenticationFailed("This route needs an admin key (server.admin_keys).", code="admin_key_required")


async def admin_usage(request: web.Request) -> web.Response:
    """GET /admin/usage: every key's usage (optionally one key's, `key=<name>`)."""
    require_admin(request)
    query = parse_usage_query(dict(request.query), time.time())
    return answer(query, await report(request.app[SERVICES], query, request.query.get("key")))


def _page(params: Any) -> tuple[int, int | None]:
    try:
        limit = int(params.get("limit", "100"))
        before = int(params["before"]) if "before" in params else None
    except ValueError:
        message = "Invalid 'limit' or 'before': expected whole numbers."
        raise InvalidRequest(message, param="limit", code="invalid_value") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected 1 to {MAX_PAGE}.", param="limit", code="invalid_value")
    return limit, before


async def admin_generations(request: web.Request) -> web.Response:
    """GET /admin/generations: the records themselves, newest first, a page at a time."""
    require_admin(request)
    query = parse_usage_query(dict(request.query), time.time())
    limit, before = _page(request.query)
    table = GENERATIONS
    statement = sa.select(table).where(table.c.at >= _when(query.start), table.c.at < _when(query.end))
    if before is not None:
        statement = statement.where(table.c.id < before)
    if "key" in request.query:
        statement = statement.where(table.c.key_name == request.query["key"])
    statement = statement.order_by(table.c.id.desc()).limit(limit + 1)
    async with _ledger(request.app[SERVICES]).engine.connect() as connection:
        rows = [dict(row._mapping) for row in (await connection.execute(statement)).all()]
    more, rows = len(rows) > limit, rows[:limit]
    for row in rows:
        for column in ("at", "images_expire_at"):  # SQLite hands datetimes back without their (UTC) zone
            if isinstance(row.get(column), datetime):
                row[column] = row[column].replace(tzinfo=row[column].tzinfo or UTC).isoformat()
    return web.json_response({"object": "list", "data": rows, "has_more": more,
                              "next_before": rows[-1]["id"] if more and rows else None})
