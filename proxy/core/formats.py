"""Core layer: `output_format` and `output_compression`, what a channel can make of them, and what the proxy converts.

OpenAI's Images API defines three output formats, png, jpeg and webp (`jpg` is taken as jpeg), and the proxy
honours them on every model. A provider that makes the asked format natively is asked for it; any other is
asked for a format it can make (png when it can, being lossless; else nothing, its default) and the proxy
converts the result (proxy.core.transcode). `output_compression` (0-100, OpenAI's scale: 100 is the least
compression) matters for jpeg and webp only; a provider that cannot take it with the format gets png (or its
default) and the proxy encodes at that compression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

FORMATS = ("png", "jpeg", "webp")
ALIASES = MappingProxyType({"jpg": "jpeg"})
LOSSY = frozenset({"jpeg", "webp"})
MIME_TYPES = MappingProxyType({"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"})
FORMAT_OF_MIME = MappingProxyType({mime: name for name, mime in MIME_TYPES.items()})


def canonical_format(value: str) -> str | None:
    """The OpenAI spelling of an output format (`JPG` -> jpeg), or None when the API defines no such format."""
    name = value.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in FORMATS else None


@dataclass(frozen=True)
class NativeFormats:
    """What a provider makes by itself, as its adapter declares it.

    `asked`: formats it makes when the request names them (the adapter maps `output_format` onto the
    provider's own field). `default`: the format it makes when none is named (None: not known ahead, e.g.
    a self-hosted server's setting; the proxy then looks at the bytes). `compression`: whether it also takes
    `output_compression` with an asked jpeg or webp.
    """

    asked: frozenset[str] = frozenset()
    default: str | None = "png"
    compression: bool = False


@dataclass(frozen=True)
class Conversion:
    """The proxy's own work on a channel's images: encode them as `to`, at `compression` for jpeg/webp."""

    to: str
    compression: int | None = None

    def needed(self, source: str | None) -> bool:
        """Whether an image in `source` format must be re-encoded (an image already in `to`, with no
        compression asked, is delivered as it is)."""
        return source != self.to or self.compression is not None


@dataclass(frozen=True)
class FormatChoice:
    fields: Mapping[str, Any]  # what the upstream is asked: output_format (and output_compression), or nothing
    conversion: Conversion | None  # None: the upstream makes what the client asked


def choose(wanted: str, compression: int | None, native: NativeFormats) -> FormatChoice:
    """How a channel with `native` formats serves `output_format: wanted` (canonical) at `compression`."""
    compression = compression if wanted in LOSSY else None
    if wanted in native.asked and (compression is None or native.compression):
        asked: dict[str, Any] = {"output_format": wanted}
        if compression is not None:
            asked["output_compression"] = compression
        return FormatChoice(MappingProxyType(asked), None)
    if wanted == native.default and compression is None:
        return FormatChoice(MappingProxyType({}), None)
    # Converting: a lossless source when the provider can make one, else whatever it makes by default.
    source: dict[str, Any] = {"output_format": "png"} if "png" in native.asked and native.default != "png" else {}
    return FormatChoice(MappingProxyType(source), Conversion(wanted, compression))
