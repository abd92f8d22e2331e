"""Hosted images in object storage (proxy.s3_store) against a real S3 server: SeaweedFS on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.adapters import SCHEMAS
from proxy.core.errors import ServiceUnavailable
from proxy.core.rules import parse_rules
from proxy.s3_store import S3ImageStore
from tests.factories import proxy_with_fake, rules_yaml
from tests.fakes.openai import FakeOpenAI
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedServer

AUTH = {"Authorization": "Bearer client-key-1"}
MODELS = {"gpt-image-*": {"channels": ["openai"]}}


def rules_for(server: SeaweedServer, bucket: str, **s3: Any) -> str:
    settings = {"endpoint": server.endpoint, "region": "us-east-1", "access_key_id": ACCESS_KEY,
                "secret_access_key": "${S3_SECRET}", **s3}
    images = {"store": f"s3://{bucket}/hosted", "s3": settings, "ttl": s3.pop("ttl", 3600)}
    images["s3"] = {key: value for key, value in settings.items() if key != "ttl"}
    return rules_yaml(MODELS, server={"api_keys": ["client-key-1"], "images": images})


def client_for(server: SeaweedServer) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    return get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=AioConfig(s3={"addressing_style": "path"}),
    )


async def new_bucket(server: SeaweedServer) -> str:
    name = f"imagegate-{secrets.token_hex(6)}"
    async with client_for(server) as s3:
        for _ in range(50):  # the filer may still be settling just after the port opened
            try:
                await s3.create_bucket(Bucket=name)
                return name
            except Exception:
                await asyncio.sleep(0.2)
    raise RuntimeError("could not create a bucket")


@pytest.fixture
async def bucket(s3_server: SeaweedServer) -> AsyncIterator[str]:
    yield await new_bucket(s3_server)


async def proxy(make_proxy: Any, aiohttp_server: Any, fake: FakeOpenAI, rules: str) -> Any:
    return await proxy_with_fake(make_proxy, aiohttp_server, fake, rules, S3_SECRET=SECRET_KEY)


async def generate(client: Any, n: int = 1, response_format: str = "url") -> tuple[int, dict[str, Any]]:
    answer = await client.post(
        "/v1/images/generations", json={"model": "gpt-image-1", "prompt": "p", "n": n, "response_format": response_format},
        headers=AUTH,
    )
    return answer.status, await answer.json()


async def test_a_hosted_image_is_one_object_served_through_the_proxy(
    make_proxy: Any, aiohttp_server: Any, s3_server: SeaweedServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOpenAI()
    caplog.set_level(logging.DEBUG)
    client = await proxy(make_proxy, aiohttp_server, fake, rules_for(s3_server, bucket))
    status, body = await generate(client, n=2)
    assert status == 200, body
    urls = [item["url"] for item in body["data"]]
    assert urls[0] == urls[1] and "/images/" in urls[0]  # two identical images: one name, one object
    name = urls[0].rsplit("/", 1)[1]
    async with client_for(s3_server) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="hosted/")
        assert [item["Key"] for item in listed["Contents"]] == [f"hosted/{name}"]
        stored = await s3.get_object(Bucket=bucket, Key=f"hosted/{name}")
        async with stored["Body"] as stream:
            assert await stream.read() == fake.image
        assert stored["ContentType"] == "image/png"
    served = await client.get(urls[0][urls[0].index("/images/"):])
    assert served.status == 200 and await served.read() == fake.image
    assert served.headers["Content-Type"] == "image/png"
    assert (await client.get("/images/" + "0" * 64 + ".png")).status == 404
    assert (await client.get("/images/..%2Fsecret.png")).status == 404
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in repr(client.server.app)


async def test_presigned_urls_need_no_credentials(
    make_proxy: Any, aiohttp_server: Any, s3_server: SeaweedServer, bucket: str
) -> None:
    fake = FakeOpenAI()
    client = await proxy(make_proxy, aiohttp_server, fake, rules_for(s3_server, bucket, url_mode="presigned"))
    status, body = await generate(client)
    url = body["data"][0]["url"]
    assert status == 200 and url.startswith(f"{s3_server.endpoint}/{bucket}/hosted/") and SECRET_KEY not in url
    async with aiohttp.ClientSession() as plain, plain.get(url) as answer:
        assert answer.status == 200 and await answer.read() == fake.image


async def test_public_urls_are_built_from_public_base_url(
    make_proxy: Any, aiohttp_server: Any, s3_server: SeaweedServer, bucket: str
) -> None:
    rules = rules_for(s3_server, bucket, url_mode="public", public_base_url="https://cdn.example.com/images/")
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI(), rules)
    status, body = await generate(client)
    url = body["data"][0]["url"]
    assert status == 200 and url.startswith("https://cdn.example.com/images/hosted/") and url.endswith(".png")


async def test_an_expired_image_is_gone_and_swept(
    make_proxy: Any, aiohttp_server: Any, s3_server: SeaweedServer, bucket: str
) -> None:
    rules = rules_for(s3_server, bucket, ttl=1)
    client = await proxy(make_proxy, aiohttp_server, FakeOpenAI(), rules)
    status, body = await generate(client)
    path = body["data"][0]["url"].split("://", 1)[1]
    path = path[path.index("/images/"):]
    assert status == 200 and (await client.get(path)).status == 200
    await asyncio.sleep(2.2)
    assert (await client.get(path)).status == 404
    store = S3ImageStore(parse_rules(rules, {"S3_SECRET": SECRET_KEY, "UPSTREAM": "http://x"}, SCHEMAS).server.images, 1)
    try:
        assert await store.get(path.rsplit("/", 1)[1]) is None
        assert await store.sweep() == 1
        async with client_for(s3_server) as s3:
            assert "Contents" not in await s3.list_objects_v2(Bucket=bucket, Prefix="hosted/")
    finally:
        await store.close()


async def test_a_store_outage_loses_no_image(
    make_proxy: Any, aiohttp_server: Any, s3_outage_server: SeaweedServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOpenAI()
    bucket = await new_bucket(s3_outage_server)
    client = await proxy(make_proxy, aiohttp_server, fake, rules_for(s3_outage_server, bucket))
    status, body = await generate(client)
    name = body["data"][0]["url"].rsplit("/", 1)[1]
    s3_outage_server.stop()
    status, body = await generate(client)
    assert status == 200, body
    assert base64.b64decode(body["data"][0]["b64_json"]) == fake.image and "url" not in body["data"][0]
    assert body["metadata"]["not_hosted"] == {"count": 1, "reason": "image store unavailable"}
    missing = await client.get(f"/images/{name}")
    assert missing.status == 503 and (await missing.json())["error"]["code"] == "image_store_unavailable"
    assert "image store is unavailable" in caplog.text
    assert SECRET_KEY not in caplog.text and SECRET_KEY not in str(body)


async def test_the_store_refuses_names_that_are_not_hashes(s3_server: SeaweedServer, bucket: str) -> None:
    rules = rules_for(s3_server, bucket)
    store = S3ImageStore(parse_rules(rules, {"S3_SECRET": SECRET_KEY, "UPSTREAM": "http://x"}, SCHEMAS).server.images, 3600)
    try:
        name = await store.put(b"same bytes", "image/png")
        assert name == await store.put(b"same bytes", "image/png", 10)  # a repeat: the same object
        assert (await store.get(name)) is not None
        for bad in ("../x.png", "a" * 32 + ".png", name.replace(".png", ".exe"), "hosted/" + name):
            assert await store.get(bad) is None
        assert SECRET_KEY not in repr(store)
        large = secrets.token_bytes(300_000)  # hashed in the CPU pool: the same name all the same
        assert await store.put(large, "image/png") == hashlib.sha256(large).hexdigest() + ".png"
        stored = await store.get(hashlib.sha256(large).hexdigest() + ".png")
        assert stored is not None and stored.data == large
    finally:
        await store.close()


def test_rules_name_the_bucket_and_check_the_settings() -> None:
    text = rules_yaml(MODELS, server={"images": {"store": "s3://my-bucket/a/b/", "s3": {"url_mode": "presigned"}}})
    images = parse_rules(text, {"UPSTREAM": "http://x"}, SCHEMAS).server.images
    assert (images.bucket, images.prefix, images.s3.url_mode) == ("my-bucket", "a/b", "presigned")
    with pytest.raises(Exception) as problems:
        parse_rules(rules_yaml(MODELS, server={"images": {"store": "gs://x", "s3": {"url_mode": "public", "bogus": 1}}}),
                    {"UPSTREAM": "http://x"}, SCHEMAS)
    text = str(problems.value)
    assert "server.images.store" in text and "server.images.s3.public_base_url" in text and "server.images.s3.bogus" in text
    assert ServiceUnavailable.status == 503


async def test_refused_credentials_are_an_unavailable_store_not_a_500(
    make_proxy: Any, aiohttp_server: Any, s3_server: SeaweedServer, bucket: str
) -> None:
    fake = FakeOpenAI()
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, rules_for(s3_server, bucket), S3_SECRET="not-the-secret")
    status, body = await generate(client)
    assert status == 200 and base64.b64decode(body["data"][0]["b64_json"]) == fake.image
    assert body["metadata"]["not_hosted"]["count"] == 1
    missing = await client.get("/images/" + "a" * 64 + ".png")
    assert missing.status == 503 and (await missing.json())["error"]["code"] == "image_store_unavailable"


async def test_the_lifecycle_rule_covers_the_prefix_and_is_never_bucket_wide(s3_server: SeaweedServer, bucket: str) -> None:
    """A rule without a prefix would expire every object in the bucket, the operator's own too: none is set."""
    env = {"S3_SECRET": SECRET_KEY, "UPSTREAM": "http://x"}
    prefixless = rules_for(s3_server, bucket).replace(f"s3://{bucket}/hosted", f"s3://{bucket}")
    store = S3ImageStore(parse_rules(prefixless, env, SCHEMAS).server.images, 3600)
    try:
        await store.start()
        async with client_for(s3_server) as s3:
            try:
                rules = (await s3.get_bucket_lifecycle_configuration(Bucket=bucket)).get("Rules", [])
            except Exception:  # no configuration at all
                rules = []
        assert all(rule.get("Filter", {}).get("Prefix") for rule in rules), rules
    finally:
        await store.close()
    prefixed = S3ImageStore(parse_rules(rules_for(s3_server, bucket), env, SCHEMAS).server.images, 3600)
    try:
        await prefixed.start()
        async with client_for(s3_server) as s3:
            rules = (await s3.get_bucket_lifecycle_configuration(Bucket=bucket)).get("Rules", [])
        assert [(rule["ID"], rule["Filter"]["Prefix"]) for rule in rules] == [("imagegate-hosted-images", "hosted/")]
    finally:
        await prefixed.close()


async def test_credentials_without_list_permission_still_store(s3_server: SeaweedServer, bucket: str) -> None:
    # Without s3:ListBucket, S3 answers the HEAD of a missing key 403 (a HEAD has no body to say more).
    from botocore.exceptions import ClientError

    store = S3ImageStore(parse_rules(rules_for(s3_server, bucket), {"S3_SECRET": SECRET_KEY, "UPSTREAM": "http://x"},
                                     SCHEMAS).server.images, 3600)
    try:
        async with store._call() as client:
            real = client.head_object

            async def head_without_list(**kwargs: Any) -> Any:
                try:
                    return await real(**kwargs)
                except ClientError as exc:
                    if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
                        raise
                    raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"},
                                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject") from None

            client.head_object = head_without_list
        name = await store.put(b"first of its kind", "image/png")
        stored = await store.get(name)
        assert stored is not None and stored.data == b"first of its kind"
    finally:
        await store.close()
