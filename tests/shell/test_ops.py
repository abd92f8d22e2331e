"""Operations: health, readiness, metrics, request ids and access lines, reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.ops import on_shutdown
from tests.factories import free_port, proxy_with_fake, rules_yaml, serve_fake, wait_listening
from tests.fakes.openai import KEY, FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"gpt-image-*": {"channels": ["openai"]}, "local-image": {"channels": ["local"]}}
SERVER = {"api_keys": ["client-key-1"], "shutdown_grace": 20}
RULES = rules_yaml(MODELS, server=SERVER)
AUTH = {"Authorization": "Bearer client-key-1"}


async def test_health_and_readiness_need_no_key(make_proxy: Any, aiohttp_server: Any) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    health = await client.get("/healthz")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["status"] == "ready"
    assert body["channels"] == {"openai": "ready", "local": "ready"}
    await on_shutdown(client.server.app)
    draining = await client.get("/readyz")
    assert draining.status == 503 and (await draining.json())["status"] == "draining"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in the text format."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(part.split("=", 1) for part in line[line.find("{") + 1 : line.find("}")].split(",") if "=" in part)
            if all(found.get(key) == f'"{value}"' for key, value in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_with_requests(make_proxy: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    fake.failures.append((500, {"error": {"message": "boom"}}, {}))
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    for _ in range(2):
        await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p"}, headers=AUTH)
    await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": ""}, headers=AUTH)
    hosted = await client.post(
        "/v1/images/generations",
        json={"model": "local-image", "prompt": "p", "size": "8x8", "response_format": "url"},
        headers=AUTH,
    )
    url = (await hosted.json())["data"][0]["url"]
    image = await (await client.get(url[url.index("/images/") :])).read()
    text = await (await client.get("/metrics")).text()
    route = "/v1/images/generations"
    assert sample(text, "imagegate_requests_total", route=route, model="gpt-image-*", status="200") == 1
    assert sample(text, "imagegate_requests_total", route=route, model="gpt-image-*", status="502") == 1
    assert sample(text, "imagegate_requests_total", route=route, status="400") == 1
    assert sample(text, "imagegate_errors_total", type="invalid_request_error", status="400") == 1
    assert sample(text, "imagegate_errors_total", type="upstream_error", status="502") == 1
    assert sample(text, "imagegate_upstream_seconds_count", channel="openai") == 2
    assert sample(text, "imagegate_attempts_total", model="gpt-image-*") == 2
    assert sample(text, "imagegate_image_bytes_served_total") == len(image)
    assert KEY not in text and "client-key-1" not in text


async def test_metrics_are_guarded_by_their_own_token(make_proxy: Any, aiohttp_server: Any) -> None:
    text = rules_yaml(MODELS, server={**SERVER, "metrics": {"token": "scrape-me"}})
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), text)
    assert (await client.get("/metrics")).status == 403
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 403
    assert (await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})).status == 200


async def test_metrics_without_a_token_answer_loopback_but_not_what_a_reverse_proxy_forwards(
    make_proxy: Any, aiohttp_server: Any
) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    assert (await client.get("/metrics")).status == 200  # the test client is on loopback
    for forwarded in ({"X-Forwarded-For": "203.0.113.7"}, {"X-Real-IP": "203.0.113.7"}, {"Forwarded": "for=203.0.113.7"}):
        refused = await client.get("/metrics", headers=forwarded)
        assert refused.status == 403 and (await refused.json())["error"]["code"] == "metrics_forbidden"


async def test_a_request_id_travels_client_log_upstream_response(
    make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOpenAI()
    client = await proxy_with_fake(make_proxy, aiohttp_server, fake, RULES)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        response = await client.post(
            "/v1/images/generations",
            json={"model": "gpt-image-1.5", "prompt": "secret prompt"},
            headers={**AUTH, "X-Request-ID": "req-42"},
        )
        generated = await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p"}, headers=AUTH)
    assert response.headers["X-Request-ID"] == "req-42"
    assert fake.recorder.received[0].header("X-Request-ID") == "req-42"
    new_id = generated.headers["X-Request-ID"]
    assert len(new_id) == 32 and fake.recorder.received[1].header("X-Request-ID") == new_id
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "imagegate.access"]
    first = next(line for line in lines if line["request_id"] == "req-42")
    assert first["status"] == 200 and first["model"] == "gpt-image-1.5" and first["channel"] == "openai"
    assert first["attempts"] == 1 and first["upstream_calls"] == 1 and first["total_ms"] >= first["upstream_ms"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "secret prompt" not in logged and KEY not in logged and "client-key-1" not in logged


async def test_a_refused_request_names_its_model_in_the_access_line(
    make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        bad_size = await client.post("/v1/images/generations", headers=AUTH,
                                     json={"model": "local-image", "prompt": "p", "size": "huge"})
        no_prompt = await client.post("/v1/images/generations", headers=AUTH, json={"model": "gpt-image-1.5"})
    assert (bad_size.status, no_prompt.status) == (400, 400)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "imagegate.access"]
    assert [(line["status"], line.get("model"), line.get("error_code")) for line in lines] == [
        (400, "local-image", (await bad_size.json())["error"]["code"]),
        (400, "gpt-image-1.5", (await no_prompt.json())["error"]["code"]),
    ]


async def test_prompts_are_logged_only_when_the_rules_opt_in(
    make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    text = rules_yaml(MODELS, server={**SERVER, "log_prompts": True})
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), text)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        await client.post("/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "a heron"}, headers=AUTH)
    assert any(json.loads(r.getMessage()).get("prompt") == "a heron" for r in caplog.records if r.name == "imagegate.access")


# -- the process: reload and shutdown, driven by real signals ---------------------------------------


class Served:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def serve(tmp_path: Path, upstream: str, text: str) -> Served:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    port, log = free_port(), tmp_path / "proxy.log"
    env = {**os.environ, "UPSTREAM": upstream, "OPENAI_API_KEY": KEY}
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "--rules", str(rules), "--port", str(port), cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
    await wait_listening(port, process, log, pause=0.1)
    return Served(process, port, log)


async def generate(session: aiohttp.ClientSession, served: Served, model: str) -> int:
    async with session.post(served.url("/v1/images/generations"), json={"model": model, "prompt": "p"}, headers=AUTH) as response:
        await response.read()
        return response.status


async def test_sighup_reloads_valid_rules_and_keeps_them_on_invalid_ones(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeOpenAI(delay=1.0)
    upstream = await serve_fake(aiohttp_server, fake)
    served = await serve(tmp_path, upstream, RULES)
    try:
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(generate(session, served, "gpt-image-1.5"))
            await asyncio.sleep(0.3)  # the slow request is in flight
            renamed = {"gpt-image-*": MODELS["gpt-image-*"], "renamed-local": MODELS["local-image"]}
            (tmp_path / "rules.yaml").write_text(rules_yaml(renamed, server=SERVER))
            served.process.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await generate(session, served, "renamed-local") == 200
            assert await generate(session, served, "local-image") == 404
            for broken in (b"models: [broken\n", b"models: {}  # caf\xe9\n"):  # not YAML; not UTF-8
                (tmp_path / "rules.yaml").write_bytes(broken)
                served.process.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.5)
                assert await generate(session, served, "renamed-local") == 200  # the invalid file changed nothing
            assert await slow == 200
    finally:
        served.process.terminate()
        await served.process.wait()
    log = served.log.read_text()
    assert "reloaded" in log and "reload of" in log and "rejected" in log
    assert "codec can't decode byte 0xe9" in log and "Traceback" not in log


async def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(aiohttp_server: Any, tmp_path: Path) -> None:
    fake = FakeOpenAI(delay=1.5)
    upstream = await serve_fake(aiohttp_server, fake)
    served = await serve(tmp_path, upstream, RULES)
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(generate(session, served, "gpt-image-1.5"))
        await asyncio.sleep(0.4)
        served.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await generate(fresh, served, "local-image")
        assert await slow == 200
    assert await asyncio.wait_for(served.process.wait(), timeout=10) == 0


async def test_hosted_image_names_are_not_logged(make_proxy: Any, aiohttp_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await proxy_with_fake(make_proxy, aiohttp_server, FakeOpenAI(), RULES)
    with caplog.at_level(logging.INFO, logger="imagegate.access"):
        body = await (
            await client.post(
                "/v1/images/generations", json={"model": "gpt-image-1.5", "prompt": "p", "response_format": "url"}, headers=AUTH
            )
        ).json()
        url = body["data"][0]["url"]
        name = url.rsplit("/", 1)[1]
        assert (await client.get(url[url.index("/images/") :])).status == 200
    assert name not in caplog.text and "/images/{name}" in caplog.text
