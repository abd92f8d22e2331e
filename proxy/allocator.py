"""Shell layer: the C allocator's thresholds, set once at start-up so megabyte buffers are reused.

An image answer is megabytes: the chunks it arrives in, the base64 cut out of it, the image written to
the store. glibc's malloc serves a buffer that large from fresh pages (mmap) or from the top of its heap,
and it hands the top of the heap back to the kernel as soon as a few megabytes there are free. Under a
stream of large answers the next answer's buffers are then pages the kernel must map and zero again: a
fault every 4 KiB, about a thousand per 3 MB answer, and more of the proxy's CPU than its own work on the
answer (measured on the event loop's thread: 2.5 to 3.5 ms of system time per answer hosted as a URL,
about 0.5 ms with these thresholds).

Raised thresholds keep freed buffers in the heap for the next answer. The price: up to TRIM_THRESHOLD of
freed memory stays with the process after a burst, until it is reused. Elsewhere than glibc (musl,
macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Below this size a buffer comes from the heap, where it is reused: glibc's largest value on 64 bits, so
# anything short of the proxy's own 128 MB answer cap stays out of fresh mappings.
MMAP_THRESHOLD = 32 * 1024 * 1024
# Free memory at the heap's top past this is given back to the kernel: room for a burst of answers.
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Raise glibc's thresholds for this process (and the workers it forks); False where they do not apply."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)
