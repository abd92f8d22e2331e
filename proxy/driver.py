"""Shell layer: runs adapter steps over HTTP, with deadlines, polling, fan-out, retries and failover.

This is the one loop every provider shares (ARCHITECTURE.md §2). For a plan it tries the model's usable
channels in the rules' order; an error marked retryable moves on to the next channel, and after the
last channel the whole list is tried again while the request's `retries` allow (capped by
`server.max_retries`). Errors that are not retryable end the request at once: a client mistake, a
moderation refusal, a billing failure, and a deadline (the upstream may still be generating and
billing, so a second attempt could pay twice).

Providers without a native `n` get one call per image (or per `max_n_per_call` images), run in
parallel under the channel's concurrency limit. Partial failure policy: when at least one call
succeeds the client gets the images that exist (they were paid for) and `metadata.failed` says how
many are missing and why; when every call fails the first error is the answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse, Wait
from proxy.core.errors import BadGateway, GatewayTimeout, InvalidRequest, ProxyError, ServiceUnavailable
from proxy.core.formats import Conversion
from proxy.core.plan import Plan
from proxy.core.response import ImagesResult, merge_extras
from proxy.core.rules import Channel, DownloadRules, Rules, iter_usable
from proxy.cpu import off_loop
from proxy.guard import Refused, as_upstream_error, check, host_of, trusted_for
from proxy.input_images import plan_for
from proxy.metrics import Metrics
from proxy.observe import note, upstream_call_took
from proxy.upstream import Took, send

log = logging.getLogger("imagegate.driver")

# A task provider that never finishes must not hold a request forever: after this many upstream
# calls for one job the driver gives up with a 502 (deadlines bound the time as well).
MAX_STEPS = 1000
# Longest pause between failover rounds, whatever an upstream's Retry-After says.
MAX_BACKOFF = 10.0
# A derived credential (Kling's JWT) is renewed this long before it expires.
CREDENTIAL_MARGIN = 60.0
CANCEL_TIMEOUT = 10.0
POLL_TRANSPORT_RETRIES = 2


@dataclass(frozen=True)
class Outcome:
    result: ImagesResult
    channel: str
    attempts: int
    failed: tuple[ProxyError, ...] = ()  # fan-out calls that failed while others succeeded
    conversion: Conversion | None = None  # the output format the proxy owes for this channel's images


@dataclass
class Driver:
    """Long-lived state the loop needs: the HTTP session, per-channel limits, cached credentials."""

    session: aiohttp.ClientSession
    adapters: Mapping[str, AdapterSpec]
    # For client-chosen image URLs only: its resolver refuses private addresses (proxy.input_images).
    inputs: aiohttp.ClientSession | None = None
    download: DownloadRules = field(default_factory=DownloadRules)
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.time
    limits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    # Keyed by channel and its configured key, so a reload that rotates the key mints a new credential.
    credentials: dict[tuple[str, str | None], tuple[str, float]] = field(default_factory=dict)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Per channel: what a call's duration is told to (timed_send), made once rather than once per call.
    took: dict[str, Took] = field(default_factory=dict)

    def limit(self, channel: Channel) -> asyncio.Semaphore:
        # Keyed by name and size: a reload that changes `concurrency` gets a semaphore of the new size.
        key = f"{channel.name}/{channel.concurrency}"
        if key not in self.limits:
            self.limits[key] = asyncio.Semaphore(channel.concurrency)
        return self.limits[key]

    def key_for(self, channel: Channel, client_key: str | None) -> str | None:
        """The key the adapter sends: the client's (passthrough), a cached derived credential, or the channel's."""
        if channel.passthrough_key:
            return client_key
        spec = self.adapters[channel.type]
        if spec.credential is None:
            return channel.api_key
        now = self.clock()
        cached = self.credentials.get((channel.name, channel.api_key))
        # Renew early enough that the credential outlives the longest job that may start with it.
        if cached is None or cached[1] - max(CREDENTIAL_MARGIN, channel.deadline) <= now:
            cached = spec.credential(channel, channel.api_key, now)
            self.credentials[(channel.name, channel.api_key)] = cached
        return cached[0]


async def _first_step(spec: AdapterSpec, job: Job) -> Step:
    if spec.cpu_bound:
        # The local generator encodes PNGs: keep that off the event loop.
        return await off_loop(spec.start, job)
    return spec.start(job)


# Told once an upstream task exists for a job (its channel and the adapter's state): the async task
# keeps it in its checkpoint so that another process can resume polling it (proxy.task_keeper).
Report = Callable[[str, object], Awaitable[None]]


def _advance(
    spec: AdapterSpec, job: Job, step: Send | Wait, response: UpstreamResponse, progress: list[object]
) -> tuple[Step, bool]:
    """The adapter's next step after an answer, the latest state kept in `progress`; and whether this answer
    created the upstream task (its first state)."""
    following = spec.advance(job, step.state, response)
    created = progress[0] is None and getattr(following, "state", None) is not None
    progress[0] = getattr(following, "state", progress[0])
    return following, created


def _own_host(url: str, base_url: str) -> bool:
    # The common case by prefix; the parse (and its lower-casing) only for a URL elsewhere.
    return url.startswith(base_url.rstrip("/") + "/") or host_of(url) == host_of(base_url)


async def _guarded_send(driver: Driver, call: Call, channel: Channel, seconds: float, took: Took) -> UpstreamResponse:
    """A URL the upstream handed out on another host (a task's polling URL) goes through the guard like any
    URL the proxy did not choose, and through the session whose resolver refuses private addresses."""
    assert driver.inputs is not None
    try:
        await check(call.url, trusted_for(channel, driver.download))
    except Refused as error:
        raise as_upstream_error(error) from None
    return await send(driver.inputs, call, channel=channel.name, timeout=seconds, took=took)


def timed_send(driver: Driver, call: Call, channel: Channel, timeout: float | None = None) -> Awaitable[UpstreamResponse]:
    """One upstream call, timed for the access line and the latency histogram. Not a coroutine of its own: it
    hands back the call's, so a call in flight (thousands may be) carries no frame of this function."""
    seconds = channel.timeout if timeout is None else timeout
    took = driver.took.get(channel.name)
    if took is None:
        took = driver.took[channel.name] = functools.partial(_took, driver.metrics, channel.name)
    if driver.inputs is not None and channel.base_url and not _own_host(call.url, channel.base_url):
        return _guarded_send(driver, call, channel, seconds, took)
    return send(driver.session, call, channel=channel.name, timeout=seconds, took=took)


def _took(metrics: Metrics | None, channel: str, seconds: float) -> None:
    upstream_call_took(seconds)
    if metrics is not None:
        metrics.upstream_seconds.labels(channel).observe(seconds)


async def _poll(driver: Driver, call: Call, channel: Channel) -> UpstreamResponse:
    """A poll of a task that already exists upstream. A transport failure here is retried in place, and
    if it persists it is final: failing over would start (and pay for) a second task."""
    attempt = 0
    while True:
        try:
            return await timed_send(driver, call, channel)
        except ProxyError as error:
            if not error.retryable or attempt >= POLL_TRANSPORT_RETRIES:
                error.retryable = False
                raise
        await asyncio.sleep(0.5 * 2**attempt)
        attempt += 1


async def _send_cancel(driver: Driver, call: Call, channel: Channel) -> None:
    try:
        await timed_send(driver, call, channel, CANCEL_TIMEOUT)
    except Exception as error:
        log.warning("could not cancel an abandoned task on channel %s: %s", channel.name, type(error).__name__)


def cancel_abandoned(driver: Driver, spec: AdapterSpec, job: Job, state: object) -> None:
    """Best-effort: ask the provider to stop a task nobody will collect (runs detached from the request)."""
    call = spec.cancel(job, state) if spec.cancel is not None and state is not None else None
    if call is None:
        return
    task = asyncio.get_running_loop().create_task(_send_cancel(driver, call, job.channel))
    driver.background.add(task)
    task.add_done_callback(driver.background.discard)


async def run_job(
    driver: Driver, spec: AdapterSpec, job: Job, *, report: Report | None = None, resume: object | None = None
) -> ImagesResult:
    """One adapter conversation, from its first step (or the poll that follows the state `resume`) to Done
    or Fail, within the channel's deadline."""
    progress: list[object] = [resume]  # the latest adapter state, to cancel the task if the job is abandoned
    try:
        async with asyncio.timeout(job.channel.deadline):
            # The steps run here rather than in a coroutine of their own: a call in flight carries a frame fewer.
            step = await _first_step(spec, job) if resume is None or spec.resume is None else spec.resume(job, resume)
            for _ in range(MAX_STEPS):
                if isinstance(step, Done):
                    return step.result
                if isinstance(step, Fail):
                    raise step.error
                if isinstance(step, Wait):
                    await asyncio.sleep(step.seconds)
                    response = await _poll(driver, step.call, job.channel)
                else:
                    assert isinstance(step, Send)
                    response = await timed_send(driver, step.call, job.channel)
                step, created = _advance(spec, job, step, response, progress)
                if created and report is not None and spec.resume is not None:
                    await report(job.channel.name, progress[0])
            raise BadGateway(f"channel '{job.channel.name}' did not finish after {MAX_STEPS} calls", code="upstream_stalled")
    except TimeoutError:
        cancel_abandoned(driver, spec, job, progress[0])
        raise GatewayTimeout(
            f"channel '{job.channel.name}' did not finish within {job.channel.deadline:g} seconds",
            code="upstream_deadline",
            # A task that exists upstream (its state is known) may still finish and bill: never start another.
            retryable=progress[0] is None,
        ) from None
    except asyncio.CancelledError:
        # The client went away in sync mode: stop the paid work we started.
        cancel_abandoned(driver, spec, job, progress[0])
        raise


def split_n(n: int, per_call: int | None) -> list[int]:
    """`n` images as the counts of parallel calls: split_n(5, 2) == [2, 2, 1]."""
    if per_call is None or n <= per_call:
        return [n]
    return [min(per_call, n - start) for start in range(0, n, per_call)]


def merge_results(results: Sequence[ImagesResult], starts: Sequence[int] | None = None) -> ImagesResult:
    """One response from several calls' answers: images in call order, usage summed where numeric.
    `starts`: where each call's images begin among the images asked for (per-image extras are renumbered)."""
    usage: dict[str, Any] | None = None
    for result in results:
        if result.usage is not None:
            usage = add_usage(usage or {}, result.usage)
    return ImagesResult(
        images=tuple(image for result in results for image in result.images),
        created=results[0].created,
        usage=usage,
        extra=merge_extras([result.extra for result in results], starts),
    )


def add_usage(total: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in more.items():
        if isinstance(value, Mapping):
            total[key] = add_usage(dict(total.get(key) or {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:
            total.setdefault(key, value)
    return total


async def _limited(driver: Driver, spec: AdapterSpec, job: Job) -> ImagesResult:
    async with driver.limit(job.channel):
        return await run_job(driver, spec, job)


async def run_on_channel(
    driver: Driver, job: Job, report: Report | None = None
) -> tuple[ImagesResult, tuple[ProxyError, ...]]:
    """Every image of the plan from one channel, fanning out where the provider has no native `n`.
    `report` hears of the upstream task of a one-call job (a fanned-out job's parts cannot be resumed)."""
    spec = driver.adapters[job.channel.type]
    counts = split_n(job.plan.n, spec.per_call(job))
    if len(counts) == 1:
        # One call per request: no limit here (the channel's `concurrency` bounds fan-out, not clients).
        return await run_job(driver, spec, job, report=report), ()
    jobs = [replace(job, plan=replace(job.plan, n=count)) for count in counts]
    answers = await asyncio.gather(*(_limited(driver, spec, part) for part in jobs), return_exceptions=True)
    starts = [sum(counts[:number]) for number in range(len(counts))]
    results = [answer for answer in answers if isinstance(answer, ImagesResult)]
    result_starts = [start for start, answer in zip(starts, answers, strict=True) if isinstance(answer, ImagesResult)]
    errors = tuple(answer for answer in answers if isinstance(answer, ProxyError))
    unexpected = [answer for answer in answers if isinstance(answer, BaseException) and not isinstance(answer, ProxyError)]
    if unexpected:
        raise unexpected[0]
    if not results:
        raise deciding(errors)
    return merge_results(results, result_starts), errors


def deciding(errors: tuple[ProxyError, ...]) -> ProxyError:
    """The error a request whose every part failed ends with. A part that must not be tried elsewhere (a
    refused prompt, a task that may bill) decides it, a client's fault first: another channel would be sent
    the refused prompt, and billed for every part, again."""
    final = [error for error in errors if not error.retryable]
    return min(final, key=lambda error: not 400 <= error.status < 500) if final else errors[0]


def unusable_reason(rules: Rules, plan: Plan) -> ServiceUnavailable:
    missing = sorted({var for name in plan.rule.channels for var in rules.channels[name].missing_key})
    return ServiceUnavailable(
        f"No channel can serve model '{plan.model}': set {', '.join(missing)} to enable its channels.",
        code="channel_unavailable",
    )


def forwardable(rules: Rules, channel: Channel, client_key: str | None) -> bool:
    """An admin key is never sent upstream: channels that pass the client's key through are not for it."""
    return not (channel.passthrough_key and rules.server.is_admin(client_key))


def admin_key_kept(plan: Plan) -> InvalidRequest:
    return InvalidRequest(
        f"Model '{plan.model}' is served with the client's own provider key (passthrough), and an admin key is never "
        "sent upstream: call it with a client key.", code="admin_key_not_forwarded",
    )


def attempt_order(channels: Sequence[Channel], pick: float) -> list[Channel]:
    """Failover order, with load spreading: `pick` in [0, 1) chooses the first among weighted channels."""
    weighted = [channel for channel in channels if channel.weight > 0]
    if not weighted:
        return list(channels)
    point = pick * sum(channel.weight for channel in weighted)
    for first in weighted:
        point -= first.weight
        if point < 0:
            break
    return [first, *(channel for channel in channels if channel is not first)]


def should_retry(error: ProxyError, channel: Channel) -> bool:
    if isinstance(error, GatewayTimeout):
        return channel.retry_timeouts and error.retryable
    return error.retryable


def _backoff(error: ProxyError, round_number: int) -> float:
    wanted = error.retry_after if error.retry_after is not None else 0.5 * 2**round_number
    return min(wanted, MAX_BACKOFF)


# One attempt on one channel: the plan's images (and the fan-out calls that failed while others succeeded).
# A native stream is an attempt too: it relays the images to the client as they come and returns none.
Attempt = Callable[[Job], Awaitable[tuple[ImagesResult, tuple[ProxyError, ...]]]]


async def generate(
    driver: Driver,
    rules: Rules,
    plan: Plan,
    client_key: str | None,
    attempt: Attempt | None = None,
    serves: Callable[[Channel], bool] | None = None,
) -> Outcome:
    """The plan's images from the first channel that delivers them (failover in the rules' order, weights,
    retry rounds with backoff). `attempt` replaces what one channel is asked to do, `serves` narrows the
    channels to those that can do it (native streams); every delivery mode shares this one loop."""
    candidates = [channel for channel in iter_usable(rules, plan.rule) if serves is None or serves(channel)]
    channels = attempt_order([channel for channel in candidates if forwardable(rules, channel, client_key)], random.random())
    if not channels:
        raise unusable_reason(rules, plan) if len(channels) == len(candidates) else admin_key_kept(plan)
    rounds = 1 + min(plan.retries, rules.server.max_retries)
    attempts = 0
    last: ProxyError | None = None
    for round_number in range(rounds):
        if last is not None:
            await asyncio.sleep(_backoff(last, round_number - 1))
        for channel in channels:
            attempts += 1
            _count_attempt(driver, plan, channel, attempts)
            try:
                spec = driver.adapters[channel.type]
                channel_plan = await plan_for(plan, channel, spec, driver.inputs or driver.session, driver.download)
                answer = await _attempt_on(driver, spec, Job(channel_plan, channel, driver.key_for(channel, client_key)), attempt)
                result, failed = (answer, ()) if isinstance(answer, ImagesResult) else answer
            except ProxyError as error:
                if not should_retry(error, channel):
                    raise
                log.warning("channel %s failed for model %s (attempt %d): %s", channel.name, plan.model, attempts, error.code)
                last = error
                continue
            return Outcome(result, channel.name, attempts, failed, channel_plan.conversion)
    assert last is not None
    raise last


def _attempt_on(
    driver: Driver, spec: AdapterSpec, job: Job, attempt: Attempt | None
) -> Awaitable[ImagesResult | tuple[ImagesResult, tuple[ProxyError, ...]]]:
    """What one channel is asked to do: `attempt` when given, else its images (run_on_channel). A job of one
    call is run_job's coroutine, awaited by `generate` itself: a call in flight carries no frame between them."""
    if attempt is not None:
        return attempt(job)
    if len(split_n(job.plan.n, spec.per_call(job))) > 1:
        return run_on_channel(driver, job)
    return run_job(driver, spec, job)


def _count_attempt(driver: Driver, plan: Plan, channel: Channel, attempts: int) -> None:
    upstream_model = plan.rule.upstream_for(channel.name, plan.model)
    note(rule=plan.rule.pattern, channel=channel.name, attempts=attempts, upstream_model=upstream_model)
    if driver.metrics is not None:
        driver.metrics.attempts.labels(plan.rule.pattern).inc()
        if attempts > 1:
            driver.metrics.failovers.labels(plan.rule.pattern).inc()
