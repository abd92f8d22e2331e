"""The benchmark: a fake upstream, a bare relay and the proxy on loopback, each figure beside its baselines.

    python -m bench [--duration 5] [--only small,big,held,stream] [--workers 1,2] [--json results.json]

Processes: the fake upstream (`bench.upstream`), the bare relay (`bench.relay`), the proxy (`python -m
proxy --rules FILE --port N [--workers N]`, exactly as users run it, fresh processes per scenario group so
that a peak belongs to that scenario), and the load generator (`wrk` for the small-request scenario, else
this process's aiohttp client; this process for the other scenarios). Every proxy figure is measured in
the same run, under the same conditions, as the same request sent straight to the upstream and through
the relay, and the table prints all three with the proxy's ratios, so that the comparison holds on a
noisy machine. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import aiohttp

from bench import scenarios
from bench.harness import ROOT, SCENARIOS, Harness, Options
from bench.loadgen import AIOHTTP, WRK, ensure_wrk
from bench.procs import nofile_limit, raise_nofile_limit
from bench.report import Report, render

TREE_NOTE = (
    "CPU and memory of the relay and the proxy are summed over the process tree (a supervisor and its workers, "
    "re-read at each sample); a worker that exits between two readings before it is reaped is not counted"
)


def workers_supported(options: Options) -> bool:
    """Whether this proxy takes `--workers` (its --help names it): a proxy without it is run at one worker only."""
    command = [*shlex.split(options.proxy_cmd.format(python=sys.executable, n=0)), "--help"]
    return "--workers" in _command_output(command, cwd=options.proxy_cwd)


async def run(options: Options, workdir: Path) -> Report:
    started = time.perf_counter()
    raise_nofile_limit()
    report = Report()
    harness = Harness(options, workdir)
    if max(options.workers) > 1 and not workers_supported(options):
        report.notes.append(f"this proxy has no --workers flag: measured at one worker only (asked: {_counts(options.workers)})")
        options.workers = (1,)
    if options.loadgen in ("auto", WRK) and "small" in options.only:
        harness.wrk = ensure_wrk(report.notes)
        if harness.wrk is None and options.loadgen == WRK:
            raise RuntimeError("wrk was asked for and cannot be installed: " + "; ".join(report.notes))
    report.header = describe(harness, options)
    await harness.start_upstream()
    try:
        # An unmeasured first start creates the ledger's database: every measured proxy then starts as a
        # restart of a deployed proxy does, with its schema at head (a migration loads code only it needs).
        async with harness.proxy(1):
            pass
        await run_scenarios(harness, report)
    finally:
        assert harness.upstream is not None
        await harness.upstream.stop()
    elapsed = time.perf_counter() - started
    kept = str(workdir) if options.keep else "(removed; --keep keeps them)"
    report.notes += [TREE_NOTE, f"whole run: {elapsed:.0f} s; logs in {kept}"]
    report.raw["elapsed_s"] = elapsed
    report.raw["workers"] = list(options.workers)
    return report


async def run_scenarios(harness: Harness, report: Report) -> None:
    only = harness.options.only
    if "small" in only or "stream" in only:
        await scenarios.small_group(harness, report)
    if "big" in only:
        await scenarios.big(harness, report)
    if "held" in only:
        await scenarios.held(harness, report)


# -- output ---------------------------------------------------------------------------------------


def _command_output(command: list[str], *, any_status: bool = False, cwd: Path | None = None) -> str:
    """The command's output, or "" when it cannot run or fails (`wrk -v` exits 1: any_status)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if done.returncode != 0 and not any_status:
        return ""
    return (done.stdout + done.stderr).strip()


def describe(bench: Harness, options: Options) -> list[str]:
    memory = _command_output(["free", "-m"]).splitlines()
    total = memory[1].split()[1] if len(memory) > 1 else "?"
    available = memory[1].split()[-1] if len(memory) > 1 else "?"
    nproc = _command_output(["nproc"]) or "?"
    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) if shutil.which("git") else ""
    generator = AIOHTTP + " (in the bench process)"
    if "small" not in options.only:
        generator = "(scenario 1 not run)"
    elif bench.wrk:
        version = _command_output([bench.wrk, "-v"], any_status=True).splitlines()
        generator = (version[0] if version else "wrk") + ", 1 thread"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"imagegate bench  {now}  commit {commit or '?'}",
        f"machine: {nproc} CPUs ({platform.machine()}), {total} MiB RAM ({available} MiB available), Linux {platform.release()}",
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, open-file limit {nofile_limit()}",
        f"load generator (scenario 1): {generator}; scenarios 2-4: aiohttp client in the bench process",
        f"proxy: {options.proxy_cmd.format(python=Path(sys.executable).name, n='N')} at {_counts(options.workers)} "
        f"worker(s); relay: bench.relay; fresh processes per scenario group, {options.duration:g} s per measurement",
    ]


def _counts(workers: tuple[int, ...]) -> str:
    return ", ".join(map(str, workers))


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    defaults = Options()
    description = "Benchmark the proxy against direct calls to a fake upstream."
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds per throughput measurement")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--held", type=int, default=defaults.held, help="requests held at once in scenario 3")
    parser.add_argument("--hold", type=float, default=defaults.hold, help="seconds the upstream holds each of them")
    parser.add_argument("--big-bytes", type=int, default=defaults.big_bytes, help="base64 characters of scenario 2's image")
    parser.add_argument("--big-concurrency", type=int, default=defaults.big_concurrency)
    parser.add_argument(
        "--workers",
        default=",".join(map(str, defaults.workers)),
        help="comma-separated worker counts the proxy runs at (1: no --workers flag is passed)",
    )
    parser.add_argument("--loadgen", choices=("auto", WRK, AIOHTTP), default=defaults.loadgen, help="scenario 1's load generator")
    parser.add_argument(
        "--proxy-cmd",
        default=defaults.proxy_cmd,
        help="how to start the proxy ({python}: this interpreter, {n}: the proxy's sequence number)",
    )
    parser.add_argument("--proxy-cwd", type=Path, default=defaults.proxy_cwd, help="the proxy's working directory")
    parser.add_argument("--json", type=Path, default=None, help="also write every raw figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (rules, logs)")
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    try:
        workers = tuple(int(count) for count in args.workers.split(",") if count.strip())
    except ValueError:
        parser.error(f"--workers: expected comma-separated counts, got {args.workers!r}")
    if not workers or min(workers) < 1:
        parser.error("--workers: each count must be 1 or more")
    return Options(
        duration=args.duration,
        big_bytes=args.big_bytes,
        big_concurrency=args.big_concurrency,
        workers=workers,
        held=args.held,
        hold=args.hold,
        loadgen=args.loadgen,
        proxy_cmd=args.proxy_cmd,
        proxy_cwd=args.proxy_cwd,
        only=only,
        json_path=args.json,
        keep=args.keep,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="imagegate-bench-"))
    try:
        report = asyncio.run(run(options, workdir))
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    if options.json_path is not None:
        document = {"header": report.header, "rows": [asdict(row) for row in report.rows], "notes": report.notes, **report.raw}
        options.json_path.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
