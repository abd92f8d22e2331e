"""Shell layer: the ledger: one record per image request, written to the database off the request's path.

    middleware.account (every image POST's end, once its answer is sent), an async task's end, or a channel test (proxy.admin)
        -> entry(): the request's notes + facts -> core.ledger_record.build_record -> LedgerRecord
        -> Ledger.add(): a bounded in-memory queue (never waits, never raises)
        -> the writer: `every` seconds after a record arrives, or at once when `batch` records wait, what is
           queued then, one `executemany` per batch (an idle proxy's writer sleeps without a timer)

A full queue drops the record (`imagegate_ledger_dropped_total`); a database that fails a write loses
that batch (`imagegate_ledger_write_failures_total`); both are logged, neither reaches the client. A
database that was down at start-up is migrated by the writer once it answers. On shutdown the queue
is written out within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.ledger_record import COLUMNS, IMAGE_ROUTES, LedgerRecord, Outcome, build_record
from proxy.core.plan import Plan
from proxy.database import GENERATIONS, RowInsert, migrate
from proxy.idempotent import HEADER as IDEMPOTENCY_HEADER
from proxy.metrics import Metrics
from proxy.observe import CURRENT, RequestRecord, note, note_unlogged

if TYPE_CHECKING:
    from proxy.services import Services
    from proxy.tasks import TaskRecord

log = logging.getLogger("imagegate.ledger")
CAPACITY = 10_000  # records waiting at most: a few minutes of a busy proxy, a few megabytes
BATCH = 500
EVERY = 0.5  # seconds between writes while records trickle in
MIGRATE_TIMEOUT = 15.0


def reason(exc: BaseException) -> str:
    """What failed, for a log line: the driver's own error, never SQLAlchemy's text (it quotes the statement
    and its parameters: a batch of records, prompts included)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


class Ledger:
    """The queue and its writer. `add` is synchronous and cheap; the writer owns every database call."""

    def __init__(
        self, engine: AsyncEngine, metrics: Metrics | None, *, capacity: int = CAPACITY, batch: int = BATCH,
        every: float | None = None,
    ) -> None:
        self.engine, self.metrics = engine, metrics
        # Module values read now, not at import: an operator (or a test) may tune them.
        self.capacity, self.batch, self.every = capacity, batch, EVERY if every is None else every
        self.written = self.dropped = self.failed = 0  # also kept without prometheus-client (tests, logs)
        self._queue: deque[tuple[float, LedgerRecord]] = deque()
        self._arrived = asyncio.Event()  # a record came into an empty queue (or the ledger is closing)
        self._wake = asyncio.Event()  # write now: a full batch waits (or the ledger is closing)
        self._closing = False
        self._insert: RowInsert | None = None  # compiled for the engine's dialect at the first write
        self._migrated = False
        self._migrating = asyncio.Lock()  # the writer and the task store may both find the schema missing
        self._writer: asyncio.Task[None] | None = None

    def add(self, record: LedgerRecord) -> None:
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.ledger_dropped.inc()
            if self.dropped % 1000 == 1:  # a line for the first and every thousandth: a flood must not flood the log
                log.warning("ledger queue full (%d records): %d record(s) dropped so far", self.capacity, self.dropped)
            return
        self._queue.append((time.monotonic(), record))
        if len(self._queue) == 1:
            self._arrived.set()
        if len(self._queue) >= self.batch:
            self._wake.set()

    async def start(self) -> None:
        """Migrate (a failure is logged: the writer tries again before its first write) and start the writer."""
        try:
            async with asyncio.timeout(MIGRATE_TIMEOUT):
                await self.ensure_schema()
        except Exception as exc:
            log.error("ledger database unavailable at start-up (the writer tries again with each batch): %s", reason(exc))
        self._writer = asyncio.create_task(self._run())

    @property
    def migrated(self) -> bool:
        return self._migrated

    async def ensure_schema(self) -> None:
        """Migrate unless done already (raises when the database fails; the next caller tries again)."""
        async with self._migrating:
            if not self._migrated:
                await migrate(self.engine)
                self._migrated = True

    async def _run(self) -> None:
        while True:
            if not self._queue and not self._closing:  # no timer while nothing is queued: idle costs nothing
                self._arrived.clear()
                await self._arrived.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every):
                    await self._wake.wait()
            self._wake.clear()
            await self.write_queued()
            if self._closing:  # checked after writing: what was queued when `close` began is written first
                return

    async def write_queued(self) -> None:
        """Write what is queued now, in batches. Records queued meanwhile wait for the next round: chasing them
        would write a few at a time under load, each paying a whole transaction (~1 ms of CPU). When shutting
        down, write everything, but stop at the first failure (the database is down: trying every batch would
        hold the shutdown for nothing)."""
        left = len(self._queue)
        while self._queue and (left > 0 or self._closing):
            batch = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
            left -= len(batch)
            if not await self._write(batch) and self._closing:
                return

    async def _write(self, batch: list[tuple[float, LedgerRecord]]) -> bool:
        try:
            await self.ensure_schema()
            async with self.engine.begin() as connection:
                if self._insert is None:
                    self._insert = RowInsert(GENERATIONS, COLUMNS, connection.dialect)
                await self._insert.execute(connection, [record.row() for _, record in batch])
        except Exception as exc:  # whatever the driver raises: the ledger must never take the proxy down
            self.failed += len(batch)
            if self.metrics is not None:
                self.metrics.ledger_write_failures.inc(len(batch))
            log.warning("ledger: could not write %d record(s): %s", len(batch), reason(exc))
            return False
        self.written += len(batch)
        if self.metrics is not None:
            self.metrics.ledger_written.inc(len(batch))
            self.metrics.ledger_lag.observe(time.monotonic() - batch[0][0])
        return True

    async def close(self, grace: float) -> None:
        """Write out the queue (within `grace` seconds; what is left then is counted as failed) and let go."""
        self._closing = True
        self._arrived.set()
        self._wake.set()
        if self._writer is not None:
            _, pending = await asyncio.wait({self._writer}, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._queue:
            self.failed += len(self._queue)
            if self.metrics is not None:
                self.metrics.ledger_write_failures.inc(len(self._queue))
            log.error("ledger: %d record(s) not written before shutdown", len(self._queue))
            self._queue.clear()
        await self.engine.dispose()


# -- what requests tell the ledger ------------------------------------------------------------------


def arrived(request: web.Request, key_name: str) -> None:
    """At an image POST's start: what the request itself says (its route, key name, idempotency key)."""
    note_unlogged(path=request.path, key_name=key_name, idempotency_key=request.headers.get(IDEMPOTENCY_HEADER))


def planned(plan: Plan) -> None:
    """Once the request is a plan: what it asks for. The prompt is unlogged (access lines show it only when
    `server.log_prompts` says so); the ledger keeps it or its hash by the same setting."""
    note(model=plan.model, rule=plan.rule.pattern, n=plan.n, operation=plan.operation, stream=plan.stream or None)
    fields = plan.fields
    note_unlogged(prompt=plan.client_prompt, size=fields.get("size"), quality=fields.get("quality"),
                  output_format=plan.output_format)


def entry(services: Services, record: RequestRecord, status: int, error: dict[str, Any] | None = None) -> LedgerRecord:
    """THE builder: a request's ledger record from its notes, for answers and async tasks alike."""
    fields = {**record.fields, **record.unlogged}
    outcome = Outcome(
        status=status,
        total_ms=(time.perf_counter() - record.started) * 1000,
        upstream_ms=record.upstream_seconds * 1000,
        error_type=(error or {}).get("type"),
        error_code=(error or {}).get("code"),
    )
    at = datetime.fromtimestamp(record.arrived, UTC)
    path = str(fields.get("path", ""))
    return build_record(at, record.request_id, path, fields, outcome, log_prompts=services.rules.server.log_prompts)


def answered(services: Services | None, record: RequestRecord, status: int) -> None:
    """At an image POST's end (middleware.account): its record, unless an async task will write it when it ends."""
    if services is None or services.ledger is None or record.unlogged.get("path") not in IMAGE_ROUTES:
        return
    if record.fields.get("task_id") and status < 400:
        return
    try:
        services.ledger.add(entry(services, record, status))
    except Exception:  # a bug here must not turn the client's answer into a 500
        log.exception("ledger: could not record request %s", record.request_id)


def task_ended(services: Services, final: TaskRecord) -> None:
    """An async task's end: the record of the POST that created it, with the task's own status and error."""
    record = CURRENT.get()  # the task runs in a copy of the POST's context: the same RequestRecord
    if services.ledger is None or record is None:
        return
    error = (final.error or {}).get("error") if final.error is not None else None
    status = (final.error_status or 502) if final.error is not None else 200
    try:
        services.ledger.add(entry(services, record, status, error if isinstance(error, dict) else None))
    except Exception:  # a bug here must not leave the task unfinished for its client
        log.exception("ledger: could not record task %s", final.id)


def channel_tested(services: Services, status: int, error: dict[str, Any] | None) -> None:
    """A channel test from the admin console (proxy.admin): recorded like any image request, with the status
    the generation ended with (the console's own answer is a 200 either way)."""
    record = CURRENT.get()
    if services.ledger is None or record is None:
        return
    try:
        services.ledger.add(entry(services, record, status, error))
    except Exception:  # a bug here must not turn the test's answer into a 500
        log.exception("ledger: could not record channel test %s", record.request_id)
