"""Input images through the real app: inline base64 that is no image, or not the type it declares, is a 400
naming the param before any upstream call, whatever the channel; true images and URLs still reach the upstream."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
from aiohttp import FormData

from tests.factories import CLIENT_KEY, OPENAI, auth, rules_yaml, serve_fakes
from tests.fakes.openai import KEY, PNG, FakeOpenAI
from tests.fakes.sdwebui import FakeSDWebUI
from tests.fakes.seedream import PREFIX as ARK_PREFIX
from tests.fakes.seedream import FakeSeedream

RULES = rules_yaml(
    {
        "gpt-image-1": {"channels": ["openai"], "passthrough": ["image", "mask"]},
        "dall-e-2": {"channels": ["openai"]},
        "doubao-seedream-4.0": {"channels": ["ark"], "upstream_model": "doubao-seedream-4-0-250828", "passthrough": ["image"]},
        "sd-webui": {"channels": ["webui"], "passthrough": ["image", "strength"]},
    },
    channels={
        "openai": OPENAI,
        "ark": {"type": "seedream", "base_url": "${ARK}", "api_key": "${ARK_API_KEY}"},
        "webui": {"type": "sdwebui", "base_url": "${WEBUI}"},
    },
    server={"api_keys": ["client-key-1"], "download": {"allow_hosts": ["127.0.0.1"]}},
)

JPEG = b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9 + b"\xff\xd9"
HTML = b"<!doctype html><html><head><title>login</title></head><body>not an image</body></html>"
MODELS = ("gpt-image-1", "doubao-seedream-4.0", "sd-webui")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Proxy:
    def __init__(self, client: Any, fakes: dict[str, Any], urls: dict[str, str]) -> None:
        self.client, self.fakes, self.urls = client, fakes, urls

    def received(self) -> int:
        """Every request any fake upstream got (the OpenAI fake also serves the image URLs the tests use)."""
        return sum(len(fake.recorder.received) for fake in self.fakes.values()) + len(self.fakes["openai"].forms)

    async def generate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await self.client.post("/v1/images/generations", json=body, headers=auth())
        return response.status, await response.json()


@pytest.fixture
async def proxy(make_proxy: Any, aiohttp_server: Any) -> Proxy:
    fakes: dict[str, Any] = {"openai": FakeOpenAI(), "ark": FakeSeedream(), "webui": FakeSDWebUI()}
    urls = await serve_fakes(aiohttp_server, fakes)
    env = {
        "UPSTREAM": urls["openai"],
        "OPENAI_API_KEY": KEY,
        "ARK": urls["ark"] + ARK_PREFIX,
        "ARK_API_KEY": fakes["ark"].api_key,
        "WEBUI": urls["webui"],
    }
    return Proxy(await make_proxy(RULES, env), fakes, urls)


def assert_refused(status: int, body: dict[str, Any], param: str, fragment: str) -> None:
    assert status == 400, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_image")
    assert error["message"].startswith(f"Invalid '{param}': ")
    assert fragment in error["message"], error["message"]


INVALID = [
    pytest.param("data:image/png;base64," + b64(HTML), "image", "the decoded bytes are not an image", id="html-as-png"),
    pytest.param("data:image/png;base64," + b64(JPEG), "image", "declares image/png but holds a JPEG image", id="jpeg-as-png"),
    pytest.param(b64(b"%PDF-1.7 not an image at all"), "image", "not an image", id="bare-pdf"),
    pytest.param("data:image/png;base64,iVBORw0KGgo!", "image", "not valid base64", id="undecodable"),
    pytest.param([b64(PNG), "data:image/png;base64," + b64(HTML)], "image[1]", "not an image", id="second-of-a-list"),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("image", "param", "fragment"), INVALID)
async def test_invalid_inline_images_are_refused_before_any_upstream(
    proxy: Proxy, model: str, image: Any, param: str, fragment: str
) -> None:
    status, body = await proxy.generate({"model": model, "prompt": "p", "image": image})
    assert_refused(status, body, param, fragment)
    assert proxy.received() == 0


async def test_a_mask_that_lies_is_refused_on_a_channel_that_forwards_it(proxy: Proxy) -> None:
    mask = "data:image/png;base64," + b64(JPEG)
    status, body = await proxy.generate({"model": "gpt-image-1", "prompt": "p", "image": b64(PNG), "mask": mask})
    assert_refused(status, body, "mask", "the data URI declares image/png but holds a JPEG image (image/jpeg)")
    assert proxy.received() == 0


async def test_an_ignored_image_field_is_checked_too(proxy: Proxy) -> None:
    # dall-e-2 does not forward `image` here: a malformed value is still the client's mistake to hear about.
    status, body = await proxy.generate({"model": "dall-e-2", "prompt": "p", "image": "data:image/png;base64,@@"})
    assert_refused(status, body, "image", "not valid base64")
    assert proxy.received() == 0


async def test_true_images_and_urls_reach_openai_verbatim(proxy: Proxy) -> None:
    png_uri = "data:image/png;base64," + b64(PNG)
    url = "https://example.com/cat.png"
    for image in (png_uri, b64(JPEG), url, [png_uri, b64(JPEG), url]):
        status, body = await proxy.generate({"model": "gpt-image-1", "prompt": "p", "image": image, "mask": png_uri})
        assert status == 200, body
        sent = proxy.fakes["openai"].recorder.received[-1].json()
        assert (sent["image"], sent["mask"]) == (image, png_uri)
    assert len(proxy.fakes["openai"].recorder.received) == 4


async def test_true_images_and_urls_reach_seedream(proxy: Proxy) -> None:
    png_uri = "data:image/png;base64," + b64(PNG)
    for image, expected in ((png_uri, png_uri), (b64(JPEG), "data:image/jpeg;base64," + b64(JPEG)),
                            ("https://example.com/cat.png", "https://example.com/cat.png")):
        status, body = await proxy.generate({"model": "doubao-seedream-4.0", "prompt": "p", "image": image})
        assert status == 200, body
        assert proxy.fakes["ark"].recorder.received[-1].json()["image"] == expected


async def test_true_images_and_urls_reach_the_webui(proxy: Proxy) -> None:
    status, body = await proxy.generate({"model": "sd-webui", "prompt": "p", "image": "data:image/png;base64," + b64(PNG)})
    assert status == 200, body
    assert proxy.fakes["webui"].recorder.received[-1].json()["init_images"] == [b64(PNG)]
    # A URL is downloaded through the guard (the OpenAI fake serves PNG at /files/) and inlined.
    status, body = await proxy.generate({"model": "sd-webui", "prompt": "p", "image": proxy.urls["openai"] + "/files/in.png"})
    assert status == 200, body
    assert proxy.fakes["webui"].recorder.received[-1].json()["init_images"] == [b64(PNG)]
    assert [item.path for item in proxy.fakes["openai"].recorder.received] == ["/files/in.png"]


async def test_megabytes_of_base64_are_checked_to_the_last_character(proxy: Proxy) -> None:
    big = PNG + bytes(600_000)  # past the size that moves the scan off the event loop
    status, body = await proxy.generate({"model": "gpt-image-1", "prompt": "p", "image": b64(big)})
    assert status == 200, body
    assert proxy.fakes["openai"].recorder.received[-1].json()["image"] == b64(big)
    status, body = await proxy.generate({"model": "gpt-image-1", "prompt": "p", "image": b64(big)[:-4] + "AA!="})
    assert_refused(status, body, "image", "outside the base64 alphabet")
    assert len(proxy.fakes["openai"].recorder.received) == 1


def upload_form(model: str, *files: tuple[str, bytes], prompt: str | None = "p") -> FormData:
    form = FormData()
    form.add_field("model", model)
    if prompt is not None:
        form.add_field("prompt", prompt)
    for name, data in files:
        form.add_field(name, data, filename=f"{name.strip('[]')}.png", content_type="image/png")
    return form


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ((("image", HTML),), "image"),
        ((("image[]", PNG), ("image[]", HTML)), "image[1]"),
        ((("image", PNG), ("mask", b"<svg xmlns='http://www.w3.org/2000/svg'/>")), "mask"),
        ((("image", b""),), "image"),
    ],
)
async def test_uploads_that_are_no_image_are_refused_before_any_upstream(
    proxy: Proxy, files: tuple[tuple[str, bytes], ...], param: str
) -> None:
    response = await proxy.client.post("/v1/images/edits", data=upload_form("gpt-image-1", *files), headers=auth())
    body = await response.json()
    assert_refused(response.status, body, param, "the file is")
    assert proxy.received() == 0


async def test_a_variation_of_a_non_image_is_refused(proxy: Proxy) -> None:
    form = upload_form("dall-e-2", ("image", HTML), prompt=None)
    response = await proxy.client.post("/v1/images/variations", data=form, headers=auth())
    assert_refused(response.status, await response.json(), "image", "the file is not an image")
    assert proxy.received() == 0


async def test_uploaded_images_still_reach_openai_byte_identical(proxy: Proxy) -> None:
    form = upload_form("gpt-image-1", ("image[]", PNG), ("image[]", JPEG), ("mask", PNG))
    response = await proxy.client.post("/v1/images/edits", data=form, headers=auth())
    assert response.status == 200, await response.text()
    files = [(part.name, part.data) for part in proxy.fakes["openai"].forms[0] if part.filename is not None]
    assert files == [("image[]", PNG), ("image[]", JPEG), ("mask", PNG)]


async def test_malformed_image_urls_are_a_400(make_proxy: Any) -> None:
    # Nothing may reach the upstream: the channel points at a closed port, so an attempt would be a 502.
    rules = rules_yaml(
        {"stable-image-core": {"channels": ["stability"], "passthrough": ["image"]}},
        {"stability": {"type": "stability", "base_url": "http://127.0.0.1:9", "api_key": "sk-test"}},
        server={"api_keys": [CLIENT_KEY]},
    )
    client = await make_proxy(rules)
    for url in ("http://example.com:99999/x.png", "http://[::1/x.png", "http://example.com:abc/x.png"):
        response = await client.post(
            "/v1/images/generations", json={"model": "stable-image-core", "prompt": "p", "image": url}, headers=auth()
        )
        assert response.status == 400, url
        assert (await response.json())["error"]["param"] == "image"
