"""`python -m proxy --workers 2`, run as users run it: two worker processes under one supervisor share one
address, and everything a client sees is the same whichever worker answers.

Each request goes on a new connection, so the kernel spreads them over the workers; every worker writes
`worker` in its JSON log lines, and the tests find out who answered from the request id they sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.workers import RUN_PREFIX, WORKER_MARK
from tests.factories import LOCAL, OPENAI, ROOT, clean_env, free_port, rules_yaml, run_cli, serve_fake
from tests.fakes.kling import FakeKling
from tests.fakes.openai import KEY, FakeOpenAI

A, LIMITED, ONE = "sk-workers-a", "sk-workers-limited", "sk-workers-one"
SERVER = {
    "api_keys": [A, {"key": LIMITED, "name": "limited", "limits": {"requests_per_minute": 5}},
                 {"key": ONE, "name": "one", "limits": {"concurrent": 1}}],
    "shutdown_grace": 20,
}
MODELS: dict[str, Any] = {
    "local-image": {"channels": ["local"]},
    "slow": {"channels": ["openai"], "upstream_model": "gpt-image-1"},
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Proxy:
    """A running `python -m proxy --workers 2` and its log."""

    process: asyncio.subprocess.Process
    port: int
    log: Path
    rules: Path
    sent: int = 0
    seen: dict[str, int] = field(default_factory=dict)  # request id -> the worker that logged it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    async def worker_of(self, request_id: str) -> int:
        """The worker that served a request, from its access line (written just after the answer is sent)."""
        for _ in range(500):  # 5 s at most
            for line in self.lines():
                if line.get("request_id") == request_id and line.get("logger") == "imagegate.access":
                    return int(line["worker"])
            await asyncio.sleep(0.01)
        raise AssertionError(f"no access line for {request_id}")

    async def call(
        self, method: str, path: str, key: str = A, **kwargs: Any
    ) -> tuple[int, bytes, dict[str, str], str]:
        """One request on a connection of its own; (status, body, headers, request id)."""
        self.sent += 1
        request_id = f"w{os.getpid()}-{self.sent}"
        headers = {"Authorization": f"Bearer {key}", "X-Request-ID": request_id, **kwargs.pop("headers", {})}
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
            session.request(method, self.url(path), headers=headers, **kwargs) as response,
        ):
            return response.status, await response.read(), dict(response.headers), request_id

    def children(self) -> set[int]:
        pid = self.process.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(child) for child in text.split()}


async def start(rules_text: str, tmp_path: Path, env: dict[str, str] | None = None, workers: int = 2) -> Proxy:
    rules, log, port = tmp_path / "rules.yaml", tmp_path / "proxy.log", free_port()
    rules.write_text(rules_text)
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--rules", str(rules), "--port", str(port), "--workers", str(workers),
            cwd=ROOT, env=clean_env(**(env or {})), stdout=sink, stderr=sink,
        )
    proxy = Proxy(process, port, log, rules)
    await until(lambda: f"workers   {workers} processes" in log.read_text() or process.returncode is not None)
    assert process.returncode is None, log.read_text()
    return proxy


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def stop(proxy: Proxy) -> int:
    if proxy.process.returncode is None:
        proxy.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proxy.process.wait(), 30)


@pytest.fixture
async def workers(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[tuple[Proxy, FakeOpenAI]]:
    fake = FakeOpenAI(delay=0.0)
    upstream = await serve_fake(aiohttp_server, fake)
    text = rules_yaml(MODELS, {"openai": OPENAI, "local": LOCAL}, server={**SERVER, "images": {"path": str(tmp_path / "i")}})
    proxy = await start(text, tmp_path, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})
    try:
        yield proxy, fake
    finally:
        if proxy.process.returncode is None:  # else the test stopped it and checked how
            assert await stop(proxy) == 0, proxy.log.read_text()


async def from_both(proxy: Proxy, attempt: Callable[[], Any], tries: int = 60) -> list[tuple[int, bytes, int]]:
    """Call `attempt` (a request) until both workers have answered; (status, body, worker) of every call."""
    answers = []
    for _ in range(tries):
        status, body, _, request_id = await attempt()
        answers.append((status, body, await proxy.worker_of(request_id)))
        if {worker for _, _, worker in answers} == {0, 1}:
            return answers
    raise AssertionError(f"one worker answered every call: {answers}")


def generate(proxy: Proxy, key: str = A, **body: Any) -> Any:
    return proxy.call("POST", "/v1/images/generations", key, json={"model": "local-image", "prompt": "a crane", **body})


async def test_a_task_a_hosted_image_and_an_idempotent_answer_are_the_same_through_either_worker(
    workers: tuple[Proxy, FakeOpenAI],
) -> None:
    proxy, _ = workers
    status, body, _, _ = await generate(proxy, **{"async": True, "response_format": "url", "size": "256x256"})
    assert status == 200
    task = f"/v1/images/generations/{json.loads(body)['task_id']}"
    for _ in range(100):
        if json.loads((await proxy.call("GET", task))[1])["task_status"] == "succeed":
            break
        await asyncio.sleep(0.05)
    polls = await from_both(proxy, lambda: proxy.call("GET", task))
    assert len({body for _, body, _ in polls}) == 1 and all(status == 200 for status, _, _ in polls)
    answer = json.loads(polls[-1][1])
    assert answer["task_status"] == "succeed"
    image = answer["data"][0]["url"].removeprefix(proxy.url(""))
    fetched = await from_both(proxy, lambda: proxy.call("GET", image))
    assert {body for _, body, _ in fetched} == {fetched[0][1]} and fetched[0][1].startswith(PNG_SIGNATURE)
    # One Idempotency-Key: the first answer, replayed by both workers, and one generation in the ledger's terms.
    replays = await from_both(proxy, lambda: generate(proxy, headers={"Idempotency-Key": "same-one"}, size="256x256"))
    assert all(status == 200 for status, _, _ in replays)
    kept = [line for line in proxy.lines() if "Idempotency-Key" in line.get("message", "")]
    assert len({body for _, body, _ in replays}) == 1, kept  # a lost record shows as a warning here
    assert base64.b64decode(json.loads(replays[0][1])["data"][0]["b64_json"]).startswith(PNG_SIGNATURE)


async def test_a_key_limit_holds_across_workers(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    answers = await asyncio.gather(*(generate(proxy, LIMITED, size="256x256") for _ in range(12)))
    statuses = sorted(status for status, _, _, _ in answers)
    assert statuses == [200] * 5 + [429] * 7
    assert {await proxy.worker_of(request_id) for *_, request_id in answers} == {0, 1}


async def test_metrics_add_up_every_workers_requests(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    answers = await from_both(proxy, lambda: generate(proxy, size="256x256"))
    metrics = (await proxy.call("GET", "/metrics"))[1].decode()
    served = [line for line in metrics.splitlines() if line.startswith("imagegate_requests_total{") and 'status="200"' in line]
    assert len(served) == 1 and float(served[0].rsplit(" ", 1)[1]) == len(answers)


async def test_sighup_reloads_every_worker(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    status, body, _, _ = await generate(proxy, model="renamed")
    assert status == 404 or status == 400, body
    proxy.rules.write_text(proxy.rules.read_text().replace("local-image:", "renamed:"))
    proxy.process.send_signal(signal.SIGHUP)
    await until(lambda: sum('"reloaded ' in line for line in proxy.log.read_text().splitlines()) == 2)
    answers = await from_both(proxy, lambda: generate(proxy, model="renamed", size="256x256"))
    assert all(status == 200 for status, _, _ in answers)
    reloaded = [line for line in proxy.lines() if line.get("message", "").startswith("reloaded ")]
    assert sorted(line["worker"] for line in reloaded) == [0, 1]


async def test_sigterm_drains_every_worker(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, fake = workers
    fake.delay = 1.5
    slow = [asyncio.create_task(generate(proxy, model="slow")) for _ in range(8)]
    await until(lambda: len(fake.recorder.received) == 8)
    proxy.process.send_signal(signal.SIGTERM)
    answers = await asyncio.gather(*slow)
    assert [status for status, *_ in answers] == [200] * 8
    assert {await proxy.worker_of(request_id) for *_, request_id in answers} == {0, 1}
    assert await asyncio.wait_for(proxy.process.wait(), 20) == 0
    draining = [line for line in proxy.lines() if line.get("message", "").startswith("shutting down")]
    assert sorted(line["worker"] for line in draining) == [0, 1]


async def test_a_killed_worker_is_replaced(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    before = proxy.children()
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    await until(lambda: len(proxy.children()) == 2 and victim not in proxy.children())
    log = proxy.log.read_text()
    assert f"(pid {victim}) exited with signal 9: a new one starts in 0s" in log
    answers = await from_both(proxy, lambda: generate(proxy, size="256x256"))
    assert all(status == 200 for status, _, _ in answers)
    assert marked_workers() == proxy.children()  # each live worker, and no dead one


def marked_workers() -> set[int]:
    """The workers marked in the run's directory (what keeps it from being removed as abandoned)."""
    [run] = Path(tempfile.gettempdir()).glob(f"{RUN_PREFIX}*")
    return {int(path.name.removeprefix(WORKER_MARK)) for path in run.glob(f"{WORKER_MARK}*")}


async def test_a_killed_workers_request_in_flight_gives_back_its_keys_slot(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, fake = workers
    fake.delay = 60.0
    slow = asyncio.create_task(generate(proxy, ONE, model="slow"))
    await until(lambda: len(fake.recorder.received) == 1)
    assert (await generate(proxy, ONE, size="256x256"))[0] == 429  # one at a time: the slow one runs
    for victim in sorted(proxy.children()):  # the one whose client is cut off served the slow request
        os.kill(victim, signal.SIGKILL)
        await until(lambda: len(proxy.children()) == 2 and victim not in proxy.children())  # noqa: B023
        if (await asyncio.wait({slow}, timeout=5))[0]:
            break
        assert (await generate(proxy, ONE, size="256x256"))[0] == 429  # its sibling's holding was not touched
    with pytest.raises(aiohttp.ClientError):
        await slow
    answers = await from_both(proxy, lambda: generate(proxy, ONE, size="256x256"))
    assert all(status == 200 for status, _, _ in answers)
    assert f"(pid {victim}) held in 1 limit counter(s)" in proxy.log.read_text()


async def test_workers_stop_when_their_supervisor_is_killed(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    children = proxy.children()
    proxy.process.send_signal(signal.SIGKILL)
    await proxy.process.wait()

    def gone(pid: int) -> bool:
        try:
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        return status == "Z"

    await until(lambda: all(gone(pid) for pid in children), 10)


def test_workers_on_a_busy_address_is_one_line_and_status_3(tmp_path: Path) -> None:
    import socket

    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_yaml({"local-image": {"channels": ["local"]}}, {"local": LOCAL}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--rules", str(rules), "--port", str(port), "--workers", "2")
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [f"imagegate: cannot listen on 127.0.0.1:{port}: address already in use"]


@pytest.mark.parametrize("value", ["0", "-1", "many", "65"])
def test_a_bad_workers_option_is_refused(value: str) -> None:
    result = run_cli("--workers", value, "check")
    assert result.returncode == 2
    assert "--workers: expected auto or a number from 1 to 64" in result.stderr


async def start_preparing(tmp_path: Path) -> Proxy:
    """A two-worker proxy caught while its supervisor prepares the run (signals blocked, no worker forked yet):
    a signal sent now reaches the workers the moment they are forked, long before their app is set up."""
    rules, log, port, temp = tmp_path / "rules.yaml", tmp_path / "proxy.log", free_port(), tmp_path / "runs"
    temp.mkdir()
    rules.write_text(rules_yaml({"local-image": {"channels": ["local"]}}, {"local": LOCAL}, server={"api_keys": [A]}))
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--rules", str(rules), "--port", str(port), "--workers", "2",
            cwd=ROOT, env=clean_env(TMPDIR=str(temp)), stdout=sink, stderr=sink,
        )
    await until(lambda: process.returncode is not None or any(temp.glob("imagegate-run-*/idempotency.sqlite")), 60)
    return Proxy(process, port, log, rules)


async def test_reloads_sent_while_workers_start_do_not_kill_them(tmp_path: Path) -> None:
    proxy = await start_preparing(tmp_path)
    try:
        reloads = 0  # every 20 ms until the banner (a config tool right after start)
        while "workers   2 processes" not in proxy.log.read_text() and proxy.process.returncode is None:
            proxy.process.send_signal(signal.SIGHUP)
            reloads += 1
            await asyncio.sleep(0.02)
        log = proxy.log.read_text()
        assert proxy.process.returncode is None and reloads > 0, log
        assert "exited with signal" not in log
        status, *_ = await generate(proxy, size="256x256")
        assert status == 200
    finally:
        assert await stop(proxy) == 0


async def test_a_reload_sent_while_workers_start_reaches_every_worker(tmp_path: Path) -> None:
    proxy = await start_preparing(tmp_path)
    try:
        proxy.rules.write_text(proxy.rules.read_text().replace("local-image:", "renamed:"))
        proxy.process.send_signal(signal.SIGHUP)
        await until(lambda: "workers   2 processes" in proxy.log.read_text() or proxy.process.returncode is not None)
        answers = await from_both(proxy, lambda: generate(proxy, model="renamed", size="256x256"))
        assert all(status == 200 for status, _, _ in answers), answers
    finally:
        assert await stop(proxy) == 0


async def test_a_reload_of_a_file_that_is_not_utf8_keeps_every_worker_serving(workers: tuple[Proxy, FakeOpenAI]) -> None:
    proxy, _ = workers
    proxy.rules.write_bytes(proxy.rules.read_bytes() + b"\n# caf\xe9\n")
    proxy.process.send_signal(signal.SIGHUP)
    await until(lambda: proxy.log.read_text().count("codec can't decode byte 0xe9") >= 3)  # the supervisor, each worker
    assert proxy.process.returncode is None and len(proxy.children()) == 2
    log = proxy.log.read_text()
    assert "Traceback" not in log and log.count("rejected") == 2  # each worker's "reload of ... rejected"
    answers = await from_both(proxy, lambda: generate(proxy, size="256x256"))
    assert all(status == 200 for status, _, _ in answers)


async def test_a_task_taken_over_within_the_run_counts_against_its_budget_once(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    # Four Kling images at $0.25 reserve $1.00 of the key's $1.50 a day. Both workers are killed while the task
    # runs; their successors (the same run, the same counters) take it over. Counted again there, the task would
    # leave no room for the $0.50 asked next.
    kling = FakeKling(polls_before_done=20)
    env = {"KLING": await serve_fake(aiohttp_server, kling), "KLING_ACCESS_KEY": kling.access_key,
           "KLING_SECRET_KEY": kling.secret_key}
    key = {"key": A, "name": "a", "budget": {"usd_per_day": 1.5}}
    channels = {"kling": {"type": "kling", "base_url": "${KLING}", "api_key": "${KLING_ACCESS_KEY}:${KLING_SECRET_KEY}",
                          "poll_interval": 0.05, "max_poll_interval": 0.05}}
    models = {"kling-v2": {"channels": ["kling"], "max_n": 4, "price": {"per_image": {"*": 0.25}}}}
    text = rules_yaml(models, channels, server={"api_keys": [key], "tasks": {"lease": 0.5}, "database": str(tmp_path / "db")})
    proxy = await start(text, tmp_path, env)
    try:
        body = {"model": "kling-v2", "prompt": "a crane", "async": True, "response_format": "b64_json"}
        status, answer, _, _ = await proxy.call("POST", "/v1/images/generations", json={**body, "n": 4})
        assert status == 200, answer
        task_id = json.loads(answer)["task_id"]
        await until(lambda: any(item.method == "GET" for item in kling.recorder.received))  # the task exists upstream
        victims = proxy.children()
        for victim in victims:
            os.kill(victim, signal.SIGKILL)
        await until(lambda: len(proxy.children()) == 2 and not victims & proxy.children())
        for _ in range(200):
            try:
                status, answer, _, _ = await proxy.call("GET", f"/v1/images/generations/{task_id}")
            except aiohttp.ClientConnectorError:  # the successors are forked, not listening yet
                await asyncio.sleep(0.05)
                continue
            if json.loads(answer).get("task_status") == "succeed":
                break
            await asyncio.sleep(0.05)
        assert json.loads(answer)["metadata"]["cost_usd"] == 1.0, answer
        more = await proxy.call("POST", "/v1/images/generations", json={**body, "n": 2})
        assert more[0] == 200, more[1]  # $1.00 + $0.50: within $1.50
        over = await proxy.call("POST", "/v1/images/generations", json={**body, "n": 1})
        assert over[0] == 429, over[1]  # $1.75: the budget counts what was spent, exactly
    finally:
        assert await stop(proxy) == 0, proxy.log.read_text()
