"""Shell layer: the limit counters the worker processes of one host share, in one memory-mapped file.

With `--workers N` and `server.state: memory`, every request of a key with limits or a budget changes
several counters (requests this minute, images today, requests running, USD today and this month). In
SQLite each change was a write transaction, and a worker waiting for its sibling's lock slept with its
event loop; here a change is a few struct reads and writes in shared memory under `flock`, the file's
lock (held for microseconds by a change, about a millisecond by a slice of the sweep).

The file is a fixed table of SLOTS slots (key digest, value, expiry), open addressing with linear
probing. A slot whose counter expired is reused by the next new key that probes past it; the sweep
deletes expired slots so that probe chains stay short: a slice of the table per hold of the lock, the
live counters of each cluster (run of occupied slots) beginning in it moved up into its expired slots and
the rest emptied, so siblings wait for one slice, never for a rebuild of the whole table, and a worker
killed mid-sweep loses no count. Nothing here outlives the run:
proxy.workers makes the file in the run's directory and starts the counters from the ledger.

What a worker holds (the reservations of its requests in flight: images, budgets, a generation at once) it
also notes in a file of its own (`held-<pid>.map`, the same slot layout: digest, amount held, the expiry
of the counter it was held in). When the worker exits, killed or not, the supervisor gives back
(`give_back`) what that file still holds, so a crash's requests in flight do not keep a key's slots and
budget taken until their counters expire.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import hashlib
import mmap
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from proxy.core.errors import ServiceUnavailable

FILE = "counters.map"
SLOTS = 1 << 16  # counters alive at once: a key with every limit and a budget holds 5
_SLOT = struct.Struct("<16sqd")  # blake2b digest of the key, value, expiry (epoch seconds)
_EMPTY = bytes(16)
_MASK = SLOTS - 1
SWEEP_SLICE = 1024  # slots a sweep looks at per hold of the lock
_DIGEST = 16
_HELD = struct.Struct("<qd")  # a holding's slot after its digest: the amount held, the counter's expiry
_AMOUNT = struct.Struct("<q")


def digest_of(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=_DIGEST).digest()


def home(digest: bytes) -> int:
    """The slot a key's probe starts at."""
    return int.from_bytes(digest[:8], "little") & _MASK


def create(path: Path) -> None:
    """The empty table (the supervisor's, before any worker starts); also a worker's empty holdings."""
    with path.open("wb") as file:
        file.truncate(SLOTS * _SLOT.size)


def holdings_file(directory: Path, pid: int) -> Path:
    """Where the worker `pid` of the run in `directory` notes what it holds in the counters."""
    return directory / f"held-{pid}.map"


def live_holdings(data: bytes, now: float) -> list[tuple[bytes, int]]:
    """A holdings file's amounts still held in the counters they were taken in: (digest, amount).

    A holding whose noted expiry passed is left alone: its counter expired (nothing to give back) or, for a
    gauge renewed since by a sibling, cannot be told from a new one (kept: the strict side)."""
    end = -(-len(data.rstrip(b"\0")) // _SLOT.size) * _SLOT.size  # the slots past the last one in use are empty
    return [(digest, amount) for digest, amount, expires in _SLOT.iter_unpack(data[:end]) if amount > 0 and expires > now]


def give_back(directory: Path, pid: int, clock: Callable[[], float] = time.time) -> int:
    """Give back to the counters what the exited worker `pid` still held; how many counters it held in.

    Once: the file goes before anything is given back (a failure halfway leaves more counted, never less)."""
    path = holdings_file(directory, pid)
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # it died before it opened the counters
        return 0
    path.unlink()
    held = live_holdings(data, clock())
    if held:
        counters = HostCounters(directory / FILE, clock)
        try:
            counters.subtract_all(held)
        finally:
            counters.close()
    return len(held)


@dataclass(slots=True)
class _Held:
    index: int  # the slot in the holdings file
    amount: int
    expires: float  # the counter's expiry when this process last took some of it


class Holdings:
    """What this process holds in the counters, in its own file (only it writes there, so no lock).

    A holding is noted inside the counters' lock right after its increment, and dropped before its counter
    is given back: a process killed between the two has noted less than it holds, never more, so nothing
    is given back twice (what was not noted stays counted until its counter expires, as before)."""

    def __init__(self, path: Path) -> None:
        create(path)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), SLOTS * _SLOT.size)
        self._held: dict[str, _Held] = {}
        self._free: list[int] = []  # slots of pruned holdings
        self._next = 0  # the first slot never used

    def add(self, key: str, digest: bytes, amount: int, expires: float, now: float) -> None:
        """`amount` more of the counter whose expiry is now `expires` (a holding of an earlier one is void)."""
        held = self._held.get(key) or self._new(key, digest)
        if held is not None:
            # A holding noted with an expiry that passed belongs to a counter that ended (or cannot be told from one).
            held.amount = amount + (held.amount if held.expires > now else 0)
            held.expires = expires
            _HELD.pack_into(self._map, held.index * _SLOT.size + _DIGEST, held.amount, expires)

    def remove(self, key: str, amount: int) -> None:
        held = self._held.get(key)
        if held is not None and held.amount:
            held.amount = max(0, held.amount - amount)
            _AMOUNT.pack_into(self._map, held.index * _SLOT.size + _DIGEST, held.amount)

    def prune(self, now: float) -> None:
        """Forget the holdings of expired counters, so the file's slots serve new ones."""
        for key, held in list(self._held.items()):
            if held.expires <= now:
                _SLOT.pack_into(self._map, held.index * _SLOT.size, _EMPTY, 0, 0.0)
                self._free.append(held.index)
                del self._held[key]

    def _new(self, key: str, digest: bytes) -> _Held | None:
        if not self._free and self._next == SLOTS:
            return None  # more than the table holds: cannot happen, and then it merely stays counted
        if self._free:
            index = self._free.pop()
        else:
            index, self._next = self._next, self._next + 1
        _SLOT.pack_into(self._map, index * _SLOT.size, digest, 0, 0.0)
        held = self._held[key] = _Held(index, 0, 0.0)
        return held

    def close(self) -> None:
        """The file stays: the supervisor reads it once this process has exited."""
        self._map.close()
        self._file.close()


class HostCounters:
    """proxy.shared_state.Counters for the workers of one host."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time, holdings: Path | None = None) -> None:
        self._file = path.open("r+b")  # each process its own open file: flock excludes between them
        self._map = mmap.mmap(self._file.fileno(), SLOTS * _SLOT.size)
        self._clock = clock
        self._holdings = Holdings(holdings) if holdings is not None else None  # a worker's; not the supervisor's
        self.lifetime = f"host:{path.resolve()}"  # the run's: its directory is made afresh for each run

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

    async def incr(self, key: str, amount: int, ttl: int, refresh: bool = False, hold: bool = False) -> int:
        digest = digest_of(key)
        now = self._clock()
        with self._locked():
            offset, value, expires = self._find(digest, now)
            if expires <= now:  # new, or expired: it starts anew with this increment
                value, expires = 0, now + ttl
            if refresh:
                expires = now + ttl
            _SLOT.pack_into(self._map, offset, digest, value + amount, expires)
            if hold and self._holdings is not None:
                self._holdings.add(key, digest, amount, expires, now)
        return value + amount

    def unhold(self, key: str, amount: int) -> None:
        if self._holdings is not None:  # lock-free: only this process writes its holdings
            self._holdings.remove(key, amount)

    async def decr(self, key: str, amount: int) -> None:
        """Subtract, never below zero, and never bringing an expired counter back."""
        digest = digest_of(key)
        now = self._clock()
        with self._locked():
            self._subtract(digest, amount, now)

    def subtract_all(self, amounts: list[tuple[bytes, int]]) -> None:
        """`decr` of each (digest, amount), under one hold of the lock: what an exited worker held."""
        now = self._clock()
        with self._locked():
            for digest, amount in amounts:
                self._subtract(digest, amount, now)

    def _subtract(self, digest: bytes, amount: int, now: float) -> None:
        offset, value, expires = self._find(digest, now)
        if expires > now:
            _SLOT.pack_into(self._map, offset, digest, max(0, value - amount), expires)

    async def sweep(self) -> int:
        """Delete the expired counters, one slice of slots per hold of the lock (siblings wait for a slice,
        never for the whole table); how many went."""
        gone = 0
        if self._holdings is not None:
            self._holdings.prune(self._clock())
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
        """Empty the expired slots of the cluster starting at slot `first`; (its length, how many expired).

        In an order a killed process cannot spoil: each live counter, in turn, is copied to the first slot on
        its probe path that holds no live counter, and only then is its old slot marked expired (killed in
        between, it leaves a shadow behind its copy, never a lost count); the expired slots are emptied last,
        when no live counter lies past one on its path."""
        slots: list[tuple[bytes, int, float]] = []
        while len(slots) < SLOTS and (slot := self._slot(first + len(slots)))[0] != _EMPTY:
            slots.append(slot)
        free: list[int] = []  # slots (from `first`) holding no live counter, in order
        for offset, (digest, value, expires) in enumerate(slots):
            if expires <= now:
                free.append(offset)
                continue
            at = bisect.bisect_left(free, (home(digest) - first) & _MASK)
            if at < len(free):
                _SLOT.pack_into(self._map, ((first + free.pop(at)) & _MASK) * _SLOT.size, digest, value, expires)
                _SLOT.pack_into(self._map, ((first + offset) & _MASK) * _SLOT.size, digest, 0, 0.0)
                free.append(offset)
        for offset in free:
            _SLOT.pack_into(self._map, ((first + offset) & _MASK) * _SLOT.size, _EMPTY, 0, 0.0)
        return len(slots), sum(1 for slot in slots if slot[2] <= now)

    def _slot(self, index: int) -> tuple[bytes, int, float]:
        slot: tuple[bytes, int, float] = _SLOT.unpack_from(self._map, (index & _MASK) * _SLOT.size)
        return slot

    def close(self) -> None:
        if self._holdings is not None:
            self._holdings.close()
        self._map.close()
        self._file.close()
