"""Adapter layer: the local generator's image bytes. Client uploads decoded, results encoded (Pillow).

Decoding takes PNG, JPEG, WebP and GIF only: Pillow's other plugins (EPS runs Ghostscript, for one) are
never offered bytes a client chose. The dimensions are read from the header and bounded before any
pixel is decoded, so a small file that claims a huge image costs nothing. Encoding (core.transcode.encode,
shared with conversions) writes `png`, `jpeg` (`jpg` is the same) or `webp`; `output_compression` is the
JPEG / WebP quality, as OpenAI uses it.
Everything here is computation on bytes in memory.
"""

from __future__ import annotations

import io

from PIL import Image

from proxy.core import transcode
from proxy.core.errors import InvalidRequest
from proxy.core.mime import image_dimensions

# The input bound: a 40-megapixel photo decodes to 160 MB of RGBA; more would let one request hold gigabytes.
MAX_INPUT_PIXELS = 40_000_000
DECODABLE = ("PNG", "JPEG", "WEBP", "GIF")
# OpenAI's output_format names -> (Pillow format, MIME type, the name the answer reports).
FORMATS = {
    "png": ("PNG", "image/png", "png"),
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "jpg": ("JPEG", "image/jpeg", "jpeg"),
    "webp": ("WEBP", "image/webp", "webp"),
}
TRANSPARENT_FORMATS = frozenset({"png", "webp"})


def _refuse(param: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {reason}", param=param, code="invalid_image")


def _check_dimensions(param: str, width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise _refuse(param, f"{width}x{height} is larger than the {MAX_INPUT_PIXELS // 1_000_000} megapixels accepted.")


def _open(data: bytes, param: str) -> Image.Image:
    header = image_dimensions(data[:65536])
    if header is not None:
        _check_dimensions(param, *header)
    try:
        image = Image.open(io.BytesIO(data), formats=DECODABLE)
        _check_dimensions(param, *image.size)
        image.load()
    except InvalidRequest:
        raise
    except Exception:
        # Corrupt uploads fail inside Pillow's decoders in many ways (OSError, SyntaxError, ValueError,
        # struct.error, ...), none documented as the only one: each is the client's file, a 400.
        raise _refuse(param, "expected a PNG, JPEG, WebP or GIF image.") from None
    return image


def decode(data: bytes, param: str) -> Image.Image:
    """The first frame of a PNG, JPEG, WebP or GIF as RGBA; InvalidRequest naming `param` for anything else."""
    return _open(data, param).convert("RGBA")


def decode_mask(data: bytes) -> Image.Image:
    """A mask's alpha channel (mode L): 0 where the image is to be edited, 255 where it stays, as OpenAI reads it."""
    image = _open(data, "mask")
    if not image.has_transparency_data:
        raise _refuse("mask", "it has no alpha channel; its fully transparent pixels mark the area to edit.")
    return image.convert("RGBA").getchannel("A")


def encode(image: Image.Image, output_format: str, compression: int | None) -> bytes:
    """The image in the format asked for (core.transcode.encode: alpha kept for PNG and WebP)."""
    return transcode.encode(image, FORMATS[output_format][2], compression)
