"""Shell layer: state that several replicas must share, behind small interfaces with in-memory defaults.

    Counters      per-key limit counters (increment with expiry, decrement; what a process holds, for the workers' table)
    Idempotency   `Idempotency-Key` records: claimed, then finished with the response to replay
(async task records are `proxy.tasks.TaskStore`, hosted images `proxy.image_store.ImageStore`.)

The memory versions serve one process; `proxy.host_counters` and `proxy.host_state` serve the workers of
one host (`--workers`); `proxy.redis_state` implements the same interfaces on Redis. `proxy.lifecycle`
picks them from `server.state` and whether the process is a worker.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from proxy.core.stored import known
from proxy.image_store import ImageStore
from proxy.tasks import TaskStore

RUNNING = "running"
DONE = "done"


class Counters(Protocol):
    # Which counts these counters hold: a reservation made in counters of the same lifetime is still in them (an
    # async task taken over is counted again only where it is not). "" for counters that outlive every process.
    lifetime: str

    async def incr(self, key: str, amount: int, ttl: int, refresh: bool = False, hold: bool = False) -> int:
        """Add `amount`; the new value. The counter expires `ttl` seconds after it was created, or after
        this increment when `refresh` (a gauge that must not lapse while in use). `hold`: the amount is a
        reservation this process holds until `unhold` (the workers' counters give back what a dead worker held)."""
        ...

    def unhold(self, key: str, amount: int) -> None:
        """This process no longer holds `amount` of the counter (its reservation ended, given back or spent).
        Called before the counter is given back: a process killed in between leaves more counted, never less."""
        ...

    async def decr(self, key: str, amount: int) -> None:
        """Subtract, never below zero, and never bringing an expired counter back."""
        ...


@dataclass(frozen=True)
class IdempotentRecord:
    fingerprint: str  # what the request was: the same key with another request is refused
    state: str  # RUNNING while the first request is served, DONE once its answer is kept
    status: int = 0
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    claim: str = ""  # a RUNNING record's own token: only the run that claimed the key renews or releases it

    def dumps(self) -> str:
        saved = asdict(self)
        if not self.claim:  # a kept answer, as versions before claims wrote it (proxy.core.stored)
            del saved["claim"]
        return json.dumps(saved, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes) -> IdempotentRecord:
        """A record whichever version wrote it (proxy.core.stored)."""
        return IdempotentRecord(**known(IdempotentRecord, json.loads(text)))


class Idempotency(Protocol):
    async def claim(self, key: str, record: IdempotentRecord, ttl: int) -> IdempotentRecord | None:
        """Store `record` if the key is free (None: it is ours now); else the record already there."""
        ...

    async def get(self, key: str) -> IdempotentRecord | None: ...

    async def finish(self, key: str, record: IdempotentRecord, ttl: int) -> None: ...

    async def renew(self, key: str, claim: IdempotentRecord, ttl: int) -> bool:
        """Keep `claim` `ttl` seconds more while it is still the key's record; False once it is not."""
        ...

    async def release(self, key: str, claim: IdempotentRecord) -> None:
        """Forget a claim whose request failed, so that a retry runs again; a record that is no longer this
        claim (it expired and another request claimed the key) is left alone."""
        ...


class MemoryCounters:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._clock = clock
        self.lifetime = "memory:" + secrets.token_hex(8)  # this process's

    async def incr(self, key: str, amount: int, ttl: int, refresh: bool = False, hold: bool = False) -> int:
        now = self._clock()
        value, expires = self._values.get(key, (0, now + ttl))
        if expires <= now:
            value, expires = 0, now + ttl
        if refresh:
            expires = now + ttl
        self._values[key] = (value + amount, expires)
        if len(self._values) > 10_000:
            self._values = {name: item for name, item in self._values.items() if item[1] > now}
        return value + amount

    def unhold(self, key: str, amount: int) -> None:
        """Nothing to note: these counters end with the one process that holds them."""

    async def decr(self, key: str, amount: int) -> None:
        if key in self._values:
            value, expires = self._values[key]
            if expires > self._clock():
                self._values[key] = (max(0, value - amount), expires)


class MemoryIdempotency:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, tuple[IdempotentRecord, float]] = {}
        self._clock = clock

    def _live(self, key: str) -> IdempotentRecord | None:
        item = self._records.get(key)
        if item is None or item[1] <= self._clock():
            self._records.pop(key, None)
            return None
        return item[0]

    async def claim(self, key: str, record: IdempotentRecord, ttl: int) -> IdempotentRecord | None:
        existing = self._live(key)
        if existing is not None:
            return existing
        self._records[key] = (record, self._clock() + ttl)
        return None

    async def get(self, key: str) -> IdempotentRecord | None:
        return self._live(key)

    async def finish(self, key: str, record: IdempotentRecord, ttl: int) -> None:
        self._records[key] = (record, self._clock() + ttl)

    async def renew(self, key: str, claim: IdempotentRecord, ttl: int) -> bool:
        if self._live(key) != claim:
            return False
        self._records[key] = (claim, self._clock() + ttl)
        return True

    async def release(self, key: str, claim: IdempotentRecord) -> None:
        if self._live(key) == claim:
            del self._records[key]

    async def sweep(self) -> int:
        """Forget expired records (each may hold megabytes of base64): called with the image sweep."""
        now = self._clock()
        expired = [key for key, (_, expires) in self._records.items() if expires <= now]
        for key in expired:
            del self._records[key]
        return len(expired)


@dataclass
class SharedState:
    """Everything several replicas share, from one backend; `close` releases its connection."""

    tasks: TaskStore
    store: ImageStore
    counters: Counters
    idempotency: Idempotency
    close: Callable[[], Awaitable[None]]
