"""Core layer: image sizes as values. Parses the spellings clients use (`1024x1024`, `1024×1024`, `1024*1024`)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Clients (and seed 000's users) write the separator as x, X, the multiplication sign or an asterisk.
_SIZE = re.compile(r"^\s*([0-9]{1,6})\s*[xX×*]\s*([0-9]{1,6})\s*$")  # ASCII digits: "٦٤x٦٤" is not a size
AUTO = "auto"


@dataclass(frozen=True, order=True)
class Size:
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _parse(text: str) -> Size | None:
    match = _SIZE.match(text)
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        return None
    return Size(width, height)


# A request parses its size several times (its checks, price and budget), and sizes have few spellings.
_parse_cached = functools.lru_cache(maxsize=1024)(_parse)
_CACHED_LENGTH = 32  # a size is a few characters; a client's field may be any length, and is not kept


def parse_size(text: str) -> Size | None:
    """`"1024×1024"` -> Size(1024, 1024); None when the text is not WxH with positive sides."""
    return _parse_cached(text) if len(text) <= _CACHED_LENGTH else _parse(text)


def normalise_size(text: str) -> str | None:
    """The canonical spelling (`1024x1024` or `auto`), or None when the text is no size at all."""
    if text.strip().lower() == AUTO:
        return AUTO
    size = parse_size(text)
    return None if size is None else str(size)


def parse_ratio(text: str) -> tuple[int, int] | None:
    """`"16:9"` -> (16, 9); None when the text is not W:H with positive sides."""
    left, sep, right = text.partition(":")
    if not sep or not left.strip().isdigit() or not right.strip().isdigit():
        return None
    width, height = int(left), int(right)
    return (width, height) if width > 0 and height > 0 else None


def clamp_ratio(size: Size, max_ratio: float) -> Size:
    """`size` widened on its short side just enough to bring its shape inside [1/max_ratio, max_ratio]."""
    if size.width > size.height * max_ratio:
        return Size(size.width, math.ceil(size.width / max_ratio))
    if size.height > size.width * max_ratio:
        return Size(math.ceil(size.height / max_ratio), size.height)
    return size


def _log_distance(a: float, b: float) -> float:
    # Ratios compare on a log scale, so 2:1 and 1:2 are equally far from 1:1.
    return abs(math.log(a) - math.log(b))


def nearest_ratio(size: Size, ratios: Sequence[str]) -> str:
    """The provider ratio (`"16:9"`) closest in shape to `size`; the first one wins a tie."""
    target = size.width / size.height
    parsed = [(text, parse_ratio(text)) for text in ratios]
    usable = [(text, pair[0] / pair[1]) for text, pair in parsed if pair is not None]
    if not usable:
        raise ValueError("no W:H ratio to choose from")
    return min(usable, key=lambda item: _log_distance(item[1], target))[0]


def nearest_size(size: Size, sizes: Sequence[Size]) -> Size:
    """The provider size closest in shape to `size`, then closest in pixel count; the first wins a tie."""
    if not sizes:
        raise ValueError("no size to choose from")
    target = size.width / size.height
    return min(
        sizes,
        key=lambda s: (round(_log_distance(s.width / s.height, target), 6), abs(math.log(s.pixels / size.pixels))),
    )
