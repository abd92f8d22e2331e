"""The workers' shared counters (proxy.host_counters) and idempotency records (proxy.host_state): the same
answers as the memory versions, and one count when several processes change a counter at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import signal
import socket
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy import host_counters, host_state, lifecycle
from proxy.core.budgets import Budget, month_window
from proxy.core.limit_windows import DAY, Limits
from proxy.host_counters import HostCounters
from proxy.host_state import HostIdempotency
from proxy.key_limits import admit, budget_counter, images_counter
from proxy.services import SERVICES
from proxy.shared_state import DONE, RUNNING, IdempotentRecord
from proxy.workers import open_listener, worker_count
from tests.factories import CLIENT_KEY, DALL_E_3, LOCAL, auth, rules_yaml
from tests.fakes.openai import KEY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state_file(tmp_path: Path) -> Path:
    path = tmp_path / host_state.FILE
    host_state.create(path)
    return path


def counters_file(tmp_path: Path) -> Path:
    path = tmp_path / host_counters.FILE
    host_counters.create(path)
    return path


async def test_counters_expire_refresh_and_never_go_below_zero(tmp_path: Path) -> None:
    clock = Clock()
    counters = HostCounters(counters_file(tmp_path), clock)
    assert await counters.incr("a", 2, 60) == 2
    assert await counters.incr("a", 3, 60) == 5
    await counters.decr("a", 9)
    assert await counters.incr("a", 1, 60) == 1
    clock.now += 61
    await counters.decr("a", 1)  # an expired counter is not brought back by a decrement
    assert await counters.incr("a", 4, 60) == 4  # and an increment starts it anew
    clock.now += 50
    assert await counters.incr("a", 1, 60, refresh=True) == 5  # refreshed: it lives 60 s from now
    clock.now += 50
    assert await counters.incr("a", 1, 60) == 6
    clock.now += 11
    assert await counters.incr("a", 1, 60) == 1
    clock.now += 1000
    assert await counters.sweep() == 1
    assert await counters.incr("a", 1, 60) == 1
    counters.close()


async def test_expired_slots_are_reused_and_swept_without_losing_live_counters(tmp_path: Path) -> None:
    clock = Clock()
    counters = HostCounters(counters_file(tmp_path), clock)
    for number in range(3000):
        assert await counters.incr(f"old-{number}", number, 10) == number
    assert await counters.incr("live", 7, 1000) == 7
    clock.now += 20  # the 3,000 expired: new keys take their slots, "live" is still found past them
    for number in range(3000):
        assert await counters.incr(f"new-{number}", 1, 10) == 1
    assert await counters.incr("live", 1, 1000) == 8
    await counters.decr("old-5", 1)  # expired: not brought back
    assert await counters.incr("old-5", 2, 10) == 2
    clock.now += 20
    # Every counter but "live" has expired (how many slots they held depends on how many were reused).
    assert 3000 < await counters.sweep() <= 6001
    assert await counters.sweep() == 0
    assert await counters.incr("live", 1, 1000) == 9
    counters.close()


def colliding_keys(count: int, homes: range) -> list[str]:
    """Keys whose probes start in `homes` (slot numbers, wrapping past the table's end): one cluster."""
    wanted = {home % host_counters.SLOTS for home in homes}
    found, number = [], 0
    while len(found) < count:
        number += 1
        key = f"k{number}"
        if host_counters.home(hashlib.blake2b(key.encode(), digest_size=16).digest()) in wanted:
            found.append(key)
    return found


def occupied(path: Path) -> int:
    data = path.read_bytes()
    return sum(1 for offset in range(0, len(data), 32) if data[offset:offset + 16] != bytes(16))


async def test_a_sweep_deletes_expired_counters_from_a_cluster_and_the_live_ones_stay_found(tmp_path: Path) -> None:
    clock, path = Clock(), counters_file(tmp_path)
    counters = HostCounters(path, clock)
    # 30 keys whose probes start in 8 slots around the table's end: one cluster that wraps to slot 0.
    keys = colliding_keys(30, range(host_counters.SLOTS - 4, host_counters.SLOTS + 4))
    for number, key in enumerate(keys):
        assert await counters.incr(key, number + 1, 10 if number % 3 else 1000) == number + 1
    clock.now += 20
    assert await counters.sweep() == 20
    assert occupied(path) == 10
    for number, key in enumerate(keys):
        if number % 3 == 0:
            assert await counters.incr(key, 0, 1000) == number + 1  # still found, past the emptied slots
    for number, key in enumerate(keys):  # the expired ones start anew, in the holes the sweep left
        assert await counters.incr(key, 1, 5 if number % 3 else 1000) == (1 if number % 3 else number + 2)
    clock.now += 10
    assert await counters.sweep() == 20 and await counters.sweep() == 0
    assert [await counters.incr(key, 0, 1000) for key in keys[::3]] == [number + 2 for number in range(0, 30, 3)]
    assert occupied(path) == 10
    counters.close()


class CutOff(Exception):
    pass


class Killed:
    """The slot layout, but a process that dies (here: raises) at its `after`-th write into the table."""

    def __init__(self, after: int) -> None:
        self.slot, self.left = host_counters._SLOT, after
        self.size = self.slot.size

    def pack_into(self, *args: Any) -> None:
        if self.left == 0:
            raise CutOff
        self.left -= 1
        self.slot.pack_into(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.slot, name)


async def sweep_cut_off(path: Path, keys: list[str], after: int, monkeypatch: Any) -> HostCounters:
    """The cluster of `keys`, two in three expired, swept by a process killed at its `after`-th write."""
    clock = Clock()
    counters = HostCounters(path, clock)
    for number, key in enumerate(keys):
        await counters.incr(key, number + 1, 10 if number % 3 else 1000)
    clock.now += 20
    monkeypatch.setattr(host_counters, "_SLOT", Killed(after))
    with contextlib.suppress(CutOff):
        await counters.sweep()
    monkeypatch.undo()
    return counters


async def test_a_sweep_cut_off_after_any_write_loses_no_live_counter(tmp_path: Path, monkeypatch: Any) -> None:
    keys = colliding_keys(30, range(host_counters.SLOTS - 4, host_counters.SLOTS + 4))
    for after in range(500):
        counters = await sweep_cut_off(counters_file(tmp_path), keys, after, monkeypatch)
        assert [await counters.incr(key, 0, 1000) for key in keys[::3]] == list(range(1, 31, 3)), after
        counters.close()
        if occupied(tmp_path / host_counters.FILE) == 10:  # this one was not cut off: every write was tried
            break
    assert after > 20


async def test_a_sweep_holds_the_lock_a_slice_at_a_time(tmp_path: Path) -> None:
    clock, path = Clock(), counters_file(tmp_path)
    counters, sibling = HostCounters(path, clock), HostCounters(path, clock)
    for number in range(5000):
        await counters.incr(f"k{number}", 1, 10 if number % 2 else 1000)
    clock.now += 20
    sweeping, got_in = asyncio.create_task(counters.sweep()), 0
    await asyncio.sleep(0)
    while not sweeping.done():  # the sibling's lock (a blocking flock) is free between slices
        got_in = await sibling.incr("sibling", 1, 1000)
        await asyncio.sleep(0)
    assert await sweeping == 2500
    assert got_in >= host_counters.SLOTS // host_counters.SWEEP_SLICE - 1
    counters.close()
    sibling.close()


def _count(path: str, times: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    counters = HostCounters(Path(path))

    async def run() -> list[int]:
        return [await counters.incr("shared", 1, 600) for _ in range(times)]

    results.put(asyncio.run(run()))


def test_four_processes_counting_at_once_count_every_increment_once(tmp_path: Path) -> None:
    path = counters_file(tmp_path)
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    processes = [context.Process(target=_count, args=(str(path), 250, results)) for _ in range(4)]
    for process in processes:
        process.start()
    seen = [value for _ in processes for value in results.get(timeout=60)]
    for process in processes:
        process.join(10)
    # Every increment saw its own value: no two processes read the same count.
    assert sorted(seen) == list(range(1, 1001))


LIMITS = Limits(concurrent=2, images_per_day=10)
BUDGET = Budget(usd_per_day=Decimal("1.00"), usd_per_month=Decimal("10.00"))
KEYS = ("conc:o", images_counter("o", int(time.time() // DAY)), budget_counter("day", "o", int(time.time() // DAY)),
        budget_counter("month", "o", month_window(time.time())[0]))


def _crash_holding(directory: str, ready: Any) -> None:
    """A worker with two requests: one ends (2 images for $0.08 of $0.10), the other is in flight when it is killed."""
    run = Path(directory)
    counters = HostCounters(run / host_counters.FILE, holdings=host_counters.holdings_file(run, os.getpid()))

    async def run() -> None:
        finished = await admit(counters, "o", LIMITS, 2, budget=BUDGET, reserve=Decimal("0.10"))
        await admit(counters, "o", LIMITS, 3, budget=BUDGET, reserve=Decimal("0.15"))  # in flight
        await finished.settle(2, Decimal("0.08"))

    asyncio.run(run())
    ready.put("ready")
    time.sleep(60)  # killed here


async def values(counters: HostCounters) -> list[int]:
    return [await counters.incr(key, 0, 3600) for key in KEYS]


async def test_what_a_killed_worker_held_is_given_back_once_and_what_it_spent_stays(tmp_path: Path) -> None:
    counters_file(tmp_path)
    counters = HostCounters(tmp_path / host_counters.FILE)
    context = multiprocessing.get_context("fork")
    ready: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    worker = context.Process(target=_crash_holding, args=(str(tmp_path), ready))
    worker.start()
    assert ready.get(timeout=30) == "ready"
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join(10)
    # The request in flight holds a slot, 3 images and $0.15; the one that ended 2 images and $0.08.
    assert await values(counters) == [1, 5, 230_000, 230_000]
    assert host_counters.give_back(tmp_path, worker.pid or 0) == 4
    assert await values(counters) == [0, 2, 80_000, 80_000]
    assert host_counters.give_back(tmp_path, worker.pid or 0) == 0  # once
    assert await values(counters) == [0, 2, 80_000, 80_000]
    counters.close()


async def test_an_async_tasks_reservation_stays_when_its_worker_dies_and_its_slot_goes(tmp_path: Path) -> None:
    # The task's record keeps its reservation for whichever worker takes it over: that one settles it.
    path = counters_file(tmp_path)
    worker = HostCounters(path, holdings=host_counters.holdings_file(tmp_path, 2))
    admission = await admit(worker, "o", LIMITS, 3, budget=BUDGET, reserve=Decimal("0.15"))
    admission.to_task()
    worker.close()
    assert host_counters.give_back(tmp_path, 2) == 1
    counters = HostCounters(path)
    assert await values(counters) == [0, 3, 150_000, 150_000]
    counters.close()


async def test_a_holding_is_given_back_only_to_the_counter_it_was_taken_in(tmp_path: Path) -> None:
    clock, path = Clock(), counters_file(tmp_path)
    worker = HostCounters(path, clock, holdings=host_counters.holdings_file(tmp_path, 1))
    sibling = HostCounters(path, clock)
    await worker.incr("window", 3, 10, hold=True)
    await worker.incr("gauge", 1, 60, refresh=True, hold=True)
    await worker.incr("kept", 4, 60, hold=True)
    worker.unhold("kept", 4)  # settled: spent, no longer held
    clock.now += 20  # "window" expired; a sibling starts it anew
    assert await sibling.incr("window", 2, 10) == 2
    assert await sibling.incr("gauge", 1, 60, refresh=True) == 2
    worker.close()
    assert host_counters.give_back(tmp_path, 1, clock) == 1
    assert [await sibling.incr(key, 0, 60) for key in ("window", "gauge", "kept")] == [2, 1, 4]
    sibling.close()


async def test_an_idempotency_key_is_claimed_once_across_processes_and_kept(tmp_path: Path) -> None:
    clock = Clock()
    path = state_file(tmp_path)
    first, second = HostIdempotency(path, clock), HostIdempotency(path, clock)
    running = IdempotentRecord("fp", RUNNING)
    assert await first.claim("k", running, 60) is None
    assert await second.claim("k", IdempotentRecord("other", RUNNING), 60) == running
    done = IdempotentRecord("fp", DONE, 200, '{"data":[]}', {"Content-Type": "application/json"})
    await first.finish("k", done, 60)
    assert await second.get("k") == done
    await second.release("k", done)
    assert await first.get("k") is None
    assert await second.claim("k", running, 60) is None
    clock.now += 61
    assert await first.get("k") is None  # expired
    assert await first.claim("k", done, 60) is None  # an expired record is claimed again
    clock.now += 61
    assert await first.sweep() == 1


def test_auto_workers_is_the_cpus_this_process_may_use() -> None:
    import os

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3


def test_without_reuse_port_the_supervisor_listens_once_for_every_worker() -> None:
    listener = open_listener("127.0.0.1", 0, reuse_port=False)
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
            accepted, _ = listener.socket.accept()  # queued on the one socket the workers would inherit
            accepted.close()
    finally:
        listener.close()


def test_with_reuse_port_the_supervisor_holds_the_port_without_listening() -> None:
    listener = open_listener("127.0.0.1", 0, reuse_port=True)
    try:
        # Nothing accepts on the held socket: a connection is refused until a worker listens.
        try:
            socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
            raise AssertionError("the held socket accepted a connection")
        except ConnectionRefusedError:
            pass
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", listener.port))
        worker.listen()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
            worker.accept()[0].close()
        worker.close()
        # And nobody else takes the port meanwhile.
        other = socket.socket()
        try:
            other.bind(("127.0.0.1", listener.port))
            raise AssertionError("another socket bound the held port")
        except OSError:
            pass
        finally:
            other.close()
    finally:
        listener.close()


def test_the_state_file_is_in_write_ahead_log_mode_for_every_connection(tmp_path: Path) -> None:
    path = state_file(tmp_path)
    assert host_state.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def held_by_a_sibling(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """A state file whose write lock another worker holds (the middle of a long write)."""
    path = state_file(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return path, holder


async def test_a_state_file_locked_too_long_is_a_503_the_client_may_retry(
    make_proxy: Any, fake_openai: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_state, "LOCK_WAIT", 0.2)
    fake, upstream = fake_openai
    client = await make_proxy(rules_yaml({"dall-e-3": DALL_E_3}, server={"api_keys": [CLIENT_KEY]}),
                              {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})
    path, holder = held_by_a_sibling(tmp_path)
    client.server.app[SERVICES].idempotency = HostIdempotency(path)
    body, headers = {"model": "dall-e-3", "prompt": "cat"}, {**auth(), "Idempotency-Key": "k-1"}
    refused = await client.post("/v1/images/generations", json=body, headers=headers)
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "state_unavailable" and not fake.recorder.received
    holder.rollback()
    holder.close()
    retried = await client.post("/v1/images/generations", json=body, headers=headers)
    assert retried.status == 200 and len(fake.recorder.received) == 1


async def test_a_sweep_that_fails_stops_neither_the_sweeper_nor_the_drain(
    make_proxy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(host_state, "LOCK_WAIT", 0.05)
    monkeypatch.setattr(lifecycle, "SWEEP_EVERY", 0.1)
    client = await make_proxy(rules_yaml({"local-image": {"channels": ["local"]}}, {"local": LOCAL}))
    path, holder = held_by_a_sibling(tmp_path)
    client.server.app[SERVICES].idempotency = HostIdempotency(path)
    sweeper = next(task for task in asyncio.all_tasks() if task.get_coro().__name__ == "_sweep_forever")
    await asyncio.sleep(0.5)
    assert not sweeper.done() and "could not sweep expired idempotency records: ServiceUnavailable" in caplog.text
    holder.rollback()
    holder.close()
    await client.close()  # the drain runs past the sweeper's end (a sweeper that died would raise here)


async def test_a_claim_that_lands_after_its_client_left_is_let_go(make_proxy: Any, fake_openai: Any, tmp_path: Path) -> None:
    fake, upstream = fake_openai
    openai = {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "${OPENAI_API_KEY}", "deadline": 2}
    client = await make_proxy(rules_yaml({"dall-e-3": DALL_E_3}, {"openai": openai}, server={"api_keys": [CLIENT_KEY]}),
                              {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})
    path, holder = held_by_a_sibling(tmp_path)  # the claim waits for the sibling's write
    client.server.app[SERVICES].idempotency = HostIdempotency(path)
    body, headers = {"model": "dall-e-3", "prompt": "cat"}, {**auth(), "Idempotency-Key": "k-2"}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.post("/v1/images/generations", json=body, headers=headers)  # the client gives up
    await asyncio.sleep(0.2)
    holder.rollback()  # the sibling's write ends: the departed client's claim commits
    holder.close()
    await asyncio.sleep(0.3)
    retried = await client.post("/v1/images/generations", json=body, headers=headers)
    assert retried.status == 200, await retried.text()  # run at once, not after the lease of a run never started
    assert len(fake.recorder.received) == 1
