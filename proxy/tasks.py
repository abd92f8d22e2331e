"""Shell layer: client-visible async tasks (seed 001's `async: true`), and where their records live.

A task record holds the status seed 001 names (`pending`, `running`, `succeed`, `failed`), the finished
response body or error envelope, and a hash of the API key that created it: a task is visible only to
that key, and the key itself is never stored. Records are kept `retention` seconds after creation.

An unfinished record is leased by the process that runs it (`lease_until`, renewed by proxy.task_keeper)
and holds a checkpoint (proxy.core.task_checkpoint): when a process stops renewing (a crash, a restart),
another claims the record once its lease has run out and resumes or ends the task.

`TaskStore` is the seam for where records live: the handlers only call its methods. The proxy keeps
them in its database (`proxy.task_table`, so they survive a restart) or, with `server.state` on Redis, in
Redis (shared by replicas); `MemoryTaskStore` is for tests and tools that run the app without either.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, Protocol

PENDING = "pending"
RUNNING = "running"
SUCCEED = "succeed"
FAILED = "failed"


@dataclass(frozen=True)
class TaskRecord:
    id: str
    owner: str  # sha256 of the creating key ("" when the proxy is open)
    status: str
    created: int
    expires_at: float
    body: dict[str, Any] | None = None  # the finished ImagesResponse
    error: dict[str, Any] | None = None  # the failed task's error envelope
    error_status: int | None = None
    lease_until: float = 0.0  # unfinished: the running process holds it until then (0: nobody)
    checkpoint: dict[str, Any] | None = None  # unfinished: what another process needs to take it over

    def view(self) -> dict[str, Any]:
        """What `GET /v1/images/generations/{id}` answers while the task is not failed."""
        answer: dict[str, Any] = {"created": self.created, "data": []}
        if self.body is not None:
            answer.update(self.body)
        answer["task_id"] = self.id
        answer["task_status"] = self.status
        return answer


def answer_of(record: TaskRecord) -> tuple[dict[str, Any], int]:
    """What `GET /v1/images/generations/{id}` answers, and its status: a failed task's error envelope merged
    with its view, else the view."""
    if record.status == FAILED and record.error is not None:
        return {**record.error, **record.view()}, record.error_status or 502
    return record.view(), 200


def owner_of(client_key: str | None) -> str:
    return hashlib.sha256(client_key.encode()).hexdigest() if client_key else ""


def new_record(owner: str, now: float, retention: float) -> TaskRecord:
    return TaskRecord(id=str(uuid.uuid4()), owner=owner, status=PENDING, created=int(now), expires_at=now + retention)


class TaskStore(Protocol):
    async def put(self, record: TaskRecord) -> bool:
        """Create or replace a record; False (nothing written) when the stored one has finished already: a
        finished record never changes, so of two processes that ran one task the first to end it owns its end."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record, or None when there is none or it has expired."""
        ...

    async def sweep(self) -> int:
        """Forget expired records; returns how many went."""
        ...

    async def renew(self, task_ids: Collection[str], until: float) -> None:
        """Extend the leases of unfinished tasks this process runs (`until`: this process's clock)."""
        ...

    async def orphans(self, now: float, limit: int) -> list[TaskRecord]:
        """Unfinished records whose lease ran out (their process stopped): candidates to `claim`."""
        ...

    async def claim(self, task_id: str, until: float, now: float) -> TaskRecord | None:
        """Take an unfinished record whose lease ran out, until `until`: the record as taken, or None when
        another process took it first (or its own process finished it meanwhile)."""
        ...

    async def recent(self, limit: int) -> list[TaskRecord]:
        """The newest `limit` records of every owner, newest first (the admin console's task list)."""
        ...

    async def close(self) -> None:
        """Release connections (a no-op in memory)."""
        ...


class MemoryTaskStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, TaskRecord] = {}
        self._clock = clock

    async def put(self, record: TaskRecord) -> bool:
        stored = self._records.get(record.id)
        if stored is not None and not unfinished(stored.status):
            return False
        self._records[record.id] = record
        return True

    async def get(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    async def sweep(self) -> int:
        now = self._clock()
        expired = [task_id for task_id, record in self._records.items() if record.expires_at <= now]
        for task_id in expired:
            del self._records[task_id]
        return len(expired)

    async def recent(self, limit: int) -> list[TaskRecord]:
        now = self._clock()
        alive = [record for record in self._records.values() if record.expires_at > now]
        return sorted(alive, key=lambda record: record.created, reverse=True)[:limit]

    async def close(self) -> None:
        self._records.clear()

    # One process holds every record: none is ever left by another.
    async def renew(self, task_ids: Collection[str], until: float) -> None:
        return None

    async def orphans(self, now: float, limit: int) -> list[TaskRecord]:
        return []

    async def claim(self, task_id: str, until: float, now: float) -> TaskRecord | None:
        return None


def unfinished(status: str) -> bool:
    return status in (PENDING, RUNNING)


def finished(record: TaskRecord, body: dict[str, Any]) -> TaskRecord:
    return replace(record, status=SUCCEED, body=body, lease_until=0.0, checkpoint=None)


def failed(record: TaskRecord, envelope: dict[str, Any], status: int) -> TaskRecord:
    return replace(record, status=FAILED, error=envelope, error_status=status, lease_until=0.0, checkpoint=None)
