"""`python -m bench.ledger`: what the ledger costs in CPU, on disk and in time, on the embedded SQLite.

Three figures, each through the proxy's own code on a fresh database file:

- **CPU per record**: a typical request's record built from its notes (`build_record`, on the request's
  path), then `--rate` records a second queued for `--seconds` seconds while the proxy's own writer
  (`proxy.ledger.Ledger`, its timer and its batches) writes them: the process's CPU time (every thread:
  the SQLite driver writes in a thread of its own) per record, with the feeding loop's own CPU taken out.
- **write throughput**: `--rows` records (a sync gpt-image-2 generation with usage and cost, the prompt
  kept as its hash) queued at once and written out, in the writer's batches: the time per 10,000 records
  and the file's size scaled to a million requests (indexes included).
- **usage report**: the records are spread over the last 30 days; the usage API's report of them all, by
  day and model (`GET /admin/usage?group_by=day,model`), is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.ledger_record import LedgerRecord, Outcome, build_record
from proxy.core.usage_query import UsageQuery
from proxy.database import migrate, open_engine
from proxy.ledger import Ledger
from proxy.services import Services
from proxy.usage import report

TICK = 0.01  # seconds between the feeder's bursts: records arrive spread out, as requests end
# What a small generation leaves in its notes (proxy.observe), the ledger's own facts included.
NOTES: dict[str, Any] = {
    "model": "gpt-image-2", "rule": "gpt-image-2", "operation": "generate", "n": 1, "channel": "openai",
    "upstream_model": "gpt-image-2", "attempts": 1, "images": 1, "input_tokens": 10, "output_tokens": 4160,
    "total_tokens": 4170, "cost_usd": 0.12485, "path": "/v1/images/generations", "key_name": "team-a",
    "idempotency_key": None, "prompt": "a lighthouse at dusk, oil on canvas", "size": "1024x1024",
    "quality": "medium", "output_format": "png",
}


def record(number: int, now: datetime) -> LedgerRecord:
    return LedgerRecord(
        at=now - timedelta(days=number % 30, seconds=number % 86_400), request_id=uuid.uuid4().hex, key_name="team-a",
        operation="generate", mode="sync",
        status=200, images=1, total_ms=4000.0 + number % 4000, upstream_ms=5101.2, model="gpt-image-2", rule="gpt-image-2",
        upstream_model="gpt-image-2", channel="openai", attempts=1, n=1, size="1024x1024", quality="medium",
        output_format="png", input_tokens=10, output_tokens=4160, total_tokens=4170, cost_micro_usd=124_850,
        prompt_sha256=hashlib.sha256(f"prompt {number}".encode()).hexdigest(),
    )


def build_cpu(count: int = 20_000) -> float:
    """CPU microseconds to build one record from a request's notes (on the request's path, not the writer's)."""
    at, outcome = datetime.now(UTC), Outcome(200, 4012.3, 4001.7)
    started = time.process_time()
    for number in range(count):
        build_record(at, f"req-{number}", "/v1/images/generations", NOTES, outcome, log_prompts=False)
    return (time.process_time() - started) / count * 1e6


async def fresh_engine() -> AsyncEngine:
    engine = open_engine(URL.create("sqlite+aiosqlite", database=os.path.join(tempfile.mkdtemp(prefix="imagegate-bench-"),
                                                                              "ledger.db")))
    await migrate(engine)
    return engine


async def feed(rate: int, seconds: float, add: Callable[[LedgerRecord], None]) -> float:
    """Queue `rate` records a second for `seconds`, in bursts every TICK; returns the process CPU time taken."""
    now, per_tick = datetime.now(UTC), max(1, round(rate * TICK))
    records = [record(number, now) for number in range(per_tick)]  # made before: only queueing and writing count
    started, cpu = time.perf_counter(), time.process_time()
    for tick in range(round(seconds / TICK)):
        for item in records:
            add(item)
        await asyncio.sleep(max(0.0, started + (tick + 1) * TICK - time.perf_counter()))
    return time.process_time() - cpu


async def write_cpu(rate: int, seconds: float) -> tuple[float, int]:
    """(CPU microseconds per record written by the writer at `rate` records a second, batches written)."""
    idle = await feed(rate, seconds, lambda item: None)  # the feeding loop alone
    engine = await fresh_engine()
    ledger = Ledger(engine, None)
    await ledger.start()
    writes = 0
    write = ledger._write

    async def counted(batch: list[tuple[float, LedgerRecord]]) -> bool:
        nonlocal writes
        writes += 1
        return await write(batch)

    ledger._write = counted  # type: ignore[method-assign]
    cpu = time.process_time()
    await feed(rate, seconds, ledger.add)
    await ledger.close(60.0)  # the last round, written within the measure
    total = time.process_time() - cpu
    assert ledger.dropped == 0 and ledger.failed == 0 and ledger.written > 0, (ledger.dropped, ledger.failed)
    return (total - idle) / ledger.written * 1e6, writes


async def measure(rows: int) -> tuple[float, int, float]:
    """(seconds to write `rows` records through the writer, the database file's size in bytes, seconds the
    usage report over them takes)."""
    engine = await fresh_engine()
    ledger = Ledger(engine, None)
    await ledger.start()
    started, now = time.perf_counter(), datetime.now(UTC)
    for number in range(rows):
        ledger.add(record(number, now))
        if number % 5000 == 4999:
            await ledger.write_queued()  # keep the queue below its capacity, as a steady request rate does
    await ledger.close(600.0)
    took = time.perf_counter() - started
    assert ledger.dropped == 0 and ledger.failed == 0, (ledger.dropped, ledger.failed)
    reporting = time.perf_counter()
    query = UsageQuery(now.timestamp() - 31 * 86_400, now.timestamp() + 1, ("day", "model"))
    report_rows = await report(cast(Services, SimpleNamespace(ledger=ledger)), query, None)
    reported = time.perf_counter() - reporting
    assert sum(row.requests for row in report_rows) == rows, report_rows
    path = str(engine.url.database)
    await engine.dispose()
    return took, await asyncio.to_thread(os.path.getsize, path), reported


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="records a second for the CPU figure")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long records are fed for the CPU figure")
    args = parser.parse_args()
    built = build_cpu()
    written, writes = asyncio.run(write_cpu(args.rate, args.seconds))
    print(f"ledger CPU per record: {built:.1f} us to build it (request path) + {written:.1f} us to queue and write it "
          f"(writer, {args.rate:,} records/s for {args.seconds:g} s: {writes} batches) = {built + written:.1f} us")
    took, size, reported = asyncio.run(measure(args.rows))
    print(f"ledger on SQLite: {args.rows:,} records in {took:.2f} s ({took / args.rows * 10_000:.2f} s per 10,000, "
          f"{args.rows / took:,.0f} records/s); {size / 1e6:.1f} MB, {size / args.rows * 1_000_000 / 1e6:.0f} MB per "
          f"million requests; usage report by day and model over them: {reported:.2f} s")


if __name__ == "__main__":
    main()
