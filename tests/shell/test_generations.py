"""/v1/images/generations end to end: the proxy against a fake OpenAI upstream that records what it got."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy import idempotent
from proxy.adapters import openai
from proxy.core.plain_base64 import loads_images
from proxy.core.received import Base64Chunks
from tests.factories import CLIENT_KEY, DALL_E_3, auth, rules_yaml, url_of
from tests.fakes.openai import KEY, PNG, FakeOpenAI

MODELS: dict[str, Any] = {
    "local-image": {"channels": ["local"]},
    "dall-e-3": DALL_E_3,
    "dall-e-2": {"channels": ["openai"], "sizes": ["256x256", "512x512", "1024x1024"], "passthrough": ["response_format"]},
    "styled": {
        "channels": ["openai"],
        "upstream_model": "dall-e-2",
        "passthrough": ["style", "background", "watermark", "extra_body"],
    },
    "gpt-image-*": {"channels": ["openai"], "defaults": {"quality": "auto"}, "passthrough": ["background", "output_format"]},
}
SERVER = {"api_keys": ["client-key-1"]}
RULES = rules_yaml(MODELS, server=SERVER, default_channel="openai")


async def proxy_for(make_proxy: Any, upstream: str, text: str = RULES) -> TestClient:  # type: ignore[type-arg]
    return await make_proxy(text, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})


async def generate(client: TestClient, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any], Any]:  # type: ignore[type-arg]
    response = await client.post("/v1/images/generations", json=body, headers={**auth(), **headers})
    return response.status, await response.json(), response.headers


async def test_dall_e_3_defaults_reach_the_upstream_with_the_channel_key(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "dall-e-3", "prompt": "a cat", "size": "1024×1024"})
    assert status == 200
    sent = fake.recorder.received[0]
    assert sent.path == "/v1/images/generations"
    assert sent.json() == {
        "model": "dall-e-3",
        "prompt": "a cat",
        "n": 1,
        "quality": "standard",
        "response_format": "url",
        "size": "1024x1024",
    }
    assert sent.header("Authorization") == f"Bearer {KEY}"
    assert CLIENT_KEY not in json.dumps(sent.headers)
    assert body["data"][0]["url"].startswith(upstream + "/files/")
    assert body["metadata"] == {"model": "dall-e-3", "upstream_model": "dall-e-3", "channel": "openai", "attempts": 1}
    assert body["created"] == 1700000000


async def test_client_quality_wins_over_the_default(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    await generate(client, {"model": "dall-e-3", "prompt": "a cat", "quality": "hd"})
    assert fake.recorder.received[0].json()["quality"] == "hd"


@pytest.mark.parametrize(("given", "sent"), [({}, None), ({"watermark": False}, False), ({"watermark": True}, True)])
async def test_watermark_is_tri_state(make_proxy: Any, fake_openai: Any, given: dict[str, Any], sent: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, _, _ = await generate(client, {"model": "styled", "prompt": "p", **given})
    assert status == 200
    body = fake.recorder.received[0].json()
    if sent is None:
        assert "watermark" not in body
    else:
        assert body["watermark"] is sent


async def test_non_boolean_watermark_is_a_400_and_nothing_is_sent(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "styled", "prompt": "p", "watermark": "false"})
    assert status == 400
    assert body["error"]["param"] == "watermark"
    assert body["error"]["type"] == "invalid_request_error"
    assert fake.recorder.received == []


async def test_style_and_background_objects_pass_byte_for_byte(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    style = {"preset": "anime", "weights": [0.5, 1, True, None], "nested": {"ü": "✓"}}
    raw = json.dumps(
        {"model": "styled", "prompt": "p", "style": style, "background": "transparent", "extra_body": {"guidance": 7.5}}
    )
    response = await client.post("/v1/images/generations", data=raw, headers=auth())
    assert response.status == 200
    sent = fake.recorder.received[0].json()
    assert sent["style"] == style
    assert json.dumps(sent["style"], sort_keys=True) == json.dumps(style, sort_keys=True)
    assert sent["background"] == "transparent"
    assert sent["model"] == "dall-e-2"
    assert sent["guidance"] == 7.5 and "extra_body" not in sent


async def test_fields_the_rules_do_not_forward_are_reported_not_sent(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, _, headers = await generate(
        client, {"model": "dall-e-2", "prompt": "p", "style": {"a": 1}, "background": "opaque", "negative_prompt": "x"}
    )
    assert status == 200
    sent = fake.recorder.received[0].json()
    assert not {"style", "background", "negative_prompt"} & set(sent)
    assert headers["X-Imagegate-Ignored-Params"] == "background, negative_prompt, style"


async def test_url_from_upstream_becomes_b64_when_asked(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    # The upstream ignores response_format here: dall-e-3 passes it, so force a URL answer.
    models = {**MODELS, "dall-e-3": {**DALL_E_3, "passthrough": ["style"]}}
    client = await proxy_for(make_proxy, upstream, rules_yaml(models, server=SERVER, default_channel="openai"))
    status, body, _ = await generate(client, {"model": "dall-e-3", "prompt": "p", "response_format": "b64_json"})
    assert status == 200
    assert "response_format" not in fake.recorder.received[0].json()
    assert set(body["data"][0]) == {"b64_json"}
    assert base64.b64decode(body["data"][0]["b64_json"]) == PNG
    download = fake.recorder.received[1]
    assert download.path == "/files/img-0.png"
    assert download.header("Authorization") is None  # channel keys never go to image hosts


async def test_base64_is_an_alias_of_b64_json(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "dall-e-2", "prompt": "p", "response_format": "base64"})
    assert status == 200
    assert fake.recorder.received[0].json()["response_format"] == "b64_json"
    assert base64.b64decode(body["data"][0]["b64_json"]) == PNG


async def test_b64_from_upstream_becomes_a_hosted_url(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.revised_prompt = "a tabby cat"
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "gpt-image-1.5", "prompt": "cat", "response_format": "url", "n": 2})
    assert status == 200
    sent = fake.recorder.received[0].json()
    assert "response_format" not in sent and sent["quality"] == "auto" and sent["n"] == 2
    assert [set(item) for item in body["data"]] == [{"url", "revised_prompt"}] * 2
    assert body["data"][0]["revised_prompt"] == "a tabby cat"
    assert body["usage"]["total_tokens"] == 4170
    assert body["size"] == "1024x1024"
    url = body["data"][0]["url"]
    assert url.startswith(str(client.make_url("/images/")))
    image = await client.get(url.split(url_of(client))[1])  # no key needed
    assert image.status == 200
    assert image.headers["Content-Type"] == "image/png"
    assert await image.read() == PNG


async def test_public_base_url_builds_hosted_urls(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    text = rules_yaml(MODELS, server={**SERVER, "public_base_url": "https://img.example.com/"}, default_channel="openai")
    client = await proxy_for(make_proxy, upstream, text)
    _, body, _ = await generate(client, {"model": "gpt-image-1", "prompt": "cat", "response_format": "url"})
    assert body["data"][0]["url"].startswith("https://img.example.com/images/")


async def test_unknown_hosted_image_is_a_404_envelope(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    for name in ("nope.png", "..%2F..%2Fetc%2Fpasswd", "A" * 32 + ".exe"):
        response = await client.get(f"/images/{name}")
        assert response.status == 404
        assert (await response.json())["error"]["code"] in {"image_not_found", "unknown_url"}


async def test_local_model_answers_with_real_pngs(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "local-image", "prompt": "fox", "size": "320x200", "n": 3})
    assert status == 200
    images = [base64.b64decode(item["b64_json"]) for item in body["data"]]
    assert len(images) == 3
    for data in images:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (320, 200)
    assert len(set(images)) == 3  # each index draws its own picture


async def test_json_body_is_parsed_whatever_the_content_type(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    raw = json.dumps({"model": "local-image", "prompt": "fox", "size": "64x64"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        response = await client.post("/v1/images/generations", data=raw, headers={**auth(), "Content-Type": content_type})
        assert response.status == 200, content_type
        assert len((await response.json())["data"]) == 1


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"prompt": "p"}', "model"),
        (b'{"model": "dall-e-3", "prompt": ""}', "prompt"),
        (b'{"model": "dall-e-3", "prompt": "p", "n": 2}', "n"),
        (b'{"model": "dall-e-2", "prompt": "p", "n": 11}', "n"),
        (b'{"model": "dall-e-3", "prompt": "p", "size": "512x512"}', "size"),
        (b'{"model": "dall-e-3", "prompt": "p", "quality": "ultra"}', "quality"),
        (b'{"model": "dall-e-3", "prompt": "p", "response_format": "png"}', "response_format"),
        (b'{"model": "dall-e-3", "prompt": "p", "strength": 2}', "strength"),
        (b'{"model": "dall-e-3", "prompt": "p", "output_format": "bmp"}', "output_format"),
        (b'{"model": "dall-e-3", "prompt": "p", "extra_body": [1]}', "extra_body"),
    ],
)
async def test_bad_requests_are_400_naming_the_param(make_proxy: Any, fake_openai: Any, raw: bytes, param: str | None) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    response = await client.post("/v1/images/generations", data=raw, headers=auth())
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert fake.recorder.received == []


async def test_size_error_lists_the_allowed_sizes(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    _, body, _ = await generate(client, {"model": "dall-e-3", "prompt": "p", "size": "512x512"})
    assert "1024x1024, 1792x1024, 1024x1792" in body["error"]["message"]


async def test_unknown_model_is_404_model_not_found(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    status, body, _ = await generate(client, {"model": "midjourney-v9", "prompt": "p"})
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    assert KEY not in json.dumps(body) and upstream not in json.dumps(body)


async def test_n_null_or_zero_means_one(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    for n in (None, 0):
        status, body, _ = await generate(client, {"model": "dall-e-2", "prompt": "p", "n": n})
        assert status == 200 and len(body["data"]) == 1
    assert [item.json()["n"] for item in fake.recorder.received] == [1, 1]


async def test_sdk_url_and_b64_json(make_proxy: Any, fake_openai: Any) -> None:
    openai = pytest.importorskip("openai")
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=CLIENT_KEY, max_retries=0)
    as_url = await sdk.images.generate(model="dall-e-3", prompt="a cat", size="1792x1024", style="natural")
    assert as_url.data is not None and as_url.data[0].url is not None
    assert as_url.data[0].url.startswith(upstream)
    sent = fake.recorder.received[0].json()
    assert sent["style"] == "natural" and sent["size"] == "1792x1024"
    as_b64 = await sdk.images.generate(model="gpt-image-1.5", prompt="a cat", response_format="b64_json")
    assert as_b64.data is not None and base64.b64decode(as_b64.data[0].b64_json or "") == PNG
    assert as_b64.usage is not None and as_b64.usage.total_tokens == 4170
    local = await sdk.images.generate(model="local-image", prompt="a cat", size="256x256", response_format="url")
    assert local.data is not None and local.data[0].url is not None
    png = await client.get(local.data[0].url.split(url_of(client))[1])
    assert (await png.read())[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="dall-e-3", prompt="a cat", size="256x256")
    assert caught.value.param == "size"
    await sdk.close()


__all__ = ["FakeOpenAI"]


LARGE_PNG = PNG + os.urandom(200_000)  # base64 past proxy.core.plain_base64.SPLICE_FROM: read unparsed


def plain_loads(received: bytes | tuple[bytes, ...]) -> Any:
    """The plain parser, in loads_images' place: json.loads of the answer as received (whole or in chunks)."""
    return json.loads(received if isinstance(received, bytes) else b"".join(received))


async def _raw_answers(client: TestClient, body: dict[str, Any]) -> tuple[bytes, bytes]:  # type: ignore[type-arg]
    """The answer with the large base64 read unparsed, and the same answer from the plain parser."""
    unparsed: list[Any] = []

    def fast(raw: bytes | tuple[bytes, ...]) -> Any:
        unparsed.append(data := loads_images(raw))
        return data

    answers = []
    for parse in (fast, plain_loads):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(openai, "loads_images", parse)
            response = await client.post("/v1/images/generations", json=body, headers=auth())
            assert response.status == 200
            raw = await response.read()
            assert response.headers["Content-Length"] == str(len(raw))
            assert response.headers["Content-Type"].startswith("application/json")
            answers.append(raw)
    assert all(isinstance(item["b64_json"], Base64Chunks) for item in unparsed[0]["data"])  # the fast path was taken
    return answers[0], answers[1]


async def test_a_large_image_passes_through_byte_for_byte_as_the_plain_parser_would(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.image = LARGE_PNG
    fake.revised_prompt = 'a "quoted" cat'
    client = await proxy_for(make_proxy, upstream)
    fast, plain = await _raw_answers(client, {"model": "gpt-image-1.5", "prompt": "cat", "n": 2})
    assert fast == plain
    body = json.loads(fast)
    assert [base64.b64decode(item["b64_json"]) for item in body["data"]] == [LARGE_PNG, LARGE_PNG]
    assert body["data"][0]["revised_prompt"] == 'a "quoted" cat'
    assert body["usage"]["total_tokens"] == 4170 and body["metadata"]["channel"] == "openai"


async def test_a_large_image_is_hosted_as_the_plain_parser_would(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.image = LARGE_PNG
    client = await proxy_for(make_proxy, upstream)
    fast, plain = await _raw_answers(client, {"model": "gpt-image-1.5", "prompt": "cat", "response_format": "url"})
    answers = [json.loads(raw) for raw in (fast, plain)]
    urls = [answer["data"][0].pop("url") for answer in answers]
    assert answers[0] == answers[1]  # the same answer but for the image's name
    for url in urls:
        image = await client.get(url.split(url_of(client))[1])
        assert image.headers["Content-Type"] == "image/png" and await image.read() == LARGE_PNG


@pytest.mark.parametrize(
    "b64",
    [
        base64.b64encode(LARGE_PNG).decode()[:-1],  # base64 characters only, cut short: padding is wrong
        base64.b64encode(LARGE_PNG).decode() + "!",  # a character that is not base64
        base64.b64encode(LARGE_PNG).decode() + "=QUJD",  # data after the padding
    ],
    ids=["short", "not-base64", "after-padding"],
)
async def test_a_large_image_that_is_not_base64_is_a_502_not_a_url(make_proxy: Any, fake_openai: Any, b64: str) -> None:
    fake, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream)
    for parse in (loads_images, plain_loads):
        fake.failures.append((200, {"created": 1, "data": [{"b64_json": b64}]}, {}))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(openai, "loads_images", parse)
            status, body, _ = await generate(client, {"model": "gpt-image-1.5", "prompt": "cat", "response_format": "url"})
        assert status == 502
        assert body["error"]["code"] == "bad_upstream_response"
        assert body["error"]["message"] == "the upstream returned an image that is not valid base64"


async def test_a_large_answer_received_in_many_chunks_is_delivered_byte_for_byte(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.image, fake.revised_prompt, fake.answer_piece = LARGE_PNG, "a cat", 1000
    client = await proxy_for(make_proxy, upstream)
    received: list[Any] = []
    parse = openai.parse_images_response

    def spy(body: Any) -> Any:
        received.append(body)
        return parse(body)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai, "parse_images_response", spy)
        fast, plain = await _raw_answers(client, {"model": "gpt-image-1.5", "prompt": "cat", "n": 2})
    assert fast == plain
    assert all(isinstance(body, tuple) and len(body) > 10 for body in received)  # many chunks, never joined
    body = json.loads(fast)
    assert [base64.b64decode(item["b64_json"]) for item in body["data"]] == [LARGE_PNG, LARGE_PNG]
    assert body["data"][0]["revised_prompt"] == "a cat" and body["usage"]["total_tokens"] == 4170


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_a_large_answer_in_many_chunks_that_is_not_base64_is_refused_or_kept_as_text(
    make_proxy: Any, fake_openai: Any, response_format: str
) -> None:
    fake, upstream = fake_openai
    fake.answer_piece = 1000
    client = await proxy_for(make_proxy, upstream)
    b64 = base64.b64encode(LARGE_PNG).decode()
    broken = b64[:100_000] + "!" + b64[100_000:]  # a character that is not base64, deep inside
    fake.failures.append((200, {"created": 1, "data": [{"b64_json": broken}]}, {}))
    status, body, _ = await generate(client, {"model": "dall-e-3", "prompt": "cat", "response_format": response_format})
    if response_format == "url":
        assert status == 502 and body["error"]["message"] == "the upstream returned an image that is not valid base64"
    else:
        assert status == 200 and body["data"][0]["b64_json"] == broken  # delivered as the upstream wrote it


async def test_a_large_answer_is_replayed_for_its_idempotency_key(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.image = LARGE_PNG
    client = await proxy_for(make_proxy, upstream)
    answers = []
    for _ in range(2):
        response = await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "cat"},
                                     headers={**auth(), "Idempotency-Key": "large-1"})
        answers.append((response.status, response.headers.get("Idempotent-Replayed"), await response.read()))
    assert len(fake.recorder.received) == 1
    assert [(status, replayed) for status, replayed, _ in answers] == [(200, None), (200, "true")]
    assert answers[0][2] == answers[1][2]
    assert base64.b64decode(json.loads(answers[1][2])["data"][0]["b64_json"]) == LARGE_PNG


@pytest.mark.parametrize("image", [PNG, LARGE_PNG], ids=["small", "spliced"])
@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_a_lone_surrogate_in_the_upstreams_text_is_relayed_as_its_escape(
    make_proxy: Any, fake_openai: Any, image: bytes, response_format: str
) -> None:
    # `"\ud800"` is valid JSON that json.loads turns into a character with no UTF-8 form.
    fake, upstream = fake_openai
    fake.image, fake.revised_prompt = image, "cat \ud800"
    client = await proxy_for(make_proxy, upstream)
    response = await client.post("/v1/images/generations", headers=auth(),
                                 json={"model": "gpt-image-1.5", "prompt": "cat", "response_format": response_format})
    raw = await response.read()
    assert response.status == 200 and b'"cat \\ud800"' in raw
    item = json.loads(raw)["data"][0]
    assert item["revised_prompt"] == "cat \ud800"
    if response_format == "b64_json":
        assert base64.b64decode(item["b64_json"]) == image


async def test_a_run_longer_than_its_claims_lease_keeps_the_key_and_a_retry_waits_for_it(
    make_proxy: Any, fake_openai: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotent, "LEASE", 1)  # renewed every 1/3 s while the 2.5 s generation runs
    fake, upstream = fake_openai
    fake.delay = 2.5
    client = await proxy_for(make_proxy, upstream)
    body, headers = {"model": "dall-e-3", "prompt": "cat"}, {**auth(), "Idempotency-Key": "slow-1"}
    first = asyncio.ensure_future(client.post("/v1/images/generations", json=body, headers=headers))
    await asyncio.sleep(1.5)  # past the first lease
    retry = await client.post("/v1/images/generations", json=body, headers=headers)
    answered = await first
    assert retry.status == answered.status == 200 and retry.headers.get("Idempotent-Replayed") == "true"
    assert await retry.read() == await answered.read()
    assert len(fake.recorder.received) == 1  # one generation, one bill


async def test_an_idempotent_url_answer_keeps_its_images_as_long_as_its_replay(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream, rules_yaml(MODELS, server={**SERVER, "images": {"ttl": 1}}))
    body, headers = {"model": "local-image", "prompt": "cat", "size": "256x256", "response_format": "url"}, auth()
    first = await client.post("/v1/images/generations", json=body, headers={**headers, "Idempotency-Key": "kept-1"})
    plain = await client.post("/v1/images/generations", json=body, headers=headers)
    await asyncio.sleep(2.2)  # past the images' TTL, within the replay's retention
    replay = await client.post("/v1/images/generations", json=body, headers={**headers, "Idempotency-Key": "kept-1"})
    assert first.status == replay.status == 200 and replay.headers["Idempotent-Replayed"] == "true"
    [url] = [item["url"] for item in (await replay.json())["data"]]
    assert (await client.get(url[url.index("/images/"):])).status == 200  # not a URL that is gone
    [gone] = [item["url"] for item in (await plain.json())["data"]]
    assert (await client.get(gone[gone.index("/images/"):])).status == 404  # without a key: the TTL, as before


async def test_a_hosted_image_may_be_cached_only_for_what_is_left_of_its_life(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    client = await proxy_for(make_proxy, upstream, rules_yaml(MODELS, server={**SERVER, "images": {"ttl": 3}}))
    body = {"model": "local-image", "prompt": "cat", "size": "256x256", "response_format": "url"}
    [item] = (await (await client.post("/v1/images/generations", json=body, headers=auth())).json())["data"]
    path = item["url"][item["url"].index("/images/"):]
    fresh = (await client.get(path)).headers["Cache-Control"]
    await asyncio.sleep(2.1)
    later = (await client.get(path)).headers["Cache-Control"]
    assert fresh in ("private, max-age=3", "private, max-age=2") and later == "private, max-age=0"


async def test_a_hosted_image_runs_no_script_on_the_proxys_origin(make_proxy: Any, fake_openai: Any) -> None:
    fake, upstream = fake_openai
    fake.image = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'
    client = await proxy_for(make_proxy, upstream)
    body = {"model": "gpt-image-1.5", "prompt": "cat", "response_format": "url"}
    [item] = (await (await client.post("/v1/images/generations", json=body, headers=auth())).json())["data"]
    served = await client.get(item["url"][item["url"].index("/images/"):])
    assert served.headers["Content-Type"] == "image/svg+xml"  # an upstream's SVG is hosted as one
    assert served.headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
