"""Core layer: re-encoding an image's bytes as png, jpeg or webp with Pillow (pure: bytes in, bytes out).

The shell runs this in a worker thread for anything but tiny images: decoding and encoding megapixels is
CPU work that would stall every other request on the event loop.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

# OpenAI's `output_compression` defaults to 100 (the least compression), and so does a conversion.
DEFAULT_COMPRESSION = 100
_PIL_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# JPEG has no alpha channel: transparent pixels are laid on white, as image viewers show them.
_MATTE = (255, 255, 255)


class TranscodeError(ValueError):
    """The bytes are not an image Pillow can read (or decoding them would be a decompression bomb)."""


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _flattened(image: Image.Image) -> Image.Image:
    """An RGB (or greyscale) image for JPEG, transparency composited onto white."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        matte = Image.new("RGB", rgba.size, _MATTE)
        matte.paste(rgba, mask=rgba.getchannel("A"))
        return matte
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def _for_format(image: Image.Image, to: str) -> Image.Image:
    if to == "jpeg":
        return _flattened(image)
    if image.mode in ("RGB", "RGBA") or (to == "png" and image.mode in ("L", "LA", "P", "1")):
        return image
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def encode(image: Image.Image, to: str, compression: int | None = None) -> bytes:
    """`image` encoded as `to` (png, jpeg or webp): the one Pillow encoder, for conversions and the local
    generator. `compression` 0-100 sets the jpeg/webp quality (100: best) and is meaningless for png."""
    if to not in _PIL_NAMES:
        raise ValueError(f"cannot encode images as {to!r}")
    image = _for_format(image, to)
    if image.mode == "RGBA" and image.getchannel("A").getextrema() == (255, 255):
        image = image.convert("RGB")  # an alpha channel that says nothing only makes the file larger
    out = io.BytesIO()
    if to == "png":
        image.save(out, "PNG")
    else:
        image.save(out, _PIL_NAMES[to], quality=DEFAULT_COMPRESSION if compression is None else compression)
    return out.getvalue()


def transcode(data: bytes, to: str, compression: int | None = None) -> bytes:
    """`data` (any image Pillow reads) encoded as `to` (see encode); TranscodeError when it is no image."""
    if to not in _PIL_NAMES:
        raise ValueError(f"cannot encode images as {to!r}")
    try:
        with warnings.catch_warnings():
            # Pillow warns before it refuses: a huge image is an error here, not a warning.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return encode(opened, to, compression)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise TranscodeError(f"not a readable image: {error}") from None
