"""Shell layer: how aiohttp's server must run the app. `python -m proxy` and the tests take them from here.

These are options of the HTTP server (aiohttp's runner and request handler), not of the app, so
`make_app` cannot set them itself. Served without them, the app loses what they give, and compressed
generation bodies are refused (400): aiohttp would hand them over decoded under their Content-Encoding.
"""

from __future__ import annotations

from typing import Any

from proxy.core.rules import Rules

# Connections the kernel queues while the loop is busy: a burst (a client pool opening hundreds at once) waits
# for its turn instead of being dropped, as with Python's default of 100 (nginx: 511).
LISTEN_BACKLOG = 1024


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
