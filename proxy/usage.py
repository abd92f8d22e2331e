"""Shell layer: the usage API over the ledger (`GET /v1/usage`, `GET /admin/usage`, `GET /admin/generations`).

`/v1/usage` answers for the calling key only (by its name, never the key); the `/admin/` routes see every
key, for an admin (proxy.middleware.require_admin). Queries read the `generations` table through its
indexes on `at` and `(key_name, at)`: a time range is required and bounded (proxy.core.usage_query), and
the database does the sums: one row per group and latency bucket comes back, never the records themselves.
`/admin/generations` pages through the records themselves, newest first (`limit`, `before` = a
record id from the previous page), narrowed by `key`, `model` and `status=ok|error`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from proxy.core.errors import InvalidRequest, ServiceUnavailable
from proxy.core.usage_query import UsageQuery, UsageRow, parse_usage_query, percentile, usage_csv, usage_json
from proxy.database import GENERATIONS
from proxy.middleware import require_admin
from proxy.production import key_name
from proxy.services import CLIENT_KEY, SERVICES, Services

MAX_PAGE = 1000
_GROUP_COLUMNS = {"model": GENERATIONS.c.model, "key": GENERATIONS.c.key_name, "channel": GENERATIONS.c.channel}


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def iso(moment: datetime) -> str:
    """A ledger time as ISO 8601 in UTC (SQLite gives them back without their zone)."""
    return moment.replace(tzinfo=moment.tzinfo or UTC).isoformat()


def ledger_of(services: Services) -> Any:
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
    engine = ledger_of(services).engine
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


async def admin_usage(request: web.Request) -> web.Response:
    """GET /admin/usage: every key's usage (optionally one key's, `key=<name>`)."""
    require_admin(request)
    query = parse_usage_query(dict(request.query), time.time())
    return answer(query, await report(request.app[SERVICES], query, request.query.get("key")))


def _page(params: Any) -> tuple[int, int | None]:
    limit = _whole(params, "limit", "100")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected 1 to {MAX_PAGE}.", param="limit", code="invalid_value")
    return limit, _whole(params, "before", None) if "before" in params else None


def _whole(params: Any, name: str, default: str | None) -> int:
    try:
        return int(params.get(name, default))
    except (TypeError, ValueError):
        raise InvalidRequest(f"Invalid '{name}': expected a whole number.", param=name, code="invalid_value") from None


def _filtered(statement: Any, params: Any) -> Any:
    """`key=<name>`, `model=<name>` and `status=ok|error` (ok: answered below 400)."""
    table = GENERATIONS
    if "key" in params:
        statement = statement.where(table.c.key_name == params["key"])
    if "model" in params:
        statement = statement.where(table.c.model == params["model"])
    status = params.get("status")
    if status is not None and status not in ("ok", "error"):
        raise InvalidRequest(f"Invalid 'status' {status!r}: expected ok or error.", param="status", code="invalid_value")
    if status is not None:
        statement = statement.where(table.c.status < 400 if status == "ok" else table.c.status >= 400)
    return statement


async def admin_generations(request: web.Request) -> web.Response:
    """GET /admin/generations: the records themselves, newest first, a page at a time."""
    require_admin(request)
    query = parse_usage_query(dict(request.query), time.time())
    limit, before = _page(request.query)
    table = GENERATIONS
    statement = sa.select(table).where(table.c.at >= _when(query.start), table.c.at < _when(query.end))
    if before is not None:
        statement = statement.where(table.c.id < before)
    statement = _filtered(statement, request.query)
    statement = statement.order_by(table.c.id.desc()).limit(limit + 1)
    async with ledger_of(request.app[SERVICES]).engine.connect() as connection:
        rows = [dict(row._mapping) for row in (await connection.execute(statement)).all()]
    more, rows = len(rows) > limit, rows[:limit]
    for row in rows:
        row["at"] = iso(row["at"])
        row["images_expire_at"] = iso(row["images_expire_at"]) if row["images_expire_at"] is not None else None
    return web.json_response({"object": "list", "data": rows, "has_more": more,
                              "next_before": rows[-1]["id"] if more and rows else None})
