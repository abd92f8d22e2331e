"""Adapter layer: the local generator's picture of a prompt. A deterministic pattern drawn with Pillow.

Everything comes from a SHA-256 of the inputs (prompt, seed, image index): three colours for a
two-way gradient, and two to four circles and squares. The same digest and size always give the same
pixels. With `transparent` the gradient is left out (alpha 0) and only the shapes are drawn.
"""

from __future__ import annotations

import hashlib

from PIL import Image, ImageDraw

from proxy.core.sizes import Size

Colour = tuple[int, int, int]
Shape = tuple[str, int, int, int, Colour]  # kind, centre x, centre y, radius, colour
# The gradient is drawn at this size and scaled: bilinear scaling of a smooth ramp is the same ramp.
_RAMP = 256


def digest_of(*parts: str | int) -> bytes:
    """The digest every choice of a pattern is read from."""
    return hashlib.sha256("\x00".join(str(part) for part in parts).encode("utf-8", "replace")).digest()


def _colour(digest: bytes, at: int) -> Colour:
    return digest[at], digest[at + 1], digest[at + 2]


def shapes(digest: bytes, size: Size) -> list[Shape]:
    """Two to four circles and squares, placed and sized relative to the image."""
    found = []
    for number in range(2 + digest[12] % 3):
        at = 13 + number * 4
        kind = "circle" if digest[at] % 2 else "square"
        cx = digest[at + 1] * size.width // 256
        cy = digest[at + 2] * size.height // 256
        radius = max(1, (digest[at + 3] % 64 + 16) * min(size.width, size.height) // 256)
        found.append((kind, cx, cy, radius, _colour(digest, (at + 5) % 29)))
    return found


def gradient(left: Colour, right: Colour, bottom: Colour, size: Size) -> Image.Image:
    """Left to right along the top edge, fading to `bottom` down the image (RGB)."""
    vertical = Image.linear_gradient("L")  # black at the top, white at the bottom
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)  # black at the left
    ramp = (_RAMP, _RAMP)
    top = Image.composite(Image.new("RGB", ramp, right), Image.new("RGB", ramp, left), horizontal)
    whole = Image.composite(Image.new("RGB", ramp, bottom), top, vertical)
    return whole.resize((size.width, size.height), Image.Resampling.BILINEAR)


def pattern(digest: bytes, size: Size, transparent: bool = False) -> Image.Image:
    """The RGBA picture for a digest: gradient (or nothing) under opaque shapes."""
    image = gradient(_colour(digest, 0), _colour(digest, 3), _colour(digest, 6), size).convert("RGBA")
    if transparent:
        image.putalpha(0)
    draw = ImageDraw.Draw(image)
    for kind, cx, cy, radius, colour in shapes(digest, size):
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if kind == "circle":
            draw.ellipse(box, fill=(*colour, 255))
        else:
            draw.rectangle(box, fill=(*colour, 255))
    return image
