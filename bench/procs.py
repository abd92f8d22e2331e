"""The benchmark's child processes (fake upstream, proxy) and what /proc says about their memory.

Each child is its own process with its own event loop, started with a raised open-file limit (rlimits
survive exec, so the proxy gets it without any change to its code), its output in a log file, and
stopped with SIGTERM (then SIGKILL) when the scenario ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.tree import Memory, tree, tree_cpu, tree_memory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def nofile_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the pid, it names one process, not a reused pid."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Child:
    """A child process listening on a loopback port."""

    def __init__(self, name: str, command: Sequence[str], port: int, log: Path, cwd: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.port = port
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(command), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, preexec_fn=raise_nofile_limit
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        """CPU seconds of the process and every descendant (bench.tree: workers forked by a supervisor)."""
        return tree_cpu(self.pid)

    def memory(self) -> Memory:
        """PSS and RSS summed over the process and every descendant."""
        return tree_memory(self.pid)

    def fds(self) -> int:
        """Open fds of the process and every descendant."""
        return sum(open_fds(member) for member in tree(self.pid))

    def rss(self) -> int:
        return proc_status(self.pid)["VmRSS"]

    def peak_rss(self) -> int:
        return proc_status(self.pid)["VmHWM"]

    async def wait_listening(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}:\n{self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout:g}s; see {self.log}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 35.0) -> None:
        if self.process.poll() is not None:
            return
        members = [(member, start_time(member)) for member in tree(self.pid)[1:]]  # a supervisor's workers
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for member, started in members:  # none may outlive the scenario; a reused pid is left alone
            if started is not None and start_time(member) == started:
                with contextlib.suppress(OSError):
                    os.kill(member, signal.SIGKILL)
