"""Shell-test fixtures: the proxy under `aiohttp_client`, built from rules text, against fake upstreams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.rules import parse_rules
from proxy.store import FileImageStore
from tests.fakes.openai import KEY, FakeOpenAI

CLIENT_KEY = "client-key-1"

ProxyFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_proxy(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path) -> ProxyFactory:
    """`await make_proxy(rules_text, env)`: a client for a proxy whose image store lives in tmp_path."""

    async def build(text: str, env: Mapping[str, str] | None = None, *, cancel_on_disconnect: bool = False) -> TestClient:
        rules = parse_rules(text, dict(env or {}), SCHEMAS)
        store = FileImageStore(tmp_path / "images", rules.server.images.ttl)
        # As `python -m proxy` serves: a client that disconnects cancels its handler.
        server_kwargs = {"handler_cancellation": True} if cancel_on_disconnect else None
        return await aiohttp_client(make_app(rules, store=store), server_kwargs=server_kwargs)

    return build


@pytest.fixture
async def fake_openai(aiohttp_server: Callable[[Application], Awaitable[TestServer]]) -> tuple[FakeOpenAI, str]:
    fake = FakeOpenAI()
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


__all__ = ["CLIENT_KEY", "KEY", "auth"]
