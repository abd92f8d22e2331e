"""Core tests: the built-in local generator makes real, deterministic PNGs with no network."""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from proxy.adapters import local
from proxy.adapters.base import Done, Fail, Job
from proxy.core.errors import InvalidRequest
from proxy.core.plan import build_plan
from proxy.core.png import SIGNATURE, encode_png
from proxy.core.request import parse_image_request
from proxy.core.response import ImagesResult
from proxy.core.rules import Channel, ModelRule

RULE = ModelRule(pattern="local-image", channels=("local",), passthrough=frozenset({"seed"}))
CHANNEL = Channel(name="local", type="local")


def _result(**body: Any) -> ImagesResult:
    job = Job(build_plan(parse_image_request({"model": "local-image", "prompt": "a fox", **body}), RULE), CHANNEL, None)
    step = local.SPEC.start(job)
    assert isinstance(step, Done), step
    return step.result


def _png_bytes(result: ImagesResult, index: int = 0) -> bytes:
    encoded = result.images[index].b64_json
    assert encoded is not None
    return base64.b64decode(encoded, validate=True)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == SIGNATURE
    chunks, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, payload = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        at += 12 + length
    return chunks


def _ihdr(png: bytes) -> tuple[int, int, int, int, int, int, int]:
    kind, payload = _chunks(png)[0]
    assert kind == b"IHDR"
    return struct.unpack(">IIBBBBB", payload)


def test_one_png_of_the_requested_size() -> None:
    result = _result(size="64x32")
    assert len(result.images) == 1
    image = result.images[0]
    assert image.url is None
    assert image.content_type == "image/png"
    assert image.revised_prompt is None
    png = _png_bytes(result)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert _ihdr(png) == (64, 32, 8, 2, 0, 0, 0)
    assert [kind for kind, _ in _chunks(png)] == [b"IHDR", b"IDAT", b"IEND"]
    assert dict(result.extra) == {"size": "64x32", "output_format": "png"}
    assert result.usage is None
    assert result.created is None


def test_scanlines_decode_with_zlib() -> None:
    width, height = 40, 24
    png = _png_bytes(_result(size=f"{width}x{height}"))
    idat = b"".join(payload for kind, payload in _chunks(png) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    # Filter type 0 (None) before every scanline.
    assert all(raw[row * (1 + 3 * width)] == 0 for row in range(height))


def test_image_is_not_one_flat_colour() -> None:
    png = _png_bytes(_result(size="32x32"))
    idat = b"".join(payload for kind, payload in _chunks(png) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    pixels = {raw[i : i + 3] for row in range(32) for i in range(row * 97 + 1, row * 97 + 97, 3)}
    assert len(pixels) > 10


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_images_all_different(n: int) -> None:
    result = _result(size="16x16", n=n)
    assert len(result.images) == n
    pngs = [_png_bytes(result, index) for index in range(n)]
    assert len(set(pngs)) == n
    assert all(_ihdr(png)[:2] == (16, 16) for png in pngs)


def test_deterministic() -> None:
    first = _result(size="48x48", seed=7, n=2)
    second = _result(size="48x48", seed=7, n=2)
    assert first == second
    assert _png_bytes(first) == _png_bytes(second)


def test_different_prompt_or_seed_gives_different_bytes() -> None:
    base = _png_bytes(_result(size="48x48", seed=7))
    assert _png_bytes(_result(size="48x48", seed=8)) != base
    job = Job(build_plan(parse_image_request({"model": "local-image", "prompt": "a wolf", "size": "48x48", "seed": 7}),
                         RULE), CHANNEL, None)
    step = local.SPEC.start(job)
    assert isinstance(step, Done)
    assert base64.b64decode(step.result.images[0].b64_json or "") != base


def test_render_png_is_a_pure_function() -> None:
    size = local.Size(20, 10)
    assert local.render_png("p", 1, 0, size) == local.render_png("p", 1, 0, size)
    assert local.render_png("p", 1, 0, size) != local.render_png("p", 1, 1, size)


@pytest.mark.parametrize("body", [{"size": "auto"}, {}])
def test_auto_or_absent_size_is_1024_square(body: dict[str, Any]) -> None:
    result = _result(**body)
    assert _ihdr(_png_bytes(result))[:2] == (1024, 1024)
    assert result.extra["size"] == "1024x1024"


def test_normalised_size_spelling() -> None:
    assert _ihdr(_png_bytes(_result(size="30×20")))[:2] == (30, 20)


def test_one_pixel_image() -> None:
    png = _png_bytes(_result(size="1x1"))
    assert _ihdr(png)[:2] == (1, 1)
    idat = b"".join(payload for kind, payload in _chunks(png) if kind == b"IDAT")
    assert len(zlib.decompress(idat)) == 4


@pytest.mark.parametrize("size", ["4097x16", "16x4097", "100000x100000"])
def test_too_large_is_a_400(size: str) -> None:
    job = Job(build_plan(parse_image_request({"model": "local-image", "prompt": "p", "size": size}), RULE), CHANNEL, None)
    step = local.SPEC.start(job)
    assert isinstance(step, Fail)
    assert isinstance(step.error, InvalidRequest)
    assert step.error.status == 400
    assert step.error.param == "size"
    assert step.error.code == "invalid_size"
    assert step.error.message == "The local generator makes images up to 4096x4096."


def test_unparseable_size_in_plan_is_a_400() -> None:
    job = Job(build_plan(parse_image_request({"model": "local-image", "prompt": "p"}), RULE), CHANNEL, None)
    bad = replace(job, plan=replace(job.plan, fields=MappingProxyType({"size": "huge"})))
    step = local.SPEC.start(bad)
    assert isinstance(step, Fail)
    assert step.error.param == "size"


def test_spec() -> None:
    assert local.SPEC.name == "local"
    assert local.SPEC.cpu_bound is True
    assert local.SPEC.schema.uses_key is False
    assert local.SPEC.schema.requires_base_url is False


def test_encode_png_checks_rows() -> None:
    assert encode_png(1, 1, [b"\x01\x02\x03"]).startswith(SIGNATURE)
    with pytest.raises(ValueError, match="rows do not match"):
        encode_png(2, 1, [b"\x00\x00\x00"])
    with pytest.raises(ValueError, match="rows do not match"):
        encode_png(1, 2, [b"\x00\x00\x00"])
