"""Shell layer: the leases of unfinished async tasks, and taking over the tasks whose process stopped.

Every third of `server.tasks.lease` each process renews the leases of the tasks it runs and looks for
orphans: unfinished records whose lease ran out (their process crashed) or was handed over (lease 0, a
shutdown that outlasted its grace). It claims each (the store lets one process win), then

    resumes it   when its checkpoint names an upstream task (Kling, DashScope, FLUX, Replicate): the next
                 poll of that same task, so nothing is made or paid for twice;
    fails it     otherwise, as `task_interrupted` (a synchronous provider's call, an upload, a client's own
                 key: whether the upstream made and billed the images cannot be known).

Either way the ledger gets the request's record and the limit counters it reserved in are settled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from proxy.core.errors import ProxyError, ServiceUnavailable
from proxy.core.plan import build_plan
from proxy.core.request import parse_image_request
from proxy.core.task_checkpoint import Checkpoint, Trace, decode_state
from proxy.finish import Delivery
from proxy.key_limits import Admission
from proxy.observe import CURRENT, RequestRecord
from proxy.production import Caller
from proxy.services import Services
from proxy.task_runner import TaskRun, end_task, lease_until, run_task, save_run, start_background
from proxy.tasks import TaskRecord, failed

log = logging.getLogger("imagegate.tasks")
INTERRUPTED = ServiceUnavailable(
    "The proxy restarted while this task was running. Whether the upstream made (and billed) its images "
    "cannot be known; any it made were not delivered. Send the request again if you still need it.",
    code="task_interrupted",
)
BATCH = 100  # orphans claimed per pass: a backlog is taken over a hundred at a time


async def keep_leases(services: Services) -> None:
    """The process's lease loop: renew its tasks' leases, then take over orphans (runs until cancelled)."""
    while True:
        await asyncio.sleep(services.rules.server.tasks.lease / 3)
        try:
            await services.tasks.renew(set(services.running_tasks), lease_until(services))
            if not services.draining:  # a process shutting down keeps its own tasks' leases, takes no others
                await take_over(services)
        except Exception as exc:  # the store is down: try again on the next beat
            log.warning("could not renew task leases or look for orphaned tasks: %s", type(exc).__name__)


async def take_over(services: Services) -> int:
    """One pass: claim the orphaned tasks and resume or fail each; returns how many were taken."""
    now = time.time()
    taken = 0
    for orphan in await services.tasks.orphans(now, BATCH):
        if orphan.id in services.running_tasks:
            continue  # this process runs it: its renewal was late, not its process gone
        record = await services.tasks.claim(orphan.id, lease_until(services), now)
        if record is None:
            continue  # another process was first
        taken += 1
        try:
            await _adopt(services, record)
        except Exception:  # one unreadable task must not stop the others being taken over
            log.exception("async task %s could not be taken over: failed as interrupted", record.id)
            await _interrupt(services, record, None)
    return taken


async def _adopt(services: Services, record: TaskRecord) -> None:
    """Resume a claimed task from its checkpoint, or fail it as interrupted."""
    checkpoint = _checkpoint_of(record)
    run = rebuilt(services, record, checkpoint) if checkpoint is not None and checkpoint.resumable else None
    if run is not None and checkpoint is not None:
        log.info("resuming async task %s: polling its upstream task on channel %s", record.id, checkpoint.channel)
        if run.admission is not None and not counted(services, checkpoint):
            await _count_again(services, run, checkpoint)
        start_background(services, _resume(services, run, checkpoint.trace))
        return
    log.warning("async task %s was left unfinished by a stopped process: failed as interrupted", record.id)
    await _interrupt(services, record, checkpoint)  # at once: a client polling next sees it failed


def counted(services: Services, checkpoint: Checkpoint) -> bool:
    """Whether the task's reservation is in this process's counters: made in counters of the same lifetime
    (Redis; the workers' file of this run, when a sibling worker died) and not in counters that began anew
    (another process's memory, another run's file, both started from the ledger, which does not hold it)."""
    return checkpoint.reserved.counted_in == services.counters.lifetime


async def _count_again(services: Services, run: TaskRun, checkpoint: Checkpoint) -> None:
    """Count the reservation in these counters, and keep in the checkpoint that it is counted here."""
    assert run.admission is not None
    await run.admission.reapply()
    here = replace(checkpoint, reserved=replace(checkpoint.reserved, counted_in=services.counters.lifetime))
    await save_run(services, run, replace(run.record, checkpoint=here.dumps()))


def _checkpoint_of(record: TaskRecord) -> Checkpoint | None:
    try:
        return Checkpoint.loads(record.checkpoint) if record.checkpoint is not None else None
    except (KeyError, TypeError, ValueError):
        log.warning("async task %s has a checkpoint this version cannot read", record.id)
        return None


def rebuilt(services: Services, record: TaskRecord, checkpoint: Checkpoint) -> TaskRun | None:
    """The run that continues a checkpointed task under the current rules; None when they no longer allow
    it (the model, the channel or its adapter state are gone or changed)."""
    assert checkpoint.request is not None and checkpoint.state is not None
    rules = services.rules
    try:
        image_request = parse_image_request(checkpoint.request)
        plan = build_plan(image_request, rules.match_model(image_request.model), checkpoint.operation)
    except ProxyError:
        return None
    channel = rules.channels.get(checkpoint.channel or "")
    spec = services.driver.adapters.get(channel.type) if channel is not None else None
    state = decode_state(spec.task_state, checkpoint.state) if spec is not None and spec.task_state else None
    if channel is None or state is None:
        return None
    delivery = Delivery(checkpoint.response_format, checkpoint.public_base, checkpoint.keep_for)
    name = checkpoint.trace.unlogged.get("key_name")
    # No new round on other channels: the task exists on this one, and another would be paid for again.
    caller = Caller(None, name if isinstance(name, str) else None)
    admission = Admission.of(services.counters, checkpoint.reserved)
    return TaskRun(record, replace(plan, retries=0), caller, delivery, admission, checkpoint.request,
                   resume=(channel.name, state))


def _request_record(trace: Trace) -> RequestRecord:
    """The POST's notes again, for the ledger record of a task another process ends."""
    age = max(0.0, time.time() - trace.arrived)
    return RequestRecord(trace.request_id, time.perf_counter() - age, dict(trace.fields), arrived=trace.arrived,
                         unlogged=dict(trace.unlogged))


async def _resume(services: Services, run: TaskRun, trace: Trace) -> None:
    CURRENT.set(_request_record(trace))  # this background task's own context
    await run_task(services, run)


async def _interrupt(services: Services, record: TaskRecord, checkpoint: Checkpoint | None) -> None:
    trace = CURRENT.set(_request_record(checkpoint.trace) if checkpoint is not None else None)
    try:
        webhook = checkpoint.webhook if checkpoint is not None else None
        ended = await end_task(services, failed(record, INTERRUPTED.envelope(), INTERRUPTED.status), 2, webhook)
    finally:
        CURRENT.reset(trace)
    # Counters that began anew do not hold the reservation: nothing to give back there.
    if ended and checkpoint is not None and counted(services, checkpoint):
        await Admission.of(services.counters, checkpoint.reserved).settle(0)
