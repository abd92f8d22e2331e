"""Zhipu CogView and Volcengine Seedream through the proxy, driven by the official openai SDK."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes import seedream as seedream_fake
from tests.fakes import zhipu as zhipu_fake
from tests.fakes.seedream import FakeSeedream
from tests.fakes.zhipu import FakeZhipu

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()


async def shipped_proxy(make_proxy: Any, aiohttp_server: Any, zhipu: FakeZhipu, ark: FakeSeedream) -> openai.AsyncOpenAI:
    zhipu_server = await aiohttp_server(zhipu.app())
    ark_server = await aiohttp_server(ark.app())
    env = {
        "ZHIPU_BASE_URL": str(zhipu_server.make_url(zhipu_fake.PREFIX)),
        "ZHIPU_API_KEY": zhipu.api_key,
        "ARK_BASE_URL": str(ark_server.make_url(seedream_fake.PREFIX)),
        "ARK_API_KEY": ark.api_key,
    }
    client = await make_proxy(SHIPPED, env)
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def test_cogview_fans_out_n_and_maps_fields(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu()
    sdk = await shipped_proxy(make_proxy, aiohttp_server, zhipu, FakeSeedream())
    answer = await sdk.images.generate(
        model="cogview-4",
        prompt="山水画",
        n=3,
        size="1344x768",
        user="user-123456",
        extra_body={"watermark": False},
    )
    assert answer.data is not None and len(answer.data) == 3
    assert sorted(item.url or "" for item in answer.data)[0].endswith(".png")
    bodies = [item.json() for item in zhipu.recorder.received]
    assert len(bodies) == 3
    for body in bodies:
        assert body == {
            "model": "cogview-4",
            "prompt": "山水画",
            "size": "1344x768",
            "watermark_enabled": False,
            "user_id": "user-123456",
        }
    await sdk.close()


async def test_cogview_b64_json_is_downloaded_and_watermark_absent_stays_absent(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu()
    sdk = await shipped_proxy(make_proxy, aiohttp_server, zhipu, FakeSeedream())
    raw = await sdk.images.with_raw_response.generate(model="cogview-3-flash", prompt="cat", response_format="b64_json")
    answer = raw.parse()
    assert raw.http_response.json()["size"] == "2x2"  # measured from the image itself: Zhipu does not say
    assert answer.data is not None
    assert base64.b64decode(answer.data[0].b64_json or "") == zhipu_fake.PNG
    body = zhipu.recorder.received[0].json()
    assert "watermark_enabled" not in body and body["size"] == "1024x1024"
    await sdk.close()


async def test_cogview_partial_fan_out_failure_delivers_what_exists(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu(moderate_every=2)
    sdk = await shipped_proxy(make_proxy, aiohttp_server, zhipu, FakeSeedream())
    raw = await sdk.images.with_raw_response.generate(model="cogview-3-plus", prompt="cat", n=4)
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == 2
    failed = raw.http_response.json()["metadata"]["failed"]
    assert failed["count"] == 2
    assert [error["type"] for error in failed["errors"]] == ["image_generation_user_error"] * 2
    assert len(zhipu.recorder.received) == 4
    await sdk.close()


async def test_cogview_moderation_and_arrears(make_proxy: Any, aiohttp_server: Any) -> None:
    zhipu = FakeZhipu(fail_with=zhipu_fake.MODERATED)
    sdk = await shipped_proxy(make_proxy, aiohttp_server, zhipu, FakeSeedream())
    with pytest.raises(openai.BadRequestError) as moderated:
        await sdk.images.generate(model="cogview-4", prompt="x")
    assert moderated.value.status_code == 400
    zhipu.fail_with = zhipu_fake.ARREARS
    with pytest.raises(openai.RateLimitError) as arrears:
        await sdk.images.generate(model="cogview-4", prompt="x")
    assert arrears.value.response.json()["error"]["type"] == "insufficient_quota"
    await sdk.close()


async def test_seedream_watermark_extra_body_and_b64(make_proxy: Any, aiohttp_server: Any) -> None:
    ark = FakeSeedream()
    sdk = await shipped_proxy(make_proxy, aiohttp_server, FakeZhipu(), ark)
    answer = await sdk.images.generate(
        model="doubao-seedream-4.0",
        prompt="a comic strip",
        response_format="b64_json",
        extra_body={
            "watermark": False,
            "extra_body": {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}},
        },
    )
    assert answer.data is not None and len(answer.data) == 3
    assert base64.b64decode(answer.data[0].b64_json or "") == seedream_fake.PNG
    sent = ark.recorder.received[0].json()
    assert sent["model"] == "doubao-seedream-4-0-250828"
    assert sent["watermark"] is False
    assert sent["response_format"] == "b64_json"
    assert sent["sequential_image_generation"] == "auto"
    assert sent["sequential_image_generation_options"] == {"max_images": 3}
    await sdk.close()


async def test_seedream_absent_watermark_is_not_sent_and_urls_pass(make_proxy: Any, aiohttp_server: Any) -> None:
    ark = FakeSeedream()
    sdk = await shipped_proxy(make_proxy, aiohttp_server, FakeZhipu(), ark)
    answer = await sdk.images.generate(model="doubao-seedream-4.5", prompt="a fox", response_format="url")
    assert answer.data is not None and (answer.data[0].url or "").startswith("http://127.0.0.1")
    assert "watermark" not in ark.recorder.received[0].json()
    await sdk.close()


async def test_seedream_native_stream_becomes_openai_events(make_proxy: Any, aiohttp_server: Any) -> None:
    ark = FakeSeedream(moderate_items=frozenset({1}))
    sdk = await shipped_proxy(make_proxy, aiohttp_server, FakeZhipu(), ark)
    stream = await sdk.images.generate(
        model="doubao-seedream-4.0",
        prompt="three panels",
        stream=True,
        response_format="b64_json",
        extra_body={
            "extra_body": {"sequential_image_generation": "auto", "sequential_image_generation_options": {"max_images": 3}}
        },
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError):
        async for event in stream:
            seen.append(event.type)
            assert base64.b64decode(event.b64_json) == seedream_fake.PNG
    # Images 0 and 2 arrive; the moderated image 1 is reported at the end, so nothing paid for is cut off.
    assert seen == ["image_generation.completed", "image_generation.completed"]
    assert ark.recorder.received[0].json()["stream"] is True
    await sdk.close()
