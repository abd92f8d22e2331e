"""Core layer: the usage API's questions and answers as values (`GET /v1/usage`, `/admin/usage`).

A query names a time range (`start_time`, `end_time`: Unix seconds; default the last 30 days up to
now), a grouping (`group_by`: any of day, model, key, channel, comma-separated; none: one total row)
and a format (`format=json` or `csv`). Each row of the answer holds its group's values and the totals:
requests, images, cost in USD, errors (status 400 and above) and p50/p95 latency in milliseconds.
Bad parameters are 400s naming the parameter. The database work is the shell's (proxy.usage).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.core.errors import InvalidRequest

GROUPS = ("day", "model", "key", "channel")
DEFAULT_RANGE = 30 * 86400
MAX_RANGE = 400 * 86400  # a little over a year: one query never scans the whole history of a busy ledger
FIELDS = ("requests", "images", "cost_usd", "errors", "p50_ms", "p95_ms")


@dataclass(frozen=True)
class UsageQuery:
    start: float
    end: float
    group_by: tuple[str, ...] = ()
    csv: bool = False


LATEST = 253_402_300_799  # 9999-12-31T23:59:59Z: the last second a timestamp column holds


def _seconds(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= LATEST:  # NaN and the infinities included
        raise InvalidRequest(f"Invalid '{name}': expected Unix seconds up to {LATEST}, got {value!r}.", param=name,
                             code="invalid_value")
    return number


def parse_usage_query(params: Mapping[str, str], now: float) -> UsageQuery:
    """The query a request's parameters ask; InvalidRequest naming the parameter when one is wrong."""
    end = _seconds("end_time", params["end_time"]) if "end_time" in params else now
    start = _seconds("start_time", params["start_time"]) if "start_time" in params else end - DEFAULT_RANGE
    if start >= end or end - start > MAX_RANGE:
        raise InvalidRequest(
            f"Invalid time range: start_time must be before end_time and at most {MAX_RANGE // 86400} days before it.",
            param="start_time", code="invalid_value",
        )
    groups = tuple(part.strip() for part in params.get("group_by", "").split(",") if part.strip())
    unknown = [group for group in groups if group not in GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise InvalidRequest(f"Invalid 'group_by': expected some of {', '.join(GROUPS)}, each once.", param="group_by",
                             code="invalid_value")
    form = params.get("format", "json")
    if form not in ("json", "csv"):
        raise InvalidRequest(f"Invalid 'format' {form!r}: expected json or csv.", param="format", code="invalid_value")
    return UsageQuery(start, end, groups, form == "csv")


def percentile(histogram: Sequence[tuple[float, int]], fraction: float) -> float | None:
    """The nearest-rank percentile of a latency histogram: (value, how many) pairs sorted by value, as the
    database counts them (None when it is empty)."""
    total = sum(count for _, count in histogram)
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for value, count in histogram:
        seen += count
        if seen >= rank:
            return value
    return histogram[-1][0]


@dataclass(frozen=True)
class UsageRow:
    group: Mapping[str, Any]  # the grouping's values (day as YYYY-MM-DD)
    requests: int
    images: int
    cost_micro_usd: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        cost = Decimal(self.cost_micro_usd) / 1_000_000
        return {**self.group, "requests": self.requests, "images": self.images, "cost_usd": float(cost),
                "errors": self.errors, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms}


def usage_json(query: UsageQuery, rows: Sequence[UsageRow]) -> dict[str, Any]:
    return {"object": "list", "start_time": int(query.start), "end_time": int(query.end), "group_by": list(query.group_by),
            "data": [row.as_dict() for row in rows]}


def usage_csv(query: UsageQuery, rows: Sequence[UsageRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*query.group_by, *FIELDS])
    for row in rows:
        values = row.as_dict()
        groups = (inert(values[name]) for name in query.group_by)
        writer.writerow([*groups, *("" if values[f] is None else values[f] for f in FIELDS)])
    return buffer.getvalue()


def inert(value: object) -> object:
    """A text a client chose (a model name) that a spreadsheet would run as a formula, quoted so it will not."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value
