"""Shell layer: shared state on Redis (the `redis` extra), for several replicas behind one balancer.

Implements the same interfaces as the in-memory defaults: async task records (`TaskStore`), hosted
images (`ImageStore`, raw bytes with their expiry, not base64 text), limit counters and idempotency
records. Every key lives under one prefix and carries its own expiry, so Redis needs no sweeping.

A Redis that cannot be reached is a 503 (`state_unavailable`) for the request that needed it, after a
short timeout, never a hang; the client reconnects by itself once Redis is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.core.errors import ServiceUnavailable
from proxy.core.stored import known
from proxy.image_store import StoredImage, image_name, proxy_url, valid_name
from proxy.shared_state import IdempotentRecord, SharedState
from proxy.tasks import TaskRecord, unfinished

PREFIX = "imagegate:"
OPEN_TASKS = f"{PREFIX}tasks:open"
RECENT_TASKS = f"{PREFIX}tasks:recent"
RECENT_KEPT = 10_000  # newest task ids the admin list can show; older ones keep their records, unlisted
TIMEOUT = 2.0


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, health_check_interval=10, decode_responses=False
    )


@asynccontextmanager
async def unavailable_as_503() -> AsyncIterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # The URL may carry a password: the message names only the kind of failure.
        raise ServiceUnavailable(
            f"The proxy's shared state (Redis) is unavailable: {type(exc).__name__}. Try again shortly.",
            code="state_unavailable",
        ) from None


class RedisTaskStore:
    """A record per task under `task:<id>`, its id in the `tasks:recent` sorted set (by creation, the newest
    10,000); unfinished ones are also in the `tasks:open` sorted set (by expiry) and hold a `task-lease:<id>`
    key while their process renews it (proxy.task_keeper)."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self._redis, self._clock = client, clock
        self._put = client.register_script(_PUT_TASK)

    async def put(self, record: TaskRecord) -> bool:
        lease_ms = int((record.lease_until - self._clock()) * 1000)
        args: list[str | int | float] = [json.dumps(asdict(record)), int(record.expires_at * 1000), record.id,
                                         record.expires_at, 1 if unfinished(record.status) else 0, max(0, lease_ms),
                                         record.created, RECENT_KEPT]
        async with unavailable_as_503():
            keys = [f"{PREFIX}task:{record.id}", OPEN_TASKS, _lease(record.id), RECENT_TASKS]
            applied = await self._put(keys=keys, args=args)
        return bool(applied)

    async def get(self, task_id: str) -> TaskRecord | None:
        async with unavailable_as_503():
            raw = await self._redis.get(f"{PREFIX}task:{task_id}")
        return _record(json.loads(raw)) if raw is not None else None

    async def sweep(self) -> int:
        return 0  # keys expire by themselves; the open set is pruned by `orphans`, the recent set on `put`

    async def recent(self, limit: int) -> list[TaskRecord]:
        async with unavailable_as_503():
            members: list[Any] = await self._redis.zrevrange(RECENT_TASKS, 0, limit - 1)
            raws: list[Any] = await self._redis.mget([f"{PREFIX}task:{m.decode()}" for m in members]) if members else []
        # An expired record's id may still be listed until newer ones push it out: it is skipped.
        return [_record(json.loads(raw)) for raw in raws if raw is not None]

    async def renew(self, task_ids: Collection[str], until: float) -> None:
        if not task_ids:
            return
        async with unavailable_as_503():
            pipe = self._redis.pipeline(transaction=False)
            for task_id in task_ids:
                # Relative: Redis's clock and this host's may differ.
                pipe.set(_lease(task_id), b"1", px=max(1, int((until - self._clock()) * 1000)))
            await pipe.execute()

    async def orphans(self, now: float, limit: int) -> list[TaskRecord]:
        async with unavailable_as_503():
            await self._redis.zremrangebyscore(OPEN_TASKS, "-inf", now)
            members: list[Any] = await self._redis.zrange(OPEN_TASKS, 0, -1)
            ids = [member.decode() for member in members]
            leases = await self._redis.mget([_lease(task_id) for task_id in ids]) if ids else []
        found = []
        for task_id in (task_id for task_id, lease in zip(ids, leases, strict=True) if lease is None):
            record = await self.get(task_id)
            if record is not None and unfinished(record.status):
                found.append(record)
            if len(found) >= limit:
                break
        return found

    async def claim(self, task_id: str, until: float, now: float) -> TaskRecord | None:
        async with unavailable_as_503():
            # SET NX on the lease: of two replicas claiming at once, one wins.
            if not await self._redis.set(_lease(task_id), b"1", nx=True, px=max(1, int((until - now) * 1000))):
                return None
        record = await self.get(task_id)
        return record if record is not None and unfinished(record.status) else None

    async def close(self) -> None:
        return None  # the connection is shared: closed once by the app


def _lease(task_id: str) -> str:
    return f"{PREFIX}task-lease:{task_id}"


def _record(saved: dict[str, Any]) -> TaskRecord:
    """A stored record, whichever version wrote it (proxy.core.stored)."""
    return TaskRecord(**known(TaskRecord, saved))


# Store a task record unless the stored one has finished (a finished record never changes), keeping the set of
# unfinished tasks and the task's lease with it: a lease in the future is (re)set, none or a past one removed.
# The recent set lists every task by creation, the newest RECENT_KEPT.
# KEYS: record, open set, lease, recent set. ARGV: JSON, expiry (ms since the epoch), id, expiry (s),
# unfinished 1|0, lease ms, created, RECENT_KEPT.
_PUT_TASK = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local status = cjson.decode(stored)['status']
  if status ~= 'pending' and status ~= 'running' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[8]) - 1)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[3], '1', 'PX', ARGV[6]) else redis.call('DEL', KEYS[3]) end
else
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[3])
end
return 1
"""


class RedisImageStore:
    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self._redis = client
        self.ttl = ttl

    async def put(self, data: bytes, content_type: str, keep_for: float | None = None) -> str:
        name = image_name(content_type)
        async with unavailable_as_503():
            await self._redis.set(f"{PREFIX}image:{name}", data, ex=max(1, int(keep_for or self.ttl)))
        return name

    async def get(self, name: str) -> StoredImage | None:
        content_type = valid_name(name)
        if content_type is None:
            return None
        key = f"{PREFIX}image:{name}"
        async with unavailable_as_503(), self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            data, left_ms = await pipe.execute()
        expires_at = time.time() + left_ms / 1000 if isinstance(left_ms, int) and left_ms > 0 else None
        return StoredImage(content_type, data=data, expires_at=expires_at) if isinstance(data, bytes) else None

    async def sweep(self) -> int:
        return 0

    async def url_for(self, name: str, public_base: str, keep_for: float) -> str:
        return proxy_url(name, public_base)


# Decrement an existing counter, never below zero, keeping its expiry; an expired one stays gone.
_DECR = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local value = redis.call('DECRBY', KEYS[1], ARGV[1])
  if value < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
end
return 0
"""


# An idempotency claim renewed (ARGV[2]: seconds) or released (no ARGV[2]) only while it is still the key's record.
_IF_CLAIMED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


class RedisCounters:
    lifetime = ""  # outlives every process (and so holds what checkpoints without a lifetime reserved)

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._decr = client.register_script(_DECR)

    async def incr(self, key: str, amount: int, ttl: int, refresh: bool = False, hold: bool = False) -> int:
        name = f"{PREFIX}count:{key}"
        async with unavailable_as_503():
            pipe = self._redis.pipeline(transaction=True)
            pipe.incrby(name, amount)
            # A window's expiry is set once, when it opens; a gauge's is renewed on every increment.
            pipe.expire(name, ttl, nx=not refresh)
            value, _ = await pipe.execute()
        return int(value)

    def unhold(self, key: str, amount: int) -> None:
        """Not noted: a replica that dies leaves its reservations until their counters expire (see ARCHITECTURE)."""

    async def decr(self, key: str, amount: int) -> None:
        async with unavailable_as_503():
            await self._decr(keys=[f"{PREFIX}count:{key}"], args=[amount])


class RedisIdempotency:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._if_claimed = client.register_script(_IF_CLAIMED)

    async def claim(self, key: str, record: IdempotentRecord, ttl: int) -> IdempotentRecord | None:
        name = f"{PREFIX}idem:{key}"
        async with unavailable_as_503():
            if await self._redis.set(name, record.dumps(), nx=True, ex=ttl):
                return None
            raw: Any = await self._redis.get(name)
        # Expired between the two calls: claim again on the next attempt; report it as running meanwhile.
        return IdempotentRecord.loads(raw) if raw is not None else record

    async def get(self, key: str) -> IdempotentRecord | None:
        async with unavailable_as_503():
            raw: Any = await self._redis.get(f"{PREFIX}idem:{key}")
        return IdempotentRecord.loads(raw) if raw is not None else None

    async def finish(self, key: str, record: IdempotentRecord, ttl: int) -> None:
        async with unavailable_as_503():
            await self._redis.set(f"{PREFIX}idem:{key}", record.dumps(), ex=ttl)

    async def renew(self, key: str, claim: IdempotentRecord, ttl: int) -> bool:
        async with unavailable_as_503():
            return bool(await self._if_claimed(keys=[f"{PREFIX}idem:{key}"], args=[claim.dumps(), ttl]))

    async def release(self, key: str, claim: IdempotentRecord) -> None:
        async with unavailable_as_503():
            await self._if_claimed(keys=[f"{PREFIX}idem:{key}"], args=[claim.dumps()])


def open_redis(url: str, image_ttl: int) -> SharedState:
    client = connect(url)
    return SharedState(
        tasks=RedisTaskStore(client),
        store=RedisImageStore(client, image_ttl),
        counters=RedisCounters(client),
        idempotency=RedisIdempotency(client),
        close=client.aclose,
    )
