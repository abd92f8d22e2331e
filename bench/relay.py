"""The bare relay: the least an aiohttp proxy can do, measured beside the real one as a reference.

    python -m bench.relay --upstream http://127.0.0.1:N --port M

An aiohttp server and one shared aiohttp ClientSession: a POST's body is read, POSTed to the upstream
at the same path, and the upstream's answer is read whole and returned with its status and
Content-Type. No rules, no parsing, no logging. What the proxy costs above this row is the proxy's own
work; what this row costs above direct calls is aiohttp's floor for a relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
from aiohttp import web

from bench.procs import raise_nofile_limit


async def serve(upstream: str, host: str, port: int) -> None:
    # No connection cap (the held scenario keeps thousands in flight) and no total timeout of aiohttp's default.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"Content-Type": request.content_type}
        async with session.post(upstream + request.path, data=body, headers=headers) as answer:
            data = await answer.read()
            return web.Response(body=data, status=answer.status, content_type=answer.content_type)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{path:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=8192).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (http://host:port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream.rstrip("/"), args.host, args.port))


if __name__ == "__main__":
    main()
