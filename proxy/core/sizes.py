"""Core layer: image sizes as values. Parses the spellings clients use (`1024x1024`, `1024×1024`, `1024*1024`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Clients (and seed 000's users) write the separator as x, X, the multiplication sign or an asterisk.
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×*]\s*(\d{1,6})\s*$")
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


def parse_size(text: str) -> Size | None:
    """`"1024×1024"` -> Size(1024, 1024); None when the text is not WxH with positive sides."""
    match = _SIZE.match(text)
    if match is None:
        return None
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        return None
    return Size(width, height)


def normalise_size(text: str) -> str | None:
    """The canonical spelling (`1024x1024` or `auto`), or None when the text is no size at all."""
    if text.strip().lower() == AUTO:
        return AUTO
    size = parse_size(text)
    return None if size is None else str(size)
