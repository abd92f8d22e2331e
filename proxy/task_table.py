"""Shell layer: async task records in the ledger's database (`tasks` table, migrations 0002, 0003 and 0005): the
default `TaskStore` when `server.state` is memory, so a task outlives the process that ran it.

Unfinished records carry a lease and a checkpoint: proxy.task_keeper renews the leases of this process's
tasks and claims (one conditional UPDATE) those whose process stopped. A database that fails a read or a
write is a 503 (`state_unavailable`) for the request that needed it, as with Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.core.errors import ServiceUnavailable
from proxy.database import TASKS
from proxy.tasks import PENDING, RUNNING, TaskRecord

log = logging.getLogger("imagegate.tasks")
OPEN = TASKS.c.status.in_([PENDING, RUNNING])


def _kind(exc: BaseException) -> str:
    """The driver's error class only: its text may quote a statement (a task's body) or a URL."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return type(cause).__name__


@asynccontextmanager
async def unavailable_as_503(doing: str) -> AsyncIterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("task database: could not %s: %s", doing, _kind(exc))
        raise ServiceUnavailable(
            f"The proxy's task database is unavailable: {_kind(exc)}. Try again shortly.", code="state_unavailable"
        ) from None


def _dumps(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value) if value is not None else None


def _loads(text: str | None) -> dict[str, Any] | None:
    loaded = json.loads(text) if text is not None else None
    return loaded if isinstance(loaded, dict) else None


def as_row(record: TaskRecord) -> dict[str, Any]:
    return {
        "id": record.id, "owner": record.owner, "status": record.status, "created": record.created,
        "expires_at": record.expires_at, "body": _dumps(record.body), "error": _dumps(record.error),
        "error_status": record.error_status, "lease_until": record.lease_until,
        "checkpoint": _dumps(record.checkpoint),
    }


def as_record(row: Any) -> TaskRecord:
    return TaskRecord(
        id=row.id, owner=row.owner, status=row.status, created=int(row.created), expires_at=float(row.expires_at),
        body=_loads(row.body), error=_loads(row.error), error_status=row.error_status,
        lease_until=float(row.lease_until), checkpoint=_loads(row.checkpoint),
    )


def upsert(dialect: str, row: dict[str, Any]) -> Any:
    """INSERT, or UPDATE the record already there unless it has finished (a task is put when created,
    started, checkpointed and ended; a finished record never changes)."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(TASKS).values(**row)
    changed = {name: insert.excluded[name] for name in row if name != "id"}
    return insert.on_conflict_do_update(index_elements=[TASKS.c.id], set_=changed, where=OPEN)


class DatabaseTaskStore:
    """`prepare` brings the schema to head (the ledger's `ensure_schema`): the database may have been down
    when the proxy started, and the table must exist before the first task is stored."""

    def __init__(
        self, engine: AsyncEngine, prepare: Callable[[], Awaitable[None]], clock: Callable[[], float] = time.time
    ) -> None:
        self.engine, self._prepare, self._clock = engine, prepare, clock
        self._started = False
        # Two first requests at once must not both run `start`: the second would fail the first's new task.
        self._starting = asyncio.Lock()

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[AsyncConnection]:
        async with unavailable_as_503(doing):
            if not self._started:
                await self.start()
            async with self.engine.begin() as connection:
                yield connection

    async def start(self) -> None:
        """Once per process, before its first task: the schema at head (the database may have been down
        when the proxy started). Raises when the database fails (the next call to the store tries again)."""
        async with self._starting:
            if not self._started:
                await self._prepare()
                self._started = True

    async def put(self, record: TaskRecord) -> bool:
        async with self._connection("store a task") as connection:
            result = await connection.execute(upsert(self.engine.dialect.name, as_row(record)))
        return int(result.rowcount) == 1

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._connection("read a task") as connection:
            result = await connection.execute(
                sa.select(TASKS).where(TASKS.c.id == task_id, TASKS.c.expires_at > self._clock())
            )
            row = result.first()
        return as_record(row) if row is not None else None

    async def sweep(self) -> int:
        async with self._connection("sweep expired tasks") as connection:
            result = await connection.execute(TASKS.delete().where(TASKS.c.expires_at <= self._clock()))
        return int(result.rowcount)

    async def renew(self, task_ids: Collection[str], until: float) -> None:
        if not task_ids:
            return
        async with self._connection("renew task leases") as connection:
            await connection.execute(
                TASKS.update().where(TASKS.c.id.in_(list(task_ids)), OPEN).values(lease_until=until)
            )

    async def orphans(self, now: float, limit: int) -> list[TaskRecord]:
        async with self._connection("look for orphaned tasks") as connection:
            result = await connection.execute(
                sa.select(TASKS).where(OPEN, TASKS.c.lease_until < now, TASKS.c.expires_at > now).limit(limit)
            )
            return [as_record(row) for row in result]

    async def claim(self, task_id: str, until: float, now: float) -> TaskRecord | None:
        # One UPDATE with the lease in its condition: of two processes claiming at once, one matches.
        async with self._connection("claim an orphaned task") as connection:
            result = await connection.execute(
                TASKS.update().where(TASKS.c.id == task_id, OPEN, TASKS.c.lease_until < now).values(lease_until=until)
            )
            if result.rowcount != 1:
                return None
            row = (await connection.execute(sa.select(TASKS).where(TASKS.c.id == task_id))).first()
        return as_record(row) if row is not None else None

    async def recent(self, limit: int) -> list[TaskRecord]:
        async with self._connection("list recent tasks") as connection:
            result = await connection.execute(
                sa.select(TASKS).where(TASKS.c.expires_at > self._clock()).order_by(TASKS.c.created.desc()).limit(limit)
            )
            return [as_record(row) for row in result]

    async def close(self) -> None:
        return None  # the engine is the ledger's: disposed once by it
