"""Shell layer: hosted images, for clients that asked for a URL when the upstream answered with bytes.

The default store is a directory: each image is one file named by an unguessable token plus its
extension, so the name alone is the capability to read it (as OpenAI's signed URLs are). An image
lives `ttl` seconds, measured from its file's modification time, and a sweep removes expired files.
File I/O runs in a worker thread so megabyte writes never stall the event loop. A large base64 image
is decoded in that thread too, a slice at a time between the writes (`put_base64`), from the chunks
the upstream's answer arrived in when it is Base64Chunks: neither the base64 nor the decoded image is
ever copied whole, and the event loop gets the interpreter between slices instead of waiting out one
long decode.

Object storage (proxy.s3_store) names an image by its content's hash instead: a repeat is stored once,
and only someone who already has the image can compute its name.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.core import base64_codec
from proxy.core.mime import EXTENSIONS
from proxy.core.received import Base64Chunks

# Every extension a name may be given (image_name, hash_name): a name made with another would never be served.
_EXTENSIONS = "|".join(sorted(set(EXTENSIONS.values())))
_NAME = re.compile(rf"^[A-Za-z0-9_-]{{32}}\.({_EXTENSIONS})$")
_HASH_NAME = re.compile(rf"^[0-9a-f]{{64}}\.({_EXTENSIONS})$")
# A write in progress (`FileImageStore._write`); one untouched this long was left by a process killed mid-write.
_PART = re.compile(rf"^\.[A-Za-z0-9_-]{{32}}\.({_EXTENSIONS})\.part$")
ABANDONED_AFTER = 3600.0
_TYPES = {extension: content_type for content_type, extension in EXTENSIONS.items()}
IMAGE_ROUTE = "/images/"
_BASE64_SLICE = 256 * 1024  # base64 characters decoded at a time: a multiple of 4, so slices decode alone
_PAD = ord("=")


@dataclass(frozen=True)
class StoredImage:
    content_type: str
    path: Path | None = None  # a file to serve (the directory store)
    data: bytes | None = None  # or the bytes themselves (a shared backend)
    expires_at: float | None = None  # when it stops being served (epoch seconds; None: not known)


def image_name(content_type: str) -> str:
    """A new unguessable name, with the extension the image's type calls for."""
    return f"{secrets.token_urlsafe(24)}.{EXTENSIONS.get(content_type, 'png')}"


def valid_name(name: str) -> str | None:
    """The content type a name stands for, or None when the name is not one this proxy could have made."""
    match = _NAME.match(name)  # also what keeps `..` and slashes out of any path or key
    return _TYPES[match.group(1)] if match is not None else None


def hash_name(data: bytes, content_type: str) -> str:
    """The content-addressed name object storage keeps an image under: its sha256 and extension."""
    return f"{hashlib.sha256(data).hexdigest()}.{EXTENSIONS.get(content_type, 'png')}"


def valid_hash_name(name: str) -> str | None:
    """The content type a hash name stands for, or None when it is not one (no `..`, no slash, no other key)."""
    match = _HASH_NAME.match(name)
    return _TYPES[match.group(1)] if match is not None else None


def proxy_url(name: str, public_base: str) -> str:
    """The proxy's own address of a hosted image (`GET /images/{name}`)."""
    return f"{public_base}{IMAGE_ROUTE}{name}"


class ImageStore(Protocol):
    ttl: int

    async def put(self, data: bytes, content_type: str, keep_for: float | None = None) -> str:
        """Keep the bytes (`keep_for` seconds, default `ttl`); returns the image's name (its URL's last segment)."""
        ...

    async def get(self, name: str) -> StoredImage | None:
        """The image under `name`, or None when there is none or it has expired."""
        ...

    async def sweep(self) -> int:
        """Remove expired images; returns how many went."""
        ...

    async def url_for(self, name: str, public_base: str, keep_for: float) -> str:
        """The URL a client fetches the image from, valid for `keep_for` seconds."""
        ...


def _slices(b64: bytes) -> Iterator[memoryview]:
    """The text in slices of whole quads, a tail too short to decode alone ending the last one."""
    view = memoryview(b64)
    start = 0
    while start < len(view):
        end = start + _BASE64_SLICE
        if len(view) - end < 4:
            end = len(view)  # as the tail ends a whole decode
        yield view[start:end]
        start = end


def _quads(views: Iterable[memoryview]) -> Iterator[bytes | memoryview]:
    """The views' text in pieces of whole quads, as they lie: only a quad cut by a view's end is copied (four
    bytes); whatever is left over ends the last piece."""
    carry = b""
    for view in views:
        if carry:
            need = 4 - len(carry)
            carry, view = carry + bytes(view[:need]), view[need:]
            if len(carry) < 4:
                continue  # a view shorter than the quad's rest
            yield carry
        cut = len(view) - len(view) % 4
        if cut:
            yield view[:cut]
        carry = bytes(view[cut:])
    if carry:
        yield carry


def decode_slices(b64: bytes | Base64Chunks) -> Iterator[bytes]:
    """The bytes strict base64 decodes to, a slice at a time (the received chunks' own views when it is
    Base64Chunks); binascii.Error (a ValueError) where `base64.b64decode(b64, validate=True)` would raise one."""
    pieces = _slices(b64) if isinstance(b64, bytes) else _quads(b64.views)
    previous: bytes | memoryview | None = None
    for piece in pieces:
        if previous is not None and len(piece) < 4:
            previous = bytes(previous) + piece  # a tail too short to decode alone ends the last slice, as in _slices
            continue
        if previous is not None:
            if previous[-1] == _PAD:
                # Padding that ends a slice is only valid at the very end: more follows here.
                raise binascii.Error("Excess data after padding")
            yield base64_codec.decode_slice(previous)
        previous = piece
    if previous is not None:
        yield base64_codec.decode_slice(previous)


def default_directory() -> Path:
    return Path(tempfile.gettempdir()) / "imagegate-images"


class FileImageStore:
    def __init__(self, directory: Path, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.ttl = ttl
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)

    def _write(self, pieces: Iterable[bytes], name: str, keep_for: float) -> None:
        # Write then rename: a reader never sees half an image, and a failed write leaves nothing behind.
        final = self.directory / name
        partial = self.directory / f".{name}.part"
        try:
            with partial.open("wb") as file:
                for piece in pieces:
                    file.write(piece)
            if keep_for > self.ttl:
                # Expiry is mtime + ttl: an image kept longer (an async task's result) gets a later mtime.
                now = self._clock()
                os.utime(partial, (now, now + keep_for - self.ttl))
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    async def put(self, data: bytes, content_type: str, keep_for: float | None = None) -> str:
        name = image_name(content_type)
        await asyncio.to_thread(self._write, (data,), name, self.ttl if keep_for is None else keep_for)
        return name

    async def put_base64(self, b64: bytes | Base64Chunks, content_type: str, keep_for: float | None = None) -> str:
        """`put` of what the base64 decodes to, decoded while it is written (from the chunks it was received
        in, when it is Base64Chunks); binascii.Error (nothing kept) when it is not strict base64."""
        name = image_name(content_type)
        await asyncio.to_thread(self._write, decode_slices(b64), name, self.ttl if keep_for is None else keep_for)
        return name

    def _expired(self, path: Path) -> bool:
        expires_at = self._expires_at(path)
        return expires_at is None or expires_at < self._clock()

    async def get(self, name: str) -> StoredImage | None:
        content_type = valid_name(name)
        if content_type is None:
            return None
        path = self.directory / name
        expires_at = await asyncio.to_thread(self._expires_at, path)
        if expires_at is None or expires_at < self._clock():  # as `_expired`, keeping the time for Cache-Control
            return None
        return StoredImage(content_type, path=path, expires_at=expires_at)

    def _expires_at(self, path: Path) -> float | None:
        try:
            return path.stat().st_mtime + self.ttl
        except FileNotFoundError:
            return None

    def _sweep(self) -> int:
        removed = 0
        for path in self.directory.iterdir():
            if (_NAME.match(path.name) and self._expired(path)) or (_PART.match(path.name) and self._abandoned(path)):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _abandoned(self, path: Path) -> bool:
        try:
            return path.stat().st_mtime + ABANDONED_AFTER < self._clock()
        except FileNotFoundError:
            return False  # renamed into place meanwhile

    async def sweep(self) -> int:
        return await asyncio.to_thread(self._sweep)

    async def url_for(self, name: str, public_base: str, keep_for: float) -> str:
        return proxy_url(name, public_base)
