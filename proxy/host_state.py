"""Shell layer: `Idempotency-Key` records shared by the worker processes of one host.

With `--workers N` and `server.state: memory`, a retry must get the first answer whichever worker it
reaches: the records live in one SQLite file of the run's own directory (proxy.workers makes it; the
limit counters are proxy.host_counters). Each change is one statement or one short transaction, in a
thread (a kept answer may be megabytes of base64), so a worker never sees another's half-done update.

Nothing here needs to survive the run: idempotent answers of a stopped proxy were in memory before
workers existed too. Durability is therefore off (`synchronous=OFF`); WAL lets readers go on while a
worker writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from proxy.core.errors import ServiceUnavailable
from proxy.shared_state import IdempotentRecord

T = TypeVar("T")

FILE = "idempotency.sqlite"
LOCK_WAIT = 5.0  # seconds a statement waits for another worker's write: far more than any statement here takes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, record TEXT NOT NULL, expires REAL NOT NULL);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (each statement its own transaction unless BEGIN says otherwise)."""
    connection = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA synchronous=OFF")
    return connection


def create(path: Path) -> None:
    """An empty state file (the supervisor's, before any worker starts). WAL is the file's mode from then on:
    set here once, as changing it takes a lock that a busy worker's connection could be refused."""
    connection = connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
    finally:
        connection.close()


async def in_thread(call: Callable[..., T], *arguments: object) -> T:
    """`call` in a worker thread; a failure of the file (a write lock held past LOCK_WAIT, a full disk) is a
    503 the client may retry, as Redis's is (proxy.redis_state), never a 500."""
    try:
        return await asyncio.to_thread(call, *arguments)
    except sqlite3.Error as exc:
        raise ServiceUnavailable(
            f"The workers' shared state (idempotency records) is unavailable: {exc}. Try again shortly.",
            code="state_unavailable",
        ) from None


class HostIdempotency:
    """Each call opens its own connection in a worker thread: a thread never shares one, and these calls are rare."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock

    def _claim(self, key: str, record: str, ttl: int) -> str | None:
        connection = connect(self._path)
        try:
            connection.execute("BEGIN IMMEDIATE")  # the read and the write below are one step for every worker
            now = self._clock()
            row = connection.execute("SELECT record FROM idempotency WHERE key = ? AND expires > ?", (key, now)).fetchone()
            if row is None:
                connection.execute("INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?)", (key, record, now + ttl))
            connection.execute("COMMIT")
            return None if row is None else str(row[0])
        finally:
            connection.close()

    def _one(self, statement: str, *parameters: object) -> str | None:
        """The first column of the first row."""
        connection = connect(self._path)
        try:
            cursor = connection.execute(statement, parameters)
            row = cursor.fetchone()
            return str(row[0]) if row is not None else None
        finally:
            connection.close()

    def _change(self, statement: str, *parameters: object) -> int:
        connection = connect(self._path)
        try:
            return connection.execute(statement, parameters).rowcount
        finally:
            connection.close()

    async def claim(self, key: str, record: IdempotentRecord, ttl: int) -> IdempotentRecord | None:
        existing = await in_thread(self._claim, key, record.dumps(), ttl)
        return None if existing is None else IdempotentRecord.loads(existing)

    async def get(self, key: str) -> IdempotentRecord | None:
        found = await in_thread(self._one, "SELECT record FROM idempotency WHERE key = ? AND expires > ?", key, self._clock())
        return None if found is None else IdempotentRecord.loads(found)

    async def finish(self, key: str, record: IdempotentRecord, ttl: int) -> None:
        statement = "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?)"
        await in_thread(self._change, statement, key, record.dumps(), self._clock() + ttl)

    async def renew(self, key: str, claim: IdempotentRecord, ttl: int) -> bool:
        statement = "UPDATE idempotency SET expires = ? WHERE key = ? AND record = ? AND expires > ?"
        now = self._clock()
        return await in_thread(self._change, statement, now + ttl, key, claim.dumps(), now) == 1

    async def release(self, key: str, claim: IdempotentRecord) -> None:
        await in_thread(self._change, "DELETE FROM idempotency WHERE key = ? AND record = ?", key, claim.dumps())

    async def sweep(self) -> int:
        """Forget expired records (each may hold megabytes of base64): called with the image sweep."""
        return await in_thread(self._change, "DELETE FROM idempotency WHERE expires <= ?", self._clock())
