"""Shell layer: the limit counters the worker processes of one host share, in one memory-mapped file.

With `--workers N` and `server.state: memory`, every request of a key with limits or a budget changes
several counters (requests this minute, images today, requests running, USD today and this month). In
SQLite each change was a write transaction, and a worker waiting for its sibling's lock slept with its
event loop; here a change is a few struct reads and writes in shared memory under `flock`, the file's
lock (held for microseconds, by one statement's worth of work).

The file is a fixed table of SLOTS slots (key digest, value, expiry), open addressing with linear
probing. A slot whose counter expired is reused by the next new key that probes past it; the sweep
rebuilds the table without expired slots so that probe chains stay short. Nothing here outlives the run:
proxy.workers makes the file in the run's directory and starts the counters from the ledger.
"""

from __future__ import annotations

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
        start, reusable = int.from_bytes(digest[:8], "little"), None
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
        """Rebuild the table with the live counters only; how many expired ones went."""
        now = self._clock()
        with self._locked():
            slots = [_SLOT.unpack_from(self._map, index * _SLOT.size) for index in range(SLOTS)]
            live = [slot for slot in slots if slot[0] != _EMPTY and slot[2] > now]
            self._map[:] = bytes(len(self._map))
            for digest, value, expires in live:
                offset, _, _ = self._find(digest, now)
                _SLOT.pack_into(self._map, offset, digest, value, expires)
        return sum(1 for slot in slots if slot[0] != _EMPTY) - len(live)

    def close(self) -> None:
        self._map.close()
        self._file.close()
