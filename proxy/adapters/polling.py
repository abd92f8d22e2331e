"""Adapter layer: polling a task API (flux, replicate, kling, dashscope): the state, the schedule and the failure rule.

After the submit the adapter polls the task. Polls wait `poll_interval` seconds at first, doubling with every
poll up to `max_poll_interval` (both channel settings, declared by `Timing.settings`, checked when the rules
load; each adapter brings its own defaults). Every task adapter keeps a `TaskState` (its own subclass adds
what its provider needs) and follows one rule for a poll that got no usable answer (`failed_poll`): a
failure that may pass (5xx, 429, an unreadable answer) is polled again, after the upstream's Retry-After
when it gives one (at most `max_poll_interval`); MAX_FAILED_POLLS failures in a row end the task with a
non-retryable 502 `upstream_poll_failed` (the task exists and may be billed: no failover may start a
second one). Transport failures of a poll are retried by the driver and never reach the adapter.
Pure: no I/O and no clock; the driver does the waiting a Wait step asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

from proxy.adapters.base import Call, Fail, Job, UpstreamResponse, Wait
from proxy.core.channel_settings import Relation, Setting, not_below, seconds
from proxy.core.errors import BadGateway
from proxy.core.rules import ChannelSchema
from proxy.core.upstream_errors import parse_retry_after, scrub

MAX_FAILED_POLLS = 3  # consecutive failed polls that end the task
MAX_DOUBLINGS = 16  # polls after which the pause stops doubling (max_poll_interval caps it long before)
TIMING_RELATIONS: tuple[Relation, ...] = (not_below("max_poll_interval", "poll_interval"),)


@dataclass(frozen=True)
class Timing:
    """A poll schedule: `first` seconds, doubling with every poll up to `cap`."""

    first: float
    cap: float

    def delay(self, polls: int) -> float:
        """Seconds before the poll that follows `polls` earlier ones: first, 2*first, 4*first, ... up to cap."""
        return min(self.first * 2.0 ** min(polls, MAX_DOUBLINGS), self.cap)

    def settings(self) -> dict[str, Setting]:
        """The channel settings that change this schedule (declare them with TIMING_RELATIONS).

        `max_poll_interval` has no declared default: unset, it is this cap or `poll_interval` when that is
        larger, so setting only `poll_interval` never conflicts with the default cap.
        """
        return {"poll_interval": seconds(self.first), "max_poll_interval": seconds()}

    def for_channel(self, settings: Mapping[str, Any]) -> Timing:
        """This default schedule as the channel's (already checked) settings change it."""
        first = float(settings.get("poll_interval", self.first))
        cap = settings.get("max_poll_interval")
        return Timing(first, max(self.cap, first) if cap is None else float(cap))


def setting(job: Job, schema: ChannelSchema, name: str) -> Any:
    """The channel's value of a declared setting: checked when the rules loaded, the declared default
    where the channel has none (a channel made in code rather than loaded from rules)."""
    return job.channel.settings.get(name, schema.settings[name].default)


def listed(setting: Setting) -> Setting:
    """A list setting that may also be written as one bare string (`hd_models: kling-v2` is one name,
    not its letters), as the adapters have always read it."""
    return Setting(lambda value: setting.parse([value] if isinstance(value, str) else value), setting.default)


@dataclass(frozen=True)
class TaskState:
    """What a task adapter remembers between polls; a provider's own state subclasses it."""

    noun: ClassVar[str] = "task"  # what the provider calls it, in error messages
    task_id: str
    polls: int = 0  # polls sent so far: drives the backoff
    failed_polls: int = 0  # consecutive polls that got no usable answer


State = TypeVar("State", bound=TaskState)


def next_poll(task: State, timing: Timing, poll_call: Callable[[State], Call]) -> Wait:
    """Wait, then poll a task that is still running: the pause doubles with every poll."""
    following = replace(task, polls=task.polls + 1, failed_polls=0)
    return Wait(timing.delay(task.polls), poll_call(following), following)


def transient(status: int) -> bool:
    """Whether a failed poll's HTTP status may pass on its own (5xx, 429): worth another poll."""
    return status == 429 or status >= 500


def failed_poll(
    job: Job,
    task: State,
    response: UpstreamResponse,
    poll_call: Callable[[State], Call],
    timing: Timing,
    *,
    why: str | None = None,
    secrets: Iterable[str | None] = (),
) -> Wait | Fail:
    """The one rule for a poll without a usable answer (a transient HTTP status, or `why` it is unusable).

    Polled again after the upstream's Retry-After (at most the schedule's cap) or the usual pause;
    MAX_FAILED_POLLS in a row end the task: 502 upstream_poll_failed, not retryable.
    """
    failures = task.failed_polls + 1
    reason = why or f"HTTP {response.status}"
    if failures >= MAX_FAILED_POLLS:
        return polls_failed(job.channel.name, f"{task.noun} {task.task_id}", failures, reason, (job.api_key, *secrets))
    retry_after = parse_retry_after(response.headers)
    following = replace(task, polls=task.polls + 1, failed_polls=failures)
    pause = timing.delay(task.polls) if retry_after is None else min(retry_after, timing.cap)
    return Wait(pause, poll_call(following), following)


def polls_failed(channel: str, what: str, failures: int, why: str, secrets: Iterable[str | None]) -> Fail:
    """The end of a task whose last `failures` polls failed in a row (`what`: "task <id>", ...)."""
    message = scrub(f"channel '{channel}' could not report {what}: {failures} polls failed in a row, the last with {why}",
                    secrets)
    return Fail(BadGateway(message, code="upstream_poll_failed"))
