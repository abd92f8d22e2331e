"""Adapter layer: the built-in `local` model. Real images with no key and no network, drawn with Pillow.

- generations: a deterministic picture of (prompt, seed, image index) (proxy.adapters.local_pattern):
  the same request always gives the same bytes, another seed another picture.
- edits: the uploads laid out over the output; with a mask its transparent area is repainted from the
  prompt's pattern and the rest kept, without one the whole picture is restyled (proxy.adapters.local_edit).
- variations: the upload with its hues turned and a faint pattern on top, per seed and image index.
Fields: `n`; `size` (`auto` or absent: 1024x1024 for generations, the first upload's size for edits and
variations; sides up to 4096); `seed`, `output_format` (png, jpeg / jpg, webp), `output_compression`
(JPEG / WebP quality, 0-100) and `background` (`transparent` for png and webp) when the rules forward
them. Answers in base64; the proxy hosts it when the client asks for a URL. Streams are native:
`partial_images` previews of each image, coarse to fine, before the completed events.
The shell runs every step off the event loop (`cpu_bound`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from proxy.adapters import local_codec, local_edit
from proxy.adapters.base import AdapterSpec, Done, Drawn, Job, Partial, Step
from proxy.adapters.local_pattern import digest_of, pattern
from proxy.core.errors import InvalidRequest
from proxy.core.formats import NativeFormats
from proxy.core.plan import EDIT, GENERATE, VARIATION, Plan
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sizes import AUTO, Size, parse_size

DEFAULT_SIZE = Size(1024, 1024)
MAX_SIDE = 4096
MAX_INPUTS = 16  # as many images as OpenAI's edits take
BACKGROUNDS = frozenset({"auto", "opaque", "transparent"})


@dataclass(frozen=True)
class Order:
    """What the request asks of the picture, checked."""

    size: Size | None  # None: the first upload's size
    output_format: str  # a key of local_codec.FORMATS
    compression: int | None
    transparent: bool
    seed: int


def _size(text: Any) -> Size | None:
    if text is None or text == AUTO:
        return None
    size = parse_size(str(text))
    if size is None or size.width > MAX_SIDE or size.height > MAX_SIDE:
        raise InvalidRequest(f"The local generator makes images up to {MAX_SIDE}x{MAX_SIDE}.", param="size",
                             code="invalid_size")
    return size


def _output_format(fields: Mapping[str, Any]) -> str:
    value = fields.get("output_format", "png")
    if value not in local_codec.FORMATS:
        raise InvalidRequest(f"Invalid output_format '{value}' for the local model. Supported values: png, jpeg, webp.",
                             param="output_format", code="invalid_value")
    return str(value)


def _transparent(fields: Mapping[str, Any], output_format: str) -> bool:
    value = fields.get("background", "auto")
    if value not in BACKGROUNDS:
        raise InvalidRequest(f"Invalid background '{value}'. Supported values: auto, opaque, transparent.",
                             param="background", code="invalid_value")
    if value == "transparent" and output_format not in local_codec.TRANSPARENT_FORMATS:
        raise InvalidRequest("A transparent background needs output_format png or webp.", param="background",
                             code="invalid_value")
    return bool(value == "transparent")


def order_of(plan: Plan) -> Order:
    """The request's picture settings; InvalidRequest naming the param at fault."""
    fields = plan.fields
    output_format = _output_format(fields)
    compression = fields.get("output_compression")
    return Order(
        size=_size(fields.get("size")),
        output_format=output_format,
        compression=int(compression) if compression is not None else None,
        transparent=_transparent(fields, output_format),
        seed=int(fields.get("seed", 0)),
    )


def within_bounds(width: int, height: int) -> Size:
    """An upload's size as an output size: scaled down (aspect kept) when a side is over MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return Size(max(1, round(width * scale)), max(1, round(height * scale)))


def _check_count(plan: Plan) -> None:
    if not plan.uploads:
        raise InvalidRequest("An image file is required.", param="image", code="missing_required_parameter")
    if len(plan.uploads) > MAX_INPUTS:
        raise InvalidRequest(f"The local model takes at most {MAX_INPUTS} images.", param="image", code="invalid_value")
    if plan.operation == VARIATION and len(plan.uploads) != 1:
        raise InvalidRequest("A variation takes exactly one image.", param="image", code="invalid_value")


def _decoded(plan: Plan, first: Image.Image) -> Iterator[Image.Image]:
    """The uploads decoded one at a time (the first is already)."""
    yield first
    for part in plan.uploads[1:]:
        yield local_codec.decode(bytes(part.data), "image")


def _keep(plan: Plan, first: Image.Image, count: int, size: Size) -> Image.Image | None:
    """The mask as a map of what stays, or None without one; it must be the first image's size, as OpenAI's."""
    if plan.mask is None:
        return None
    mask = local_codec.decode_mask(bytes(plan.mask.data))
    if mask.size != first.size:
        raise InvalidRequest(
            f"Invalid 'mask': it is {mask.width}x{mask.height}, the image is {first.width}x{first.height}; they must match.",
            param="mask", code="invalid_value")
    return local_edit.keep_map(mask, count, size)


@dataclass(frozen=True)
class Canvas:
    """What every image of an edit or variation starts from: the composed uploads and the mask's keep map."""

    picture: Image.Image
    keep: Image.Image | None
    source: bytes  # a digest of the uploads: variations have no prompt to draw from


def prepare(plan: Plan, order: Order) -> tuple[Size, Canvas | None]:
    """The output size, and for edits and variations the canvas the uploads make."""
    if plan.operation == GENERATE:
        return order.size or DEFAULT_SIZE, None
    _check_count(plan)
    count = len(plan.uploads)
    first = local_codec.decode(bytes(plan.uploads[0].data), "image")
    size = order.size or within_bounds(*first.size)
    source = hashlib.sha256(b"".join(hashlib.sha256(part.data).digest() for part in plan.uploads)).digest()
    keep = _keep(plan, first, count, size) if plan.operation == EDIT else None
    return size, Canvas(local_edit.compose(_decoded(plan, first), count, size), keep, source)


def draw_one(plan: Plan, order: Order, size: Size, canvas: Canvas | None, index: int) -> Image.Image:
    """Image `index` of the request, as RGBA."""
    if canvas is None:
        return pattern(digest_of(plan.prompt, order.seed, index), size, order.transparent)
    if plan.operation == VARIATION:
        digest = digest_of(canvas.source.hex(), order.seed, index)
        return local_edit.vary(canvas.picture, pattern(digest, size), digest)
    painted = pattern(digest_of(plan.prompt, order.seed, index), size, order.transparent)
    if canvas.keep is None:
        return local_edit.restyle(canvas.picture, painted)
    return local_edit.repaint(canvas.picture, painted, canvas.keep)


def _encoded(image: Image.Image, order: Order) -> GeneratedImage:
    data = local_codec.encode(image, order.output_format, order.compression)
    content_type = local_codec.FORMATS[order.output_format][1]
    return GeneratedImage(b64_json=base64.b64encode(data).decode("ascii"), content_type=content_type)


def draw(job: Job, partials: int) -> Iterator[Drawn]:
    """The request's images one by one, each preceded by `partials` previews; ends with Done.

    A generator, so a stream can send each preview as soon as it exists; the work between two steps
    is a pure function of the job. A request it cannot draw raises InvalidRequest at the first step.
    """
    plan = job.plan
    order = order_of(plan)
    size, canvas = prepare(plan, order)
    extra: dict[str, Any] = {"size": str(size), "output_format": local_codec.FORMATS[order.output_format][2]}
    if plan.fields.get("background") in BACKGROUNDS - {"auto"}:
        extra["background"] = plan.fields["background"]
    images = []
    for index in range(plan.n):
        image = draw_one(plan, order, size, canvas, index)
        for step in range(partials):
            yield Partial(_encoded(local_edit.preview(image, step, partials), order), step, extra)
        images.append(_encoded(image, order))
    yield Done(ImagesResult(images=tuple(images), extra=extra))


def start(job: Job) -> Step:
    for step in draw(job, 0):
        if not isinstance(step, Partial):
            return step
    raise AssertionError("draw ends with Done")


def stream_steps(job: Job) -> Iterator[Drawn]:
    return draw(job, int(job.plan.fields.get("partial_images", 0)))


SPEC = AdapterSpec(
    name="local",
    schema=ChannelSchema(requires_base_url=False, uses_key=False),
    start=start,
    cpu_bound=True,
    operations=frozenset({GENERATE, EDIT, VARIATION}),
    stream_steps=stream_steps,
    # Pillow encodes every format the Images API has, at the asked compression.
    output_formats=NativeFormats(asked=frozenset({"png", "jpeg", "webp"}), default="png", compression=True),
)
