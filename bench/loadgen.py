"""Load generators for the small-request scenario: `wrk` (Debian's package) or an aiohttp client.

`wrk` is preferred: it is C, one thread, epoll, and costs far less CPU per request than any Python
client, which matters on a 2-core machine where the load generator competes with the upstream and the
proxy. When it is missing and the bench runs as root with apt, `ensure_wrk` installs it; otherwise the
aiohttp generator runs in the bench's own process (which is separate from the upstream and the proxy).
Both report the same `LoadResult`, and the table names the generator used.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

WRK = "wrk"
AIOHTTP = "aiohttp"


@dataclass(frozen=True)
class LoadResult:
    generator: str
    concurrency: int
    seconds: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    rps: float
    p50_ms: float
    p99_ms: float


def ensure_wrk(log: list[str]) -> str | None:
    """The path of `wrk`, installing Debian's package when missing and possible; None when it cannot be had."""
    found = shutil.which(WRK)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log.append("wrk missing and apt-get unavailable (or not root): using the aiohttp load generator")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", WRK]
    for attempt in ([install], [[apt, "update", "-q"], install]):
        ok = True
        for command in attempt:
            try:
                done = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired):
                ok = False
                break
            if done.returncode != 0:
                ok = False
                break
        if ok and (found := shutil.which(WRK)):
            log.append("installed wrk with apt-get")
            return found
    log.append("apt-get could not install wrk: using the aiohttp load generator")
    return None


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str, concurrency: int, seconds: float) -> LoadResult:
    """Requests, errors, requests/s and the 50th/99th latency percentiles from `wrk --latency` output."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+),", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if total is None or rps is None or set(percentiles) != {"50", "99"}:
        raise ValueError(f"could not parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(int(n) for n in sockets.groups()) if sockets else 0)
    return LoadResult(
        generator=WRK,
        concurrency=concurrency,
        seconds=seconds,
        requests=int(total.group(1)),
        errors=errors,
        rps=float(rps.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
    )


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


async def run_wrk(wrk: str, url: str, body: str, concurrency: int, seconds: float, headers: Mapping[str, str]) -> LoadResult:
    script = f'wrk.method = "POST"\nwrk.body = {_lua_string(body)}\n'
    script += "".join(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}\n" for name, value in headers.items())
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        path = Path(scratch) / "post.lua"
        path.write_text(script)
        # One thread: the machine's cores are needed by the upstream and the proxy.
        command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "30s", "-s", str(path), url]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output.decode(errors='replace')}")
    return parse_wrk(output.decode(errors="replace"), concurrency, seconds)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (values need not be sorted); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def run_aiohttp(url: str, body: str, concurrency: int, seconds: float, headers: Mapping[str, str]) -> LoadResult:
    """`concurrency` keep-alive workers posting `body` for `seconds`; latencies measured per request."""
    latencies: list[float] = []
    errors = 0
    data = body.encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        ok = 200 <= response.status < 300
                except aiohttp.ClientError:
                    ok = False
                latencies.append((time.perf_counter() - began) * 1000)
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return LoadResult(
        generator=AIOHTTP,
        concurrency=concurrency,
        seconds=elapsed,
        requests=len(latencies),
        errors=errors,
        rps=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p99_ms=percentile(latencies, 0.99),
    )
