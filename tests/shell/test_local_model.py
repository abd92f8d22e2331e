"""The built-in `local-image` model on the shipped rules, through the official OpenAI SDK: generations,
edits (mask, several images), variations, output formats and native streams with partial images."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from PIL import Image

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()
GREY = (120, 120, 120)


@pytest.fixture
async def sdk(make_proxy: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    client = await make_proxy(SHIPPED, {})
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    yield sdk
    await sdk.close()


def png(colour: tuple[int, ...], size: tuple[int, int] = (48, 32), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def top_half_mask(size: tuple[int, int] = (48, 32)) -> bytes:
    """OpenAI's mask: fully transparent where the image is to be edited (here the top half)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0], size[1] // 2))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return buffer.getvalue()


def decoded(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def pixels(image: Image.Image, box: tuple[int, int, int, int]) -> list[Any]:
    rgb = image.convert("RGB")
    return [rgb.getpixel((x, y)) for x in range(box[0], box[2]) for y in range(box[1], box[3])]


async def test_generations_n_and_size(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.images.generate(model="local-image", prompt="a lighthouse", size="96x64", n=3)
    assert answer.data is not None and len(answer.data) == 3
    images = [decoded(item.b64_json) for item in answer.data]
    assert all((image.format, image.size) == ("PNG", (96, 64)) for image in images)
    assert len({image.tobytes() for image in images}) == 3
    assert (answer.size, answer.output_format) == ("96x64", "png")


async def test_seed_makes_it_deterministic(sdk: openai.AsyncOpenAI) -> None:
    async def draw(seed: int) -> str | None:
        answer = await sdk.images.generate(model="local-image", prompt="a fox", size="64x64", extra_body={"seed": seed})
        assert answer.data is not None
        return answer.data[0].b64_json

    first = await draw(11)
    assert first == await draw(11)
    assert first != await draw(12)


@pytest.mark.parametrize(("output_format", "magic", "pillow"), [("jpeg", b"\xff\xd8\xff", "JPEG"), ("webp", b"RIFF", "WEBP")])
async def test_output_formats_are_really_those_formats(
    sdk: openai.AsyncOpenAI, output_format: Any, magic: bytes, pillow: str
) -> None:
    answer = await sdk.images.generate(model="local-image", prompt="a fox", size="64x48", output_format=output_format)
    assert answer.data is not None and answer.data[0].b64_json is not None
    data = base64.b64decode(answer.data[0].b64_json)
    assert data.startswith(magic)
    assert (decoded(answer.data[0].b64_json).format, decoded(answer.data[0].b64_json).size) == (pillow, (64, 48))
    assert answer.output_format == output_format


async def test_output_compression_makes_a_smaller_jpeg(sdk: openai.AsyncOpenAI) -> None:
    sizes = []
    for compression in (10, 95):
        answer = await sdk.images.generate(model="local-image", prompt="a fox", size="256x256", output_format="jpeg",
                                           output_compression=compression)
        assert answer.data is not None and answer.data[0].b64_json is not None
        sizes.append(len(base64.b64decode(answer.data[0].b64_json)))
    assert sizes[0] < sizes[1]


async def test_transparent_background(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.images.generate(model="local-image", prompt="a fox", size="64x64", background="transparent")
    assert answer.data is not None
    assert decoded(answer.data[0].b64_json).getchannel("A").getextrema() == (0, 255)
    assert answer.background == "transparent"


async def test_too_large_or_unsupported_is_a_400_naming_the_param(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="local-image", prompt="a fox", size="4097x1024")
    assert caught.value.body is not None and caught.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="local-image", prompt="a fox", output_format="gif")
    assert caught.value.body["param"] == "output_format"  # type: ignore[index]


async def test_edit_with_mask_changes_only_the_masked_area(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.images.edit(model="local-image", prompt="a red balloon", image=("in.png", png(GREY), "image/png"),
                                   mask=("mask.png", top_half_mask(), "image/png"))
    assert answer.data is not None
    out = decoded(answer.data[0].b64_json)
    assert out.size == (48, 32)  # the input's size: none was asked
    inside, outside = pixels(out, (0, 0, 48, 16)), pixels(out, (0, 16, 48, 32))
    assert set(outside) == {GREY}
    assert sum(pixel != GREY for pixel in inside) > 0.9 * len(inside)


async def test_edit_with_a_mask_of_another_size_is_a_400_naming_mask(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.edit(model="local-image", prompt="p", image=("in.png", png(GREY), "image/png"),
                              mask=("mask.png", top_half_mask((16, 16)), "image/png"))
    assert caught.value.body["param"] == "mask"  # type: ignore[index]


async def test_edit_of_two_images_combines_both(sdk: openai.AsyncOpenAI) -> None:
    images = [("red.png", png((255, 0, 0)), "image/png"), ("blue.png", png((0, 0, 255), (20, 20)), "image/png")]
    answer = await sdk.images.edit(model="local-image", prompt="a fox", image=images, size="128x64")
    assert answer.data is not None
    out = decoded(answer.data[0].b64_json)
    assert out.size == (128, 64)
    assert all(r > b for r, _, b in pixels(out, (0, 0, 64, 64)))  # the first image, restyled
    assert all(b > r for r, _, b in pixels(out, (64, 0, 128, 64)))  # the second


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks variations deprecated
async def test_variation_differs_and_keeps_the_size(sdk: openai.AsyncOpenAI) -> None:
    source = png((200, 60, 30), (40, 30))
    answer = await sdk.images.create_variation(model="local-image", image=("in.png", source, "image/png"), n=2)
    assert answer.data is not None and len(answer.data) == 2
    outs = [decoded(item.b64_json) for item in answer.data]
    assert all(out.size == (40, 30) for out in outs)
    assert all(out.convert("RGB").getpixel((0, 0)) != (200, 60, 30) for out in outs)
    assert outs[0].tobytes() != outs[1].tobytes()


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks variations deprecated
async def test_variation_of_a_given_size(sdk: openai.AsyncOpenAI) -> None:
    answer = await sdk.images.create_variation(model="local-image", image=("in.png", png(GREY), "image/png"),
                                               size="256x256")
    assert answer.data is not None and decoded(answer.data[0].b64_json).size == (256, 256)


async def test_stream_sends_partial_images_then_the_completed_one(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.images.generate(model="local-image", prompt="a fox", size="128x96", stream=True, partial_images=3)
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    partials = [event for event in events if event.type == "image_generation.partial_image"]
    assert [event.partial_image_index for event in partials] == [0, 1, 2]
    previews = [decoded(event.b64_json) for event in partials]
    assert all(preview.size == (128, 96) for preview in previews)
    detail = [len(preview.getcolors(128 * 96) or ()) for preview in previews]
    assert detail[0] < detail[1] < detail[2]
    final = events[-1]
    assert final.type == "image_generation.completed"
    assert (decoded(final.b64_json).size, final.size, final.output_format) == ((128, 96), "128x96", "png")
    sync = await sdk.images.generate(model="local-image", prompt="a fox", size="128x96")
    assert sync.data is not None and final.b64_json == sync.data[0].b64_json  # the same image either way


async def test_edit_stream_uses_image_edit_events(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.images.edit(model="local-image", prompt="a fox", image=("in.png", png(GREY), "image/png"),
                                   stream=True, partial_images=1, output_format="webp")
    events = [event async for event in stream]
    assert [event.type for event in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert all(event.output_format == "webp" for event in events)
    assert decoded(events[-1].b64_json).format == "WEBP"


async def test_stream_error_before_any_event_keeps_its_status(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="local-image", prompt="a fox", size="9999x9", stream=True, partial_images=2)
    assert caught.value.body["param"] == "size"  # type: ignore[index]


async def test_a_large_image_does_not_hold_the_event_loop(make_proxy: Any) -> None:
    client = await make_proxy(SHIPPED, {})
    body = {"model": "local-image", "prompt": "a fox", "size": "4096x4096", "n": 2, "output_format": "webp"}
    drawing = asyncio.ensure_future(client.post("/v1/images/generations", json=body))
    await asyncio.sleep(0.2)  # the drawing has started: seconds of Pillow work in a thread
    health = await client.get("/healthz")
    assert health.status == 200
    assert not drawing.done()  # the loop answered while the images were still being drawn
    response = await drawing
    assert response.status == 200
    data = (await response.json())["data"]
    assert [decoded(item["b64_json"]).size for item in data] == [(4096, 4096)] * 2


async def test_drawing_does_not_wait_behind_a_busy_default_executor(make_proxy: Any) -> None:
    # The loop's default executor also resolves host names and writes hosted images: image work has a
    # pool of its own, so a default executor full of slow jobs delays no drawing.
    client = await make_proxy(SHIPPED, {})
    body = {"model": "local-image", "prompt": "a lighthouse", "size": "256x256", "output_format": "webp"}
    loop = asyncio.get_running_loop()
    release = threading.Event()
    blockers = [loop.run_in_executor(None, release.wait, 30) for _ in range(64)]
    try:
        response = await asyncio.wait_for(client.post("/v1/images/generations", json=body), 10)
        answer = await response.json()
        assert response.status == 200, answer
        assert decoded(answer["data"][0]["b64_json"]).format == "WEBP"
    finally:
        release.set()
        await asyncio.gather(*blockers)
