"""Shell layer: CPU-heavy work off the event loop, in a pool of its own.

Drawing, encoding and decoding images (the local generator, output_format conversion, megabytes of
base64) would stall every connection if it ran on the event loop. It runs here rather than in the
loop's default executor because that one also resolves host names and does the image store's file
I/O: a burst of large images queued there would make every upstream call wait behind them.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")

# One thread a core: more would only take turns on the same cores (Pillow and base64 release the GIL).
_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="imagegate-cpu")


async def off_loop(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in the CPU pool, awaited (with the caller's context, as asyncio.to_thread does)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_POOL, partial(context.run, function, *args))
