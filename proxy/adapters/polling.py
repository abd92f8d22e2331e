"""Adapter layer: what the task adapters (flux, replicate, kling, dashscope) share: the polling state, the
schedule, the failed-poll rule, and the few request and error mappings they have in common.

After the submit the adapter polls the task. Polls wait `poll_interval` seconds at first, doubling with every
poll up to `max_poll_interval` (both channel settings, declared by `Polling.schema`, checked when the rules
load; each adapter brings its own defaults). Every task adapter keeps a `TaskState` (its own subclass adds
what its provider needs) and follows one rule for a poll that got no usable answer (`Polling.failed`): a
failure that may pass (5xx, 429, an unreadable answer) is polled again, after the upstream's Retry-After
when it gives one (at most `max_poll_interval`); MAX_FAILED_POLLS failures in a row end the task with a
non-retryable 502 `upstream_poll_failed` (the task exists and may be billed: no failover may start a
second one). Transport failures of a poll are retried by the driver and never reach the adapter.
Pure: no I/O and no clock; the driver does the waiting a Wait step asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

from proxy.adapters.base import Call, Fail, Job, Step, UpstreamResponse, Wait
from proxy.core.channel_settings import Setting, not_below, seconds
from proxy.core.errors import BadGateway, InvalidRequest, ProxyError
from proxy.core.rules import PROXY_FIELDS, ChannelSchema
from proxy.core.upstream_errors import error_from_response, parse_retry_after, scrub

MAX_FAILED_POLLS = 3  # consecutive failed polls that end the task
MAX_DOUBLINGS = 16  # polls after which the pause stops doubling (max_poll_interval caps it long before)


@dataclass(frozen=True)
class Timing:
    """A poll schedule: `first` seconds, doubling with every poll up to `cap`."""

    first: float
    cap: float

    def delay(self, polls: int) -> float:
        """Seconds before the poll that follows `polls` earlier ones: first, 2*first, 4*first, ... up to cap."""
        return min(self.first * 2.0 ** min(polls, MAX_DOUBLINGS), self.cap)

    def for_channel(self, settings: Mapping[str, Any]) -> Timing:
        """This default schedule as the channel's (already checked) settings change it.

        An unset `max_poll_interval` is this cap, or `poll_interval` when that is larger, so setting only
        `poll_interval` never conflicts with the default cap.
        """
        first = float(settings.get("poll_interval", self.first))
        cap = settings.get("max_poll_interval")
        return Timing(first, max(self.cap, first) if cap is None else float(cap))


@dataclass(frozen=True)
class TaskState:
    """What a task adapter remembers between polls; a provider's own state subclasses it."""

    noun: ClassVar[str] = "task"  # what the provider calls it, in error messages
    task_id: str
    polls: int = 0  # polls sent so far: drives the backoff
    failed_polls: int = 0  # consecutive polls that got no usable answer


State = TypeVar("State", bound=TaskState)


def transient(status: int) -> bool:
    """Whether a failed poll's HTTP status may pass on its own (5xx, 429): worth another poll."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class Polling(Generic[State]):
    """How one task adapter polls: its default schedule and the call that asks after a task."""

    timing: Timing
    call: Callable[[Job, State], Call]

    def schema(self, **settings: Setting) -> ChannelSchema:
        """The adapter's channel settings: its own, and the schedule's (max_poll_interval not below poll_interval)."""
        timing = {"poll_interval": seconds(self.timing.first), "max_poll_interval": seconds()}
        return ChannelSchema(settings={**settings, **timing}, relations=(not_below("max_poll_interval", "poll_interval"),),
                             requires_base_url=False)

    def next(self, job: Job, task: State) -> Wait:
        """Wait, then poll a task that is still running: the pause doubles with every poll."""
        following = replace(task, polls=task.polls + 1, failed_polls=0)
        return Wait(self._schedule(job).delay(task.polls), self.call(job, following), following)

    def failed(self, job: Job, task: State, response: UpstreamResponse, *, why: str | None = None,
               secrets: Iterable[str | None] = ()) -> Wait | Fail:
        """The one rule for a poll without a usable answer (a transient HTTP status, or `why` it is unusable).

        Polled again after the upstream's Retry-After (at most the schedule's cap) or the usual pause;
        MAX_FAILED_POLLS in a row end the task: 502 upstream_poll_failed, not retryable.
        """
        failures = task.failed_polls + 1
        if failures >= MAX_FAILED_POLLS:
            reason = why or f"HTTP {response.status}"
            return polls_failed(job.channel.name, f"{task.noun} {task.task_id}", failures, reason, (job.api_key, *secrets))
        timing, retry_after = self._schedule(job), parse_retry_after(response.headers)
        following = replace(task, polls=task.polls + 1, failed_polls=failures)
        pause = timing.delay(task.polls) if retry_after is None else min(retry_after, timing.cap)
        return Wait(pause, self.call(job, following), following)

    def advance(self, submitted: Callable[[Job, UpstreamResponse], Step],
                polled: Callable[[Job, State, UpstreamResponse], Step]) -> Callable[[Job, State | None, UpstreamResponse], Step]:
        """The adapter's `advance`: the submit's answer while there is no task yet, else a poll's."""

        def advance(job: Job, state: State | None, response: UpstreamResponse) -> Step:
            return submitted(job, response) if state is None else polled(job, state, response)

        return advance

    def _schedule(self, job: Job) -> Timing:
        return self.timing.for_channel(job.channel.settings)


def polls_failed(channel: str, what: str, failures: int, why: str, secrets: Iterable[str | None]) -> Fail:
    """The end of a task whose last `failures` polls failed in a row (`what`: "task <id>", ...)."""
    message = scrub(f"channel '{channel}' could not report {what}: {failures} polls failed in a row, the last with {why}",
                    secrets)
    return Fail(BadGateway(message, code="upstream_poll_failed"))


# --- requests and errors the task adapters have in common ------------------------------------------


def forwarded(fields: Mapping[str, Any], mapped: frozenset[str]) -> dict[str, Any]:
    """The plan's fields the adapter does not map itself (those the rule forwards go to the provider as they are)."""
    return {name: value for name, value in fields.items() if name not in mapped and name not in PROXY_FIELDS}


def seed_and_format(fields: Mapping[str, Any], formats: Mapping[str, str]) -> dict[str, Any]:
    """`seed` (-1 means random: not sent) and `output_format` in the provider's own name for it."""
    sent: dict[str, Any] = {}
    if "seed" in fields and fields["seed"] >= 0:
        sent["seed"] = fields["seed"]
    if "output_format" in fields:
        mapped = formats.get(fields["output_format"])
        if mapped is None:
            supported = ", ".join(dict.fromkeys(formats.values()))
            raise InvalidRequest(f"Invalid output_format '{fields['output_format']}' for this model. "
                                 f"Supported values: {supported}.", param="output_format", code="invalid_value")
        sent["output_format"] = mapped
    return sent


def status_error(job: Job, response: UpstreamResponse, detail: str, secrets: tuple[str | None, ...], *,
                 client_key: bool) -> ProxyError:
    """The error for a failed answer whose envelope named nothing more specific: a 2xx that carries a failure
    is a retryable 502; anything else is what its HTTP status maps to."""
    if 200 <= response.status < 300:
        message = scrub(f"channel '{job.channel.name}' failed: {detail}", secrets)
        return BadGateway(message, code="upstream_error", retryable=True)
    return error_from_response(response.status, response.headers, response.body, channel=job.channel.name,
                               secrets=secrets, client_key=client_key)
