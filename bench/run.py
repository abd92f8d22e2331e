"""The benchmark: a fake upstream and the proxy on loopback, each figure measured next to its direct baseline.

    python -m bench [--duration 5] [--only small,big,held,stream] [--json results.json]

Processes: the fake upstream (`bench.upstream`), the proxy (`python -m proxy --rules FILE --port N`,
exactly as users run it, a fresh process per scenario group so that peak RSS belongs to that scenario),
and the load generator (`wrk` for the small-request scenario, else this process's aiohttp client; this
process for the other scenarios). Every proxy figure is measured in the same run, under the same
conditions, as the same request sent straight to the upstream, and the table prints both with their
ratio or difference, so that the comparison holds on a noisy machine. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import AIOHTTP, WRK, LoadResult, ensure_wrk, percentile, run_aiohttp, run_wrk
from bench.procs import Child, free_port, nofile_limit, open_fds, raise_nofile_limit

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000  # every MB in the table is 10^6 bytes
SCENARIOS = ("small", "big", "held", "stream")
# Scenario 3's probe: requests held this long on a channel that leaves `concurrency` at its default.
PROBE_REQUESTS = 40
PROBE_HOLD_MS = 500
# `concurrency` of the bench's channels: the per-channel limit (default 4) must not be what is measured.
WIDE = 10_000
DEFAULT_CONCURRENCY = 4  # proxy.core.rules.DEFAULT_CONCURRENCY, restated: the bench does not import the proxy
PATH = "/v1/images/generations"
KEY = "sk-bench-0123456789"

RULES = """\
server:
  api_keys: []
  images: {{path: "{images}", ttl: 600}}
channels:
  small: {{type: openai, base_url: "{upstream}/small/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
  small-default: {{type: openai, base_url: "{upstream}/small/v1", api_key: "{key}", timeout: 60}}
  big: {{type: openai, base_url: "{upstream}/big/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
  hold: {{type: openai, base_url: "{upstream}/hold-{hold_ms}/v1", api_key: "{key}", timeout: 300, concurrency: {held}}}
  queue: {{type: openai, base_url: "{upstream}/hold-{probe_ms}/v1", api_key: "{key}", timeout: 300}}
  sse: {{type: openai, base_url: "{upstream}/sse/v1", api_key: "{key}", timeout: 60, concurrency: {wide}}}
models:
  bench-small: {{channels: [small]}}
  bench-small-default: {{channels: [small-default]}}
  bench-big: {{channels: [big]}}
  bench-hold: {{channels: [hold]}}
  bench-queue: {{channels: [queue]}}
  bench-sse: {{channels: [sse]}}
"""


def request_body(model: str, **extra: Any) -> str:
    return json.dumps({"model": model, "prompt": "a lighthouse at dusk", "size": "1024x1024", **extra})


@dataclass
class Options:
    duration: float = 5.0
    concurrency: tuple[int, ...] = (1, 64)
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
class Row:
    section: str
    metric: str
    direct: str
    proxy: str
    compare: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *cells: str, **named: str) -> None:
        self.rows.append(Row(*cells, **named))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the run --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.report = Report()
        self.upstream: Child | None = None
        self.upstream_url = ""
        self.rules = workdir / "rules.yaml"
        self.proxies = 0
        self.wrk: str | None = None

    @property
    def generator(self) -> str:
        return WRK if self.wrk else AIOHTTP

    async def start_upstream(self) -> None:
        o = self.options
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "bench.upstream",
            "--port",
            str(port),
            "--big-bytes",
            str(o.big_bytes),
            "--sse-events",
            str(o.sse_events),
            "--sse-gap-ms",
            str(o.sse_gap_ms),
            "--sse-bytes",
            str(o.sse_bytes),
        ]
        self.upstream = Child("upstream", command, port, self.workdir / "upstream.log", ROOT, _env())
        await self.upstream.wait_listening()
        self.upstream_url = f"http://127.0.0.1:{port}"
        images = self.workdir / "images"
        images.mkdir()
        hold_ms, probe_ms = round(o.hold * 1000), PROBE_HOLD_MS
        rules = RULES.format(
            upstream=self.upstream_url, key=KEY, images=images, hold_ms=hold_ms, probe_ms=probe_ms, held=o.held, wide=WIDE
        )
        self.rules.write_text(rules)

    @asynccontextmanager
    async def proxy(self) -> AsyncIterator[Child]:
        """A fresh proxy process for one scenario group (so its VmHWM is that group's peak)."""
        self.proxies += 1
        port = free_port()
        command = [*shlex.split(self.options.proxy_cmd.format(python=sys.executable, n=self.proxies))]
        command += ["--rules", str(self.rules), "--port", str(port)]
        child = Child("proxy", command, port, self.workdir / f"proxy-{self.proxies}.log", self.options.proxy_cwd, _env())
        try:
            await child.wait_listening()
            yield child
        finally:
            await child.stop()

    def direct(self, kind: str) -> str:
        return f"{self.upstream_url}/{kind}{PATH}"

    @staticmethod
    def via(proxy: Child) -> str:
        return f"http://127.0.0.1:{proxy.port}{PATH}"

    async def upstream_stats(self, reset: bool = False) -> dict[str, int]:
        async with aiohttp.ClientSession() as session:
            if reset:
                async with session.post(f"{self.upstream_url}/stats/reset") as response:
                    await response.read()
            async with session.get(f"{self.upstream_url}/stats") as response:
                stats: dict[str, int] = await response.json()
                return stats

    async def load(self, url: str, body: str, concurrency: int, proxy: Child | None = None) -> tuple[LoadResult, list[float]]:
        """The load generator's figures, and the CPU seconds the upstream (and the proxy) used meanwhile."""
        children = [child for child in (self.upstream, proxy) if child is not None]
        before = [child.cpu() for child in children]
        if self.wrk:
            result = await run_wrk(self.wrk, url, body, concurrency, self.options.duration)
        else:
            result = await run_aiohttp(url, body, concurrency, self.options.duration)
        return result, [child.cpu() - start for child, start in zip(children, before, strict=True)]

    # -- 1: small JSON -----------------------------------------------------------------------------

    async def small(self, proxy: Child) -> None:
        body = request_body("bench-small")
        await warm_up(self.via(proxy), body, 200)
        await warm_up(self.direct("small"), body, 200)
        raw: dict[str, Any] = {}
        for concurrency in self.options.concurrency:
            say(f"small JSON, concurrency {concurrency}: direct, then proxy ({self.options.duration:g}s each)")
            direct, direct_cpu = await self.load(self.direct("small"), body, concurrency)
            proxied, proxy_cpu = await self.load(self.via(proxy), body, concurrency, proxy)
            raw[f"c{concurrency}"] = {"direct": asdict(direct), "proxy": asdict(proxied)}
            section = f"1 small JSON c={concurrency} ({direct.generator})"
            ratio = proxied.rps / direct.rps if direct.rps else 0.0
            target, passed = "", ""
            if concurrency == 64:
                target, passed = ">= 30% of direct", verdict(ratio >= 0.30)
            self.report.add(
                section, "requests/s", fmt(direct.rps, 0), fmt(proxied.rps, 0), f"{ratio:.0%} of direct", target, passed
            )
            added_p50 = proxied.p50_ms - direct.p50_ms
            target, passed = "", ""
            if concurrency == 1:
                target, passed = "added < 1 ms", verdict(added_p50 < 1.0)
            self.report.add(
                "", "p50 latency ms", fmt(direct.p50_ms, 3), fmt(proxied.p50_ms, 3), f"{added_p50:+.3f} ms", target, passed
            )
            added_p99 = proxied.p99_ms - direct.p99_ms
            self.report.add("", "p99 latency ms", fmt(direct.p99_ms, 3), fmt(proxied.p99_ms, 3), f"{added_p99:+.3f} ms")
            per_request = 1000 / proxied.rps - 1000 / direct.rps if proxied.rps and direct.rps else float("nan")
            self.report.add(
                "",
                "service time ms/req (1/throughput)",
                fmt(1000 / direct.rps, 3),
                fmt(1000 / proxied.rps, 3),
                f"{per_request:+.3f} ms",
            )
            self.report.add("", "CPU % of a core: upstream [/ proxy]", _shares(direct_cpu, direct), _shares(proxy_cpu, proxied))
            cpu_per_request = proxy_cpu[1] / proxied.requests * 1e6 if proxied.requests else float("nan")
            upstream_per_request = direct_cpu[0] / direct.requests * 1e6 if direct.requests else float("nan")
            self.report.add(
                "",
                "CPU us per request: upstream / proxy",
                fmt(upstream_per_request, 0),
                fmt(cpu_per_request, 0),
                "robust to noise",
            )
            raw[f"c{concurrency}"] |= {"cpu_direct": direct_cpu, "cpu_proxy": proxy_cpu}
            errors = direct.errors + proxied.errors
            if errors:
                self.report.add("", "errors (non-2xx, socket)", str(direct.errors), str(proxied.errors), "", "none", "MISS")
            if concurrency == max(self.options.concurrency) and concurrency > DEFAULT_CONCURRENCY:
                say(f"small JSON, concurrency {concurrency}, channel without `concurrency` set: proxy")
                default, _ = await self.load(self.via(proxy), request_body("bench-small-default"), concurrency, proxy)
                raw[f"c{concurrency}_default_channel"] = asdict(default)
                self.report.add(
                    "",
                    f"req/s, channel `concurrency` default ({DEFAULT_CONCURRENCY})",
                    fmt(direct.rps, 0),
                    fmt(default.rps, 0),
                    f"{default.rps / direct.rps:.0%}, p50 {default.p50_ms:.1f} ms",
                )
        self.report.raw["small"] = raw

    # -- 2: 3 MB b64 ------------------------------------------------------------------------------

    async def big(self) -> None:
        o = self.options
        say(f"3 MB b64: direct ({o.duration:g}s)")
        body = request_body("bench-big")
        await warm_up(self.direct("big"), body, 2)
        direct = await throughput(self.direct("big"), body, o.big_concurrency, o.duration, check=_has_b64)
        # MB/s counts the upstream's answer (the base64 the proxy had to handle) whatever the proxy answered.
        answer_bytes = direct["last_bytes"]
        direct["mbs"] = direct["rps"] * answer_bytes / MB
        raw: dict[str, Any] = {"direct": direct, "answer_bytes": answer_bytes}
        for label, response_format in (("pass-through", "b64_json"), ("-> url", "url")):
            say(f"3 MB b64 {label}: fresh proxy ({o.duration:g}s)")
            async with self.proxy() as proxy:
                proxy_body = request_body("bench-big", response_format=response_format)
                check = _has_b64 if response_format == "b64_json" else _has_url
                await warm_up(self.via(proxy), proxy_body, 2)
                idle = proxy.rss()
                result = await throughput(self.via(proxy), proxy_body, o.big_concurrency, o.duration, check=check)
                result |= {"idle_rss": idle, "peak_rss": proxy.peak_rss(), "mbs": result["rps"] * answer_bytes / MB}
                if response_format == "url" and result.get("sample_url"):
                    result["hosted_bytes_ok"] = await _hosted_image_ok(result["sample_url"], o.big_bytes * 3 // 4)
            raw[label] = result
        self.report.raw["big"] = raw
        answer = answer_bytes / MB
        section = f"2 {answer:.1f} MB b64_json answer, c={o.big_concurrency}"
        for label, target_mbs in (("pass-through", 200.0), ("-> url", 100.0)):
            result = raw[label]
            ratio = result["mbs"] / direct["mbs"] if direct["mbs"] else 0.0
            ok = result["mbs"] >= target_mbs and result["errors"] == 0
            self.report.add(
                section if label == "pass-through" else "",
                f"{label} MB/s",
                fmt(direct["mbs"]),
                fmt(result["mbs"]),
                f"{ratio:.0%} of direct",
                f">= {target_mbs:.0f} MB/s",
                verdict(ok),
            )
            self.report.add(
                "",
                f"{label} requests/s",
                fmt(direct["rps"]),
                fmt(result["rps"]),
                f"{result['requests']} requests, {result['errors']} errors",
            )
            self.report.add(
                "",
                f"{label} proxy RSS MB idle / peak",
                "-",
                f"{result['idle_rss'] / MB:.0f} / {result['peak_rss'] / MB:.0f}",
                f"+{(result['peak_rss'] - result['idle_rss']) / MB:.0f} MB at peak",
            )
            if "hosted_bytes_ok" in result:
                self.report.add("", "-> url: hosted image fetched back", "-", "ok" if result["hosted_bytes_ok"] else "WRONG")

    # -- 3: thousands of held requests -----------------------------------------------------------

    async def held(self) -> None:
        o = self.options
        body = request_body("bench-hold")
        say(f"{o.held} held requests ({o.hold:g}s each): direct")
        await self.upstream_stats(reset=True)
        direct = await hold_many(self.direct(f"hold-{round(o.hold * 1000)}"), body, o.held, None)
        direct["upstream_peak"] = (await self.upstream_stats())["hold_peak"]
        async with self.proxy() as proxy:
            await warm_up(self.via(proxy), request_body("bench-small"), 50)
            idle = proxy.rss()
            idle_fds = open_fds(proxy.pid)
            await self.upstream_stats(reset=True)
            say(f"{o.held} held requests: through the proxy")
            proxied = await hold_many(self.via(proxy), body, o.held, proxy, idle_fds)
            proxied["upstream_peak"] = (await self.upstream_stats())["hold_peak"]
            proxied |= {"idle_rss": idle, "peak_rss": proxy.peak_rss(), "idle_fds": idle_fds}
            say(f"{PROBE_REQUESTS} requests held {PROBE_HOLD_MS} ms on a channel without `concurrency` set")
            await self.upstream_stats(reset=True)
            probe = await hold_many(self.via(proxy), request_body("bench-queue"), PROBE_REQUESTS, None)
            probe["upstream_peak"] = (await self.upstream_stats())["hold_peak"]
        self.report.raw["held_default_concurrency"] = probe
        self.report.raw["held"] = {"direct": direct, "proxy": proxied}
        n = o.held
        peak = proxied["peak_rss"]
        all_ok = direct["ok"] == n and proxied["ok"] == n
        section = f"3 {n} requests held {o.hold:g}s"
        self.report.add(section, "succeeded", f"{direct['ok']}/{n}", f"{proxied['ok']}/{n}", "", "all", verdict(all_ok))
        self.report.add(
            "",
            "wall time s (all answered)",
            fmt(direct["wall"]),
            fmt(proxied["wall"]),
            f"+{proxied['wall'] - direct['wall']:.1f} s",
        )
        self.report.add(
            "",
            "latency p50 / max s",
            f"{direct['p50']:.2f} / {direct['max']:.2f}",
            f"{proxied['p50']:.2f} / {proxied['max']:.2f}",
        )
        capped = proxied["upstream_peak"] < 0.95 * n  # a few may start late or end early: only a real cap counts
        self.report.add(
            "",
            "peak upstream in flight",
            str(direct["upstream_peak"]),
            str(proxied["upstream_peak"]),
            "proxy pool caps upstream connections" if capped else "",
        )
        self.report.add(
            "",
            "proxy open fds idle / peak",
            "-",
            f"{proxied['idle_fds']} / {proxied['peak_fds']}",
            f"{n} in by {proxied['all_in_s']:.1f} s" if proxied["all_in_s"] is not None else "never all in at once",
        )
        self.report.add(
            "",
            "proxy RSS MB idle / peak",
            "-",
            f"{idle / MB:.0f} / {peak / MB:.0f}",
            "",
            "peak < 250 MB",
            verdict(peak < 250 * MB),
        )
        per_connection = (peak - idle) / n
        self.report.add("", "proxy memory per held request", "-", f"{per_connection / 1024:.1f} KiB", "(peak - idle) / n")
        probe = self.report.raw["held_default_concurrency"]
        self.report.add(
            "",
            f"default `concurrency`: {PROBE_REQUESTS} x {PROBE_HOLD_MS} ms",
            "-",
            f"peak {probe['upstream_peak']} upstream",
            f"{probe['ok']}/{PROBE_REQUESTS} ok in {probe['wall']:.1f} s",
        )
        self.report.notes.append(
            f"held: the probe row uses a channel with the default `concurrency` ({DEFAULT_CONCURRENCY}): "
            f"{probe['upstream_peak']} of {PROBE_REQUESTS} requests reached the upstream at once "
            f"(`concurrency` bounds the calls of one fanned-out request, not clients)."
        )
        if capped:
            self.report.notes.append(
                f"held: the proxy kept at most {proxied['upstream_peak']} upstream requests in flight (its upstream "
                f"connection pool limit), so the {n} requests were served in waves: all succeeded, after "
                f"{proxied['wall']:.1f} s instead of {direct['wall']:.1f} s."
            )

    # -- 4: streaming ----------------------------------------------------------------------------

    async def stream(self, proxy: Child) -> None:
        o = self.options
        say(f"streaming: {o.sse_streams} streams of {o.sse_events} events, direct then proxy")
        body = request_body("bench-sse", stream=True)
        await stream_latencies(self.via(proxy), body, 2)
        direct = await stream_latencies(self.direct("sse"), body, o.sse_streams)
        proxied = await stream_latencies(self.via(proxy), body, o.sse_streams)
        self.report.raw["stream"] = {"direct": direct, "proxy": proxied}
        section = f"4 SSE, {o.sse_events} events of {o.sse_bytes // 1024} KiB x {o.sse_streams}"
        for metric, key in (
            ("first event ms (median)", "first_p50"),
            ("every event p50 ms", "p50"),
            ("every event p99 ms", "p99"),
        ):
            added = proxied[key] - direct[key]
            self.report.add(
                section if key == "first_p50" else "", metric, fmt(direct[key], 3), fmt(proxied[key], 3), f"{added:+.3f} ms"
            )
            section = ""
        if direct["events"] != proxied["events"]:
            self.report.add("", "events received", str(direct["events"]), str(proxied["events"]), "", "equal", "MISS")

    # -- all --------------------------------------------------------------------------------------

    async def run(self) -> Report:
        o = self.options
        started = time.perf_counter()
        raise_nofile_limit()
        log: list[str] = []
        if o.loadgen in ("auto", WRK) and "small" in o.only:
            self.wrk = ensure_wrk(log)
            if self.wrk is None and o.loadgen == WRK:
                raise RuntimeError("wrk was asked for and cannot be installed: " + "; ".join(log))
        self.report.notes.extend(log)
        self.report.header = describe(self, o)
        await self.start_upstream()
        try:
            if "small" in o.only or "stream" in o.only:
                async with self.proxy() as proxy:
                    if "small" in o.only:
                        await self.small(proxy)
                    if "stream" in o.only:
                        await self.stream(proxy)
            if "big" in o.only:
                await self.big()
            if "held" in o.only:
                await self.held()
        finally:
            assert self.upstream is not None
            await self.upstream.stop()
        elapsed = time.perf_counter() - started
        kept = str(self.workdir) if o.keep else "(removed; --keep keeps them)"
        self.report.notes.append(f"whole run: {elapsed:.0f} s; logs in {kept}")
        self.report.raw["elapsed_s"] = elapsed
        return self.report


def _shares(seconds: list[float], result: LoadResult) -> str:
    return " / ".join(f"{used / result.seconds:.0%}" for used in seconds)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# -- clients for the aiohttp-driven scenarios -----------------------------------------------------


async def warm_up(url: str, body: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                data = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"warm-up to {url} answered {response.status}: {data[:300]!r}")


def _has_b64(data: bytes) -> bool:
    return len(data) > 1_000_000 and _B64.search(data[:4096]) is not None


def _has_url(data: bytes) -> bool:
    return _URL.search(data) is not None and _B64.search(data) is None


async def throughput(url: str, body: str, concurrency: int, seconds: float, check: Callable[[bytes], bool]) -> dict[str, Any]:
    """Requests answered in `seconds` by `concurrency` keep-alive workers; each answer is checked."""
    last_bytes = 0
    requests = errors = 0
    sample: dict[str, Any] = {}
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal requests, errors, last_bytes
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    data = await response.read()
                    good = response.status == 200 and check(data)
                latencies.append(time.perf_counter() - began)
                requests += 1
                last_bytes = len(data)
                if not good:
                    errors += 1
                    sample.setdefault("bad_answer", data[:300].decode(errors="replace"))
                elif "sample_url" not in sample and _URL.search(data):
                    sample["sample_url"] = json.loads(data)["data"][0]["url"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "requests": requests,
        "errors": errors,
        "elapsed": elapsed,
        "rps": requests / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "last_bytes": last_bytes,
        **sample,
    }


async def _hosted_image_ok(url: str, expected: int) -> bool:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        data = await response.read()
    return response.status == 200 and abs(len(data) - expected) < 64 and data.startswith(b"\x89PNG")


async def hold_many(url: str, body: str, count: int, proxy: Child | None, idle_fds: int = 0) -> dict[str, Any]:
    """`count` requests sent at once and held by the upstream; while they run, the proxy's fds are sampled."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    peak_fds = 0
    all_in: float | None = None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one() -> None:
            began = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - began)
            statuses[status] = statuses.get(status, 0) + 1

        requests = asyncio.gather(*(one() for _ in range(count)))
        while not requests.done():
            if proxy is not None:
                fds = open_fds(proxy.pid)
                peak_fds = max(peak_fds, fds)
                if all_in is None and fds >= count + idle_fds:
                    all_in = time.perf_counter() - start
            await asyncio.wait({requests}, timeout=0.1)
        await requests
        wall = time.perf_counter() - start
    return {
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "wall": wall,
        "p50": statistics.median(latencies),
        "max": max(latencies),
        "peak_fds": peak_fds,
        "all_in_s": all_in,
    }


_T_NS = re.compile(rb'"t_ns":(\d+)')
_B64 = re.compile(rb'"b64_json":\s*"')
_URL = re.compile(rb'"url":\s*"')


def _events(buffer: bytearray) -> Iterator[bytes]:
    """Complete events (ending in a blank line) taken off the front of `buffer`."""
    while (end := buffer.find(b"\n\n")) >= 0:
        event = bytes(buffer[:end])
        del buffer[: end + 2]
        yield event


async def stream_latencies(url: str, body: str, streams: int) -> dict[str, Any]:
    """Per event: the client's CLOCK_MONOTONIC at arrival minus the upstream's just before it wrote it."""
    every: list[float] = []
    first: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(streams):
            buffer = bytearray()
            seen = 0
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                if response.status != 200:
                    raise RuntimeError(f"stream to {url} answered {response.status}: {(await response.read())[:300]!r}")
                async for chunk in response.content.iter_any():
                    arrived = time.monotonic_ns()
                    buffer += chunk
                    for event in _events(buffer):
                        match = _T_NS.search(event)
                        if match is None:
                            continue
                        latency = (arrived - int(match.group(1))) / 1e6
                        every.append(latency)
                        if seen == 0:
                            first.append(latency)
                        seen += 1
    return {
        "events": len(every),
        "first_p50": statistics.median(first) if first else float("nan"),
        "p50": statistics.median(every) if every else float("nan"),
        "p99": percentile(every, 0.99),
    }


# -- output ---------------------------------------------------------------------------------------


def _command_output(command: list[str], *, any_status: bool = False) -> str:
    """The command's output, or "" when it cannot run or fails (`wrk -v` exits 1: any_status)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if done.returncode != 0 and not any_status:
        return ""
    return (done.stdout + done.stderr).strip()


def describe(bench: Bench, options: Options) -> list[str]:
    memory = _command_output(["free", "-m"]).splitlines()
    total = memory[1].split()[1] if len(memory) > 1 else "?"
    available = memory[1].split()[-1] if len(memory) > 1 else "?"
    nproc = _command_output(["nproc"]) or "?"
    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) if shutil.which("git") else ""
    generator = AIOHTTP + " (in the bench process)"
    if "small" not in options.only:
        generator = "(scenario 1 not run)"
    elif bench.wrk:
        version = _command_output([bench.wrk, "-v"], any_status=True).splitlines()
        generator = (version[0] if version else "wrk") + ", 1 thread"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"imagegate bench  {now}  commit {commit or '?'}",
        f"machine: {nproc} CPUs ({platform.machine()}), {total} MB RAM ({available} MB available), Linux {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, open-file limit {nofile_limit()}",
        f"load generator (scenario 1): {generator}; scenarios 2-4: aiohttp client in the bench process",
        f"proxy: {options.proxy_cmd.format(python=Path(sys.executable).name, n='N')} (fresh process per scenario group), "
        f"{options.duration:g} s per measurement",
    ]


def render(report: Report) -> str:
    columns = ("scenario", "metric", "direct", "proxy", "proxy vs direct", "target", "")
    rows = [columns] + [(r.section, r.metric, r.direct, r.proxy, r.compare, r.target, r.verdict) for r in report.rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    right = {2, 3}

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [*report.header, "", line(columns), rule]
    for index, row in enumerate(rows[1:]):
        if row[0] and index:
            out.append("")
        out.append(line(row))
    verdicts = [r.verdict for r in report.rows if r.verdict]
    out += ["", f"targets: {verdicts.count('PASS')} pass, {verdicts.count('MISS')} miss;  MB = 10^6 bytes"]
    out += [f"note: {note}" for note in report.notes]
    return "\n".join(out)


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    defaults = Options()
    description = "Benchmark the proxy against direct calls to a fake upstream."
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds per throughput measurement")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--held", type=int, default=defaults.held, help="requests held at once in scenario 3")
    parser.add_argument("--hold", type=float, default=defaults.hold, help="seconds the upstream holds each of them")
    parser.add_argument("--big-bytes", type=int, default=defaults.big_bytes, help="base64 characters of scenario 2's image")
    parser.add_argument("--big-concurrency", type=int, default=defaults.big_concurrency)
    parser.add_argument("--loadgen", choices=("auto", WRK, AIOHTTP), default=defaults.loadgen, help="scenario 1's load generator")
    parser.add_argument(
        "--proxy-cmd",
        default=defaults.proxy_cmd,
        help="how to start the proxy ({python}: this interpreter, {n}: the proxy's sequence number)",
    )
    parser.add_argument("--proxy-cwd", type=Path, default=defaults.proxy_cwd, help="the proxy's working directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every raw figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (rules, logs)")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return Options(
        duration=args.duration,
        big_bytes=args.big_bytes,
        big_concurrency=args.big_concurrency,
        held=args.held,
        hold=args.hold,
        loadgen=args.loadgen,
        proxy_cmd=args.proxy_cmd,
        proxy_cwd=args.proxy_cwd,
        only=only,
        json_path=args.json,
        keep=args.keep,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    try:
        report = asyncio.run(Bench(options, workdir).run())
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    if options.json_path is not None:
        document = {"header": report.header, "rows": [asdict(row) for row in report.rows], "notes": report.notes, **report.raw}
        options.json_path.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
