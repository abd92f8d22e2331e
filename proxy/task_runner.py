"""Shell layer: an async task's life (seed 001's `async: true`), from the POST that creates it, or from a
checkpoint when a process takes it over (proxy.task_keeper), to the record its client polls.

    create: a record (pending, leased, checkpointed with the request's trace) -> run in the background
    run: production.produce_body (the one production path) -> finished or failed record -> ledger
         once a task provider accepts the job, the checkpoint gains the channel and the polling state
    stop: a shutdown that outlasts the grace hands a resumable task to the next process (lease 0)
          and fails any other as interrupted

Nothing the client does after the POST cancels a task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from proxy.adapters.base import Job
from proxy.core.errors import ProxyError, ServiceUnavailable
from proxy.core.plan import Plan
from proxy.core.task_checkpoint import Checkpoint, Reserved, Trace
from proxy.driver import Attempt, run_job, run_on_channel
from proxy.finish import Delivery
from proxy.key_limits import Admission
from proxy.ledger import task_ended
from proxy.observe import CURRENT, RequestRecord, note
from proxy.production import Caller, produce_body
from proxy.services import Services
from proxy.tasks import RUNNING, TaskRecord, TaskStore, failed, finished, new_record
from proxy.webhooks import enqueue

log = logging.getLogger("imagegate")

STOPPED = ServiceUnavailable("The proxy shut down before the task finished.", code="task_interrupted")


@dataclass
class TaskRun:
    """One async task being run by this process."""

    record: TaskRecord  # as last stored (its checkpoint grows once the upstream task exists)
    plan: Plan
    caller: Caller
    delivery: Delivery
    admission: Admission | None
    request: dict[str, Any] | None  # the client's JSON fields (None: an upload): kept to resume the task
    resume: tuple[str, object] | None = None  # taken over: the channel and the adapter state to poll from
    # The task's end is another process's: handed over at shutdown, or ended first by a process that took
    # it over. That process settles the reservation and writes the ledger record.
    ended_elsewhere: bool = False

    @property
    def checkpoint(self) -> Checkpoint | None:
        saved = self.record.checkpoint
        return Checkpoint.loads(saved) if saved is not None else None


def lease_until(services: Services) -> float:
    return time.time() + services.rules.server.tasks.lease


def trace_of(record: RequestRecord | None) -> Trace:
    """The request's notes as plain values (what JSON holds): the ledger record of whoever ends the task."""
    if record is None:
        return Trace("", time.time(), {}, {})
    return Trace(record.request_id, record.arrived, _plain(record.fields), _plain(record.unlogged))


def _plain(notes: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in notes.items() if value is None or isinstance(value, str | int | float | bool)}


def created(
    services: Services, owner: str, delivery: Delivery, admission: Admission | None, webhook: dict[str, str] | None = None
) -> TaskRecord:
    """A new task's record: pending, leased by this process, with what another would need to end it (its
    webhook included: whichever process ends the task reports it)."""
    now = time.time()
    record = new_record(owner, now, services.rules.server.tasks.retention)
    note(task_id=record.id)  # in the access line, and in the ledger record the task writes when it ends
    checkpoint = Checkpoint(trace_of(CURRENT.get()), delivery.response_format, delivery.public_base, delivery.keep_for,
                            admission.reserved() if admission is not None else Reserved(), webhook=webhook)
    return replace(record, lease_until=lease_until(services), checkpoint=checkpoint.dumps())


async def run_task(services: Services, run: TaskRun) -> None:
    """An async task's whole life; the reservation it was admitted with is settled when it ends."""
    if services.metrics is not None:
        services.metrics.async_tasks.inc()
    services.running_tasks.add(run.record.id)
    delivered, spent = 0, None
    try:
        delivered, spent = await _run_task(services, run)
    finally:
        services.running_tasks.discard(run.record.id)
        if services.metrics is not None:
            services.metrics.async_tasks.dec()
        if run.admission is not None:
            await (run.admission.release_slot() if run.ended_elsewhere else run.admission.settle(delivered, spent))


async def _run_task(services: Services, run: TaskRun) -> tuple[int, Decimal | None]:
    run.record = replace(run.record, status=RUNNING, lease_until=lease_until(services))
    if not await keep(services.tasks, run.record):
        run.ended_elsewhere = True  # taken over from a process that ended it meanwhile
        return 0, None
    try:
        body, spent = await produce_body(services, run.plan, run.caller, run.delivery, *_attempt(services, run))
    except ProxyError as error:
        await _end(services, run, failed(run.record, error.envelope(), error.status))
        return 0, None
    except asyncio.CancelledError:
        # Shutdown ran out of grace: the next process resumes the task, or the record says it was cut short.
        await asyncio.shield(_stopped(services, run))
        raise
    except Exception:
        log.exception("async task %s failed unexpectedly", run.record.id)
        internal = ProxyError("The proxy failed to run the task.", code="internal_error")
        await _end(services, run, failed(run.record, internal.envelope(), internal.status))
        return 0, None
    await _end(services, run, finished(run.record, body))
    return len(body["data"]), spent


async def _end(services: Services, run: TaskRun, final: TaskRecord, attempts: int = 8) -> None:
    checkpoint = run.checkpoint
    if not await end_task(services, final, attempts, checkpoint.webhook if checkpoint is not None else None):
        run.ended_elsewhere = True
        log.warning("async task %s was ended by another process first: this run's end is dropped", run.record.id)


def _attempt(services: Services, run: TaskRun) -> tuple[Attempt, Any]:
    """What each channel is asked to do: continue the upstream task a checkpoint names, or run the job
    afresh and checkpoint its upstream task once one exists."""
    driver = services.driver
    if run.resume is None:
        return functools.partial(_fresh, services, run), None
    channel_name, state = run.resume

    async def resumed(job: Job) -> tuple[Any, tuple[ProxyError, ...]]:
        return await run_job(driver, driver.adapters[job.channel.type], job, resume=state), ()

    return resumed, lambda channel: channel.name == channel_name


async def _fresh(services: Services, run: TaskRun, job: Job) -> tuple[Any, tuple[ProxyError, ...]]:
    """One channel's attempt, checkpointed once its upstream task exists; a failed attempt's upstream task is
    forgotten again (the driver may fail over: a later process must not resume a task that ended)."""
    try:
        return await run_on_channel(services.driver, job, report=functools.partial(_checkpoint, services, run))
    except ProxyError:
        checkpoint = run.checkpoint
        if checkpoint is not None and checkpoint.channel == job.channel.name:
            await save_run(services, run, replace(run.record, checkpoint=checkpoint.without_upstream().dumps()))
        raise


async def _checkpoint(services: Services, run: TaskRun, channel_name: str, state: object) -> None:
    """The upstream task exists: keep what resuming it needs. Best effort: a database blip costs the
    resumability of this one task, never the task."""
    channel = services.rules.channels.get(channel_name)
    checkpoint = run.checkpoint
    # A key the client sent (pass-through) is never stored, so such a task cannot be polled by another process.
    if run.request is None or checkpoint is None or channel is None or channel.passthrough_key:
        return
    progressed = checkpoint.at_upstream(channel_name, state, run.request, trace_of(CURRENT.get()))
    await save_run(services, run, replace(run.record, checkpoint=progressed.dumps(), lease_until=lease_until(services)))


async def save_run(services: Services, run: TaskRun, record: TaskRecord) -> None:
    """Store the run's record (best effort: a database blip is logged, the task goes on)."""
    run.record = record
    try:
        await services.tasks.put(record)
    except Exception as exc:
        log.warning("async task %s: could not keep its checkpoint (%s)", record.id, type(exc).__name__)


async def _stopped(services: Services, run: TaskRun) -> None:
    checkpoint = run.checkpoint
    if checkpoint is not None and checkpoint.resumable:
        run.ended_elsewhere = True
        await keep(services.tasks, replace(run.record, lease_until=0.0), attempts=1)
        log.info("async task %s handed over: the next process resumes it", run.record.id)
        return
    await _end(services, run, failed(run.record, STOPPED.envelope(), STOPPED.status), attempts=1)


async def end_task(services: Services, final: TaskRecord, attempts: int = 8, webhook: dict[str, str] | None = None) -> bool:
    """A task's last state: the record its client polls, then its ledger record and its webhook's delivery.
    False when another process had ended the task already (its end stands, and was reported; this one is dropped).
    Shielded: a task whose record is final is never left without its webhook (no process would queue it then)."""
    return await asyncio.shield(_end_task(services, final, attempts, webhook))


async def _end_task(services: Services, final: TaskRecord, attempts: int, webhook: dict[str, str] | None) -> bool:
    if not await keep(services.tasks, final, attempts):
        return False
    task_ended(services, final)
    await enqueue(services, final, webhook)
    return True


async def keep(tasks: TaskStore, record: TaskRecord, attempts: int = 8) -> bool:
    """Store a task record, retrying through a short backend outage: a finished result must not be lost.
    False only when the stored record had finished already; a store that stays down is logged (True)."""
    for attempt in range(attempts):
        try:
            return await tasks.put(record)
        except Exception:
            if attempt == attempts - 1:
                log.error("could not store async task %s (%s) after %d attempts", record.id, record.status, attempts)
                return True
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
    return True


def start_background(services: Services, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    services.background.add(task)
    task.add_done_callback(services.background.discard)
