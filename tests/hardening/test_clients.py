"""Hardening: slow and abusive clients against the proxy as it really runs (`python -m proxy`, a subprocess).

Raw asyncio sockets play the clients: slowloris headers, trickled and stalled bodies, thousands of idle
connections, oversized header blocks, and clients that leave mid-stream or mid-upload. For each, a
well-behaved client must keep getting fast answers, the proxy's memory (VmRSS of the subprocess) and
descriptors must stay bounded and come back when the abusers leave, and work for a client that left
must stop (the upstream sees the disconnect).

The bounds, as `python -m proxy` runs:
- `server.keepalive_timeout` (default 15 s, aiohttp's `keepalive_timeout`): armed when a connection is
  accepted and re-armed between requests; a request head still incomplete when it fires closes the
  connection. It is a total bound on reading headers, so a slowloris is cut.
- `server.body_timeout` (default 120 s): the whole body must arrive in time, else 408 and the
  connection is closed, so trickled and stalled bodies are cut.
- aiohttp's `max_line_size=8190`, `max_field_size=8190`, at most 128 headers: a head is at most ~1 MB.
- `server.max_request_bytes` (default 64 MiB) counts a compressed body's decoded bytes, decoded in
  64 KiB steps: a gzip bomb costs the proxy about the limit.
The tests run with both timeouts at 1.5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.factories import LOCAL, OPENAI, free_port, rules_yaml, url_of, wait_listening
from tests.fakes.openai import KEY, FakeOpenAI
from tests.hardening.figures import record

ROOT = Path(__file__).resolve().parents[2]
FAST = 1.0  # seconds a well-behaved request may take while abusers are connected
RSS_BOUND = 100 * 1024 * 1024
MODELS = {"gpt-image-1.5": {"channels": ["openai"]}, "local-image": {"channels": ["local"]}}
CHANNELS = {"openai": {**OPENAI, "timeout": 10}, "local": LOCAL}
SERVER = {
    "keepalive_timeout": 1.5,  # the deadline for a request head (slowloris)
    "body_timeout": 1.5,  # the deadline for a whole body (trickled or stalled)
    "shutdown_grace": 1,
    "max_request_bytes": 33554432,
    "images": {"path": "${IMAGES}"},
}
RULES = rules_yaml(MODELS, CHANNELS, server=SERVER)
# -- the proxy process --------------------------------------------------------------------------------


def proc_status(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field_name} missing for {pid}")


@dataclass
class Proxy:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.process.returncode is None


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, upstream: str = "http://127.0.0.1:9", text: str = RULES) -> AsyncIterator[Proxy]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    port, log = free_port(), tmp_path / "proxy.log"
    env = {**os.environ, "UPSTREAM": upstream, "OPENAI_API_KEY": KEY, "IMAGES": str(tmp_path / "images")}
    prefix = ["-m", "proxy"]
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *prefix, "--rules", str(rules), "--port", str(port), cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    proxy = Proxy(process, port, log)
    try:
        await wait_listening(port, process, log)
        yield proxy
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def normal_request(proxy: Proxy) -> float:
    """A well-behaved client's generation (new connection each time); its latency in seconds."""
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url("/v1/images/generations"), json={"model": "local-image", "prompt": "p", "size": "16x16"}
        ) as response,
    ):
        body = await response.json()
        assert response.status == 200 and body["data"][0]["b64_json"], body
    return time.monotonic() - started


async def keep_probing(proxy: Proxy, seconds: float, every: float = 0.25) -> list[float]:
    """Normal requests, one after another, for `seconds`: their latencies."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        latencies.append(await normal_request(proxy))
        await asyncio.sleep(every)
    return latencies


async def connect(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


def closed_by_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    return reader.at_eof() or writer.is_closing()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float, until: float) -> bool:
    """Send `data` one byte per `every` seconds until the monotonic time `until`; False once the proxy cut us off."""
    for byte in data:
        if time.monotonic() >= until:
            return True
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except (ConnectionError, OSError):
            return False
        await asyncio.sleep(every)
    return True


async def watch_for_close(reader: asyncio.StreamReader, seconds: float) -> float | None:
    """Seconds until the proxy closes the connection (EOF or reset), or None if it is still open after `seconds`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except (ConnectionError, OSError):
        pass
    return time.monotonic() - started


HEAD = b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY = json.dumps({"model": "local-image", "prompt": "p", "size": "16x16"}).encode()


async def slow_client(proxy: Proxy, kind: str, seconds: float) -> float | None:
    """One abuser for `seconds`: when (if at all) the proxy closed its connection."""
    reader, writer = await connect(proxy)
    until = time.monotonic() + seconds
    try:
        if kind == "slowloris":  # the head, one byte every 0.5 s, never finished
            watcher = asyncio.ensure_future(watch_for_close(reader, seconds + 0.5))
            await trickle(writer, HEAD + b"X-Padding: " + b"a" * 100, 0.5, until)
        elif kind == "trickled body":  # a complete head, then the body one byte every 0.5 s
            writer.write(HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode())
            watcher = asyncio.ensure_future(watch_for_close(reader, seconds + 0.5))
            await trickle(writer, BODY, 0.5, until)
        else:  # "stalled body": a complete head announcing a body that never comes
            writer.write(HEAD + b"Content-Length: 1000\r\n\r\n")
            watcher = asyncio.ensure_future(watch_for_close(reader, seconds + 0.5))
        return await watcher
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


# -- slowloris, trickled and stalled bodies ------------------------------------------------------------

ABUSERS = 30
ABUSE_SECONDS = 4.0


@pytest.mark.parametrize("kind", ["slowloris", "trickled body", "stalled body"])
async def test_slow_clients_do_not_starve_others(tmp_path: Path, kind: str) -> None:
    async with serve(tmp_path) as proxy:
        await normal_request(proxy)
        rss0, fds0 = proxy.rss(), proxy.fds()
        abusers = [asyncio.ensure_future(slow_client(proxy, kind, ABUSE_SECONDS)) for _ in range(ABUSERS)]
        await asyncio.sleep(0.3)
        latencies = await keep_probing(proxy, ABUSE_SECONDS - 0.8)
        rss_during = proxy.rss()
        closed_after = await asyncio.gather(*abusers)
        await asyncio.sleep(0.3)
        fds_after, alive = proxy.fds(), proxy.alive()
    cut = [seconds for seconds in closed_after if seconds is not None]
    worst = max(latencies)
    print(
        f"{kind}: {ABUSERS} abusers for {ABUSE_SECONDS}s; proxy cut {len(cut)} of them; normal requests "
        f"max {worst:.3f}s over {len(latencies)}; proxy RSS {rss0 / 2**20:.1f} -> {rss_during / 2**20:.1f} MB; "
        f"fds {fds0} -> {fds_after} after they left"
    )
    fine = alive and worst < FAST and rss_during - rss0 < RSS_BOUND and fds_after <= fds0 + 2
    record("abusive clients survived", ABUSERS, ABUSERS if fine else 0)
    record(f"{kind} connections cut by the proxy within {ABUSE_SECONDS:g} s", ABUSERS, len(cut))
    assert alive and worst < FAST, latencies
    assert len(cut) == ABUSERS, f"only {len(cut)} of {ABUSERS} slow clients were cut"
    assert rss_during - rss0 < RSS_BOUND
    assert fds_after <= fds0 + 2, "the abusers' connections were not released after they left"


async def test_slow_heads_and_bodies_are_cut_at_their_deadlines(tmp_path: Path) -> None:
    """A slowloris is cut at `server.keepalive_timeout`; a stalled body gets its 408 at `server.body_timeout`
    (both 1.5 s) and the connection closes after aiohttp's 1 s lingering for the unread body."""
    async with serve(tmp_path) as proxy:
        await normal_request(proxy)
        head_cut, body_cut = await asyncio.gather(slow_client(proxy, "slowloris", 4.0), slow_client(proxy, "stalled body", 4.0))
    print(f"slowloris cut after {head_cut}s; stalled body cut after {body_cut}s")
    record("slow heads and bodies cut at their deadline", 2, int(head_cut is not None) + int(body_cut is not None))
    assert head_cut is not None and head_cut < 2.5
    assert body_cut is not None and body_cut < 3.5


# -- header blocks beyond aiohttp's limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "head"),
    [
        ("header line of 100 KB", HEAD + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"),
        ("10,000 headers", HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n"),
        ("request line of 100 KB", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ],
)
async def test_oversized_request_heads_are_refused_at_once(tmp_path: Path, kind: str, head: bytes) -> None:
    async with serve(tmp_path) as proxy:
        rss0 = proxy.rss()
        started = time.monotonic()
        reader, writer = await connect(proxy)
        writer.write(head)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
        try:
            async with asyncio.timeout(5):
                answer = await reader.read(200)
        except (ConnectionError, OSError):
            answer = b""
        elapsed = time.monotonic() - started
        writer.close()
        latency = await normal_request(proxy)
        rss1 = proxy.rss()
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
    print(f"{kind}: {status} in {elapsed:.3f}s; a normal request then took {latency:.3f}s; RSS +{(rss1 - rss0) / 2**20:.1f} MB")
    refused = status in ("400", "413", "414", "431", "closed") and elapsed < FAST
    record("oversized request heads refused at once (4xx or closed)", 1, int(refused))
    record("abusive clients survived", 1, int(refused and latency < FAST))
    assert refused and latency < FAST


# -- thousands of idle connections -------------------------------------------------------------------------

IDLE = 2000


async def test_thousands_of_idle_connections(tmp_path: Path) -> None:
    raise_fd_limit(IDLE * 2 + 1024)  # the proxy inherits the limit: it needs one descriptor per connection too
    # Idle connections live until keepalive_timeout: long enough here to hold them all while measuring.
    async with serve(tmp_path, text=rules_yaml(MODELS, CHANNELS, server={**SERVER, "keepalive_timeout": 30})) as proxy:
        await normal_request(proxy)
        rss0, fds0 = proxy.rss(), proxy.fds()
        opened: list[asyncio.StreamWriter] = []
        try:
            for start in range(0, IDLE, 250):
                pairs = await asyncio.gather(*(connect(proxy) for _ in range(min(250, IDLE - start))))
                opened.extend(writer for _, writer in pairs)
            # Every connection accepted and its protocol set up: a busy machine may take longer than half a second.
            for _ in range(50):
                await asyncio.sleep(0.1)
                if proxy.fds() >= fds0 + IDLE:
                    break
            fds1, rss1 = proxy.fds(), proxy.rss()
            latencies = [await normal_request(proxy) for _ in range(5)]
        finally:
            for writer in opened:
                writer.close()
        for _ in range(50):  # closing 2,000 sockets takes the proxy a moment
            if proxy.fds() <= fds0 + 2:
                break
            await asyncio.sleep(0.1)
        fds2, rss2 = proxy.fds(), proxy.rss()
        after = await normal_request(proxy)
    accepted = fds1 - fds0
    per_connection = (rss1 - rss0) / max(accepted, 1)
    print(
        f"{IDLE} idle connections: proxy accepted {accepted}; RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MB "
        f"({per_connection / 1024:.1f} KB per connection) -> {rss2 / 2**20:.1f} MB after they left; fds {fds0} -> {fds1} "
        f"-> {fds2}; normal requests meanwhile max {max(latencies):.3f}s, after {after:.3f}s"
    )
    fine = accepted >= IDLE * 0.99 and max(latencies) < FAST and rss1 - rss0 < RSS_BOUND and fds2 <= fds0 + 2
    record("idle connections held while normal requests answered in under 1 s", IDLE, accepted if fine else 0)
    record("idle connections: proxy RSS per connection under 50 KB", 1, int(per_connection < 50 * 1024))
    record("abusive clients survived", IDLE, IDLE if fine else 0)
    assert accepted >= IDLE * 0.99, f"the proxy holds only {accepted} of {IDLE} connections"
    assert max(latencies) < FAST, latencies
    assert rss1 - rss0 < RSS_BOUND
    assert fds2 <= fds0 + 2, f"{fds2 - fds0} descriptors not released after the idle clients left"


# -- clients that leave mid-stream and mid-upload -----------------------------------------------------------


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream(tmp_path: Path) -> None:
    fake = FakeOpenAI(stream_delay=0.4)
    upstream = TestServer(fake.app())
    await upstream.start_server()
    try:
        async with serve(tmp_path, url_of(upstream)) as proxy:
            await normal_request(proxy)
            fds0 = proxy.fds()
            left = 0
            seen: list[float | None] = []
            for _ in range(3):
                fake.stream_disconnected.clear()
                reader, writer = await connect(proxy)
                body = json.dumps({"model": "gpt-image-1.5", "prompt": "p", "stream": True, "partial_images": 3}).encode()
                writer.write(HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                async with asyncio.timeout(5):
                    first = await reader.readuntil(b"\n\n")  # headers, then the first event
                    while b"partial_image" not in first:
                        first += await reader.readuntil(b"\n\n")
                left_at = time.monotonic()
                writer.transport.abort()  # the client vanishes
                try:
                    await asyncio.wait_for(fake.stream_disconnected.wait(), 3)
                    seen.append(time.monotonic() - left_at)
                    left += 1
                except TimeoutError:
                    seen.append(None)
            latency = await normal_request(proxy)
            await asyncio.sleep(0.3)
            fds1 = proxy.fds()
    finally:
        await upstream.close()
    streams = len([r for r in fake.recorder.received if r.path == "/v1/images/generations"])
    print(f"mid-stream disconnects: upstream saw {left}/3 of them after {seen}s; fds {fds0} -> {fds1}; normal {latency:.3f}s")
    record("clients leaving mid-stream whose upstream stream was closed", 3, left)
    record("abusive clients survived", 3, left if latency < FAST and fds1 <= fds0 + 2 else 0)
    assert streams == 3
    assert left == 3, seen
    assert latency < FAST
    assert fds1 <= fds0 + 2


def multipart_head(total: int, boundary: str = "xyz") -> bytes:
    return (
        b"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n".encode()
    )


UPLOAD = 24 * 1024 * 1024  # announced
SENT = 6 * 1024 * 1024  # sent before leaving


@pytest.mark.parametrize("route", ["edits (multipart)", "generations (JSON)"])
async def test_clients_that_leave_mid_upload_release_everything(tmp_path: Path, route: str) -> None:
    fake = FakeOpenAI()
    upstream = TestServer(fake.app())
    await upstream.start_server()
    try:
        async with serve(tmp_path, url_of(upstream)) as proxy:
            await normal_request(proxy)
            rss0, fds0 = proxy.rss(), proxy.fds()
            peak = rss0
            for _ in range(10):
                _, writer = await connect(proxy)
                if route.startswith("edits"):
                    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                    part += b"Content-Type: image/png\r\n\r\n"
                    writer.write(multipart_head(UPLOAD) + part)
                else:
                    writer.write(HEAD + f"Content-Length: {UPLOAD}\r\n\r\n".encode() + b'{"model": "gpt-image-1.5", "prompt": "')
                block = b"a" * 65536
                for _ in range(SENT // len(block)):
                    writer.write(block)
                    await writer.drain()
                await asyncio.sleep(0.05)
                peak = max(peak, proxy.rss())
                writer.transport.abort()
            latency = await normal_request(proxy)
            await asyncio.sleep(0.5)
            rss1, fds1 = proxy.rss(), proxy.fds()
    finally:
        await upstream.close()
    reached = len(fake.recorder.received)
    print(
        f"mid-upload disconnects ({route}): 10 x {SENT // 2**20} of {UPLOAD // 2**20} MB; proxy RSS {rss0 / 2**20:.1f} -> "
        f"peak {peak / 2**20:.1f} -> {rss1 / 2**20:.1f} MB; fds {fds0} -> {fds1}; upstream calls {reached}; normal {latency:.3f}s"
    )
    fine = reached == 0 and latency < FAST and fds1 <= fds0 + 2 and peak - rss0 < RSS_BOUND
    record("clients leaving mid-upload without an upstream call or a leak", 10, 10 if fine else 0)
    record("abusive clients survived", 10, 10 if fine else 0)
    assert reached == 0, "an incomplete upload reached the upstream"
    assert latency < FAST
    assert peak - rss0 < RSS_BOUND
    assert fds1 <= fds0 + 2


# -- a compression bomb ------------------------------------------------------------------------------------

DEFAULT_LIMIT = 64 * 1024 * 1024  # server.max_request_bytes as shipped
BOMB = 512 * 1024 * 1024  # decoded size


def gzip_bomb(decoded: int) -> bytes:
    """A JSON generation whose prompt is `decoded` bytes of spaces, gzipped to about 1/1000 of that."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [encoder.compress(b'{"model": "local-image", "prompt": "')]
    parts += [encoder.compress(block) for _ in range(decoded // len(block))]
    return b"".join([*parts, encoder.compress(b'"}'), encoder.flush()])


async def test_a_gzip_bomb_is_413_with_flat_memory(tmp_path: Path) -> None:
    """Half a megabyte that decodes to 512 MB: refused once its decoded size passes the limit, and the proxy's
    peak memory grows by about the limit (the most a body may hold), not by what the bomb would expand to."""
    bomb = gzip_bomb(BOMB)
    assert len(bomb) < 1024 * 1024
    unlimited = {key: value for key, value in SERVER.items() if key != "max_request_bytes"}
    async with serve(tmp_path, text=rules_yaml(MODELS, CHANNELS, server=unlimited)) as proxy:
        await normal_request(proxy)
        peak0 = proc_status(proxy.pid, "VmHWM")
        reader, writer = await connect(proxy)
        writer.write(HEAD + b"Content-Encoding: gzip\r\n" + f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()  # the proxy may answer and close before it has read everything
        answer = b""
        with contextlib.suppress(ConnectionError, OSError):
            async with asyncio.timeout(30):
                while chunk := await reader.read(65536):
                    answer += chunk
        writer.close()
        growth = proc_status(proxy.pid, "VmHWM") - peak0
        latency = await normal_request(proxy)
    head, _, body = answer.partition(b"\r\n\r\n")
    print(f"gzip bomb ({len(bomb) // 1024} KB -> {BOMB // 2**20} MB): {head[:40]!r}, "
          f"peak RSS +{growth / 2**20:.1f} MB (limit {DEFAULT_LIMIT // 2**20} MB); a normal request then took {latency:.3f}s")
    flat = growth < DEFAULT_LIMIT + 48 * 1024 * 1024  # the limit itself plus generous slack; the bomb is 512 MB
    record("gzip bomb refused with peak RSS growth under the limit + 48 MB", 1, int(flat))
    assert flat, f"peak RSS grew {growth / 2**20:.1f} MB on a gzip bomb"
    assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert json.loads(body)["error"] == {
        "message": f"The request body is larger than {DEFAULT_LIMIT} bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
