"""Shell layer: signed webhooks of async tasks' ends: the deliveries (rows in the ledger's database, also when
tasks live in Redis), the create-time checks of a callback URL, and the worker that sends what is due.

    create   `callback_url` (or the key's `webhook_url`) checked by the URL guard; kept in the task's checkpoint
    end      `task_runner.end_task`, in whichever process ends the task: one `webhook_deliveries` row
    send     every process claims due rows (one conditional UPDATE: never two senders of one attempt), POSTs
             the signed body through a guarded session (checked again: DNS may have changed), no redirects;
             2xx delivered, 429/5xx/no answer retried with jittered exponential backoff until `retry_for`
             after the end, any other answer failed at once. At least once: a crash mid-send sends again.
    wake     when this process queues a delivery, when the earliest pending one is due, and every `POLL_EVERY`
             seconds (deliveries queued by a process that stopped before sending them): an idle proxy does
             not poll the database every second

Secrets are never stored: a row names its set (`key:<the key's id>` or `server`), resolved from the rules in force.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.core.errors import InvalidRequest, ServiceUnavailable
from proxy.core.json_body import encode_body
from proxy.core.limit_windows import key_id
from proxy.core.webhook_signature import DELIVERED, FAILED, RETRY, backoff, headers, verdict
from proxy.database import WEBHOOK_DELIVERIES as ROWS
from proxy.guard import GuardedResolver, Refused, Unresolved, check, make_guarded_session
from proxy.tasks import TaskRecord, answer_of, unfinished

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger("imagegate.webhooks")
PENDING = "pending"
BATCH = 50  # rows claimed per pass
CLAIM_MARGIN = 30.0  # seconds past an attempt's timeout before another process may try the row again
POLL_EVERY = 5.0  # seconds between looks for deliveries no one woke this process for
ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def message_id() -> str:
    """A delivery's `webhook-id`: the same on every retry of one message, so receivers can drop duplicates."""
    return f"msg_{uuid.uuid4().hex}"


class DeliveryStore:
    """The `webhook_deliveries` table. `prepare` brings the schema to head before first use (the database may
    have been down at start-up), as with the task table."""

    def __init__(self, engine: AsyncEngine, prepare: Callable[[], Awaitable[None]]) -> None:
        self.engine, self._prepare, self._started = engine, prepare, False

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        if not self._started:
            await self._prepare()
            self._started = True
        async with self.engine.begin() as connection:
            yield connection

    async def add(self, row: dict[str, Any]) -> None:
        async with self._connection() as connection:
            await connection.execute(ROWS.insert().values(**row))

    async def claim_due(self, now: float, until: float) -> list[Any]:
        """Rows due now, each taken (next_at moved to `until`, one more attempt) by one UPDATE whose condition
        only one process can meet."""
        claimed = []
        async with self._connection() as connection:
            due = (await connection.execute(sa.select(ROWS.c.id).where(ROWS.c.status == PENDING, ROWS.c.next_at <= now)
                                            .order_by(ROWS.c.next_at).limit(BATCH))).scalars().all()
        for delivery_id in due:
            async with self._connection() as connection:
                taken = await connection.execute(
                    ROWS.update().where(ROWS.c.id == delivery_id, ROWS.c.status == PENDING, ROWS.c.next_at <= now)
                    .values(next_at=until, attempts=ROWS.c.attempts + 1))
                if taken.rowcount == 1:
                    claimed.append((await connection.execute(sa.select(ROWS).where(ROWS.c.id == delivery_id))).one())
        return claimed

    async def next_due(self) -> float | None:
        """When the earliest pending delivery is due (None without any): its retry time, or its claim's end."""
        async with self._connection() as connection:
            due = (await connection.execute(sa.select(sa.func.min(ROWS.c.next_at)).where(ROWS.c.status == PENDING))).scalar()
        return None if due is None else float(due)

    async def settle(self, row: Any, status: str, last_status: int | None, next_at: float) -> bool:
        """The outcome of the attempt `row` was claimed for; False (nothing written) when the row was claimed
        again meanwhile (an attempt that outlived its claim: the later attempt's outcome stands)."""
        async with self._connection() as connection:
            result = await connection.execute(
                ROWS.update().where(ROWS.c.id == row.id, ROWS.c.attempts == row.attempts, ROWS.c.status == PENDING)
                .values(status=status, last_status=last_status, next_at=next_at))
        return int(result.rowcount) == 1

    async def sweep(self, before: float) -> int:
        """Forget settled deliveries made before `before` (their tasks have expired): returns how many went."""
        async with self._connection() as connection:
            result = await connection.execute(ROWS.delete().where(ROWS.c.status != PENDING, ROWS.c.created < before))
        return int(result.rowcount)

    async def state_of(self, task_id: str) -> dict[str, Any] | None:
        async with self._connection() as connection:
            row = (await connection.execute(sa.select(ROWS.c.status, ROWS.c.attempts, ROWS.c.last_status)
                                            .where(ROWS.c.task_id == task_id).order_by(ROWS.c.created.desc()))).first()
        return None if row is None else {"status": row.status, "attempts": row.attempts, "last_status": row.last_status}


@dataclass
class Webhooks:
    """This process's sender: the store, a guarded session of its own (trusting `server.webhooks.allow_hosts`)
    and the event that wakes the worker when this process ends a task."""

    store: DeliveryStore
    session: aiohttp.ClientSession
    resolver: GuardedResolver
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def open_webhooks(engine: AsyncEngine, prepare: Callable[[], Awaitable[None]], allow_hosts: tuple[str, ...]) -> Webhooks:
    session, resolver = make_guarded_session(allow_hosts)
    return Webhooks(DeliveryStore(engine, prepare), session, resolver)


async def requested(services: Services, callback_url: str | None, client_key: str | None) -> dict[str, str] | None:
    """The webhook an async create asks for (its callback_url, else its key's webhook_url), checked now: a 400
    naming `callback_url` when it cannot be used or nothing could sign it."""
    server = services.rules.server
    client = server.client(client_key)
    url = callback_url or (client.webhook_url if client is not None else "")
    if not url:
        return None
    # By the key's id (a hash), not its name: names need not be unique, and another key's secrets must never sign.
    secret_set = f"key:{key_id(client.key)}" if client is not None and client.webhook_secrets else "server"
    if not server.webhook_secrets_of(secret_set):
        raise InvalidRequest("This proxy has no webhook secret to sign with, and webhooks are always signed: ask its "
                             "operator to set server.webhooks.secrets.", param="callback_url", code="webhook_secret_missing")
    if callback_url is not None:
        try:
            await check(callback_url, frozenset(server.webhooks.allow_hosts))
        except Refused as refused:
            raise InvalidRequest(f"The callback_url cannot be used: {refused}.", param="callback_url",
                                 code="invalid_callback_url") from None
    if services.webhooks is None:
        raise ServiceUnavailable("This proxy cannot deliver webhooks (it has no database).", code="webhooks_unavailable")
    return {"url": url, "secret_set": secret_set}


async def enqueue(services: Services, final: TaskRecord, webhook: dict[str, str] | None, attempts: int = 3) -> None:
    """The ended task's delivery: the body its client's poll answers, signed and sent by the worker. A database
    that stays down loses the message (logged): the task's own end stands."""
    if webhook is None or services.webhooks is None:
        return
    now, hooks = time.time(), services.rules.server.webhooks
    body = encode_body(answer_of(final)[0]).decode()
    row = {"id": message_id(), "task_id": final.id, "url": webhook["url"], "body": body, "attempts": 0,
           "secret_set": webhook["secret_set"], "status": PENDING, "next_at": now, "created": now,
           "deadline": now + hooks.retry_for}
    for attempt in range(attempts):
        try:
            await services.webhooks.store.add(row)
            services.webhooks.wake.set()
            return
        except Exception as exc:
            log.warning("task %s: could not queue its webhook (%s)", final.id, type(exc).__name__)
            await asyncio.sleep(0.5 * 2**attempt)
    log.error("task %s: its webhook was not queued after %d attempts", final.id, attempts)


async def with_webhook(services: Services, record: TaskRecord, body: dict[str, Any]) -> dict[str, Any]:
    """A task's answer with `metadata.webhook` (status, attempts, last_status) once its delivery exists."""
    if services.webhooks is None or unfinished(record.status):
        return body
    try:
        state = await services.webhooks.store.state_of(record.id)
    except Exception as exc:  # the answer is the task's: a delivery state that cannot be read is left out
        log.warning("task %s: could not read its webhook's state (%s)", record.id, type(exc).__name__)
        return body
    if state is None:
        return body
    metadata = body.get("metadata")
    return {**body, "metadata": {**(metadata if isinstance(metadata, dict) else {}), "webhook": state}}


async def deliver_forever(services: Services, hooks: Webhooks) -> None:
    """The worker: send what is due, then sleep until woken, until the next delivery is due, or until the next
    poll (runs until cancelled)."""
    while True:
        hooks.wake.clear()
        try:
            await deliver_due(services, hooks)
            due = await hooks.store.next_due()
        except Exception as exc:  # the database is down: the next poll tries again
            log.warning("could not look for due webhooks: %s", type(exc).__name__)
            due = None
        pause = POLL_EVERY if due is None else min(POLL_EVERY, due - time.time())
        if pause > 0:
            with suppress(TimeoutError):
                await asyncio.wait_for(hooks.wake.wait(), pause)


async def deliver_due(services: Services, hooks: Webhooks) -> int:
    """One pass: claim the due deliveries and send each (at once, each bounded by the timeout)."""
    now, timeout = time.time(), services.rules.server.webhooks.timeout
    rows = await hooks.store.claim_due(now, now + timeout + CLAIM_MARGIN)
    await asyncio.gather(*(send(services, hooks, row) for row in rows))
    return len(rows)


async def send(services: Services, hooks: Webhooks, row: Any) -> None:
    """One attempt of one delivery, and what it leaves: delivered, failed, or pending until the next try."""
    rules = services.rules.server
    secrets = rules.webhook_secrets_of(row.secret_set)
    try:
        status = await _post(hooks, row, secrets, rules.webhooks.timeout, frozenset(rules.webhooks.allow_hosts)) if secrets else 0
    except asyncio.CancelledError:  # a shutdown: the attempt is due again at once, for the next process
        await asyncio.shield(hooks.store.settle(row, PENDING, row.last_status, time.time()))
        raise
    except Exception:  # whatever it was, the row is settled: retried until its deadline, then failed
        log.exception("webhook %s of task %s: the attempt failed", row.id, row.task_id)
        status = None
    outcome = verdict(status) if secrets and status != 0 else FAILED
    now = time.time()
    next_at = now + backoff(row.attempts, rules.webhooks.min_backoff, random.uniform)
    if outcome == RETRY and next_at > row.deadline:
        outcome = FAILED
    state = PENDING if outcome == RETRY else outcome
    # Shielded: a shutdown arriving now must not roll the outcome back (the row would wait out its claim).
    settled = hooks.store.settle(row, state, status or None, next_at if state == PENDING else now)
    if await asyncio.shield(settled) and state != PENDING:
        log_outcome(row, state, status)


async def _post(hooks: Webhooks, row: Any, secrets: tuple[str, ...], timeout: float, trusted: frozenset[str]) -> int | None:
    """The receiver's status; None without an answer (retried); 0 when the guard refuses the URL (failed)."""
    try:
        async with asyncio.timeout(timeout):  # the guard's DNS lookup counts in the attempt's time
            await check(row.url, trusted)
    except Unresolved as unresolved:  # a DNS outage passes: like no answer, tried again until the deadline
        log.info("webhook %s of task %s: %s, tried again later", row.id, row.task_id, unresolved)
        return None
    except Refused as refused:
        log.warning("webhook %s of task %s: the URL is refused: %s", row.id, row.task_id, refused)
        return 0
    except TimeoutError:
        log.info("webhook %s of task %s: its host did not resolve in time, tried again later", row.id, row.task_id)
        return None
    body = row.body.encode()
    try:
        async with hooks.session.post(row.url, data=body, headers=headers(secrets, row.id, int(time.time()), body),
                                      allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status
    except ERRORS as exc:
        log.info("webhook %s of task %s: no answer (%s), tried again later", row.id, row.task_id, type(exc).__name__)
        return None
    except ValueError as exc:  # a URL the HTTP client cannot send to at all (userinfo that is not Latin-1, say)
        log.warning("webhook %s of task %s: the URL cannot be used (%s)", row.id, row.task_id, type(exc).__name__)
        return 0


def log_outcome(row: Any, state: str, status: int | None) -> None:
    if state == DELIVERED:
        log.info("webhook %s of task %s delivered after %d attempt(s)", row.id, row.task_id, row.attempts)
    else:
        log.warning("webhook %s of task %s failed after %d attempt(s) (last status %s)", row.id, row.task_id,
                    row.attempts, status or "none")
