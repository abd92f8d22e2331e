"""A fast fake OpenAI Images upstream for the benchmark, run as its own process.

    python -m bench.upstream --port N [--big-bytes 3000000] [--sse-events 10] ...

Every route answers `POST <kind>/v1/images/generations` (the proxy appends `/images/generations` to a
channel's `base_url`, so each scenario is one channel whose base URL names its kind):

    /small/v1/...   a small ImagesResponse (one `url` item), answered at once
    /big/v1/...     one `b64_json` item of `--big-bytes` base64 characters (a PNG header, then random bytes)
    /hold-<ms>/v1/...  the small answer after <ms> milliseconds; counts requests in flight and their peak
    /sse/v1/...     `--sse-events` OpenAI image stream events, `--sse-gap-ms` apart; each carries `t_ns`,
                    the CLOCK_MONOTONIC nanoseconds just before the event was written, so a client on
                    the same machine can measure the event's delivery time
    GET  /stats     `{"hold_now", "hold_peak", "requests"}`;  POST /stats/reset zeroes the peak

Answers are built once at start-up: the upstream spends as little CPU per request as aiohttp allows,
so that the direct-to-upstream baseline is as fast as this machine can go.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import time
import zlib
from dataclasses import dataclass

from aiohttp import web

from bench.procs import raise_nofile_limit

JSON = "application/json"
SMALL_ANSWER: dict[str, object] = {
    "created": 1700000000,
    "data": [{"url": "https://files.example.invalid/img-0.png", "revised_prompt": "a lighthouse at dusk"}],
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")


def fake_png(size: int) -> bytes:
    """About `size` bytes that start as a 1024x1024 PNG (so the proxy sniffs a type and a size), random after."""
    header = (1024).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    tail = _chunk(b"IEND", b"")
    payload = os.urandom(max(0, size - len(head) - len(tail) - 12))
    return head + _chunk(b"IDAT", payload) + tail


def big_answer(b64_chars: int) -> bytes:
    """A gpt-image style ImagesResponse whose one `b64_json` is `b64_chars` characters long."""
    image = base64.b64encode(fake_png(b64_chars * 3 // 4)).decode("ascii")
    answer = {
        "created": 1700000000,
        "data": [{"b64_json": image}],
        "output_format": "png",
        "size": "1024x1024",
        "usage": {"input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170},
    }
    return json.dumps(answer, separators=(",", ":")).encode()


@dataclass
class Settings:
    big_bytes: int = 3_000_000
    sse_events: int = 10
    sse_gap_ms: float = 5.0
    sse_bytes: int = 16 * 1024


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.small = json.dumps(SMALL_ANSWER, separators=(",", ":")).encode()
        self.big = big_answer(settings.big_bytes)
        self.hold_now = 0
        self.hold_peak = 0
        self.requests = 0
        preview = base64.b64encode(os.urandom(settings.sse_bytes * 3 // 4)).decode("ascii")
        self.sse = [self._event_parts(index, preview) for index in range(settings.sse_events)]

    def _event_parts(self, index: int, preview: str) -> tuple[bytes, bytes]:
        """An event split around its timestamp: `prefix + str(t_ns) + suffix`, so only the clock is per-request."""
        last = index == self.settings.sse_events - 1
        kind = "image_generation.completed" if last else "image_generation.partial_image"
        payload: dict[str, object] = {"type": kind, "b64_json": preview, "created_at": 1700000000, "size": "1024x1024"}
        if not last:
            payload["partial_image_index"] = index
        else:
            payload["usage"] = {"input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170}
        payload["t_ns"] = 0
        text = json.dumps(payload, separators=(",", ":"))
        before, after = text.rsplit('"t_ns":0', 1)
        prefix = f'event: {kind}\ndata: {before}"t_ns":'.encode()
        return prefix, (after + "\n\n").encode()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/small/v1/images/generations", self.small_route)
        app.router.add_post("/big/v1/images/generations", self.big_route)
        app.router.add_post("/hold-{ms:\\d+}/v1/images/generations", self.hold_route)
        app.router.add_post("/sse/v1/images/generations", self.sse_route)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/stats/reset", self.reset)
        return app

    async def small_route(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        return web.Response(body=self.small, content_type=JSON)

    async def big_route(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        return web.Response(body=self.big, content_type=JSON)

    async def hold_route(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        self.hold_now += 1
        self.hold_peak = max(self.hold_peak, self.hold_now)
        try:
            await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        finally:
            self.hold_now -= 1
        return web.Response(body=self.small, content_type=JSON)

    async def sse_route(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        gap = self.settings.sse_gap_ms / 1000
        for index, (prefix, suffix) in enumerate(self.sse):
            if index:
                await asyncio.sleep(gap)
            await response.write(prefix + str(time.monotonic_ns()).encode() + suffix)
        await response.write_eof()
        return response

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"hold_now": self.hold_now, "hold_peak": self.hold_peak, "requests": self.requests})

    async def reset(self, request: web.Request) -> web.Response:
        self.hold_peak = self.hold_now
        self.requests = 0
        return web.json_response({"ok": True})


async def serve(settings: Settings, host: str, port: int) -> None:
    runner = web.AppRunner(Upstream(settings).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=8192)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--big-bytes", type=int, default=Settings.big_bytes, help="base64 characters in /big/'s image")
    parser.add_argument("--sse-events", type=int, default=Settings.sse_events)
    parser.add_argument("--sse-gap-ms", type=float, default=Settings.sse_gap_ms)
    parser.add_argument("--sse-bytes", type=int, default=Settings.sse_bytes, help="base64 characters per event")
    args = parser.parse_args()
    raise_nofile_limit()
    settings = Settings(args.big_bytes, args.sse_events, args.sse_gap_ms, args.sse_bytes)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    main()
