"""The bench's own aiohttp clients for scenarios 2-4 (scenario 1 uses bench.loadgen).

Every request carries the bench's client key (`HEADERS`): the proxy's rules give that key limits and a
budget, so admission and the ledger run on every request. The upstream and the relay ignore it.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp

from bench.loadgen import percentile

CLIENT_KEY = "sk-bench-client-0123456789"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}


async def warm_up(url: str, body: str, count: int, concurrency: int = 4) -> None:
    """`count` requests, `concurrency` at a time, each on a connection of its own: the kernel spreads new
    connections over the workers, so every worker has served some before an idle figure is read."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

        async def some(n: int) -> None:
            for _ in range(n):
                async with session.post(url, data=body, headers=HEADERS) as response:
                    data = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"warm-up to {url} answered {response.status}: {data[:300]!r}")

        await asyncio.gather(*(some(len(range(first, count, concurrency))) for first in range(concurrency)))


def has_b64(data: bytes, chars: int) -> bool:
    """An answer holding a `b64_json` of (at least) the `chars` base64 characters the upstream sent."""
    return len(data) > chars and _B64.search(data[:4096]) is not None


def has_url(data: bytes) -> bool:
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
                async with session.post(url, data=body, headers=HEADERS) as response:
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


async def hosted_image_ok(url: str, expected: int) -> bool:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        data = await response.read()
    return response.status == 200 and abs(len(data) - expected) < 64 and data.startswith(b"\x89PNG")


async def hold_many(
    url: str, body: str, count: int, fds: Callable[[], int] | None = None, held: Callable[[], Awaitable[int]] | None = None
) -> dict[str, Any]:
    """`count` requests sent at once and held by the upstream; while they run, `fds()` (the open fds of the
    process tree in front of the upstream) and `held()` (the requests the upstream holds) every 100 ms."""
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
                async with session.post(url, data=body, headers=HEADERS) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - began)
            statuses[status] = statuses.get(status, 0) + 1

        requests = asyncio.gather(*(one() for _ in range(count)))
        while not requests.done():
            if fds is not None:
                peak_fds = max(peak_fds, fds())
            if held is not None and all_in is None and await held() >= count:
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
            async with session.post(url, data=body, headers=HEADERS) as response:
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


