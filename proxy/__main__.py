"""Shell layer: the command line. Arguments and environment -> rules -> a bound socket -> the banner.

    imagegate [--rules PATH] [--host HOST] [--port PORT] [--workers N|auto] [--probe]   serve (also `python -m proxy`)
    imagegate check [--rules PATH]                                                    validate a rules file and exit
    imagegate --version

Every option falls back to an environment variable (PROXY_RULES, PROXY_HOST, PROXY_PORT, PROXY_WORKERS, PROXY_PROBE),
so a container sets them without a command line. Bad rules print every problem with its YAML path and
exit with status 2 before anything listens. The banner is printed only once the socket is bound; an
address that cannot be listened on (busy port, no permission, unknown host) is one line on stderr and
exit status 3. SIGTERM and SIGINT drain requests in flight for `server.shutdown_grace` seconds.
More than one worker (`--workers`, else `server.workers`): proxy.workers supervises them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from proxy import __version__
from proxy.allocator import keep_large_buffers
from proxy.app import make_app
from proxy.core.rules import MAX_WORKERS, Rules, RulesError
from proxy.lifecycle import log_startup
from proxy.observe import JsonFormatter, TextFormatter
from proxy.ops import PROBE_TIMEOUT, probe_channels, read_rules
from proxy.serving import EXIT_CANNOT_LISTEN, LISTEN_BACKLOG, CannotBind, serve_app
from proxy.workers import open_listener, run_workers, worker_count

EXIT_BAD_RULES = 2
_TRUE = ("1", "true", "yes", "on")


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegate", description="OpenAI Images API gateway.")
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    parser.add_argument("command", nargs="?", choices=("serve", "check"), default="serve")
    parser.add_argument("--rules", default=env.get("PROXY_RULES", "rules.yaml"), help="rules file (env PROXY_RULES)")
    parser.add_argument("--host", default=env.get("PROXY_HOST", "127.0.0.1"), help="listen address (env PROXY_HOST)")
    parser.add_argument("--port", type=int, default=env.get("PROXY_PORT", "8080"), help="listen port (env PROXY_PORT)")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=env.get("PROXY_LOG_FORMAT", "json"),
        help="log lines as JSON objects (default) or plain text (env PROXY_LOG_FORMAT)",
    )
    parser.add_argument(
        "--workers",
        default=env.get("PROXY_WORKERS"),
        type=_workers,
        help="worker processes on the one address: a number, or auto for one per CPU (env PROXY_WORKERS; "
        "default: server.workers, else 1)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        default=env.get("PROXY_PROBE", "").lower() in _TRUE,
        help=f"at start-up, check that each channel's base URL answers ({PROBE_TIMEOUT:g}s, all at once; env PROXY_PROBE=1)",
    )
    return parser


def _workers(value: str) -> str:
    if value == "auto" or (value.isdigit() and 1 <= int(value) <= MAX_WORKERS):
        return value
    raise argparse.ArgumentTypeError(f"expected auto or a number from 1 to {MAX_WORKERS}, got {value!r}")


def load_or_report(path: str, env: Mapping[str, str]) -> Rules | None:
    """The rules, or None after printing why they cannot be used."""
    try:
        return read_rules(path, env)
    except RulesError as exc:
        if exc.__cause__ is not None:
            print(f"{path}: cannot read the rules file: {exc.__cause__}", file=sys.stderr)
            return None
        print(f"{path}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def check(rules: Rules, path: str) -> int:
    print(f"{path}: ok ({len(rules.channels)} channels, {len(rules.models)} models)")
    for warning in rules.warnings:
        print(f"  warning: {warning}")
    return 0


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def channel_lines(rules: Rules, probed: Mapping[str, str | None] | None) -> list[str]:
    """The channels by what is known of them. Nothing is called ready that was not checked in some way.

    Ready: built in (no network), probed and answering, or (without a probe) holding the key it needs;
    a keyless network channel (a local SD WebUI) is "not checked" until a probe says it answers.
    """
    ready: list[str] = []
    unchecked: list[str] = []
    silent: list[str] = []
    missing: list[str] = []
    for name, channel in rules.channels.items():
        if not channel.usable:
            missing.append(f"{name} ({', '.join(channel.missing_key)})")
        elif probed is not None and probed.get(name) is not None:
            silent.append(f"{name} ({probed[name]})")
        elif probed is None and channel.base_url and channel.api_key is None:
            unchecked.append(name)
        else:
            ready.append(name)
    lines = [f"ready: {', '.join(ready) or 'none'}"]
    if silent:
        lines.append(f"not answering: {', '.join(silent)}")
    if unchecked:
        lines.append(f"not checked (no key needed; --probe checks they answer): {', '.join(unchecked)}")
    if missing:
        lines.append(f"no credentials: {', '.join(missing)}")
    return lines


def banner(rules: Rules, path: str, url: str, probed: Mapping[str, str | None] | None = None) -> str:
    """What an operator wants to see first: where it listens, what it serves, what is missing."""
    lines = [f"imagegate {__version__} listening on {url}", f"  rules     {path}"]
    lines.append(
        f"  models    {len(rules.models)}: {', '.join(rule.pattern for rule in rules.models[:12])}"
        + (", ..." if len(rules.models) > 12 else "")
    )
    channels = channel_lines(rules, probed)
    lines.append(f"  channels  {channels[0]}")
    lines.extend(f"            {line}" for line in channels[1:])
    lines.append(f"  auth      {'on' if rules.server.api_keys else 'OFF: server.api_keys is empty, anyone may call'}")
    return "\n".join(lines)


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """One line for an address that cannot be listened on: no traceback, no asyncio wording."""
    if isinstance(exc, socket.gaierror):
        reason = f"unknown host ({(exc.strerror or str(exc)).lower()})"
    elif exc.errno:
        reason = os.strerror(exc.errno).lower()
    else:
        reason = str(exc)
    return f"imagegate: cannot listen on {address(host, port)}: {reason}"


async def probe(rules: Rules, args: argparse.Namespace) -> Mapping[str, str | None] | None:
    """With --probe: whether each usable channel's base URL answers (for the banner)."""
    return await probe_channels(ch for ch in rules.channels.values() if ch.usable) if args.probe else None


def announce(
    rules: Rules, args: argparse.Namespace, port: int, probed: Mapping[str, str | None] | None, workers: int = 1
) -> None:
    """Once the address is served: the start-up warnings and the banner."""
    log_startup(rules)  # after binding: a failed start is the one line that says why, nothing else
    lines = banner(rules, args.rules, f"http://{address(args.host, port)}", probed)
    if workers > 1:
        lines += f"\n  workers   {workers} processes (SIGHUP reloads all, SIGTERM drains all)"
    print(lines, file=sys.stderr, flush=True)


async def serve(rules: Rules, args: argparse.Namespace) -> None:
    """One process: bind, then announce, then serve until SIGTERM or SIGINT; CannotBind when the address cannot be bound."""

    async def started(port: int) -> None:
        announce(rules, args, port or args.port, await probe(rules, args))

    def site(runner: web.AppRunner) -> web.BaseSite:
        return web.TCPSite(runner, args.host, args.port, backlog=LISTEN_BACKLOG)

    await serve_app(make_app(rules, rules_path=args.rules), rules, site, started)


def serve_workers(rules: Rules, args: argparse.Namespace, count: int, env: Mapping[str, str]) -> int:
    """`count` worker processes on one address, under this process (proxy.workers)."""
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        print(cannot_listen(args.host, args.port, exc), file=sys.stderr, flush=True)
        return EXIT_CANNOT_LISTEN
    return run_workers(
        rules, args.rules, listener, count,
        announce=lambda current: announce(current, args, listener.port, asyncio.run(probe(current, args)), count),
        reread=lambda: load_or_report(args.rules, env),
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    configure_logging(args.log_format)
    rules = load_or_report(args.rules, env)
    if rules is None:
        return EXIT_BAD_RULES
    if args.command == "check":
        return check(rules, args.rules)
    keep_large_buffers()  # before any worker is forked: they inherit it (proxy.allocator)
    count = worker_count(args.workers or rules.server.workers)
    if count > 1:
        return serve_workers(rules, args, count, env)
    try:
        asyncio.run(serve(rules, args))
    except CannotBind as exc:
        print(cannot_listen(args.host, args.port, exc.error), file=sys.stderr, flush=True)
        return EXIT_CANNOT_LISTEN
    return 0

if __name__ == "__main__":
    sys.exit(main())
