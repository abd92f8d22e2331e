"""Request bodies through the real app: refused from their head (413, 415) before they are read, and
compressed bodies decoded as a stream with their decoded size counted.

The Expect and early-refusal cases speak raw HTTP over a socket, so they can show what the proxy
answers before a single body byte is sent.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.factories import rules_yaml
from tests.fakes.openai import KEY, PNG

LIMIT = 65536
MODELS = {"local-image": {"channels": ["local"]}, "dall-e-2": {"channels": ["openai"], "passthrough": ["response_format"]}}
SERVER = {"max_request_bytes": 65536, "body_timeout": 30}  # the body timeout: far longer than any answer below may take
RULES = rules_yaml(MODELS, server=SERVER, default_channel="openai")
LOCAL = {"model": "local-image", "prompt": "a lighthouse", "size": "32x32"}
REMOTE = {"model": "dall-e-2", "prompt": "a lighthouse at dusk", "response_format": "b64_json"}
ROUTES = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations")
FORM_TYPE = "multipart/form-data; boundary=b"


async def proxy(make_proxy: Any, fake_openai: Any) -> Any:
    _, upstream = fake_openai
    return await make_proxy(RULES, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})


def head(path: str, length: int, *, expect: bool = False, content_type: str = "application/json", extra: str = "") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: proxy", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    if expect:
        lines.append("Expect: 100-continue")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer (status, headers, body by Content-Length), interim 1xx answers included."""
    status_line, *header_lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ")[1]), headers, body


def envelope(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- refused from the head -------------------------------------------------------------------------


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
@pytest.mark.parametrize("path", ROUTES)
async def test_a_declared_length_over_the_limit_is_413_before_any_body_byte(
    make_proxy: Any, fake_openai: Any, path: str, expect: bool
) -> None:
    client = await proxy(make_proxy, fake_openai)
    content_type = "application/json" if path.endswith("generations") else FORM_TYPE
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head(path, LIMIT + 1, expect=expect, content_type=content_type))
        await writer.drain()
        # No body byte is ever sent: the answer must not wait for it, nor for server.body_timeout (30 s).
        status, headers, body = await asyncio.wait_for(read_answer(reader), 5)
        assert status == 413  # and not `100 Continue` first
        assert headers["connection"] == "close"
        assert envelope(body) == {
            "message": f"The request body is larger than {LIMIT} bytes.",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
    finally:
        writer.close()
    assert fake_openai[0].recorder.received == []


async def test_a_small_body_with_expect_gets_100_continue_and_is_served(make_proxy: Any, fake_openai: Any) -> None:
    client = await proxy(make_proxy, fake_openai)
    body = json.dumps(LOCAL).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head("/v1/images/generations", len(body), expect=True))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        await writer.drain()
        status, _, answer = await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()
    assert status == 200, answer
    assert base64.b64decode(json.loads(answer)["data"][0]["b64_json"]).startswith(b"\x89PNG")


async def test_a_refused_key_is_answered_instead_of_100_continue(make_proxy: Any, fake_openai: Any) -> None:
    _, upstream = fake_openai
    rules = rules_yaml(MODELS, server={"api_keys": ["right-key"], **SERVER}, default_channel="openai")
    client = await make_proxy(rules, {"UPSTREAM": upstream, "OPENAI_API_KEY": KEY})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head("/v1/images/generations", 100, expect=True, extra="Authorization: Bearer wrong-key"))
        await writer.drain()
        status, _, body = await asyncio.wait_for(read_answer(reader), 5)
    finally:
        writer.close()
    assert (status, envelope(body)["code"]) == (401, "invalid_api_key")


# -- compressed bodies -----------------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return encoder.compress(data) + encoder.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # the zlib format, as RFC 9110 defines deflate
    "deflate (raw)": raw_deflate,  # what some clients send instead
}


async def in_pieces(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("name", list(ENCODERS))
async def test_a_compressed_generation_reaches_the_upstream_decoded(
    make_proxy: Any, fake_openai: Any, name: str, chunked: bool
) -> None:
    fake, _ = fake_openai
    client = await proxy(make_proxy, fake_openai)
    compressed = ENCODERS[name](json.dumps(REMOTE).encode())
    data: Any = in_pieces(compressed) if chunked else compressed
    headers = {"Content-Encoding": name.split(" ")[0], "Content-Type": "application/json"}
    response = await client.post("/v1/images/generations", data=data, headers=headers)
    answer = await response.json()
    assert response.status == 200, answer
    assert base64.b64decode(answer["data"][0]["b64_json"]) == PNG
    sent = fake.recorder.received[-1]
    assert sent.json() == {"model": "dall-e-2", "prompt": REMOTE["prompt"], "response_format": "b64_json", "n": 1}
    assert sent.header("Content-Encoding") is None


async def test_concatenated_gzip_members_are_one_body(make_proxy: Any, fake_openai: Any) -> None:
    fake, _ = fake_openai
    client = await proxy(make_proxy, fake_openai)
    text = json.dumps(REMOTE).encode()
    compressed = gzip.compress(text[:10]) + gzip.compress(text[10:])
    response = await client.post("/v1/images/generations", data=compressed, headers={"Content-Encoding": "gzip"})
    assert response.status == 200, await response.text()
    assert fake.recorder.received[-1].json()["prompt"] == REMOTE["prompt"]


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", json.dumps(LOCAL).encode()),  # not compressed at all
        ("deflate", json.dumps(LOCAL).encode()),
        ("gzip", gzip.compress(json.dumps(LOCAL).encode())[:-12]),  # cut short
        ("gzip", gzip.compress(json.dumps(LOCAL).encode())[:-4] + b"\x00\x00\x00\x00"),  # wrong length in the trailer
        ("deflate", zlib.compress(json.dumps(LOCAL).encode()) + b"trailing"),
        ("gzip", gzip.compress(json.dumps(LOCAL).encode()) + b"trailing"),  # not a second member
    ],
    ids=["gzip-plain", "deflate-plain", "gzip-truncated", "gzip-bad-trailer", "deflate-trailing", "gzip-trailing"],
)
async def test_a_body_that_is_not_what_its_encoding_says_is_400(
    make_proxy: Any, fake_openai: Any, coding: str, body: bytes
) -> None:
    client = await proxy(make_proxy, fake_openai)
    response = await client.post("/v1/images/generations", data=body, headers={"Content-Encoding": coding})
    assert response.status == 400
    assert envelope(await response.read()) == {
        "message": f"The request body is not valid {coding} data, as its Content-Encoding says it is.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_content_encoding",
    }


@pytest.mark.parametrize(
    ("coding", "named"),
    [("br", "br"), ("zstd", "zstd"), ("compress", "compress"), ("Snappy", "snappy"), ("identity, br", "br")],
)
async def test_an_unsupported_encoding_is_415_naming_what_is_accepted(
    make_proxy: Any, fake_openai: Any, coding: str, named: str
) -> None:
    client = await proxy(make_proxy, fake_openai)
    # The body is plain JSON: only the header is wrong, and a body the proxy cannot decode is not guessed at.
    response = await client.post("/v1/images/generations", data=json.dumps(LOCAL).encode(), headers={"Content-Encoding": coding})
    assert response.status == 415
    assert response.headers["Accept-Encoding"] == "gzip, deflate"
    error = envelope(await response.read())
    assert error["message"] == f"Content-Encoding '{named}' is not supported here (accepted: gzip, deflate)."
    assert error["code"] == "unsupported_content_encoding"


async def test_stacked_encodings_are_415(make_proxy: Any, fake_openai: Any) -> None:
    client = await proxy(make_proxy, fake_openai)
    body = gzip.compress(gzip.compress(json.dumps(LOCAL).encode()))
    response = await client.post("/v1/images/generations", data=body, headers={"Content-Encoding": "gzip, gzip"})
    assert response.status == 415
    message = envelope(await response.read())["message"]
    assert message == "Only one Content-Encoding is supported, got 2 (accepted: gzip, deflate)."


async def test_identity_is_no_encoding(make_proxy: Any, fake_openai: Any) -> None:
    client = await proxy(make_proxy, fake_openai)
    response = await client.post("/v1/images/generations", json=LOCAL, headers={"Content-Encoding": "identity"})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize("path", ROUTES[1:])
async def test_a_compressed_upload_is_415(make_proxy: Any, fake_openai: Any, path: str) -> None:
    client = await proxy(make_proxy, fake_openai)
    form = (
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n'
        b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\np\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        + PNG
        + b"\r\n--b--\r\n"
    )
    headers = {"Content-Encoding": "gzip", "Content-Type": FORM_TYPE}
    response = await client.post(path, data=gzip.compress(form), headers=headers)
    assert response.status == 415
    assert response.headers["Accept-Encoding"] == "identity"
    message = envelope(await response.read())["message"]
    assert message == "Content-Encoding 'gzip' is not supported here (send the body uncompressed)."
    assert fake_openai[0].recorder.received == []


async def test_a_compressed_body_is_limited_by_its_decoded_size(make_proxy: Any, fake_openai: Any) -> None:
    client = await proxy(make_proxy, fake_openai)
    body = json.dumps({**LOCAL, "prompt": "x" * (2 * LIMIT)}).encode()
    compressed = gzip.compress(body)
    assert len(compressed) < LIMIT // 10  # small on the wire: only its decoded size is over the limit
    for data in (compressed, in_pieces(compressed, 512)):
        response = await client.post("/v1/images/generations", data=data, headers={"Content-Encoding": "gzip"})
        assert response.status == 413
        assert envelope(await response.read())["code"] == "request_too_large"
    assert fake_openai[0].recorder.received == []


# -- pass-through ----------------------------------------------------------------------------------


async def test_pass_through_relays_the_compressed_body_with_its_encoding(make_proxy: Any, fake_openai: Any) -> None:
    fake, _ = fake_openai
    client = await proxy(make_proxy, fake_openai)
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "one two three"}]}
    compressed = gzip.compress(json.dumps(chat).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with client.post("/v1/chat/completions", data=compressed, headers=headers) as response:
        text = await response.text()
    assert response.status == 200, text
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in text.split("\n\n")[:3]] == ["one", "two", "three"]
    sent = fake.recorder.received[-1]
    # The fake decoded it itself: the bytes and their Content-Encoding and Content-Length travelled together.
    assert sent.json() == chat
    assert (sent.header("Content-Encoding"), sent.header("Content-Length")) == ("gzip", str(len(compressed)))


async def test_pass_through_bodies_are_not_held_to_the_image_limit(make_proxy: Any, fake_openai: Any) -> None:
    """The proxy streams pass-through bodies without holding them; the upstream applies its own limits."""
    fake, _ = fake_openai
    client = await proxy(make_proxy, fake_openai)
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "long " + "x" * (2 * LIMIT)}]}
    async with client.post("/v1/chat/completions", json=chat, headers={"Expect": "100-continue"}) as response:
        text = await response.text()
    assert response.status == 200, text
    assert len(fake.recorder.received[-1].body) > 2 * LIMIT


async def test_the_client_library_expect_path_works(make_proxy: Any, fake_openai: Any) -> None:
    """aiohttp's own client, told to wait for `100 Continue`, gets it and is served."""
    client = await proxy(make_proxy, fake_openai)
    async with aiohttp.ClientSession() as session:
        url = client.make_url("/v1/images/generations")
        async with session.post(url, json=LOCAL, expect100=True) as response:
            assert response.status == 200, await response.text()
