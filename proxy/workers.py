"""Shell layer: several worker processes behind one address (`--workers N`, `server.workers`), and their supervisor.

    supervisor   binds the address, migrates the ledger and starts the shared counters once, forks N workers,
                 waits until each listens, prints the banner; then passes HUP (reload) and TERM/INT (drain) to
                 every worker, gives back what a worker that dies held in the limit counters and starts a new
                 one, and exits once all have drained
    worker       one event loop serving the whole app on the shared address (proxy.serving), as a single
                 process would; it stops by itself when its supervisor is gone

The address: where the system has SO_REUSEPORT, each worker listens on its own socket and the kernel spreads
new connections over them; the supervisor holds a bound socket that never listens, so the port stays ours
(and `--port 0` picks one port for all). Elsewhere the supervisor listens once and the workers inherit that
socket. Workers are forked after everything is imported, so the code is in memory once for all of them.

What the workers share (README, Workers): async tasks, webhook deliveries and the ledger through the ledger's
database; hosted images through their store; limit counters, budgets and `Idempotency-Key` records through
`server.state` (Redis) or else files of the run's own directory (proxy.host_counters, proxy.host_state); metrics through
prometheus-client's multiprocess directory in that same run directory, aggregated by whichever worker
answers `/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy import host_counters, host_state
from proxy.core.rules import Rules
from proxy.counter_seed import seed_counters
from proxy.host_counters import HostCounters
from proxy.ledger import MIGRATE_TIMEOUT, reason
from proxy.lifecycle import longest_drain
from proxy.metrics import AVAILABLE
from proxy.serving import LISTEN_BACKLOG

log = logging.getLogger("imagegate.workers")
METRICS_DIR = "metrics"
RUN_PREFIX = "imagegate-run-"
SUPERVISOR_FILE = "supervisor.pid"
WORKER_MARK = "worker-"  # + pid: a file each worker leaves in the run's directory while it lives
SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
KILL_AFTER = 15.0  # seconds past the longest drain (proxy.lifecycle) before a worker that has not exited is killed
STEADY = 10.0  # a worker that lived this long was not crashing at start: the next one starts at once
MAX_BACKOFF = 30.0


def worker_count(value: str | int) -> int:
    """`auto` is the CPUs this process may run on (a container's CPU set, not the host's)."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(value)


# -- the address ----------------------------------------------------------------------------------


@dataclass
class Listener:
    host: str
    port: int
    # Where SO_REUSEPORT exists: bound, never listening (it only holds the port). Elsewhere: the one listening socket.
    socket: socket.socket
    reuse_port: bool

    def site(self, runner: web.AppRunner) -> web.BaseSite:
        if self.reuse_port:
            return web.TCPSite(runner, self.host, self.port, backlog=LISTEN_BACKLOG, reuse_port=True)
        return web.SockSite(runner, self.socket)

    def close(self) -> None:
        self.socket.close()


def open_listener(host: str, port: int, reuse_port: bool = hasattr(socket, "SO_REUSEPORT")) -> Listener:
    """The address bound once by the supervisor; OSError (gaierror included) when it cannot be."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not reuse_port:
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    # The address bound, not the name: a name with several addresses must not send workers to other ones.
    bound = sock.getsockname()
    return Listener(str(bound[0]), int(bound[1]), sock, reuse_port)


# -- what the workers share -----------------------------------------------------------------------


def run_directory() -> Path:
    """This run's private directory (mode 0700): the shared counters, the idempotency records and every worker's
    metrics. The directories of runs whose processes were all killed (nothing removed them) go first."""
    remove_abandoned(Path(tempfile.gettempdir()))
    directory = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    (directory / SUPERVISOR_FILE).write_text(str(os.getpid()))
    (directory / METRICS_DIR).mkdir()
    return directory


def remove_abandoned(parent: Path) -> None:
    """Remove the run directories in `parent` whose supervisor and workers are all gone (SIGKILL leaves no time
    to clean up). One whose supervisor cannot be read (another user's, or being made) is left alone."""
    for directory in parent.glob(RUN_PREFIX + "*"):
        try:
            supervisor = int((directory / SUPERVISOR_FILE).read_text())
            workers = [int(path.name.removeprefix(WORKER_MARK)) for path in directory.glob(WORKER_MARK + "*")]
        except (OSError, ValueError):
            continue
        if not any(map(alive, [supervisor, *workers])):
            shutil.rmtree(directory, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (a pid reused since counts as alive: the directory is kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's, or not a pid at all: kept, as it is not known to be ours
    return True


async def prepare(rules: Rules, directory: Path) -> None:
    """Before the first worker: the ledger's schema is migrated once (workers starting together must not race
    through Alembic), and with `server.state: memory` the shared counters start from the ledger
    (proxy.counter_seed), once for all workers."""
    from proxy.lifecycle import open_ledger

    host_state.create(directory / host_state.FILE)
    host_counters.create(directory / host_counters.FILE)
    ledger = await open_ledger(rules, None, None)
    try:
        if ledger.migrated and rules.server.state == "memory":
            counters = HostCounters(directory / host_counters.FILE)
            try:
                async with asyncio.timeout(MIGRATE_TIMEOUT):
                    await seed_counters(counters, ledger.engine, rules.server, time.time())
            except Exception as exc:
                log.error("could not start the limit counters from the ledger (they count from zero): %s", reason(exc))
            finally:
                counters.close()
    finally:
        await ledger.close(MIGRATE_TIMEOUT)


def watch_parent(parent: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: a worker whose supervisor is gone (killed) drains and stops as if told to."""

    async def check(_: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            # Nothing tells a process its parent died (without Linux's prctl): polling getppid is the portable way.
            while os.getppid() == parent:  # noqa: ASYNC110
                await asyncio.sleep(1.0)
            log.warning("the supervisor (pid %d) is gone: stopping", parent)
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return check


class WorkerTag(logging.Filter):
    """Every log line of a worker says which one wrote it (`worker` in JSON lines)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


# -- the supervisor -------------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    pid: int
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    """The parent process's state; `start` forks one worker (the callable runs in the child and never returns)."""

    count: int
    start: Callable[[int], int]
    grace: float
    gone: Callable[[Worker], None] = lambda worker: None  # what an exited worker leaves behind is undone
    workers: dict[int, Worker] = field(default_factory=dict)  # by pid
    due: dict[int, float] = field(default_factory=dict)  # index -> when its replacement may start
    failures: dict[int, int] = field(default_factory=dict)  # index -> quick deaths in a row
    stopping: float | None = None  # when the drain began
    killed: bool = False  # the drain took too long: what was left was killed
    failed_start: int | None = None  # the exit status of a worker that died before the first banner

    def spawn(self, index: int) -> None:
        """Fork worker `index`; a fork the system refuses (EAGAIN, ENOMEM) is tried again later."""
        try:
            pid = self.start(index)
        except OSError as exc:
            self.failures[index] = quick = self.failures.get(index, 0) + 1
            log.error("could not start worker %d: %s (tried again in %gs)", index, exc, self.backoff(quick))
            self.due[index] = time.monotonic() + self.backoff(quick)
            return
        self.workers[pid] = Worker(index, pid, time.monotonic())

    @staticmethod
    def backoff(quick: int) -> float:
        """The first replacement starts at once; a worker that keeps failing at start waits 1, 2, 4 ... 30 s."""
        return min(MAX_BACKOFF, 2.0 ** (quick - 2)) if quick > 1 else 0.0

    def all_ready(self) -> bool:
        return len(self.workers) == self.count and all(worker.ready for worker in self.workers.values())

    def mark_ready(self, index: int) -> None:
        for worker in self.workers.values():
            if worker.index == index:
                worker.ready = True

    def send(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        if self.stopping is None:
            self.stopping = time.monotonic()
            log.info("stopping %d worker(s): each drains for up to %gs", len(self.workers), self.grace)
        self.send(signal.SIGTERM)

    def reap(self, started: bool) -> None:
        """Collect exited workers; while serving, each gets a successor (at once, or later if it keeps dying)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._exited(worker, status, started)

    def _exited(self, worker: Worker, status: int, started: bool) -> None:
        forget_metrics(worker.pid)
        self.gone(worker)  # before its successor starts: that one finds the key's slots free
        if self.stopping is not None:
            return
        code = os.waitstatus_to_exitcode(status)
        how = f"signal {-code}" if code < 0 else f"status {code}"
        if not started:
            log.error("worker %d (pid %d) exited with %s before it was ready", worker.index, worker.pid, how)
            self.failed_start = code if code > 0 else 1
            self.stop()
            return
        lived = time.monotonic() - worker.started
        quick = self.failures.get(worker.index, 0) + 1 if lived < STEADY else 0
        self.failures[worker.index] = quick
        delay = self.backoff(quick)
        log.error("worker %d (pid %d) exited with %s: a new one starts in %gs", worker.index, worker.pid, how, delay)
        self.due[worker.index] = time.monotonic() + delay

    def replace_due(self) -> None:
        now = time.monotonic()
        for index, when in list(self.due.items()):
            if when <= now and self.stopping is None:
                del self.due[index]
                self.spawn(index)

    def kill_overdue(self) -> None:
        """Workers still running past the longest drain and a margin are killed."""
        if self.stopping is None or time.monotonic() - self.stopping <= longest_drain(self.grace) + KILL_AFTER:
            return
        if not self.killed:
            log.error("killing %d worker(s) still running past their drain", len(self.workers))
            self.killed = True
        self.send(signal.SIGKILL)


def forget_metrics(pid: int) -> None:
    """A dead worker's live gauges (requests in flight) leave the aggregate; its counters stay in the totals."""
    if AVAILABLE and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def forget_worker(directory: Path, worker: Worker) -> None:
    """What an exited worker leaves in the run's directory: its mark, and what it held in the counters."""
    with contextlib.suppress(OSError):  # the supervisor must go on
        (directory / f"{WORKER_MARK}{worker.pid}").unlink(missing_ok=True)
    give_back_holdings(directory, worker)


def give_back_holdings(directory: Path, worker: Worker) -> None:
    """A dead worker's requests in flight release what they held in the limit counters (a generation at once,
    images and budget reserved); one that drained holds nothing. Never raises: the supervisor must go on."""
    try:
        held = host_counters.give_back(directory, worker.pid)
    except Exception as exc:
        log.error("could not give back what worker %d (pid %d) held in the limit counters: %s",
                  worker.index, worker.pid, reason(exc))
        return
    if held:
        log.warning("gave back what worker %d (pid %d) held in %d limit counter(s)", worker.index, worker.pid, held)


def fork_worker(child: Callable[[], int]) -> int:
    """The child runs `child` with the signals the supervisor blocked unblocked, and exits with its status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # SIGHUP stays blocked until the app's reload handler is set (worker_main's `started`): a reload sent
        # while a worker starts waits for it, instead of killing it or being lost.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS - {signal.SIGHUP})
        code = child()
    except BaseException:  # whatever ends a worker must end only the worker, with a trace
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def read_ready(fd: int, supervisor: Supervisor) -> None:
    """Workers write their index to the pipe once they listen."""
    with contextlib.suppress(BlockingIOError):
        for index in os.read(fd, 4096):
            supervisor.mark_ready(index)


def cleanup(directory: Path, listener: Listener) -> None:
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


# -- the two sides of a fork ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What every worker of this run starts from."""

    rules_path: str
    listener: Listener
    directory: Path
    ready: int  # the pipe's write end: a worker writes its index there once it listens
    parent: int


def worker_main(rules: Rules, run: Run, index: int) -> int:
    """A worker's whole life: the app, served on the shared address until TERM (or the supervisor's end)."""
    from proxy.app import make_app
    from proxy.serving import EXIT_CANNOT_LISTEN, CannotBind, serve_app

    (run.directory / f"{WORKER_MARK}{os.getpid()}").touch()  # alive: its run's directory stays (remove_abandoned)
    for handler in logging.getLogger().handlers:
        handler.addFilter(WorkerTag(index))
    app = make_app(rules, rules_path=run.rules_path, host_state=run.directory)
    app.cleanup_ctx.append(watch_parent(run.parent))

    async def started(_: int) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # the reload handler is set (fork_worker)
        os.write(run.ready, bytes([index]))

    try:
        asyncio.run(serve_app(app, rules, run.listener.site, started))
    except CannotBind as exc:
        log.error("worker %d cannot listen on port %d: %s", index, run.listener.port, exc.error)
        return EXIT_CANNOT_LISTEN
    return 0


def supervise(
    rules: Rules, run: Run, ready: int, count: int, announce: Callable[[Rules], None],
    reread: Callable[[], Rules | None],
) -> int:
    """Start `count` workers and keep them running until TERM or INT; the exit status (a worker's when the start
    failed). `ready` is the read end of the pipe the workers report on."""
    current = [rules]  # the rules a new worker starts with: a reload changes them
    os.set_blocking(ready, False)
    supervisor = Supervisor(count, lambda index: fork_worker(lambda: worker_main(current[0], run, index)),
                            rules.server.shutdown_grace, lambda worker: forget_worker(run.directory, worker))
    for index in range(count):
        supervisor.spawn(index)
    announced = False
    while supervisor.workers or (supervisor.stopping is None and supervisor.due):
        received = signal.sigtimedwait(SIGNALS, 0.2)
        if received is not None and received.si_signo == signal.SIGHUP and supervisor.stopping is None:
            current[0] = reload(reread) or current[0]
            supervisor.send(signal.SIGHUP)  # not while draining: a worker past its reload handler would die of it
        elif received is not None and received.si_signo in (signal.SIGTERM, signal.SIGINT):
            supervisor.stop()
        supervisor.reap(started=announced)
        read_ready(ready, supervisor)
        if not announced and supervisor.stopping is None and supervisor.all_ready():
            announce(current[0])
            announced = True
        supervisor.replace_due()
        supervisor.kill_overdue()
    return supervisor.failed_start or 0


def reload(reread: Callable[[], Rules | None]) -> Rules | None:
    """The rules re-read for the workers to come; None (the current ones stay) when that fails in any way: a
    supervisor that died of it would take every worker with it."""
    try:
        return reread()
    except Exception:
        log.exception("reload rejected, keeping the current rules")
        return None


def run_workers(
    rules: Rules, rules_path: str, listener: Listener, count: int, announce: Callable[[Rules], None],
    reread: Callable[[], Rules | None],
) -> int:
    """The supervisor's whole life: prepare what the workers share, supervise them, leave nothing behind."""
    try:
        directory = run_directory()
    except OSError as exc:
        log.error("cannot make the workers' run directory in %s: %s", tempfile.gettempdir(), exc)
        listener.close()
        return 1
    # Set before prometheus-client is imported: the choice of multiprocess values is made at import. Imported
    # here, once, its code is shared by every worker instead of loaded by each.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory / METRICS_DIR)
    if AVAILABLE:
        importlib.import_module("prometheus_client")
    ready_read, ready_write = os.pipe()
    # Blocked from here, waited for by `sigtimedwait`: a signal during the preparation waits for the loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        asyncio.run(prepare(rules, directory))
        # What exists now (the imported code, the rules) is shared with every fork until written to; frozen,
        # the collector never walks (and so copies) those pages in each worker.
        gc.collect()
        gc.freeze()
        run = Run(rules_path, listener, directory, ready_write, os.getpid())
        return supervise(rules, run, ready_read, count, announce, reread)
    finally:
        os.close(ready_read)
        os.close(ready_write)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cleanup(directory, listener)
        # Last: a signal still pending takes its default action now, once the run's directory is gone.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
