"""Start-up that never lies: the banner after the bind, one line when the address cannot be had, the probe."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from proxy import __version__
from proxy.__main__ import EXIT_CANNOT_LISTEN, cannot_listen, channel_lines
from proxy.adapters import SCHEMAS
from proxy.core.rules import parse_rules
from proxy.ops import probe_channels
from tests.factories import ROOT, clean_env, free_port, run_cli

BANNER = re.compile(r"^imagegate \S+ listening on http://127\.0\.0\.1:(\d+)$")


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"imagegate {__version__}\n")


def test_help_names_the_installed_command() -> None:
    installed = Path(sys.executable).parent / "imagegate"
    assert installed.exists(), "`pip install -e .` installs the `imagegate` command next to the interpreter"
    for command in ([str(installed), "--help"], [sys.executable, "-m", "proxy", "--help"]):
        result = subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        assert result.stdout.startswith("usage: imagegate [-h] [--version]"), result.stdout
        assert "__main__" not in result.stdout and "--probe" in result.stdout


def test_a_busy_port_is_one_line_and_a_nonzero_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port))
    assert result.returncode == EXIT_CANNOT_LISTEN
    assert result.stderr == f"imagegate: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert result.stdout == ""


def test_an_unresolvable_host_is_one_line_and_a_nonzero_exit() -> None:
    result = run_cli("--host", "no-such-host.invalid", "--port", str(free_port()))
    assert result.returncode == EXIT_CANNOT_LISTEN
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(r"imagegate: cannot listen on no-such-host\.invalid:\d+: unknown host \(.+\)", line), line


def test_the_one_line_for_other_reasons() -> None:
    # Port 1 as a non-root user; the suite may run as root, so the wording is checked on the error itself.
    denied = OSError(errno.EACCES, "error while attempting to bind on address ('0.0.0.0', 1): permission denied")
    assert cannot_listen("0.0.0.0", 1, denied) == "imagegate: cannot listen on 0.0.0.0:1: permission denied"
    gone = OSError(errno.EADDRNOTAVAIL, "error while attempting to bind on address")
    assert cannot_listen("::1", 8080, gone) == "imagegate: cannot listen on [::1]:8080: cannot assign requested address"


async def start(*args: str, **env: str) -> tuple[asyncio.subprocess.Process, list[str], int]:
    """Start the CLI on `--port 0` and read its stderr up to the banner: (process, lines so far, the port)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--port", "0", "--log-format", "text", *args,
        cwd=ROOT, env=clean_env(**env), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(process.stderr.readline(), timeout=30)
        assert raw, "\n".join(lines)
        lines.append(raw.decode().rstrip("\n"))
        found = BANNER.match(lines[-1])
        if found:
            return process, lines, int(found.group(1))


async def banner_rest(process: asyncio.subprocess.Process, lines: list[str]) -> list[str]:
    """The banner's remaining lines (up to its `auth` line)."""
    assert process.stderr is not None
    rest: list[str] = []
    while not rest or not rest[-1].startswith("  auth"):
        rest.append((await asyncio.wait_for(process.stderr.readline(), timeout=30)).decode().rstrip("\n"))
    return rest


async def stop(process: asyncio.subprocess.Process) -> int:
    process.terminate()
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_the_banner_comes_after_the_bind() -> None:
    # `--port 0` lets the system choose: the banner can only name the port once the socket is bound,
    # and the port must accept a connection the moment the line is read.
    process, lines, port = await start()
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        rest = await banner_rest(process, lines)
    finally:
        assert await stop(process) == 0
    assert port > 0
    assert "  channels  ready: local" in rest
    assert "            not checked (no key needed; --probe checks they answer): sdwebui" in rest
    assert not any("ready" in line and "sdwebui" in line for line in rest)
    assert any(line.startswith("            no credentials: openai (OPENAI_API_KEY)") for line in rest)


@pytest.fixture
def http_server() -> Iterator[str]:
    """Something that answers HTTP (a 404 for everything), as a WebUI's base URL would."""

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_the_probe_says_which_channels_answer(http_server: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    process, lines, _ = await start("--probe", SDWEBUI_BASE_URL=closed)
    try:
        silent = await banner_rest(process, lines)
    finally:
        await stop(process)
    process, lines, _ = await start(PROXY_PROBE="1", SDWEBUI_BASE_URL=http_server)
    try:
        answering = await banner_rest(process, lines)
    finally:
        await stop(process)
    assert silent[2:4] == ["  channels  ready: local", "            not answering: sdwebui (connection refused)"]
    assert answering[2] == "  channels  ready: local, sdwebui"
    assert not any("not answering" in line or "not checked" in line for line in answering)


RULES = """
channels:
  local: {type: local}
  webui: {type: sdwebui, base_url: "${WEBUI}"}
  openai: {type: openai, base_url: "${OPENAI}", api_key: "${OPENAI_API_KEY}"}
  azure: {type: azure, base_url: "${OPENAI}", api_key: "${AZURE_KEY}", api_version: "2025-04-01-preview"}
models: {}
"""


async def test_probe_channels_concurrently_with_a_short_timeout(http_server: str) -> None:
    # A listening socket that never answers: the probe must give up on it after its timeout.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        silent = f"http://127.0.0.1:{mute.getsockname()[1]}"
        rules = parse_rules(RULES, {"WEBUI": silent, "OPENAI": http_server, "OPENAI_API_KEY": "k", "AZURE_KEY": "k"}, SCHEMAS)
        started = asyncio.get_running_loop().time()
        probed = await probe_channels(rules.channels.values(), timeout=0.5)
        took = asyncio.get_running_loop().time() - started
    assert probed == {"webui": "no answer in time", "openai": None, "azure": None}  # local has no URL to probe
    assert took < 1.5


def test_channel_lines_call_nothing_ready_that_was_not_checked() -> None:
    rules = parse_rules(RULES, {"WEBUI": "http://127.0.0.1:7860", "OPENAI": "http://x", "OPENAI_API_KEY": "k"}, SCHEMAS)
    assert channel_lines(rules, None) == [
        "ready: local, openai",
        "not checked (no key needed; --probe checks they answer): webui",
        "no credentials: azure (AZURE_KEY)",
    ]
    assert channel_lines(rules, {"webui": "connection refused", "openai": None}) == [
        "ready: local, openai",
        "not answering: webui (connection refused)",
        "no credentials: azure (AZURE_KEY)",
    ]
    assert channel_lines(rules, {"webui": None, "openai": "unknown host"}) == [
        "ready: local, webui",
        "not answering: openai (unknown host)",
        "no credentials: azure (AZURE_KEY)",
    ]
