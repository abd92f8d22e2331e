"""Core layer: the OpenAI Images response as values, and its rendering to the client's JSON shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from proxy.core.received import Base64Chunks

# Base64 an image is carried as: text, its ASCII bytes, or those bytes where the answer was received.
Base64 = str | bytes | Base64Chunks


@dataclass(frozen=True)
class GeneratedImage:
    # The image as base64: text, or the text's ASCII bytes when they hold only base64 characters (an
    # upstream's answer read by proxy.core.plain_base64, checked, and left in the chunks it arrived in; or
    # base64 the proxy encoded itself), so they are never copied into a str only to be written out or
    # decoded again.
    b64_json: Base64 | None = None
    url: str | None = None
    revised_prompt: str | None = None
    content_type: str | None = None  # when the adapter knows it; else sniffed from the bytes
    # Seconds an upstream URL stays valid, when the provider documents it (BFL: 600). A URL that
    # would die before the proxy's own hosted images do is downloaded and re-hosted, so it is not lost.
    url_ttl: float | None = None
    # The format the provider made, when the proxy re-encoded the image into the client's output_format.
    converted_from: str | None = None
    # Why the proxy could not re-encode it: the image was paid for, so it goes out as the provider made it.
    unconverted: str | None = None
    # Why the proxy could not host it (its image store was down): it goes out as base64 even to a client that
    # asked for a URL, rather than being lost.
    unhosted: str | None = None


@dataclass(frozen=True)
class ImagesResult:
    images: tuple[GeneratedImage, ...]
    created: int | None = None  # upstream's timestamp in seconds; None: the shell stamps it
    usage: Mapping[str, Any] | None = None
    # Response-level fields the upstream reported: OpenAI's own (GPT image: background, output_format,
    # quality, size) and provider extras (seeds, content_filter, ...), which render under `metadata`.
    # A list value is per image, so merged results concatenate it.
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# The response-level keys OpenAI's ImagesResponse defines besides created, data and usage.
OPENAI_FIELDS = frozenset({"background", "output_format", "quality", "size"})


# What the finishing step must do to an image so that the client gets the format it asked for.
HOST = "host"  # bytes from upstream, client wants a URL: store and serve them
FETCH = "fetch"  # URL from upstream, client wants bytes: download and encode


def conversion(image: GeneratedImage, response_format: str | None) -> str | None:
    if response_format == "url" and image.url is None:
        return HOST
    if response_format == "b64_json" and image.b64_json is None:
        return FETCH
    return None


def in_format(image: GeneratedImage, response_format: str | None) -> GeneratedImage:
    """Keep only the representation the client asked for (both are kept when it asked for none)."""
    if response_format == "url":
        return image if image.unhosted is not None else replace(image, b64_json=None)
    if response_format == "b64_json":
        return replace(image, url=None)
    return image


def b64_text(b64: Base64) -> str:
    """Base64 as text, where a str is needed (stream events, an answer that is kept as JSON)."""
    return b64 if isinstance(b64, str) else b64.decode("ascii")


def render_image(image: GeneratedImage, raw_base64: bool = False) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if image.url is not None:
        item["url"] = image.url
    if image.b64_json is not None:
        item["b64_json"] = image.b64_json if raw_base64 else b64_text(image.b64_json)
    if image.revised_prompt is not None:
        item["revised_prompt"] = image.revised_prompt
    return item


# Response extras that count images (Gemini's filtered_images): several calls' counts add up.
COUNTED_EXTRAS = frozenset({"filtered_images"})


def _shifted(value: list[Any], start: int) -> list[Any]:
    # Per-image records ({index, code, message}) number the images of their own call: renumber them
    # in the whole request's order.
    return [{**item, "index": item["index"] + start} if isinstance(item, Mapping) and isinstance(item.get("index"), int)
            else item for item in value]


def merge_extras(extras: Sequence[Mapping[str, Any]], starts: Sequence[int] | None = None) -> dict[str, Any]:
    """Several calls' extras as one. `starts[i]`: the position of call i's first image in the request.

    Per-image lists concatenate in call order (their `index` fields renumbered), counts add up,
    anything else the first call's value wins.
    """
    merged: dict[str, Any] = {}
    for number, extra in enumerate(extras):
        start = starts[number] if starts is not None else 0
        for key, value in extra.items():
            if isinstance(value, list):
                merged[key] = [*merged.get(key, []), *_shifted(value, start)]
            elif key in COUNTED_EXTRAS and isinstance(value, int) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    return merged


def render(
    result: ImagesResult, created: int, metadata: Mapping[str, Any] | None, raw_base64: bool = False
) -> dict[str, Any]:
    """OpenAI's ImagesResponse: `{"created", "data", background?, output_format?, quality?, size?, "usage"?,
    "metadata"?}`. Clients that validate the shape see only OpenAI's keys at the top level; what a provider
    adds (seeds, content filters, filtered counts) goes under `metadata` beside the proxy's own fields.
    `raw_base64`: base64 bytes stay bytes, for a body that proxy.core.json_body encodes and sends at once;
    else every value is a JSON type (a body that is kept, as an async task's)."""
    images = [render_image(image, raw_base64) for image in result.images]
    body: dict[str, Any] = {"created": result.created or created, "data": images}
    provider: dict[str, Any] = {}
    for key, value in result.extra.items():
        if key in OPENAI_FIELDS:
            body[key] = value
        else:
            provider[key] = value
    if result.usage is not None:
        body["usage"] = dict(result.usage)
    meta = {**provider, **(metadata or {})}  # the proxy's own fields win a clash
    if meta:
        body["metadata"] = meta
    return body
