"""Shell layer: how aiohttp's server must run the app, and the serve-until-stopped loop of a process (or a worker).

`python -m proxy` and the tests take the server options from here.

These are options of the HTTP server (aiohttp's runner and request handler), not of the app, so
`make_app` cannot set them itself. Served without them, the app loses what they give, and compressed
generation bodies are refused (400): aiohttp would hand them over decoded under their Content-Encoding.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.core.rules import Rules

# Connections the kernel queues while the loop is busy: a burst (a client pool opening hundreds at once) waits
# for its turn instead of being dropped, as with Python's default of 100 (nginx: 511).
LISTEN_BACKLOG = 1024
EXIT_CANNOT_LISTEN = 3  # the exit status of a process (or a worker) that could not listen


def server_options(rules: Rules) -> dict[str, Any]:
    """Keyword arguments for `web.run_app` / `web.AppRunner`."""
    return {
        # Also the deadline for a request head on a new or idle connection: slowloris clients are cut.
        "keepalive_timeout": rules.server.keepalive_timeout,
        # After an early answer (408, 413) an unread body is drained this long, then the connection closes.
        "lingering_time": 1.0,
        # A client that disconnects from a sync generation cancels the upstream work it started.
        "handler_cancellation": True,
        # Request bodies are decoded by proxy.body, in bounded steps and counted against
        # `server.max_request_bytes`; aiohttp's decoder would expand them before anything counts them,
        # and pass-through relays the client's compressed bytes with the Content-Encoding they came with.
        "auto_decompress": False,
        "access_log": None,  # one JSON access line per request comes from proxy.middleware
    }


class CannotBind(Exception):
    """The site could not be bound; `error` is why (an OSError, gaierror included)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def serve_app(
    app: web.Application,
    rules: Rules,
    site: Callable[[web.AppRunner], web.BaseSite],
    started: Callable[[int], Awaitable[None]],
) -> None:
    """Bind, call `started` with the port bound, then serve until SIGTERM or SIGINT and drain.

    CannotBind when the address cannot be bound: nothing was served, so the services close without the
    shutdown path's "draining" announcement.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # In-flight generations and streams get minutes to finish on SIGTERM, not aiohttp's default.
    runner = web.AppRunner(app, shutdown_timeout=rules.server.shutdown_grace, **server_options(rules))
    await runner.setup()
    try:
        await site(runner).start()
    except OSError as exc:
        await runner.app.cleanup()
        raise CannotBind(exc) from None
    try:
        # The port actually bound (`--port 0` asks the system for one), as clients must use it.
        await started(int(runner.addresses[0][1]) if runner.addresses else 0)
        await stop.wait()
    finally:
        await runner.cleanup()
