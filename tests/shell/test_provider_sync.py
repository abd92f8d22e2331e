"""Azure, Stability, Google and SD WebUI through the proxy on the shipped rules, driven by the openai SDK."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes import azure as azure_fake
from tests.fakes import gemini as gemini_fake
from tests.fakes import sdwebui as sdwebui_fake
from tests.fakes.azure import FakeAzure
from tests.fakes.gemini import FakeGemini
from tests.fakes.sdwebui import FakeSDWebUI
from tests.fakes.stability import FakeStability

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()


async def sdk_for(make_proxy: Any, env: dict[str, str]) -> openai.AsyncOpenAI:
    client = await make_proxy(SHIPPED, env)
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def serve(aiohttp_server: Any, fake: Any, path: str = "") -> str:
    server = await aiohttp_server(fake.app())
    return str(server.make_url(path)).rstrip("/")


async def test_azure_deployment_call_and_b64(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeAzure()
    sdk = await sdk_for(
        make_proxy, {"AZURE_OPENAI_ENDPOINT": await serve(aiohttp_server, fake), "AZURE_OPENAI_API_KEY": fake.api_key}
    )
    answer = await sdk.images.generate(model="azure-gpt-image-1", prompt="a kite", size="1536x1024", output_format="jpeg")
    assert answer.data is not None and base64.b64decode(answer.data[0].b64_json or "") == azure_fake.PNG
    sent = fake.recorder.received[0]
    assert sent.path == "/openai/deployments/gpt-image-1/images/generations"
    assert sent.query == {"api-version": "2025-04-01-preview"}
    assert sent.header("api-key") == fake.api_key and sent.header("Authorization") is None
    assert sent.json() == {"prompt": "a kite", "n": 1, "size": "1536x1024", "quality": "auto", "output_format": "jpeg"}
    await sdk.close()


async def test_azure_content_filter_is_a_moderation_error(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeAzure(moderate=True)
    sdk = await sdk_for(
        make_proxy, {"AZURE_OPENAI_ENDPOINT": await serve(aiohttp_server, fake), "AZURE_OPENAI_API_KEY": fake.api_key}
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="azure-dall-e-3", prompt="x")
    assert caught.value.response.json()["error"]["type"] == "image_generation_user_error"
    assert fake.api_key not in caught.value.response.text
    await sdk.close()


async def test_stability_multipart_fan_out_and_hosted_url(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeStability()
    sdk = await sdk_for(make_proxy, {"STABILITY_BASE_URL": await serve(aiohttp_server, fake), "STABILITY_API_KEY": fake.api_key})
    answer = await sdk.images.generate(
        model="stable-image-core",
        prompt="a castle",
        n=2,
        size="1792x1024",
        response_format="url",
        extra_body={"negative_prompt": "fog", "style_preset": "anime"},
    )
    assert answer.data is not None and len(answer.data) == 2
    assert all("/images/" in (item.url or "") for item in answer.data)
    assert [received.path for received in fake.recorder.received] == ["/v2beta/stable-image/generate/core"] * 2
    for form in fake.forms:
        assert {name: form[name] for name in ("prompt", "aspect_ratio", "negative_prompt", "style_preset")} == {
            "prompt": "a castle",
            "aspect_ratio": "16:9",
            "negative_prompt": "fog",
            "style_preset": "anime",
        }
    await sdk.close()


async def test_stability_content_filtered_in_a_200_is_not_a_success(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeStability()
    fake.content_filtered = True
    sdk = await sdk_for(make_proxy, {"STABILITY_BASE_URL": await serve(aiohttp_server, fake), "STABILITY_API_KEY": fake.api_key})
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="stable-image-ultra", prompt="x", response_format="b64_json")
    assert caught.value.response.json()["error"]["type"] == "image_generation_user_error"
    await sdk.close()


async def test_imagen_sample_count_and_aspect_ratio(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeGemini()
    sdk = await sdk_for(
        make_proxy, {"GEMINI_BASE_URL": await serve(aiohttp_server, fake, "/v1beta"), "GEMINI_API_KEY": fake.api_key}
    )
    answer = await sdk.images.generate(
        model="imagen-4.0-generate-001", prompt="a bay", size="1024x1792", response_format="b64_json"
    )
    assert answer.data is not None and base64.b64decode(answer.data[0].b64_json or "") == gemini_fake.PNG
    sent = fake.recorder.received[0]
    assert sent.path == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert sent.header("x-goog-api-key") == fake.api_key
    body = sent.json()
    assert body["instances"] == [{"prompt": "a bay"}]
    assert body["parameters"]["sampleCount"] == 1 and body["parameters"]["aspectRatio"] == "9:16"
    await sdk.close()


async def test_imagen_makes_n_images_in_one_call_and_gemini_fans_out(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeGemini()
    sdk = await sdk_for(
        make_proxy, {"GEMINI_BASE_URL": await serve(aiohttp_server, fake, "/v1beta"), "GEMINI_API_KEY": fake.api_key}
    )
    imagen = await sdk.images.generate(model="imagen-4.0-generate-001", prompt="a bay", n=3, response_format="b64_json")
    assert imagen.data is not None and len(imagen.data) == 3
    assert [sent.json()["parameters"]["sampleCount"] for sent in fake.recorder.received] == [3]

    gemini = await sdk.images.generate(model="gemini-2.5-flash-image", prompt="a bay", n=2, response_format="b64_json")
    assert gemini.data is not None and len(gemini.data) == 2
    assert [sent.path for sent in fake.recorder.received[1:]] == ["/v1beta/models/gemini-2.5-flash-image:generateContent"] * 2
    await sdk.close()


async def test_gemini_image_safety_is_a_moderation_error(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeGemini()
    fake.image_safety = True
    sdk = await sdk_for(
        make_proxy, {"GEMINI_BASE_URL": await serve(aiohttp_server, fake, "/v1beta"), "GEMINI_API_KEY": fake.api_key}
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="gemini-2.5-flash-image", prompt="x")
    assert caught.value.response.json()["error"]["type"] == "image_generation_user_error"
    assert fake.recorder.received[0].path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    await sdk.close()


async def test_sdwebui_batch_and_fields(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeSDWebUI()
    sdk = await sdk_for(make_proxy, {"SDWEBUI_BASE_URL": await serve(aiohttp_server, fake)})
    answer = await sdk.images.generate(
        model="sd-webui",
        prompt="a robot",
        n=2,
        size="768x512",
        response_format="b64_json",
        extra_body={"negative_prompt": "blurry", "seed": 7, "steps": 12},
    )
    assert answer.data is not None and len(answer.data) == 2
    assert base64.b64decode(answer.data[1].b64_json or "") == sdwebui_fake.PNG
    body = fake.recorder.received[0].json()
    assert fake.recorder.received[0].path == "/sdapi/v1/txt2img"
    assert (body["prompt"], body["negative_prompt"], body["width"], body["height"]) == ("a robot", "blurry", 768, 512)
    assert (body["batch_size"], body["seed"], body["steps"], body["cfg_scale"]) == (2, 7, 12, 6)
    await sdk.close()
