"""The workers' supervisor on its own (proxy.workers.Supervisor): what it does when the system refuses a fork,
and when a drain outlasts its longest time. Its workers here are real processes (`sleep`)."""

from __future__ import annotations

import errno
import logging
import subprocess
import time

import pytest

from proxy.lifecycle import longest_drain
from proxy.workers import KILL_AFTER, Supervisor


def test_a_refused_fork_is_logged_and_tried_again_later(caplog: pytest.LogCaptureFixture) -> None:
    refusals = [OSError(errno.EAGAIN, "Resource temporarily unavailable")] * 3
    started: list[int] = []

    def start(index: int) -> int:
        if refusals:
            raise refusals.pop()
        started.append(index)
        return 999_999  # never signalled here

    supervisor = Supervisor(2, start, grace=1.0)
    with caplog.at_level(logging.ERROR, "imagegate.workers"):
        supervisor.spawn(1)  # the first try: again at once
        assert supervisor.workers == {} and supervisor.due[1] <= time.monotonic()
        supervisor.replace_due()  # the second: again in 1 s
        assert supervisor.workers == {} and 0.5 < supervisor.due[1] - time.monotonic() <= 1.0
        supervisor.due[1] = time.monotonic()
        supervisor.replace_due()  # the third: in 2 s
        assert 1.5 < supervisor.due[1] - time.monotonic() <= 2.0
    assert [record.getMessage() for record in caplog.records] == [
        f"could not start worker 1: [Errno 11] Resource temporarily unavailable (tried again in {delay})"
        for delay in ("0s", "1s", "2s")
    ]
    supervisor.due[1] = time.monotonic()
    supervisor.replace_due()
    assert started == [1] and [worker.index for worker in supervisor.workers.values()] == [1] and not supervisor.due


def test_workers_are_killed_only_past_their_longest_drain(caplog: pytest.LogCaptureFixture) -> None:
    sleepers: list[subprocess.Popen[bytes]] = []

    def start(index: int) -> int:
        sleepers.append(subprocess.Popen(["sleep", "60"]))
        return sleepers[-1].pid

    supervisor = Supervisor(2, start, grace=1.0)
    try:
        supervisor.spawn(0)
        supervisor.spawn(1)
        deadline = longest_drain(1.0) + KILL_AFTER  # 3 x grace + 10 s of cancel calls, then the margin
        assert deadline == 28.0
        supervisor.stopping = time.monotonic() - deadline + 5  # async tasks and the ledger may still be draining
        supervisor.kill_overdue()
        assert [sleeper.poll() for sleeper in sleepers] == [None, None]
        supervisor.stopping = time.monotonic() - deadline - 1
        with caplog.at_level(logging.ERROR, "imagegate.workers"):
            supervisor.kill_overdue()
            supervisor.kill_overdue()  # called on every turn of the supervisor's loop: logged once
        assert [sleeper.wait(10) for sleeper in sleepers] == [-9, -9]
        assert [record.getMessage() for record in caplog.records] == ["killing 2 worker(s) still running past their drain"]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
