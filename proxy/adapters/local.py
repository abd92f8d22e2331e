"""Adapter layer: the built-in `local` generator. Real PNG images with no key and no network.

Each image is a deterministic function of (prompt, seed, index): a three-colour gradient with a few
shapes, all derived from a SHA-256 of those inputs, so the same request always gives the same bytes.
Honours `size` (`auto` -> 1024x1024, sides up to 4096) and `n`; `seed` when the rules forward it.
Answers in base64 (like GPT image models); the proxy hosts it when the client asks for a URL.
Rows are built with `bytes.translate` over a precomputed index row, so a 1024x1024 image costs
milliseconds of C loops rather than a million Python steps; the shell still runs it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import math

from proxy.adapters.base import AdapterSpec, Done, Fail, Job, Step
from proxy.core.errors import InvalidRequest
from proxy.core.formats import NativeFormats
from proxy.core.png import encode_png
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sizes import AUTO, Size, parse_size

DEFAULT_SIZE = Size(1024, 1024)
MAX_SIDE = 4096
_LEVELS = 85  # gradient steps per channel: 3 channels x 85 levels fit in one byte's 256 values
Colour = tuple[int, int, int]


def _colour(digest: bytes, at: int) -> Colour:
    return digest[at], digest[at + 1], digest[at + 2]


def _index_row(width: int) -> bytes:
    """Byte 3x+c encodes (channel c, horizontal level of x): the per-row table turns it into a colour value."""
    row = bytearray(width * 3)
    for x in range(width):
        level = x * (_LEVELS - 1) // max(1, width - 1)
        row[3 * x : 3 * x + 3] = bytes((level, _LEVELS + level, 2 * _LEVELS + level))
    return bytes(row)


def _table(left: Colour, right: Colour, bottom: Colour, ty: float) -> bytes:
    table = bytearray(256)
    for value in range(3 * _LEVELS):
        channel, level = divmod(value, _LEVELS)
        tx = level / (_LEVELS - 1)
        top = left[channel] * (1 - tx) + right[channel] * tx
        table[value] = round(top * (1 - ty) + bottom[channel] * ty)
    return bytes(table)


def _shapes(digest: bytes, size: Size) -> list[tuple[str, int, int, int, Colour]]:
    """Up to four circles and rectangles: (kind, centre x, centre y, radius, colour)."""
    shapes = []
    for number in range(2 + digest[12] % 3):
        at = 13 + number * 4
        kind = "circle" if digest[at] % 2 else "rect"
        cx = digest[at + 1] * size.width // 256
        cy = digest[at + 2] * size.height // 256
        radius = max(1, (digest[at + 3] % 64 + 16) * min(size.width, size.height) // 256)
        shapes.append((kind, cx, cy, radius, _colour(digest, (at + 5) % 29)))
    return shapes


def _paint_row(row: bytearray, y: int, width: int, shapes: list[tuple[str, int, int, int, Colour]]) -> None:
    for kind, cx, cy, radius, colour in shapes:
        dy = y - cy
        if abs(dy) > radius:
            continue
        half = radius if kind == "rect" else int(math.sqrt(radius * radius - dy * dy))
        x0, x1 = max(0, cx - half), min(width, cx + half + 1)
        if x1 > x0:
            row[3 * x0 : 3 * x1] = bytes(colour) * (x1 - x0)


def render_png(prompt: str, seed: int, index: int, size: Size) -> bytes:
    """One deterministic PNG for the prompt, seed and image index."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).digest()
    left, right, bottom = _colour(digest, 0), _colour(digest, 3), _colour(digest, 6)
    index_row = _index_row(size.width)
    shapes = _shapes(digest, size)
    tables: dict[int, bytes] = {}
    rows = []
    for y in range(size.height):
        level = y * 255 // max(1, size.height - 1)
        if level not in tables:
            tables[level] = _table(left, right, bottom, level / 255)
        row = bytearray(index_row.translate(tables[level]))
        _paint_row(row, y, size.width, shapes)
        rows.append(bytes(row))
    return encode_png(size.width, size.height, rows)


def _size(text: str | None) -> Size | None:
    if text is None or text == AUTO:
        return DEFAULT_SIZE
    return parse_size(text)


def start(job: Job) -> Step:
    size = _size(job.plan.fields.get("size"))
    if size is None or size.width > MAX_SIDE or size.height > MAX_SIDE:
        message = f"The local generator makes images up to {MAX_SIDE}x{MAX_SIDE}."
        return Fail(InvalidRequest(message, param="size", code="invalid_size"))
    seed = int(job.plan.fields.get("seed", 0))
    images = tuple(
        GeneratedImage(
            b64_json=base64.b64encode(render_png(job.plan.prompt, seed, index, size)).decode("ascii"),
            content_type="image/png",
        )
        for index in range(job.plan.n)
    )
    return Done(ImagesResult(images=images, extra={"size": str(size), "output_format": "png"}))


SPEC = AdapterSpec(
    name="local",
    schema=ChannelSchema(requires_base_url=False, uses_key=False),
    start=start,
    cpu_bound=True,
    output_formats=NativeFormats(default="png"),
)
