"""The bench's processes and the rules they run under: the fake upstream, the bare relay, the proxy.

Every scenario sends the same request three ways: straight to the upstream (*direct*), through the
bare relay (bench.relay: the least an aiohttp relay can do) and through the proxy, once per worker count
(`--workers`; with one worker no flag is passed, so the bench runs against a proxy without the flag).
Each scenario group gets fresh relay and proxy processes, so a peak belongs to that group alone.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.clients import CLIENT_KEY, HEADERS
from bench.loadgen import AIOHTTP, WRK, LoadResult, run_aiohttp, run_wrk
from bench.procs import Child, free_port

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("small", "big", "held", "stream")
# `concurrency` of the bench's channels: the per-channel limit (default 4) must not be what is measured.
WIDE = 10_000
PATH = "/v1/images/generations"
KEY = "sk-bench-0123456789"  # the upstream's key (the fake upstream ignores it)
# Scenario 3's probe: requests held this long on a channel that leaves `concurrency` at its default.
PROBE_HOLD_MS = 500
# Limits and a budget the load never reaches: admission, the counters and the budget's reservation and
# settlement then run on every request, so their cost is in every figure (as is the ledger, always on).
NEVER = 1_000_000_000
PRICE = '{per_image: {"*": 0.001}}'

RULES = """\
server:
  api_keys:
    - key: "{client_key}"
      name: bench
      limits: {{requests_per_minute: {never}, concurrent: {never}, images_per_day: {never}}}
      budget: {{usd_per_day: {never}, usd_per_month: {never}}}
  images: {{path: "{images}", ttl: 600}}
channels:
  small: {{type: openai, base_url: "{upstream}/small/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
  small-default: {{type: openai, base_url: "{upstream}/small/v1", api_key: "{key}", timeout: 60}}
  big: {{type: openai, base_url: "{upstream}/big/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
  hold: {{type: openai, base_url: "{upstream}/hold-{hold_ms}/v1", api_key: "{key}", timeout: 300, concurrency: {held}}}
  queue: {{type: openai, base_url: "{upstream}/hold-{probe_ms}/v1", api_key: "{key}", timeout: 300}}
  sse: {{type: openai, base_url: "{upstream}/sse/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
models:
  bench-small: {{channels: [small], price: {price}}}
  bench-small-default: {{channels: [small-default], price: {price}}}
  bench-big: {{channels: [big], price: {price}}}
  bench-hold: {{channels: [hold], price: {price}}}
  bench-queue: {{channels: [queue], price: {price}}}
  bench-sse: {{channels: [sse], price: {price}}}
"""


@dataclass
class Options:
    duration: float = 5.0
    concurrency: tuple[int, ...] = (1, 64)
    workers: tuple[int, ...] = (1, 2)
    big_bytes: int = 3_000_000
    big_concurrency: int = 4
    held: int = 5000
    hold: float = 5.0
    sse_streams: int = 20
    sse_events: int = 10
    sse_gap_ms: float = 5.0
    sse_bytes: int = 16 * 1024
    loadgen: str = "auto"
    proxy_cmd: str = "{python} -m proxy"
    proxy_cwd: Path = ROOT
    only: tuple[str, ...] = SCENARIOS
    json_path: Path | None = None
    keep: bool = False


@dataclass
class Measure:
    """A load's figures, and the CPU seconds the upstream and the process tree in the middle used meanwhile."""

    result: LoadResult
    upstream_cpu: float
    cpu: float = float("nan")  # NaN for direct calls: nothing in the middle

    def per_request_us(self, seconds: float) -> float:
        """Per answer that was not an error: a failing middle must not look cheap."""
        answered = self.result.requests - self.result.errors
        return seconds / answered * 1e6 if answered > 0 else float("nan")

    @property
    def cpu_us(self) -> float:
        return self.per_request_us(self.cpu)

    @property
    def upstream_us(self) -> float:
        return self.per_request_us(self.upstream_cpu)

    def shares(self) -> str:
        """CPU % of a core: the upstream's, then the middle's when there is one."""
        used = [self.upstream_cpu] + ([] if math.isnan(self.cpu) else [self.cpu])
        return " / ".join(f"{seconds / self.result.seconds:.0%}" for seconds in used)


def request_body(model: str, **extra: object) -> str:
    return json.dumps({"model": model, "prompt": "a lighthouse at dusk", "size": "1024x1024", **extra})


@dataclass
class Harness:
    options: Options
    workdir: Path
    wrk: str | None = None
    upstream: Child | None = None
    upstream_url: str = ""
    started: int = 0  # relay and proxy processes started so far: numbers their logs
    env: dict[str, str] = field(default_factory=lambda: {"PYTHONUNBUFFERED": "1", **os.environ})

    @property
    def rules(self) -> Path:
        return self.workdir / "rules.yaml"

    async def start_upstream(self) -> None:
        o = self.options
        port = free_port()
        command = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--big-bytes", str(o.big_bytes)]
        command += ["--sse-events", str(o.sse_events), "--sse-gap-ms", str(o.sse_gap_ms), "--sse-bytes", str(o.sse_bytes)]
        self.upstream = Child("upstream", command, port, self.workdir / "upstream.log", ROOT, self.env)
        await self.upstream.wait_listening()
        self.upstream_url = f"http://127.0.0.1:{port}"
        images = self.workdir / "images"
        images.mkdir()
        self.rules.write_text(
            RULES.format(
                upstream=self.upstream_url, key=KEY, client_key=CLIENT_KEY, images=images, hold_ms=round(o.hold * 1000),
                probe_ms=PROBE_HOLD_MS, held=o.held, wide=WIDE, never=NEVER, price=PRICE,
            )
        )

    @asynccontextmanager
    async def child(self, name: str, command: list[str], cwd: Path = ROOT) -> AsyncIterator[Child]:
        self.started += 1
        port = free_port()
        log = self.workdir / f"{name}-{self.started}.log"
        child = Child(name, [*command, "--port", str(port)], port, log, cwd, self.env)
        try:
            await child.wait_listening()
            yield child
        finally:
            await child.stop()

    def proxy(self, workers: int) -> AbstractAsyncContextManager[Child]:
        """A fresh proxy (a supervisor and its workers when `workers` > 1)."""
        command = shlex.split(self.options.proxy_cmd.format(python=sys.executable, n=self.started + 1))
        command += ["--rules", str(self.rules)] + (["--workers", str(workers)] if workers > 1 else [])
        return self.child(f"proxy-w{workers}", command, self.options.proxy_cwd)

    def relay(self) -> AbstractAsyncContextManager[Child]:
        """A fresh bare relay (bench.relay) in front of the upstream."""
        return self.child("relay", [sys.executable, "-m", "bench.relay", "--upstream", self.upstream_url])

    @property
    def generator(self) -> str:
        return WRK if self.wrk else AIOHTTP

    async def upstream_stats(self, reset: bool = False) -> dict[str, int]:
        async with aiohttp.ClientSession() as session:
            if reset:
                async with session.post(f"{self.upstream_url}/stats/reset") as response:
                    await response.read()
            async with session.get(f"{self.upstream_url}/stats") as response:
                stats: dict[str, int] = await response.json()
                return stats

    async def upstream_held(self) -> int:
        """The requests the upstream holds right now."""
        return (await self.upstream_stats())["hold_now"]

    def direct(self, kind: str) -> str:
        return f"{self.upstream_url}/{kind}{PATH}"

    @staticmethod
    def via(proxy: Child) -> str:
        return f"http://127.0.0.1:{proxy.port}{PATH}"

    @staticmethod
    def relayed(relay: Child, kind: str) -> str:
        return f"http://127.0.0.1:{relay.port}/{kind}{PATH}"

    async def load(self, url: str, body: str, concurrency: int, middle: Child | None = None) -> Measure:
        """Scenario 1's load generator on `url`, with the CPU the upstream and `middle` used meanwhile."""
        assert self.upstream is not None
        upstream_before = self.upstream.cpu()
        middle_before = middle.cpu() if middle is not None else 0.0
        if self.wrk:
            result = await run_wrk(self.wrk, url, body, concurrency, self.options.duration, HEADERS)
        else:
            result = await run_aiohttp(url, body, concurrency, self.options.duration, HEADERS)
        upstream_cpu = self.upstream.cpu() - upstream_before
        if middle is None:
            return Measure(result, upstream_cpu)
        return Measure(result, upstream_cpu, middle.cpu() - middle_before)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
