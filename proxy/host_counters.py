"""Shell layer: the limit counters the worker processes of one host share, in one memory-mapped file.

With `--workers N` and `server.state: memory`, every request of a key with limits or a budget changes
several counters (requests this minute, images today, requests running, USD today and this month). In
SQLite each change was a write transaction, and a worker waiting for its sibling's lock slept with its
event loop; here a change is a few struct reads and writes in shared memory under `flock`, the file's
lock (held for microseconds, by one statement's worth of work).

The file is a fixed table of SLOTS slots (key digest, value, expiry), open addressing with linear
probing. A slot whose counter expired is reused by the next new key that probes past it; the sweep
deletes expired slots so that probe chains stay short: a slice of the table per hold of the lock, each
cluster (run of occupied slots) beginning in it rewritten without its expired counters, so siblings wait
for one slice, never for a rebuild of the whole table. Nothing here outlives the run:
proxy.workers makes the file in the run's directory and starts the counters from the ledger.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import mmap
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy.core.errors import ServiceUnavailable

FILE = "counters.map"
SLOTS = 1 << 16  # counters alive at once: a key with every limit and a budget holds 5
_SLOT = struct.Struct("<16sqd")  # blake2b digest of the key, value, expiry (epoch seconds)
_EMPTY = bytes(16)
_MASK = SLOTS - 1
SWEEP_SLICE = 1024  # slots a sweep looks at per hold of the lock


def home(digest: bytes) -> int:
    """The slot a key's probe starts at."""
    return int.from_bytes(digest[:8], "little") & _MASK


def create(path: Path) -> None:
    """The empty table (the supervisor's, before any worker starts)."""
    with path.open("wb") as file:
        file.truncate(SLOTS * _SLOT.size)


class HostCounters:
    """proxy.shared_state.Counters for the workers of one host."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._file = path.open("r+b")  # each process its own open file: flock excludes between them
        self._map = mmap.mmap(self._file.fileno(), SLOTS * _SLOT.size)
        self._clock = clock

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def _find(self, digest: bytes, now: float) -> tuple[int, int, float]:
        """The key's slot (offset, value, expiry; 0 and 0.0 when it has none), or the slot a new counter takes."""
        start, reusable = home(digest), None
        for probe in range(SLOTS):
            offset = ((start + probe) & _MASK) * _SLOT.size
            key, value, expires = _SLOT.unpack_from(self._map, offset)
            if key == digest:
                return offset, value, expires
            if key == _EMPTY:
                return (offset if reusable is None else reusable), 0, 0.0
            if reusable is None and expires <= now:
                reusable = offset
        if reusable is None:
            raise ServiceUnavailable("Too many limit counters are in use at once.", code="state_unavailable")
        return reusable, 0, 0.0

    async def incr(self, key: str, amount: int, ttl: int, refresh: bool = False) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        now = self._clock()
        with self._locked():
            offset, value, expires = self._find(digest, now)
            if expires <= now:  # new, or expired: it starts anew with this increment
                value, expires = 0, now + ttl
            if refresh:
                expires = now + ttl
            _SLOT.pack_into(self._map, offset, digest, value + amount, expires)
        return value + amount

    async def decr(self, key: str, amount: int) -> None:
        """Subtract, never below zero, and never bringing an expired counter back."""
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        now = self._clock()
        with self._locked():
            offset, value, expires = self._find(digest, now)
            if expires > now:
                _SLOT.pack_into(self._map, offset, digest, max(0, value - amount), expires)

    async def sweep(self) -> int:
        """Delete the expired counters, one slice of slots per hold of the lock (siblings wait for a slice,
        never for the whole table); how many went."""
        gone = 0
        for start in range(0, SLOTS, SWEEP_SLICE):
            with self._locked():
                gone += self._sweep_slice(start, self._clock())
            await asyncio.sleep(0)  # this worker's own requests run between slices too
        return gone

    def _sweep_slice(self, start: int, now: float) -> int:
        """Compact each cluster (a run of occupied slots) that begins in slots [start, start + SWEEP_SLICE)."""
        chunk = self._map[start * _SLOT.size:(start + SWEEP_SLICE) * _SLOT.size]
        # Read once: compacting a cluster changes no slot after it, so what follows stays as read.
        taken = [self._slot(start - 1)[0] != _EMPTY] + [slot[0] != _EMPTY for slot in _SLOT.iter_unpack(chunk)]
        gone, index = 0, 1
        while index <= SWEEP_SLICE:
            if taken[index] and not taken[index - 1]:
                length, went = self._compact(start + index - 1, now)
                gone += went
                index += length
            else:
                index += 1  # empty, or inside a cluster that began before: that slice's work
        return gone

    def _compact(self, first: int, now: float) -> tuple[int, int]:
        """Rewrite the cluster starting at slot `first` without its expired counters; (its length, how many went).

        The live ones go back in their order, each at the first free slot from its home: none lands past where
        it was, so the cluster only shrinks and the clusters after it are untouched."""
        slots: list[tuple[bytes, int, float]] = []
        while len(slots) < SLOTS and (slot := self._slot(first + len(slots)))[0] != _EMPTY:
            slots.append(slot)
        live = [slot for slot in slots if slot[2] > now]
        if len(live) < len(slots):
            for index in range(first, first + len(slots)):
                _SLOT.pack_into(self._map, (index & _MASK) * _SLOT.size, _EMPTY, 0, 0.0)
            for digest, value, expires in live:
                offset, _, _ = self._find(digest, now)
                _SLOT.pack_into(self._map, offset, digest, value, expires)
        return len(slots), len(slots) - len(live)

    def _slot(self, index: int) -> tuple[bytes, int, float]:
        slot: tuple[bytes, int, float] = _SLOT.unpack_from(self._map, (index & _MASK) * _SLOT.size)
        return slot

    def close(self) -> None:
        self._map.close()
        self._file.close()
