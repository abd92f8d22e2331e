"""Edits and variations (multipart uploads) and image inputs, through the proxy."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from aiohttp import FormData, MultipartWriter

from tests.factories import LOCAL, OPENAI, rules_yaml, serve_fakes
from tests.fakes import kling as kling_fake
from tests.fakes.kling import FakeKling
from tests.fakes.openai import KEY, PNG, FakeOpenAI, tiny_png
from tests.fakes.seedream import PREFIX as ARK_PREFIX
from tests.fakes.seedream import FakeSeedream
from tests.fakes.stability import FakeStability, Upload

RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"], "passthrough": ["background", "output_format", "input_fidelity"]},
        # the quality default is for generations: OpenAI's variations endpoint has no quality
        "dall-e-2": {"channels": ["openai"], "defaults": {"quality": "standard"}, "passthrough": ["response_format"]},
        "stable-image-ultra": {"channels": ["stability"], "passthrough": ["image", "strength"]},
        "doubao-seedream-4.0": {
            "channels": ["ark"],
            "upstream_model": "doubao-seedream-4-0-250828",
            "passthrough": ["image", "watermark"],
        },
        "kling-v2": {"channels": ["kling"], "passthrough": ["image"]},
        "local-image": {"channels": ["local"]},
    },
    channels={
        "openai": OPENAI,
        "stability": {"type": "stability", "base_url": "${STABILITY}", "api_key": "${STABILITY_API_KEY}"},
        "ark": {"type": "seedream", "base_url": "${ARK}", "api_key": "${ARK_API_KEY}"},
        "kling": {"type": "kling", "base_url": "${KLING}", "api_key": "${KLING_ACCESS}:${KLING_SECRET}", "poll_interval": 0.01},
        "local": LOCAL,
    },
    server={"max_request_bytes": "${MAX_BYTES:-67108864}", "download": {"allow_hosts": ["${ALLOW:-none.invalid}"]}},
)

IMAGE_A = tiny_png(4, 4, (10, 20, 30))
IMAGE_B = tiny_png(3, 5, (200, 100, 0))
MASK = tiny_png(4, 4, (0, 0, 0))


async def proxy(make_proxy: Any, aiohttp_server: Any, **env: str) -> tuple[Any, dict[str, Any]]:
    fakes: dict[str, Any] = {
        "openai": FakeOpenAI(),
        "stability": FakeStability(),
        "ark": FakeSeedream(),
        "kling": FakeKling(polls_before_done=0),
    }
    urls = await serve_fakes(aiohttp_server, fakes)
    values = {
        "UPSTREAM": urls["openai"],
        "OPENAI_API_KEY": KEY,
        "STABILITY": urls["stability"],
        "STABILITY_API_KEY": fakes["stability"].api_key,
        "ARK": urls["ark"] + ARK_PREFIX,
        "ARK_API_KEY": fakes["ark"].api_key,
        "KLING": urls["kling"],
        "KLING_ACCESS": fakes["kling"].access_key,
        "KLING_SECRET": fakes["kling"].secret_key,
        **env,
    }
    client = await make_proxy(RULES, values)
    fakes["urls"] = urls
    return client, fakes


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_edit_with_a_mask_reaches_openai_byte_identical(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    answer = await images.images.edit(
        model="gpt-image-1.5",
        prompt="add a moon",
        image=("a.png", IMAGE_A, "image/png"),
        mask=("mask.png", MASK, "image/png"),
        size="1024x1024",
        input_fidelity="high",
    )
    assert answer.data is not None and base64.b64decode(answer.data[0].b64_json or "") == PNG
    assert fakes["openai"].recorder.received[0].path == "/v1/images/edits"
    assert fakes["openai"].recorder.received[0].header("Authorization") == f"Bearer {KEY}"
    parts = fakes["openai"].forms[0]
    texts = {part.name: part.text for part in parts if part.filename is None}
    assert texts == {"model": "gpt-image-1.5", "prompt": "add a moon", "n": "1", "size": "1024x1024", "input_fidelity": "high"}
    files = [(part.name, part.filename, part.data) for part in parts if part.filename is not None]
    assert files == [("image", "a.png", IMAGE_A), ("mask", "mask.png", MASK)]
    await images.close()


async def test_edit_with_several_images_keeps_them_all_in_order(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    await images.images.edit(
        model="gpt-image-1.5", prompt="merge", image=[("a.png", IMAGE_A, "image/png"), ("b.png", IMAGE_B, "image/png")]
    )
    files = [part for part in fakes["openai"].forms[0] if part.filename is not None]
    assert [part.data for part in files] == [IMAGE_A, IMAGE_B]
    assert {part.name for part in files} == {"image[]"} or {part.name for part in files} == {"image"}
    await images.close()


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks variations (dall-e-2) deprecated
async def test_variations_reach_a_channel_that_has_them(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    answer = await images.images.create_variation(
        model="dall-e-2", image=("a.png", IMAGE_A, "image/png"), n=2, size="256x256", response_format="b64_json"
    )
    assert answer.data is not None and len(answer.data) == 2
    assert fakes["openai"].recorder.received[0].path == "/v1/images/variations"
    parts = fakes["openai"].forms[0]
    texts = {part.name: part.text for part in parts if part.filename is None}
    assert texts == {"model": "dall-e-2", "n": "2", "size": "256x256", "response_format": "b64_json"}
    assert [part.data for part in parts if part.filename] == [IMAGE_A]
    await images.close()


async def test_a_variations_prompt_is_named_as_ignored(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    form = FormData()
    for name, value in (("model", "dall-e-2"), ("prompt", "a cat"), ("size", "256x256")):
        form.add_field(name, value)
    form.add_field("image", io.BytesIO(IMAGE_A), filename="a.png", content_type="image/png")
    response = await client.post("/v1/images/variations", data=form)
    assert response.status == 200 and response.headers["X-Imagegate-Ignored-Params"] == "prompt"
    assert "prompt" not in {part.name for part in fakes["openai"].forms[0]}  # OpenAI's variations take none


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_a_variation_sends_quality_only_when_the_client_did(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    form = FormData()
    form.add_field("model", "dall-e-2")
    form.add_field("quality", "standard")
    form.add_field("image", IMAGE_A, filename="a.png", content_type="image/png")
    response = await client.post("/v1/images/variations", data=form)
    assert response.status == 200, await response.text()
    texts = {part.name: part.text for part in fakes["openai"].forms[0] if part.filename is None}
    assert texts == {"model": "dall-e-2", "n": "1", "quality": "standard"}
    generated = await client.post("/v1/images/generations", json={"model": "dall-e-2", "prompt": "p"})
    assert generated.status == 200
    assert fakes["openai"].recorder.received[1].json()["quality"] == "standard"  # generations keep the default


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
async def test_variations_for_a_model_without_them_are_a_clear_400(make_proxy: Any, aiohttp_server: Any) -> None:
    client, _ = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    with pytest.raises(openai.BadRequestError) as caught:
        await images.images.create_variation(model="stable-image-ultra", image=("a.png", IMAGE_A, "image/png"))
    assert caught.value.param == "model"
    await images.close()


async def test_edit_to_stability_sends_the_image_as_a_file_part(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    await images.images.edit(
        model="stable-image-ultra", prompt="winter", image=("a.png", IMAGE_A, "image/png"), extra_body={"strength": "0.4"}
    )
    form = fakes["stability"].forms[0]
    upload = form["image"]
    assert isinstance(upload, Upload) and upload.data == IMAGE_A
    assert form["prompt"] == "winter" and form["strength"] == "0.4"
    await images.close()


async def test_edit_to_seedream_sends_a_data_uri(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    await images.images.edit(model="doubao-seedream-4.0", prompt="winter", image=("a.png", IMAGE_A, "image/png"))
    sent = fakes["ark"].recorder.received[0].json()
    assert sent["image"] == "data:image/png;base64," + base64.b64encode(IMAGE_A).decode()
    await images.close()


async def test_edit_to_kling_sends_raw_base64_without_prefix(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    await images.images.edit(model="kling-v2", prompt="winter", image=("a.png", IMAGE_A, "image/png"))
    create = next(item for item in fakes["kling"].recorder.received if item.method == "POST")
    assert create.json()["image"] == base64.b64encode(IMAGE_A).decode()
    assert kling_fake.PNG  # the fake answered with its own image
    await images.close()


async def test_a_mask_the_model_cannot_use_is_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    images = sdk(client)
    with pytest.raises(openai.BadRequestError) as caught:
        await images.images.edit(
            model="doubao-seedream-4.0", prompt="x", image=("a.png", IMAGE_A, "image/png"), mask=("m.png", MASK, "image/png")
        )
    assert caught.value.param == "mask"
    assert fakes["ark"].recorder.received == []
    await images.close()


async def test_edit_form_mistakes(make_proxy: Any, aiohttp_server: Any) -> None:
    client, _ = await proxy(make_proxy, aiohttp_server)
    no_image = FormData(default_to_multipart=True)
    no_image.add_field("model", "gpt-image-1.5")
    no_image.add_field("prompt", "x")
    response = await client.post("/v1/images/edits", data=no_image)
    assert response.status == 400 and (await response.json())["error"]["param"] == "image"
    response = await client.post("/v1/images/edits", json={"model": "gpt-image-1.5", "prompt": "x"})
    assert response.status == 415
    bad_n = FormData()
    for name, value in (("model", "gpt-image-1.5"), ("prompt", "x"), ("n", "two")):
        bad_n.add_field(name, value)
    bad_n.add_field("image", io.BytesIO(IMAGE_A), filename="a.png", content_type="image/png")
    response = await client.post("/v1/images/edits", data=bad_n)
    assert response.status == 400 and (await response.json())["error"]["param"] == "n"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("n", "1_0", "n"),  # Python's spelling of 10, not JSON's
        ("n", "\u0662", "n"),  # an Arabic-Indic 2
        ("prompt", b"caf\xe9", "prompt"),  # Latin-1, not UTF-8: no replacement character sent on
        ("size", "\u0666\u0664x\u0666\u0664", "size"),
        ("mask", MASK, "mask"),  # a second mask
        ("extra", IMAGE_B, "extra"),  # a file in a field that takes none
    ],
    ids=["underscore", "arabic-digit", "latin-1", "arabic-size", "second-mask", "file-elsewhere"],
)
async def test_form_values_json_would_refuse_are_refused_by_name(
    make_proxy: Any, aiohttp_server: Any, field: str, value: str | bytes, param: str
) -> None:
    client, _ = await proxy(make_proxy, aiohttp_server)
    form = MultipartWriter("form-data")

    def add(name: str, data: str | bytes, filename: str | None = None) -> None:
        part = form.append(data.encode() if isinstance(data, str) else data)
        part.set_content_disposition("form-data", name=name, **({"filename": filename} if filename else {}))

    for name, text in (("model", "gpt-image-1.5"), ("prompt", "x")):
        if name != field:
            add(name, text)
    add("image", IMAGE_A, "a.png")
    add("mask", MASK, "m.png")
    add(field, value, "f.png" if isinstance(value, bytes) and field != "prompt" else None)
    response = await client.post("/v1/images/edits", data=form)
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["param"] == param


async def test_an_upload_over_the_limit_is_413(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server, MAX_BYTES="100000")
    form = FormData()
    form.add_field("model", "gpt-image-1.5")
    form.add_field("prompt", "x")
    form.add_field("image", io.BytesIO(b"\x89PNG" + bytes(200_000)), filename="big.png", content_type="image/png")
    response = await client.post("/v1/images/edits", data=form)
    assert response.status == 413
    assert fakes["openai"].recorder.received == []


async def test_image_urls_are_inlined_for_channels_that_need_bytes(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server, ALLOW="127.0.0.1")
    url = fakes["urls"]["openai"] + "/files/input.png"
    response = await client.post("/v1/images/generations", json={"model": "stable-image-ultra", "prompt": "p", "image": url})
    assert response.status == 200, await response.text()
    upload = fakes["stability"].forms[0]["image"]
    assert isinstance(upload, Upload) and upload.data == PNG


async def test_image_urls_on_private_addresses_are_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    for url in (fakes["urls"]["openai"] + "/files/input.png", "http://localhost:9/x.png", "http://169.254.169.254/latest"):
        response = await client.post("/v1/images/generations", json={"model": "stable-image-ultra", "prompt": "p", "image": url})
        assert response.status == 400, url
        assert (await response.json())["error"]["param"] == "image"
    assert fakes["stability"].forms == []
    assert [item.path for item in fakes["openai"].recorder.received] == []  # nothing was fetched


async def test_image_urls_pass_through_to_channels_that_take_urls(make_proxy: Any, aiohttp_server: Any) -> None:
    client, fakes = await proxy(make_proxy, aiohttp_server)
    url = "https://example.com/cat.png"
    response = await client.post("/v1/images/generations", json={"model": "doubao-seedream-4.0", "prompt": "p", "image": url})
    assert response.status == 200
    assert fakes["ark"].recorder.received[0].json()["image"] == url
