"""Async tasks outlive the process that ran them (proxy.task_runner, proxy.task_keeper), through the real app
and the real CLI: a task provider's task in flight is resumed by the next process, polling the same upstream
task (one create, one set of images, one ledger record), after a shutdown that outlasts its grace and after a
crash (SIGKILL); a synchronous provider's call in flight is failed as interrupted, with its ledger record; a
live process keeps its tasks (its leases are renewed); on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from proxy.core.limit_windows import key_id
from proxy.database import GENERATIONS, open_engine
from proxy.services import SERVICES
from proxy.tasks import FAILED, SUCCEED
from tests.factories import (
    ROOT,
    clean_env,
    free_port,
    ledger_rows,
    poll_task,
    rules_yaml,
    serve_fake,
    wait_listening,
)
from tests.fakes import kling as kling_fake
from tests.fakes.kling import FakeKling
from tests.fakes.openai import FakeOpenAI

A = {"Authorization": "Bearer key-a"}
CRANE = {"model": "kling-v2", "prompt": "a crane", "n": 2, "async": True, "response_format": "b64_json"}
HERON = {"model": "gpt-image-1", "prompt": "a heron", "async": True}
POLL = 0.05  # seconds between Kling polls


def models() -> dict[str, Any]:
    return {"kling-v2": {"channels": ["kling"], "max_n": 4}, "gpt-image-*": {"channels": ["openai"]}}


def channels() -> dict[str, Any]:
    return {
        "kling": {"type": "kling", "base_url": "${KLING}", "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}",
                  "poll_interval": POLL, "max_poll_interval": POLL},
        "openai": {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "${OPENAI_API_KEY}"},
    }


def server(**extra: Any) -> dict[str, Any]:
    return {"api_keys": [{"key": "key-a", "name": "alice"}], "database": "${DATABASE:-}", **extra}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    """`server.database`: "" (the SQLite file beside the image store) or a fresh PostgreSQL database."""
    return "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


async def upstreams(aiohttp_server: Any, kling: FakeKling, openai: FakeOpenAI | None = None) -> dict[str, str]:
    openai = openai or FakeOpenAI()
    return {
        "KLING": await serve_fake(aiohttp_server, kling), "KLING_ACCESS_KEY": kling.access_key,
        "KLING_SECRET_KEY": kling.secret_key, "UPSTREAM": await serve_fake(aiohttp_server, openai),
        "OPENAI_API_KEY": openai.key,
    }


def creates(kling: FakeKling) -> int:
    return sum(1 for item in kling.recorder.received if item.method == "POST")


def polls(kling: FakeKling) -> int:
    return sum(1 for item in kling.recorder.received if item.method == "GET" and item.path.startswith("/v1/"))


async def polled_once(kling: FakeKling, limit: float = 10.0) -> None:
    """The upstream task exists and has been polled: its checkpoint was written before the first poll."""
    for _ in range(int(limit / 0.02)):
        if polls(kling) >= 1:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the Kling task was never polled")


async def create(client: Any, body: dict[str, Any], request_id: str) -> str:
    response = await client.post("/v1/images/generations", json=body, headers={**A, "X-Request-ID": request_id})
    assert response.status == 200, await response.text()
    return str((await response.json())["task_id"])


def assert_cranes(body: dict[str, Any]) -> None:
    assert body["task_status"] == SUCCEED and len(body["data"]) == 2
    assert all(base64.b64decode(item["b64_json"]) == kling_fake.PNG for item in body["data"])


async def test_a_shutdown_hands_a_task_providers_task_to_the_next_process(
    make_proxy: Any, aiohttp_server: Any, database: str
) -> None:
    kling = FakeKling(polls_before_done=30)
    env = {**await upstreams(aiohttp_server, kling), "DATABASE": database}
    first = await make_proxy(rules_yaml(models(), channels(), server=server(shutdown_grace=0.1)), env)
    task_id = await create(first, CRANE, "req-crane")
    await polled_once(kling)
    await first.close()  # the grace runs out while Kling is still working: the task is handed over
    second = await make_proxy(rules_yaml(models(), channels(), server=server()), env)
    _, body = await poll_task(second, task_id, A, SUCCEED)
    assert_cranes(body)
    assert body["metadata"]["channel"] == "kling"
    # The same upstream task, polled to its end: nothing was made (or paid for) twice.
    assert creates(kling) == 1 and polls(kling) == 31
    records = [row for row in await ledger_rows(second) if row["request_id"] == "req-crane"]
    assert len(records) == 1  # the POST's one record, written by the process that ended the task
    record = records[0]
    assert (record["status"], record["images"], record["channel"], record["task_id"]) == (200, 2, "kling", task_id)
    assert (record["key_name"], record["model"], record["n"]) == ("alice", "kling-v2", 2)


async def test_a_live_process_keeps_its_tasks_while_another_starts(
    make_proxy: Any, aiohttp_server: Any, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    kling = FakeKling(polls_before_done=25)
    env = {**await upstreams(aiohttp_server, kling), "DATABASE": database}
    text = rules_yaml(models(), channels(), server=server(tasks={"lease": 0.3}))
    first = await make_proxy(text, env)
    task_id = await create(first, CRANE, "req-kept")
    await polled_once(kling)
    second = await make_proxy(text, env)  # another process on the same database, looking for orphans every 0.1 s
    _, body = await poll_task(second, task_id, A, SUCCEED)  # more than four leases long: renewed all along
    assert_cranes(body)
    assert creates(kling) == 1 and polls(kling) == 26  # one process polled it: no second poller
    assert "resuming async task" not in caplog.text
    assert not second.server.app[SERVICES].running_tasks


async def priced_task_handed_over(
    make_proxy: Any, aiohttp_server: Any, budget: dict[str, Any], env: dict[str, str], **server_settings: Any
) -> Any:
    """Four Kling images at $0.25 for a key with `budget`: the task is handed over by a shutdown and finished by
    a second process, whose client is returned once the task has succeeded (costing $1.00) and settled."""
    kling = FakeKling(polls_before_done=20)
    env = {**await upstreams(aiohttp_server, kling), **env}
    priced = {**models(), "kling-v2": {**models()["kling-v2"], "price": {"per_image": {"*": 0.25}}}}
    key = {"key": "key-a", "name": "alice", "budget": budget}

    def text(grace: float) -> str:
        return rules_yaml(priced, channels(), server=server(api_keys=[key], shutdown_grace=grace, **server_settings))

    first = await make_proxy(text(0.1), env)
    task_id = await create(first, {**CRANE, "n": 4}, "req-budget")
    await polled_once(kling)
    await first.close()
    second = await make_proxy(text(30), env)
    _, body = await poll_task(second, task_id, A, SUCCEED)
    assert body["metadata"]["cost_usd"] == 1.0
    await asyncio.sleep(0.2)  # the task settles right after its record is stored
    return second


async def test_a_task_taken_over_settles_its_budget_reservation(
    make_proxy: Any, aiohttp_server: Any, redis_server: Any, tmp_path: Path
) -> None:
    """With Redis counters (they outlive a process) the reservation of the first process is settled by the
    second to what the images cost, as if one process had run the task."""
    budget = {"usd_per_day": 10, "usd_per_month": 100}
    second = await priced_task_handed_over(make_proxy, aiohttp_server, budget, {"DATABASE": str(tmp_path / "db")},
                                           state=redis_server.url, tasks={"lease": 0.3})
    counters = [int(await second.server.app[SERVICES].counters.incr(name, 0, 60)) for name in await _budget_keys(redis_server)]
    assert counters == [1_000_000, 1_000_000]  # day and month: $1.00 in micro-dollars, the reservation settled


async def test_with_counters_in_memory_a_task_taken_over_counts_against_the_budget_once(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    """Memory counters begin anew with the next process (from the ledger, which has no row for a running task):
    the reservation is counted again, then settled to what the images cost."""
    second = await priced_task_handed_over(make_proxy, aiohttp_server, {"usd_per_day": 10}, {})
    day = f"usd-day:{key_id('key-a')}:{int(time.time() // 86400)}"
    assert await second.server.app[SERVICES].counters.incr(day, 0, 60) == 1_000_000


async def test_a_draining_process_keeps_renewing_its_leases(make_proxy: Any, aiohttp_server: Any) -> None:
    """A shutdown's grace may be longer than a lease: the tasks it lets finish are not taken over meanwhile."""
    kling = FakeKling(polls_before_done=20)
    env = await upstreams(aiohttp_server, kling)
    first = await make_proxy(rules_yaml(models(), channels(), server=server(shutdown_grace=30, tasks={"lease": 0.3})), env)
    task_id = await create(first, CRANE, "req-drain")
    await polled_once(kling)
    second = await make_proxy(rules_yaml(models(), channels(), server=server(tasks={"lease": 0.3})), env)
    await first.close()  # drains: the task runs to its end (about a second, three leases) in the first process
    _, body = await poll_task(second, task_id, A, SUCCEED)
    assert_cranes(body)
    assert creates(kling) == 1 and polls(kling) == 21 and not second.server.app[SERVICES].running_tasks


async def _budget_keys(redis_server: Any) -> list[str]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        names = sorted(name.decode() for name in await client.keys("imagegate:count:usd-*"))
    finally:
        await client.aclose()
    return [name.removeprefix("imagegate:count:") for name in names]


# --- a real crash: the CLI killed with SIGKILL -------------------------------------------------------------


async def start_cli(rules: Path, port: int, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--rules", str(rules), "--port", str(port), cwd=ROOT,
            env=clean_env(**env), stdout=sink, stderr=sink,
        )
    await wait_listening(port, process, log)
    return process


async def http(method: str, url: str, body: dict[str, Any] | None = None, request_id: str = "") -> tuple[int, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        headers = {**A, "X-Request-ID": request_id} if request_id else A
        async with session.request(method, url, json=body, headers=headers) as response:
            return response.status, await response.json()


async def poll_cli(url: str, until: str, limit: float = 20.0) -> tuple[int, Any]:
    for _ in range(int(limit / 0.1)):
        status, body = await http("GET", url)
        if body.get("task_status") == until:
            return status, body
        await asyncio.sleep(0.1)
    raise AssertionError(f"the task never reached {until}: {body}")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_after_a_crash_the_next_process_resumes_task_providers_and_fails_the_rest(
    aiohttp_server: Any, tmp_path: Path, redis_server: Any, backend: str
) -> None:
    kling, openai = FakeKling(polls_before_done=40), FakeOpenAI(delay=30)
    env = await upstreams(aiohttp_server, kling, openai)
    database = tmp_path / "ledger.db"
    state = {}
    if backend == "redis":
        state = {"state": redis_server.url}
    rules = tmp_path / "rules.yaml"
    text = rules_yaml(models(), channels(), server=server(tasks={"lease": 1}, images={"path": str(tmp_path / "images")},
                                                           **state))
    rules.write_text(text.replace("${DATABASE:-}", f"sqlite:///{database}"))
    port, log = free_port(), tmp_path / "proxy.log"
    base = f"http://127.0.0.1:{port}/v1/images/generations"
    first = await start_cli(rules, port, env, log)
    try:
        _, crane = await http("POST", base, CRANE, "req-crane")
        _, heron = await http("POST", base, HERON, "req-heron")
        await polled_once(kling)
        for _ in range(100):  # the OpenAI call is in flight too
            if openai.recorder.received:
                break
            await asyncio.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)  # no drain, no hand-over: the leases simply stop being renewed
        await first.wait()
    second = await start_cli(rules, port, env, log)
    try:
        _, body = await poll_cli(f"{base}/{crane['task_id']}", SUCCEED)
        assert_cranes(body)
        assert creates(kling) == 1 and polls(kling) == 41
        status, failed = await poll_cli(f"{base}/{heron['task_id']}", FAILED)
        assert status == 503 and failed["error"]["code"] == "task_interrupted"
        assert len(openai.recorder.received) == 1  # never sent again: the first call may have been billed
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    records = await _records(database)
    assert records["req-crane"][:3] == (200, 2, None) and records["req-crane"][3] == crane["task_id"]
    assert records["req-heron"][:3] == (503, 0, "task_interrupted") and records["req-heron"][3] == heron["task_id"]
    assert "key-a" not in log.read_text()


async def _records(database: Path) -> dict[str, tuple[Any, ...]]:
    engine = open_engine(sa.engine.URL.create("sqlite+aiosqlite", database=str(database)))
    try:
        async with engine.connect() as connection:
            result = await connection.execute(sa.select(GENERATIONS))
            return {row.request_id: (row.status, row.images, row.error_code, row.task_id) for row in result}
    finally:
        await engine.dispose()
