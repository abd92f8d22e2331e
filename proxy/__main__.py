"""Shell layer: the command line. Arguments and environment -> rules -> a listening server.

    python -m proxy [--rules PATH] [--host HOST] [--port PORT]     serve
    python -m proxy check [--rules PATH]                           validate a rules file and exit

Every option falls back to an environment variable (PROXY_RULES, PROXY_HOST, PROXY_PORT), so a
container sets them without a command line. Bad rules print every problem with its YAML path and
exit with status 2 before anything listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from proxy import __version__
from proxy.adapters import SCHEMAS
from proxy.app import log_startup, make_app
from proxy.core.rules import Rules, RulesError, parse_rules
from proxy.observe import JsonFormatter, TextFormatter
from proxy.serving import server_options

EXIT_BAD_RULES = 2


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proxy", description="OpenAI Images API gateway.")
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
    return parser


def read_rules(path: str, env: Mapping[str, str]) -> Rules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError([]) from exc
    return parse_rules(text, env, SCHEMAS)


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


def banner(rules: Rules, path: str, host: str, port: int) -> str:
    """What an operator wants to see first: where it listens, what it serves, what is missing."""
    lines = [f"imagegate {__version__} listening on http://{host}:{port}", f"  rules     {path}"]
    lines.append(
        f"  models    {len(rules.models)}: {', '.join(rule.pattern for rule in rules.models[:12])}"
        + (", ..." if len(rules.models) > 12 else "")
    )
    ready = [name for name, channel in rules.channels.items() if channel.usable]
    missing = [f"{name} ({', '.join(channel.missing_key)})" for name, channel in rules.channels.items() if not channel.usable]
    lines.append(f"  channels  ready: {', '.join(ready) or 'none'}")
    if missing:
        lines.append(f"            no credentials: {', '.join(missing)}")
    lines.append(f"  auth      {'on' if rules.server.api_keys else 'OFF: server.api_keys is empty, anyone may call'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    args = build_parser(env).parse_args(argv)
    configure_logging(args.log_format)
    rules = load_or_report(args.rules, env)
    if rules is None:
        return EXIT_BAD_RULES
    if args.command == "check":
        return check(rules, args.rules)
    print(banner(rules, args.rules, args.host, args.port), file=sys.stderr, flush=True)
    log_startup(rules)
    web.run_app(
        make_app(rules, rules_path=args.rules),
        host=args.host,
        port=args.port,
        # In-flight generations and streams get minutes to finish on SIGTERM, not aiohttp's default.
        shutdown_timeout=rules.server.shutdown_grace,
        print=None,
        **server_options(rules),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
