"""`python -m bench.ledger`: what the ledger costs on disk and in time, on the embedded SQLite.

Writes `--rows` typical records (a sync gpt-image-2 generation with usage and cost, the prompt kept
as its hash) through the proxy's own writer (`proxy.ledger.Ledger`), in its batches, into a fresh
database file, and prints the time taken per 10,000 records and the file's size scaled to a million
requests (indexes included). The records are spread over the last 30 days; the usage API's report of
them all, by day and model (`GET /admin/usage?group_by=day,model`), is timed too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

from sqlalchemy.engine import URL

from proxy.core.ledger_record import LedgerRecord
from proxy.core.usage_query import UsageQuery
from proxy.database import migrate, open_engine
from proxy.ledger import Ledger
from proxy.services import Services
from proxy.usage import report


def record(number: int, now: datetime) -> LedgerRecord:
    return LedgerRecord(
        at=now - timedelta(days=number % 30, seconds=number % 86_400), request_id=uuid.uuid4().hex, key_name="team-a",
        operation="generate", mode="sync",
        status=200, images=1, total_ms=4000.0 + number % 4000, upstream_ms=5101.2, model="gpt-image-2", rule="gpt-image-2",
        upstream_model="gpt-image-2", channel="openai", attempts=1, n=1, size="1024x1024", quality="medium",
        output_format="png", input_tokens=10, output_tokens=4160, total_tokens=4170, cost_micro_usd=124_850,
        prompt_sha256=hashlib.sha256(f"prompt {number}".encode()).hexdigest(),
    )


async def measure(rows: int) -> tuple[float, int, float]:
    """(seconds to write `rows` records through the writer, the database file's size in bytes, seconds the
    usage report over them takes)."""
    path = os.path.join(tempfile.mkdtemp(prefix="imagegate-bench-"), "ledger.db")
    engine = open_engine(URL.create("sqlite+aiosqlite", database=path))
    await migrate(engine)
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
    await engine.dispose()
    return took, await asyncio.to_thread(os.path.getsize, path), reported


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger")
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    took, size, reported = asyncio.run(measure(rows))
    print(f"ledger on SQLite: {rows:,} records in {took:.2f} s ({took / rows * 10_000:.2f} s per 10,000); "
          f"{size / 1e6:.1f} MB, {size / rows * 1_000_000 / 1e6:.0f} MB per million requests; "
          f"usage report by day and model over them: {reported:.2f} s")


if __name__ == "__main__":
    main()
