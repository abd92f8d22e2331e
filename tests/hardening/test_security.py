"""Security properties, measured: SSRF attempts blocked, secrets never leaked, store paths unescapable,
smuggling headers refused."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from proxy.guard import public_address
from proxy.image_store import FileImageStore
from tests.factories import LOCAL, OPENAI, proxy_with_fake, rules_yaml
from tests.fakes.openai import KEY, PNG, FakeOpenAI
from tests.hardening.figures import record

CLIENT = "client-secret-key-0123456789"
RULES = rules_yaml(
    {
        "gpt-image-*": {"channels": ["openai"]},
        "dall-e-2": {"channels": ["openai"], "passthrough": ["response_format"]},
        "stable-image-ultra": {"channels": ["stability"], "passthrough": ["image", "strength"]},
        "local-image": {"channels": ["local"]},
    },
    channels={
        "openai": OPENAI,
        "stability": {"type": "stability", "base_url": "${UPSTREAM}", "api_key": "${OPENAI_API_KEY}"},
        "local": LOCAL,
    },
    server={"api_keys": [CLIENT], "download": {"allow_hosts": ["${ALLOW:-none.invalid}"]}},
    default_channel="openai",
)
AUTH = {"Authorization": f"Bearer {CLIENT}"}

ATTACKS = [
    "http://127.0.0.1:9/x.png",
    "http://localhost:9/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:9/x.png",
    "http://[::ffff:127.0.0.1]:9/x.png",
    "http://0.0.0.0:9/x.png",
    "http://10.0.0.1/x.png",
    "http://192.168.1.1/x.png",
    "http://172.16.0.1/x.png",
    "http://100.64.0.1/x.png",
    "http://[fd00:ec2::254]/latest/",
    "http://[fe80::1]/x.png",
    "http://2130706433/x.png",
    "http://0x7f000001/x.png",
    "http://127.1/x.png",
    "file:///etc/passwd",
    "ftp://example.com/x.png",
    "gopher://127.0.0.1:6379/_INFO",
    "http://user:pass@127.0.0.1:9/x.png",
    "http://metadata.google.internal/computeMetadata/v1/",
    # IPv4 carried in IPv6: NAT64 (reaches 169.254.169.254 where a NAT64 gateway runs), 6to4, IPv4-compatible,
    # NAT64 for local use, site-local.
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://[2002:7f00:1::]:9/x.png",
    "http://[::7f00:1]:9/x.png",
    "http://[64:ff9b:1::a00:1]/x.png",
    "http://[fec0::1]/x.png",
]


async def test_client_image_urls_into_the_private_network_are_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    blocked = 0
    for url in ATTACKS:
        response = await client.post(
            "/v1/images/generations", json={"model": "stable-image-ultra", "prompt": "p", "image": url}, headers=AUTH
        )
        body = await response.json()
        if response.status == 400 and body["error"]["param"] == "image":
            blocked += 1
    record("SSRF attempts blocked", len(ATTACKS), blocked)
    assert blocked == len(ATTACKS)
    assert fake.recorder.received == []  # nothing was sent anywhere


async def test_a_redirect_from_a_trusted_host_to_an_untrusted_one_is_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/files/secret.png")

    app = web.Application()
    app.router.add_get("/bounce.png", bounce)
    server = await aiohttp_server(app)
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES, ALLOW="127.0.0.1")
    response = await client.post(
        "/v1/images/generations",
        json={"model": "stable-image-ultra", "prompt": "p", "image": str(server.make_url("/bounce.png"))},
        headers=AUTH,
    )
    assert response.status == 400 and (await response.json())["error"]["param"] == "image"
    record("SSRF attempts blocked", 1, 1)


async def test_upstream_result_urls_into_the_private_network_are_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    class Pointing(FakeOpenAI):
        async def generations(self, request: web.Request) -> web.Response:
            await self.recorder.record(request)
            return web.json_response({"created": 1, "data": [{"url": "http://169.254.169.254/latest/meta-data/iam"}]})

    client = await proxy_with_fake(make_proxy, aiohttp_server, Pointing(), RULES)
    response = await client.post(
        "/v1/images/generations", json={"model": "dall-e-2", "prompt": "p", "response_format": "b64_json"}, headers=AUTH
    )
    assert response.status == 502 and (await response.json())["error"]["code"] == "image_download_refused"
    record("SSRF attempts blocked", 1, 1)


async def test_no_secret_reaches_a_log_an_error_a_response_or_a_metric(
    make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOpenAI()
    fake.failures += [
        (500, {"error": {"message": f"internal error near {KEY} and {CLIENT}"}}, {}),
        (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {}),
        (429, {"error": {"message": f"slow down {KEY}", "code": "rate_limit_exceeded"}}, {"Retry-After": "1"}),
    ]
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        requests = [
            ("POST", "/v1/images/generations", {"model": "gpt-image-1.5", "prompt": "p"}),
            ("POST", "/v1/images/generations", {"model": "gpt-image-1.5", "prompt": "p"}),
            ("POST", "/v1/images/generations", {"model": "gpt-image-1.5", "prompt": "p"}),
            ("POST", "/v1/images/generations", {"model": "gpt-image-1.5", "prompt": "p"}),
            ("POST", "/v1/images/generations", {"model": "no-such-model", "prompt": "p"}),
            ("POST", "/v1/images/generations", {"model": "local-image", "prompt": "p", "size": "8x8"}),
            ("GET", "/v1/models", None),
        ]
        for method, path, body in requests:
            response = await client.request(method, path, json=body, headers=AUTH)
            texts.append(json.dumps(dict(response.headers)) + await response.text())
        wrong = await client.post(
            "/v1/images/generations", json={"model": "x", "prompt": "p"}, headers={"Authorization": "Bearer x" + CLIENT}
        )
        texts.append(await wrong.text())
        texts.append(await (await client.get("/metrics")).text())
    texts += [record_.getMessage() for record_ in caplog.records]
    texts += [json.dumps(item.headers) + item.body.decode("utf-8", "replace") for item in fake.recorder.received]
    leaks = [text for text in texts if KEY in text and "Bearer " + KEY not in text]  # the channel key belongs upstream
    leaks += [text for text in texts if CLIENT in text]
    name = "texts scanned free of secrets (logs, errors, responses, metrics, upstream calls)"
    record(name, len(texts), len(texts) - len(leaks))
    assert leaks == []


def test_hosted_image_names_are_unguessable_and_the_store_cannot_be_escaped(tmp_path: Any) -> None:
    store = FileImageStore(tmp_path / "images", ttl=60)
    (tmp_path / "secret.png").write_bytes(b"secret")
    names = {asyncio.run(store.put(PNG, "image/png")) for _ in range(500)}
    assert len(names) == 500 and all(len(name) == 36 and name.endswith(".png") for name in names)
    hostile = ["../secret.png", "..%2Fsecret.png", "/etc/passwd", "secret.png\x00.png", "A" * 32 + ".png/../../secret.png",
               "." * 32 + ".png", "A" * 31 + "/.png", "A" * 32 + ".PNG", "A" * 32 + ".exe"]
    refused = sum(1 for name in hostile if asyncio.run(store.get(name)) is None)
    record("path traversal attempts on the image store refused", len(hostile), refused)
    assert refused == len(hostile)


async def test_request_smuggling_headers_are_refused(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    port = client.server.port
    attacks = [
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\rInjected: b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    ]
    refused = 0
    for raw in attacks:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        # aiohttp's parser answers 400 (as HTTP/1.0) and closes: the request never reaches a handler.
        if status_line[:9] in (b"HTTP/1.0 ", b"HTTP/1.1 ") and status_line[9:12] in (b"400", b"501"):
            refused += 1
    record("request-smuggling attempts refused", len(attacks), refused)
    assert refused == len(attacks)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::a9fe:a9fe", False), ("2002:7f00:1::", False), ("::7f00:1", False), ("64:ff9b:1::a00:1", False),
        ("fec0::1", False), ("::ffff:10.0.0.1", False), ("::1", False), ("::", False), ("fe80::1%eth0", False),
        # The same forms carrying a public address, and plain public ones, stay public.
        ("64:ff9b::808:808", True), ("2002:808:808::", True), ("2606:4700::1111", True), ("8.8.8.8", True),
    ],
)
def test_ipv4_carried_in_ipv6_is_judged_as_the_ipv4_it_reaches(address: str, public: bool) -> None:
    # Connecting to one of these would fail here (no route), so the refusal is checked where it is made.
    assert public_address(address) is public
