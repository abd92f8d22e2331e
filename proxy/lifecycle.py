"""Shell layer: the application's lifecycle: the shared services made at start-up, the sweeper of
expired images and tasks, and the drain on shutdown (paid async work gets the grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from proxy import host_counters, host_state
from proxy.adapters import ADAPTERS
from proxy.core.errors import ProxyError
from proxy.core.rules import Rules
from proxy.counter_seed import seed_counters
from proxy.database import database_url, open_engine, shown
from proxy.driver import Driver
from proxy.finish import Finisher
from proxy.guard import make_guarded_session, trusted_hosts
from proxy.host_counters import HostCounters
from proxy.host_state import HostIdempotency
from proxy.image_store import FileImageStore, ImageStore, default_directory
from proxy.ledger import MIGRATE_TIMEOUT, Ledger, reason
from proxy.metrics import Metrics, make_metrics
from proxy.services import HOST_STATE, RULES, SERVICES, STORE, TASK_STORE, Services
from proxy.shared_state import SharedState
from proxy.task_keeper import keep_leases, take_over
from proxy.task_table import DatabaseTaskStore
from proxy.tasks import TaskStore
from proxy.upstream import SESSION, make_session
from proxy.webhooks import deliver_forever, open_webhooks

log = logging.getLogger("imagegate")
CANCEL_CALLS_GRACE = 10.0  # seconds the cancel calls started by stopping stragglers get to go out
SWEEP_EVERY = 300.0


@runtime_checkable
class Sweeps(Protocol):
    """State whose expired entries the proxy must remove itself."""

    async def sweep(self) -> int: ...


@runtime_checkable
class Opened(Protocol):
    """A store with a connection to open and close (object storage)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def open_shared_state(rules: Rules) -> SharedState | None:
    """The Redis backend when `server.state` names one (imported only then: it is an optional extra)."""
    if rules.server.state == "memory":
        return None
    from proxy.redis_state import open_redis

    return open_redis(rules.server.state, rules.server.images.ttl)


def make_store(rules: Rules) -> ImageStore:
    """Object storage when `server.images.store` names a bucket (aiobotocore is an optional extra), else a directory."""
    if rules.server.images.store:
        from proxy.s3_store import S3ImageStore

        # The bucket's lifecycle rule must outlive the longest-kept image: an async task's result.
        return S3ImageStore(rules.server.images, max(rules.server.images.ttl, rules.server.tasks.retention))
    path = Path(rules.server.images.path) if rules.server.images.path else default_directory()
    return FileImageStore(path, rules.server.images.ttl)


async def open_ledger(rules: Rules, store: ImageStore | None, metrics: Metrics | None) -> Ledger:
    url = database_url(rules, store)
    log.debug("ledger: %s", shown(url))
    ledger = Ledger(open_engine(url), metrics)
    await ledger.start()
    return ledger


async def open_tasks(app: web.Application, shared: SharedState | None, ledger: Ledger) -> TaskStore:
    """The tests' store, else Redis's, else the ledger's database (tasks then survive a restart)."""
    if TASK_STORE in app:
        return app[TASK_STORE]
    if shared is not None:
        return shared.tasks
    tasks = DatabaseTaskStore(ledger.engine, ledger.ensure_schema)
    if not ledger.migrated:  # the database is down (logged): waiting for it again would only slow the start
        return tasks
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            await tasks.start()
    except Exception as exc:  # the database is down: the store tries again before its first task
        log.error("task database unavailable at start-up (tried again with the first task): %s", reason(exc))
    return tasks


async def _counters_from_ledger(services: Services, ledger: Ledger) -> None:
    """Memory counters start from today's and this month's ledger rows (proxy.counter_seed)."""
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            await seed_counters(services.counters, ledger.engine, services.rules.server, time.time())
    except Exception as exc:  # budgets then count from zero: say so
        log.error("could not start the limit counters from the ledger (they count from zero): %s", reason(exc))


async def _first_take_over(services: Services) -> None:
    """Before the first request: the tasks a stopped process handed over or left behind are resumed or
    failed (proxy.task_keeper), so a client polling right after a restart sees where they stand."""
    try:
        async with asyncio.timeout(MIGRATE_TIMEOUT):
            taken = await take_over(services)
        if taken:
            log.info("took over %d unfinished async task(s) left by a stopped process", taken)
    except Exception as exc:  # the store is down: the lease loop tries again
        log.error("could not look for unfinished async tasks at start-up: %s", reason(exc))


async def _sweep_forever(services: Services) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        # Each on its own: a store that cannot be swept (an object store that is down) must not stop the others.
        for what, sweep in _sweeps(services):
            try:
                await sweep()
            except (OSError, ProxyError, SQLAlchemyError) as exc:
                log.warning("could not sweep expired %s: %s", what, type(exc).__name__)
            except Exception:  # whatever it is, the next sweeps (and the drain after them) must still run
                log.exception("could not sweep expired %s", what)


def _sweeps(services: Services) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    sweeps: list[tuple[str, Callable[[], Awaitable[object]]]] = [("images", services.store.sweep),
                                                                  ("tasks", services.tasks.sweep)]
    webhooks = services.webhooks
    if webhooks is not None:  # settled deliveries go with their tasks
        sweeps.append(("webhooks", lambda: webhooks.store.sweep(time.time() - services.rules.server.tasks.retention)))
    for what, state in (("idempotency records", services.idempotency), ("limit counters", services.counters)):
        if isinstance(state, Sweeps):  # in this process's memory or a file of this host: Redis expires its own
            sweeps.append((what, state.sweep))
    return sweeps


async def _stop(loop: asyncio.Task[None]) -> None:
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


def longest_drain(grace: float) -> float:
    """The longest a process's drain can take: requests in flight (aiohttp's shutdown), then async tasks, then
    the ledger's last writes get `grace` each, and cancel calls upstream CANCEL_CALLS_GRACE."""
    return 3 * grace + CANCEL_CALLS_GRACE


async def _drain(running: set[asyncio.Task[Any]], grace: float) -> None:
    """Let background work (async tasks, cancel calls) finish within the grace period, then stop it."""
    if not running:
        return
    log.info("waiting up to %gs for %d background task(s)", grace, len(running))
    _, pending = await asyncio.wait(running, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _share_limits(app: web.Application, services: Services, shared: SharedState | None) -> None:
    """Counters and idempotency records: Redis's; else, in one of several workers, the files its siblings use
    (the counters started from the ledger already); else this process's memory (the Services defaults)."""
    if shared is not None:
        services.counters, services.idempotency = shared.counters, shared.idempotency
    elif HOST_STATE in app:
        run = app[HOST_STATE]
        # What this worker holds is noted in a file of its own: its supervisor gives it back if it dies.
        held = host_counters.holdings_file(run, os.getpid())
        services.counters = HostCounters(run / host_counters.FILE, holdings=held)
        services.idempotency = HostIdempotency(run / host_state.FILE)


async def services_context(app: web.Application) -> AsyncIterator[None]:
    rules = app[RULES]
    session = make_session()
    inputs, resolver = make_guarded_session(trusted_hosts(rules))
    app[SESSION] = session
    shared = open_shared_state(rules)
    store = app[STORE] if STORE in app else make_store(rules) if rules.server.images.store or shared is None else shared.store
    if isinstance(store, Opened):
        await store.start()
    metrics = make_metrics()
    ledger = await open_ledger(rules, store, metrics)
    tasks = await open_tasks(app, shared, ledger)
    services = Services(
        rules=rules,
        driver=Driver(session=session, adapters=ADAPTERS, inputs=inputs, download=rules.server.download, metrics=metrics),
        finisher=Finisher(session=inputs, store=store, download=rules.server.download),
        store=store,
        tasks=tasks,
        metrics=metrics,
        resolver=resolver,
    )
    _share_limits(app, services, shared)
    services.ledger = ledger
    services.webhooks = hooks = open_webhooks(ledger.engine, ledger.ensure_schema, rules.server.webhooks.allow_hosts)
    app[SERVICES] = services
    if shared is None and HOST_STATE not in app and ledger.migrated:
        await _counters_from_ledger(services, ledger)
    if ledger.migrated or not isinstance(tasks, DatabaseTaskStore):  # a database that is down was logged once
        await _first_take_over(services)
    sweeper, leases = asyncio.create_task(_sweep_forever(services)), asyncio.create_task(keep_leases(services))
    sender = asyncio.create_task(deliver_forever(services, hooks))
    yield
    await _stop(sweeper)
    # Async tasks were paid for: they get the same grace as in-flight requests.
    await _drain(services.background | services.driver.background, services.rules.server.shutdown_grace)
    # Cancelling stragglers above may have started cancel calls upstream: let those go out too.
    await _drain(set(services.driver.background), CANCEL_CALLS_GRACE)
    await _stop(leases)  # after the drain: tasks still running in it kept their leases
    await _stop(sender)  # after the drain: tasks that ended in it queued their webhooks (the next process sends)
    # After the drain: async tasks that ended in it have queued their records.
    await ledger.close(services.rules.server.shutdown_grace)
    await tasks.close()
    if shared is not None:
        await shared.close()
    if isinstance(services.counters, HostCounters):
        services.counters.close()
    if isinstance(store, Opened):
        await store.close()
    await inputs.close()
    await hooks.session.close()
    await session.close()


def log_startup(rules: Rules) -> None:
    for warning in rules.warnings:
        log.warning("%s", warning)
    if not rules.server.api_keys:
        log.warning("server.api_keys is empty: the proxy accepts requests without a key")
