"""Adapter layer: how the local generator changes images it is given (edits, variations, stream previews).

- Several inputs are laid out in a grid over the output, the first at the top left, each scaled to
  cover its cell and centre-cropped; one input covers the whole output.
- A mask (its alpha channel, sized like the first input) is carried through the same scaling into the
  first input's cell, as OpenAI applies a mask to the first image: where it is transparent the
  prompt's pattern replaces the picture, where it is opaque the picture stays, in between they mix.
- Without a mask the whole picture is restyled: blended with the prompt's pattern.
- A variation turns the hues of the input by a seed-dependent angle and lays a faint pattern over it.
- A stream preview is the final image at a coarser resolution, finer with each partial image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from PIL import Image, ImageOps

from proxy.core.sizes import Size

Box = tuple[int, int, int, int]
RESTYLE_WEIGHT = 0.4  # share of the pattern in a restyled edit: the input stays recognisable
VARIATION_WEIGHT = 0.2
# The first preview is 1/2**(steps + 2) of the final resolution; each next one doubles it.
_COARSEST = 2


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled to cover width x height, centre-cropped; an image already that size is returned as it is."""
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), Image.Resampling.BICUBIC)


def cells(count: int, size: Size) -> list[Box]:
    """A near-square grid of `count` cells over the size, row by row: (left, top, right, bottom) each."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    boxes = []
    for index in range(count):
        row, column = divmod(index, columns)
        boxes.append((
            column * size.width // columns,
            row * size.height // rows,
            (column + 1) * size.width // columns,
            (row + 1) * size.height // rows,
        ))
    return boxes


def compose(images: Iterable[Image.Image], count: int, size: Size) -> Image.Image:
    """`count` inputs, one per grid cell, as one RGBA picture of the output size.

    `images` may be lazy: each is scaled into its cell before the next is taken, so a request holds
    one full-size input at a time however many it sent.
    """
    canvas = Image.new("RGBA", (size.width, size.height), (0, 0, 0, 0))
    for image, box in zip(images, cells(count, size), strict=True):
        canvas.paste(fit(image, box[2] - box[0], box[3] - box[1]), box[:2])
    return canvas


def keep_map(mask: Image.Image, count: int, size: Size) -> Image.Image:
    """Where the picture stays (255) and where it is repainted (0), over the whole output (mode L)."""
    keep = Image.new("L", (size.width, size.height), 255)
    box = cells(count, size)[0]
    keep.paste(fit(mask, box[2] - box[0], box[3] - box[1]), box[:2])
    return keep


def repaint(picture: Image.Image, pattern: Image.Image, keep: Image.Image) -> Image.Image:
    return Image.composite(picture, pattern, keep)


def restyle(picture: Image.Image, pattern: Image.Image) -> Image.Image:
    return Image.blend(picture, pattern, RESTYLE_WEIGHT)


def hue_shift(digest: bytes) -> int:
    """A turn of the colour wheel (of 256 steps) that is never close to none: 32 to 223."""
    return 32 + digest[0] % 192


def vary(picture: Image.Image, pattern: Image.Image, digest: bytes) -> Image.Image:
    """Hues turned by a digest-chosen angle, a faint pattern on top (so greys change too), alpha kept."""
    shift = hue_shift(digest)
    hue, saturation, value = picture.convert("RGB").convert("HSV").split()
    hue = hue.point([(level + shift) % 256 for level in range(256)])
    turned = Image.merge("HSV", (hue, saturation, value)).convert("RGBA")
    turned.putalpha(picture.getchannel("A"))
    return Image.blend(turned, pattern, VARIATION_WEIGHT)


def preview(image: Image.Image, step: int, steps: int) -> Image.Image:
    """Partial image `step` of `steps` (0-based): the image pixelated, less with each step."""
    factor = 2 ** (steps - step + _COARSEST)
    small = (max(1, image.width // factor), max(1, image.height // factor))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)
