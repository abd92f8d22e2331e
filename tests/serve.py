"""The proxy under test, served as `python -m proxy` serves it: the server options come from proxy.serving."""

from __future__ import annotations

from aiohttp.test_utils import TestServer
from aiohttp.web import Application

from proxy.core.rules import Rules
from proxy.serving import server_options


async def start_proxy(app: Application, rules: Rules) -> TestServer:
    """A started TestServer for `app` with the CLI's server options (aiohttp_client's `server_kwargs` are not
    passed on to the server, so the options are given to `start_server` here)."""
    server = TestServer(app)
    options = server_options(rules)
    del options["handler_cancellation"]  # TestServer always sets it, to True as the CLI does
    await server.start_server(**options)
    return server
