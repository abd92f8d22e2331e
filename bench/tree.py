"""CPU and memory of a whole process tree, from /proc: a supervisor and every worker it forked.

With `--workers N` the proxy's process is a supervisor and the requests are served by its children, so
a figure read from one pid would miss nearly all the work. Each reading walks the tree afresh
(`/proc/<pid>/task/*/children`, recursively: a child is listed under the thread that forked it), so
a worker started after the previous reading is counted too.

- CPU: utime + stime + cutime + cstime of every live process in the tree. A process that exited and was
  reaped by a live parent in the tree moves its time into that parent's cutime/cstime, so it is still
  counted; one that exits between two readings without being reaped yet (or whose parent is gone) is
  lost. The bench says so beside the figures.
- Memory: PSS (`/proc/<pid>/smaps_rollup`) summed over the tree. Forked workers share the pages they
  inherited (the imported code, the rules); RSS counts a shared page in every process that maps it, PSS
  divides it between them, so the PSS sum is what the tree really holds. The RSS sum is shown too.
  There is no peak PSS in /proc (VmHWM is per process and RSS), so a peak is a sampled maximum.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The pids forked by any thread of `pid` (none when it is gone)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(word) for word in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants, as they are now."""
    pids, index = [pid], 0
    while index < len(pids):
        pids += children(pids[index])
        index += 1
    return pids


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # Fields 14-17 of stat(5): utime, stime, cutime, cstime (after the name: indexes 11-14).
    return sum(int(value) for value in fields[11:15])


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by the tree rooted at `pid` (reaped descendants included, see above)."""
    return sum(_cpu_ticks(member) for member in tree(pid)) / _TICK


@dataclass(frozen=True)
class Memory:
    pss: int  # bytes, summed over the tree
    rss: int
    processes: int


def _rollup(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == "Pss":
            pss = int(rest.split()[0]) * 1024
        elif name == "Rss":
            rss = int(rest.split()[0]) * 1024
    return pss, rss


def tree_memory(pid: int) -> Memory:
    members = tree(pid)
    readings = [_rollup(member) for member in members]
    return Memory(sum(pss for pss, _ in readings), sum(rss for _, rss in readings), len(members))


class PeakSampler:
    """The tree's largest PSS sum (and RSS sum) seen while running, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = Memory(0, 0, 0)
        self.peak_rss = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        memory = tree_memory(self.pid)
        if memory.pss > self.peak.pss:
            self.peak = memory
        self.peak_rss = max(self.peak_rss, memory.rss)

    async def _run(self) -> None:
        while True:
            # smaps_rollup of a large process takes milliseconds: read off the event loop.
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> Memory:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        return self.peak
