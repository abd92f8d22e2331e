"""The workers' supervisor on its own (proxy.workers.Supervisor): what it does when the system refuses a fork,
when a drain outlasts its longest time, and with the run directories of runs that were killed. Its workers
here are real processes (`sleep`)."""

from __future__ import annotations

import errno
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from proxy.adapters import SCHEMAS
from proxy.core.rules import parse_rules
from proxy.lifecycle import longest_drain
from proxy.workers import (
    KILL_AFTER,
    RUN_PREFIX,
    SUPERVISOR_FILE,
    WORKER_MARK,
    Supervisor,
    open_listener,
    reload,
    remove_abandoned,
    run_workers,
)
from tests.factories import rules_yaml


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
        assert not supervisor.killed and not caplog.records
        time.sleep(0.2)  # a SIGKILL sent would have ended them by now
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


def a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_only_run_directories_whose_processes_are_all_gone_are_removed(tmp_path: Path) -> None:
    dead, living, parent = a_dead_pid(), subprocess.Popen(["sleep", "60"]), tmp_path / "parent"
    try:
        runs = {name: parent / f"{RUN_PREFIX}{name}" for name in ("killed", "draining", "running", "being-made")}
        for directory in runs.values():
            directory.mkdir(parents=True)
            (directory / "counters.map").write_bytes(b"\0" * 64)
        (runs["killed"] / SUPERVISOR_FILE).write_text(str(dead))
        (runs["killed"] / f"{WORKER_MARK}{a_dead_pid()}").write_bytes(b"")
        (runs["draining"] / SUPERVISOR_FILE).write_text(str(dead))  # its worker still drains
        (runs["draining"] / f"{WORKER_MARK}{living.pid}").write_bytes(b"")
        (runs["running"] / SUPERVISOR_FILE).write_text(str(living.pid))
        (parent / "unrelated").mkdir()
        remove_abandoned(parent)
        assert sorted(path.name for path in parent.iterdir()) == sorted(
            [f"{RUN_PREFIX}draining", f"{RUN_PREFIX}running", f"{RUN_PREFIX}being-made", "unrelated"]
        )
    finally:
        living.kill()
        living.wait()


def test_workers_without_a_temporary_directory_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "absent"))
    listener = open_listener("127.0.0.1", 0)
    rules = parse_rules(rules_yaml({"local-image": {"channels": ["local"]}}, {"local": {"type": "local"}}), {}, SCHEMAS)
    with caplog.at_level(logging.ERROR, "imagegate.workers"):
        assert run_workers(rules, "rules.yaml", listener, 2, lambda rules: None, lambda: None) == 1
    [message] = [record.getMessage() for record in caplog.records]
    assert message.startswith(f"cannot make the workers' run directory in {tmp_path / 'absent'}: [Errno 2] No such file")
    assert listener.socket.fileno() == -1  # closed


def test_a_reload_that_fails_in_any_way_keeps_the_rules_and_the_supervisor(caplog: pytest.LogCaptureFixture) -> None:
    def reread() -> None:
        raise MemoryError("the rules file is larger than the machine")

    with caplog.at_level(logging.ERROR, "imagegate.workers"):
        assert reload(reread) is None
    assert [record.getMessage() for record in caplog.records] == ["reload rejected, keeping the current rules"]
