"""Core tests: the built-in local model makes real, deterministic images, edits and variations with no network."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from PIL import Image

from proxy.adapters import local
from proxy.adapters.base import Done, Job, Partial
from proxy.core.errors import InvalidRequest
from proxy.core.multipart import Part
from proxy.core.plan import EDIT, VARIATION, build_plan
from proxy.core.request import parse_image_request
from proxy.core.response import ImagesResult
from proxy.core.rules import Channel, ModelRule
from tests.factories import channel_job

RULE = ModelRule(pattern="local-image", channels=("local",),
                 passthrough=frozenset({"seed", "output_format", "output_compression", "background"}))
CHANNEL = Channel(name="local", type="local")


def _job(operation: str = "generate", uploads: tuple[Part, ...] = (), mask: Part | None = None, **body: Any) -> Job:
    fields = {"model": "local-image", "prompt": "a fox", **body}
    plan = build_plan(parse_image_request(fields, require_prompt=operation != VARIATION), RULE, operation)
    return channel_job(local.SPEC, replace(plan, uploads=uploads, mask=mask), CHANNEL, None)


def _result(**body: Any) -> ImagesResult:
    step = local.SPEC.start(_job(**body))
    assert isinstance(step, Done), step
    return step.result


def _fail(job: Job) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        local.SPEC.start(job)
    return raised.value


def _bytes(result: ImagesResult, index: int = 0) -> bytes:
    encoded = result.images[index].b64_json
    assert encoded is not None
    return base64.b64decode(encoded, validate=True)


def _image(result: ImagesResult, index: int = 0) -> Image.Image:
    image = Image.open(io.BytesIO(_bytes(result, index)))
    image.load()
    return image


def _png(colour: tuple[int, ...], size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _upload(data: bytes, name: str = "image") -> Part:
    return Part(name, bytearray(data), filename=f"{name}.png", content_type="image/png")


def _half_mask(size: tuple[int, int] = (32, 32)) -> bytes:
    """Transparent (edit) on the left half, opaque (keep) on the right half."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


# -- generations ----------------------------------------------------------------------------------


def test_one_png_of_the_requested_size() -> None:
    result = _result(size="64x32")
    assert len(result.images) == 1
    image = result.images[0]
    assert (image.url, image.revised_prompt, image.content_type) == (None, None, "image/png")
    assert _bytes(result).startswith(b"\x89PNG\r\n\x1a\n")
    decoded = _image(result)
    assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGB", (64, 32))
    assert dict(result.extra) == {"size": "64x32", "output_format": "png"}
    assert result.usage is None and result.created is None


def test_image_is_not_one_flat_colour() -> None:
    colours = _image(_result(size="32x32")).getcolors(maxcolors=32 * 32)
    assert colours is not None and len(colours) > 10


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_images_all_different(n: int) -> None:
    result = _result(size="16x16", n=n)
    assert len(result.images) == n
    assert len({_bytes(result, index) for index in range(n)}) == n
    assert all(_image(result, index).size == (16, 16) for index in range(n))


def test_deterministic() -> None:
    first = _result(size="48x48", seed=7, n=2)
    assert first == _result(size="48x48", seed=7, n=2)


def test_different_prompt_or_seed_gives_different_bytes() -> None:
    base = _bytes(_result(size="48x48", seed=7))
    assert _bytes(_result(size="48x48", seed=8)) != base
    assert _bytes(_result(size="48x48", seed=7, prompt="a wolf")) != base


@pytest.mark.parametrize("body", [{"size": "auto"}, {}])
def test_auto_or_absent_size_is_1024_square(body: dict[str, Any]) -> None:
    result = _result(**body)
    assert _image(result).size == (1024, 1024)
    assert result.extra["size"] == "1024x1024"


def test_normalised_size_spelling() -> None:
    assert _image(_result(size="30×20")).size == (30, 20)


def test_one_pixel_image() -> None:
    assert _image(_result(size="1x1")).size == (1, 1)


@pytest.mark.parametrize(("asked", "pillow", "mime", "named", "magic"), [
    ("jpeg", "JPEG", "image/jpeg", "jpeg", b"\xff\xd8\xff"),
    ("jpg", "JPEG", "image/jpeg", "jpeg", b"\xff\xd8\xff"),
    ("webp", "WEBP", "image/webp", "webp", b"RIFF"),
    ("png", "PNG", "image/png", "png", b"\x89PNG"),
])
def test_output_formats(asked: str, pillow: str, mime: str, named: str, magic: bytes) -> None:
    result = _result(size="40x24", output_format=asked)
    assert _bytes(result).startswith(magic)
    assert (_image(result).format, _image(result).size) == (pillow, (40, 24))
    assert result.images[0].content_type == mime
    assert result.extra["output_format"] == named


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_output_compression_is_the_quality(output_format: str) -> None:
    small = _bytes(_result(size="128x128", output_format=output_format, output_compression=5))
    large = _bytes(_result(size="128x128", output_format=output_format, output_compression=100))
    assert len(small) < len(large)


@pytest.mark.parametrize("output_format", ["png", "webp"])
def test_transparent_background_has_real_alpha(output_format: str) -> None:
    result = _result(size="64x64", output_format=output_format, background="transparent")
    alpha = _image(result).convert("RGBA").getchannel("A")
    assert alpha.getextrema() == (0, 255)  # a transparent background under opaque shapes
    assert result.extra["background"] == "transparent"
    assert _image(_result(size="64x64", output_format=output_format)).mode == "RGB"


def test_a_format_the_api_does_not_have_is_refused_before_the_adapter() -> None:
    with pytest.raises(InvalidRequest) as caught:
        _job(size="8x8", output_format="gif")
    assert (caught.value.status, caught.value.param) == (400, "output_format")


@pytest.mark.parametrize(("body", "param"), [
    ({"output_format": "jpeg", "background": "transparent"}, "background"),
    ({"background": "glass"}, "background"),
])
def test_unsupported_settings_are_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    error = _fail(_job(size="8x8", **body))
    assert (error.status, error.param) == (400, param)


@pytest.mark.parametrize("size", ["4097x16", "16x4097", "100000x100000"])
def test_too_large_is_a_400(size: str) -> None:
    error = _fail(_job(size=size))
    assert (error.status, error.param, error.code) == (400, "size", "invalid_size")
    assert error.message == "The local generator makes images up to 4096x4096."


def test_unparseable_size_in_plan_is_a_400() -> None:
    job = _job()
    bad = replace(job, plan=replace(job.plan, fields=MappingProxyType({"size": "huge"})))
    assert _fail(bad).param == "size"


# -- edits ----------------------------------------------------------------------------------------


def test_edit_with_mask_repaints_only_the_transparent_area() -> None:
    grey = (120, 120, 120)
    job = _job(EDIT, (_upload(_png(grey)),), _upload(_half_mask(), "mask"))
    step = local.SPEC.start(job)
    assert isinstance(step, Done)
    out = _image(step.result).convert("RGB")
    assert out.size == (32, 32)
    left = [out.getpixel((x, y)) for x in range(16) for y in range(32)]
    right = [out.getpixel((x, y)) for x in range(16, 32) for y in range(32)]
    assert set(right) == {grey}
    assert sum(pixel != grey for pixel in left) > len(left) * 0.9


def test_edit_without_mask_restyles_everything_but_stays_recognisable() -> None:
    red = (250, 0, 0)
    step = local.SPEC.start(_job(EDIT, (_upload(_png(red)),)))
    assert isinstance(step, Done)
    out = _image(step.result).convert("RGB")
    pixels = [out.getpixel((x, y)) for x in range(32) for y in range(32)]
    assert all(pixel != red for pixel in pixels)
    assert sum(pixel[0] for pixel in pixels) / len(pixels) > 140  # still mostly red: 60 % of it stays


def test_edit_of_two_images_lays_them_side_by_side() -> None:
    red, blue = _upload(_png((255, 0, 0))), _upload(_png((0, 0, 255)))
    step = local.SPEC.start(_job(EDIT, (red, blue), size="64x32"))
    assert isinstance(step, Done)
    out = _image(step.result).convert("RGB")
    assert out.size == (64, 32)
    left = [out.getpixel((x, y)) for x in range(32) for y in range(32)]
    right = [out.getpixel((x, y)) for x in range(32, 64) for y in range(32)]
    assert all(r > b for r, _, b in left)
    assert all(b > r for r, _, b in right)


def test_edit_size_is_the_first_inputs_unless_asked() -> None:
    uploads = (_upload(_png((9, 9, 9), (40, 20))), _upload(_png((0, 0, 0), (10, 10))))
    step = local.SPEC.start(_job(EDIT, uploads))
    assert isinstance(step, Done) and _image(step.result).size == (40, 20)
    assert step.result.extra["size"] == "40x20"


def test_a_mask_of_another_size_is_a_400_naming_mask() -> None:
    error = _fail(_job(EDIT, (_upload(_png((0, 0, 0))),), _upload(_half_mask((16, 16)), "mask")))
    assert (error.status, error.param) == (400, "mask")
    assert "16x16" in error.message and "32x32" in error.message


def test_a_mask_without_alpha_is_a_400_naming_mask() -> None:
    error = _fail(_job(EDIT, (_upload(_png((0, 0, 0))),), _upload(_png((0, 0, 0)), "mask")))
    assert (error.status, error.param) == (400, "mask")


@pytest.mark.parametrize("data", [b"", b"not an image", _png((1, 2, 3))[:40], b"%!PS-Adobe-3.0 EPSF-3.0\n"])
def test_undecodable_uploads_are_a_400_naming_image(data: bytes) -> None:
    error = _fail(_job(EDIT, (_upload(data),)))
    assert (error.status, error.param) == (400, "image")


def test_a_huge_claimed_size_is_refused_before_decoding() -> None:
    header = bytearray(_png((0, 0, 0), (1, 1)))
    header[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height
    error = _fail(_job(EDIT, (_upload(bytes(header)),)))
    assert error.param == "image" and "megapixels" in error.message


def test_an_edit_without_images_is_a_400() -> None:
    assert _fail(_job(EDIT, ())).param == "image"


def test_too_many_images_is_a_400() -> None:
    uploads = tuple(_upload(_png((0, 0, 0), (2, 2))) for _ in range(local.MAX_INPUTS + 1))
    assert _fail(_job(EDIT, uploads)).param == "image"


def test_large_inputs_give_an_output_within_bounds() -> None:
    assert local.within_bounds(8000, 2000) == local.Size(4096, 1024)
    assert local.within_bounds(300, 200) == local.Size(300, 200)


# -- variations -----------------------------------------------------------------------------------


def test_variation_differs_from_the_input_keeps_its_size_and_depends_on_seed() -> None:
    source = _png((200, 40, 40), (24, 16))
    first = local.SPEC.start(_job(VARIATION, (_upload(source),), seed=1, n=2))
    again = local.SPEC.start(_job(VARIATION, (_upload(source),), seed=1, n=2))
    other = local.SPEC.start(_job(VARIATION, (_upload(source),), seed=2))
    assert isinstance(first, Done) and isinstance(other, Done)
    assert first == again
    images = [_image(first.result, index).convert("RGB") for index in range(2)]
    assert all(image.size == (24, 16) for image in images)
    assert all(image.getpixel((0, 0)) != (200, 40, 40) for image in images)
    assert len({_bytes(first.result, index) for index in range(2)} | {_bytes(other.result)}) == 3


def test_a_grey_variation_still_changes() -> None:
    step = local.SPEC.start(_job(VARIATION, (_upload(_png((128, 128, 128))),)))
    assert isinstance(step, Done)
    assert _image(step.result).convert("RGB").getcolors() != [(32 * 32, (128, 128, 128))]


def test_a_variation_takes_one_image() -> None:
    assert _fail(_job(VARIATION, (_upload(_png((0, 0, 0))),) * 2)).param == "image"


# -- streaming ------------------------------------------------------------------------------------


def test_stream_steps_yield_previews_coarse_to_fine_then_done() -> None:
    job = _job(size="64x64", n=2, stream=True, partial_images=3)
    assert local.SPEC.stream_steps is not None
    steps = list(local.SPEC.stream_steps(job))
    assert [type(step).__name__ for step in steps] == ["Partial"] * 6 + ["Done"]
    partials = [step for step in steps if isinstance(step, Partial)]
    assert [step.index for step in partials] == [0, 1, 2, 0, 1, 2]
    final = steps[-1]
    assert isinstance(final, Done) and final.result == _result(size="64x64", n=2)
    colours = [len(Image.open(io.BytesIO(base64.b64decode(step.image.b64_json or ""))).getcolors(4096) or ())
               for step in partials[:3]]
    assert colours[0] < colours[1] < colours[2]  # each preview has more detail than the one before
    assert partials[0].extra == final.result.extra


def test_stream_without_partial_images_is_just_done() -> None:
    assert local.SPEC.stream_steps is not None
    steps = list(local.SPEC.stream_steps(_job(size="8x8", stream=True)))
    assert len(steps) == 1 and isinstance(steps[0], Done)


def test_stream_steps_fail_on_bad_input() -> None:
    assert local.SPEC.stream_steps is not None
    steps = local.SPEC.stream_steps(_job(size="5000x5000", stream=True, partial_images=2))
    with pytest.raises(InvalidRequest) as raised:
        next(steps)
    assert raised.value.param == "size"


def test_spec() -> None:
    assert local.SPEC.name == "local"
    assert local.SPEC.cpu_bound is True
    assert local.SPEC.schema.uses_key is False
    assert local.SPEC.schema.requires_base_url is False
    assert local.SPEC.operations == {"generate", "edit", "variation"}
