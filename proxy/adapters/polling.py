"""Adapter layer: polling a task API (flux, replicate, kling, dashscope): the schedule and the failure budget.

After the submit the adapter polls the task. Polls wait `poll_interval` seconds at first, doubling with every
poll up to `max_poll_interval` (both channel settings; each adapter brings its own defaults). A poll that fails
in a way that may pass (5xx, 429) is retried; MAX_FAILED_POLLS failures in a row end the task with a
non-retryable 502 (the task exists and may be billed: no failover may start a second one).
Pure: no I/O and no clock; the driver does the waiting a Wait step asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.adapters.base import Call, Fail, Wait
from proxy.core.errors import BadGateway
from proxy.core.upstream_errors import scrub

MAX_FAILED_POLLS = 3  # consecutive failed polls that end the task


@dataclass(frozen=True)
class Timing:
    first: float
    cap: float
    max_doublings: int = 32  # polls after which the pause stops doubling (it keeps its size, at most cap)

    def delay(self, polls: int) -> float:
        """Seconds before poll number `polls` (0-based): first, 2*first, 4*first, ... up to cap."""
        return min(self.first * 2.0 ** min(polls, self.max_doublings), self.cap)

    def retry_delay(self, polls: int, retry_after: float | None) -> float:
        """Seconds before poll `polls` after a failed one: the upstream's Retry-After (at most cap), else delay."""
        return self.delay(polls) if retry_after is None else min(retry_after, self.cap)


@dataclass(frozen=True)
class TaskState:
    """What a task adapter (kling, dashscope) remembers between polls."""

    task_id: str
    polls: int = 0  # polls sent so far: drives the backoff
    failed_polls: int = 0  # consecutive polls that got no usable answer


def next_wait(task: TaskState, timing: Timing, poll_call: Callable[[TaskState], Call]) -> Wait:
    """Wait, then poll: the pause doubles with every poll, from the first interval up to the cap."""
    following = replace(task, polls=task.polls + 1)
    return Wait(timing.delay(task.polls), poll_call(following), following)


def _seconds(settings: Mapping[str, Any], name: str, default: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"setting '{name}' must be a positive number of seconds, got {value!r}")
    return float(value)


def timing_from_settings(settings: Mapping[str, Any], default_first: float, default_cap: float) -> Timing:
    """The schedule from the channel settings; ValueError (naming the setting) when they make no sense.

    An unset cap is at least the first interval, so setting only `poll_interval` never conflicts.
    """
    first = _seconds(settings, "poll_interval", default_first)
    cap = _seconds(settings, "max_poll_interval", max(default_cap, first))
    if cap < first:
        raise ValueError("setting 'max_poll_interval' must not be below 'poll_interval'")
    return Timing(first, cap)


def _seconds_or_default(settings: Mapping[str, Any], name: str, default: float) -> float:
    value = settings.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def lenient_timing(settings: Mapping[str, Any], default_first: float, default_cap: float, *, max_doublings: int) -> Timing:
    """The schedule from the channel settings, never an error: a value that is no positive number is its default.

    A cap below the first interval is kept as it is (every pause is then the cap).
    """
    first = _seconds_or_default(settings, "poll_interval", default_first)
    cap = _seconds_or_default(settings, "max_poll_interval", default_cap)
    return Timing(first, cap, max_doublings)


def transient(status: int) -> bool:
    """Whether a failed poll's HTTP status may pass on its own (5xx, 429): worth another poll."""
    return status == 429 or status >= 500


def polls_failed(channel: str, what: str, failures: int, why: str, secrets: Iterable[str | None]) -> Fail:
    """The end of a task whose last `failures` polls failed in a row (`what`: "task <id>", ...)."""
    message = scrub(f"channel '{channel}' could not report {what}: {failures} polls failed in a row, the last with {why}",
                    secrets)
    return Fail(BadGateway(message, code="upstream_poll_failed"))
