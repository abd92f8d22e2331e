"""Factories the test modules share, so no test file carries its own copy of them.

- jobs: `make_job` (a Job from a client body, with the rule, channel and plan knobs as keywords),
  `channel_job` (a Job as the shell hands it to an adapter) and `declared` (a channel's settings as the
  rules loader keeps them, defaults filled in);
- upstream answers: `answer` (an UpstreamResponse from a status and a JSON value or raw bytes);
- adapter steps: `started` / `advanced` (a step as the driver sees it: a raised ProxyError is the Fail it
  stands for), `start_call` / `start_send` (a job's first call), `send_parts`, `fail_error`,
  `advance_error` / `advance_error_from` (the error a step fails with, no secret in its message) and `envelope`;
- an adapter against a fake upstream: `round_trip` (one call, sent and advanced) and `drive` (the whole
  job on the real driver);
- rules: `rules_yaml` / `make_rules` (rules text or `Rules` from channel and model dicts), the usual
  channels `OPENAI` and `LOCAL`, and dall-e-3 as OpenAI takes it (`DALL_E_3` for rules_yaml, `DALLE3` as a
  ModelRule);
- the proxy under test: `start_proxy` (served as `python -m proxy` serves it), and in front of a fake
  upstream: `serve_fake`, `serve_fakes`, `proxy_with_fake`; `url_of` a started test server or client;
- clients: `CLIENT_KEY`, `auth`, and `poll_task` for `async: true` requests;
- processes: `ROOT`, `clean_env`, `run_cli`, `free_port`, `wait_listening` and `RedisServer`;
- multipart forms: `decode_form` (a strict decoder for proxy.core.multipart's output) and `form_values`.

The fixtures themselves live in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import sqlalchemy as sa
import yaml
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Application

from proxy.adapters import SCHEMAS
from proxy.adapters.base import AdapterSpec, Call, Fail, Job, Send, Step, UpstreamResponse
from proxy.core.channel_settings import parse_settings
from proxy.core.errors import ProxyError
from proxy.core.plan import GENERATE, Plan, build_plan, with_output_format
from proxy.core.request import parse_image_request
from proxy.core.rules import Channel, ModelRule, Rules, parse_rules
from proxy.database import GENERATIONS
from proxy.driver import Driver, run_job
from proxy.services import SERVICES
from proxy.serving import server_options

ROOT = Path(__file__).resolve().parents[1]

# --- clients ---------------------------------------------------------------------------------------------

CLIENT_KEY = "client-key-1"


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def poll_task(client: Any, task_id: str, headers: dict[str, str], until: str, limit: float = 10.0) -> Any:
    """GET an `async: true` task until its status is `until` (or `limit` seconds pass): (response, body)."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        response = await client.get(f"/v1/images/generations/{task_id}", headers=headers)
        body = await response.json()
        if body.get("task_status") == until or asyncio.get_running_loop().time() > deadline:
            return response, body
        await asyncio.sleep(0.02)


# --- jobs ------------------------------------------------------------------------------------------------


def channel_job(spec: AdapterSpec, plan: Plan, channel: Channel, api_key: str | None) -> Job:
    """A Job as the shell hands it to an adapter (proxy.input_images.plan_for): the plan carries
    `output_format` (and `output_compression`) only when the channel's provider makes the client's format
    itself; otherwise it carries the conversion the proxy owes."""
    job = Job(plan, channel, api_key)
    return replace(job, plan=with_output_format(plan, spec.native_formats(job)))


def declared(spec: AdapterSpec, written: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """`written` checked against the adapter's declaration, every default filled in; bad values fail the test."""
    values, problems = parse_settings(dict(written or {}), spec.schema.settings, spec.schema.relations)
    assert not problems, problems
    return MappingProxyType(values)


_SAME = object()  # `key` left out: the job uses the channel's api_key


def make_job(
    body: Mapping[str, Any],
    rule: ModelRule | None = None,
    *,
    spec: AdapterSpec | None = None,
    channel: Channel | str = "openai",
    channel_type: str | None = None,
    base_url: str = "",
    api_key: str | None = None,
    key: Any = _SAME,
    upstream: str | None = None,
    upstream_model: str | None = None,
    passthrough: Iterable[str] = (),
    max_n: int | None = None,
    sizes: tuple[str, ...] | None = None,
    settings: Mapping[str, Any] | None = None,
    operation: str = GENERATE,
    finished: bool = True,
) -> Job:
    """A Job for the client `body`.

    The rule is `rule`, or one for the body's model routed to the channel with `upstream` (or, by the
    rule's own name, `upstream_model`), `passthrough`, `max_n` and `sizes`. The channel is `channel` when
    it is a Channel, else one of that name and `channel_type` (default: the name) with `base_url`,
    `api_key` and `settings`. The job sends `key` (default: the channel's api_key). With `spec`, the plan
    is finished as the shell finishes it (`channel_job`) unless `finished` is false, and the channel's
settings are checked and completed as the adapter declares them (`declared`); without, it is
`build_plan`'s plan as is.
    """
    request = parse_image_request(body)
    if isinstance(channel, str):
        # With a spec, the settings are what the rules loader would keep: checked, defaults filled in.
        kept = declared(spec, settings) if spec is not None else MappingProxyType(dict(settings or {}))
        channel = Channel(name=channel, type=channel_type or channel, base_url=base_url, api_key=api_key, settings=kept)
    if rule is None:
        limits: dict[str, Any] = {} if max_n is None else {"max_n": max_n}
        rule = ModelRule(pattern=request.model, channels=(channel.name,), upstream_model=upstream or upstream_model, sizes=sizes,
                         passthrough=frozenset(passthrough), **limits)
    plan = build_plan(request, rule, operation)
    job_key = channel.api_key if key is _SAME else key
    if spec is not None and finished:
        return channel_job(spec, plan, channel, job_key)
    return Job(plan, channel, job_key)


# --- upstream answers ------------------------------------------------------------------------------------

def answer(
    status: int, body: Any, headers: Mapping[str, str] | None = None, *, content_type: str | None = None
) -> UpstreamResponse:
    """What an upstream answered: `body` as JSON, or as is when it is bytes. The headers are `headers`; when
    none are given, a Content-Type of `content_type` if one is, else none."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    default = {"content-type": content_type} if content_type else {}
    return UpstreamResponse(status=status, headers=dict(headers or default), body=raw)


# --- adapter steps ---------------------------------------------------------------------------------------


def send_parts(step: Step) -> tuple[Call, Any]:
    """The call and state of a step that must be a Send."""
    assert isinstance(step, Send), step
    return step.call, step.state


def started(spec: AdapterSpec, job: Job) -> Step:
    """The adapter's first step, a raised ProxyError taken as the Fail it stands for (as proxy.driver does)."""
    try:
        return spec.start(job)
    except ProxyError as error:
        return Fail(error)


def advanced(spec: AdapterSpec, job: Job, state: Any, response: UpstreamResponse) -> Step:
    """The adapter's next step for `response`, a raised ProxyError taken as a Fail (as proxy.driver does)."""
    try:
        return spec.advance(job, state, response)
    except ProxyError as error:
        return Fail(error)


def start_send(spec: AdapterSpec, job: Job) -> tuple[Call, Any]:
    """The call and state `spec` starts `job` with."""
    return send_parts(spec.start(job))


def start_call(spec: AdapterSpec, job: Job) -> Call:
    """The call `spec` starts `job` with."""
    return send_parts(spec.start(job))[0]


def fail_error(step: Step, secrets: Iterable[str] = ()) -> Any:
    """The error of a step that must be a Fail; none of `secrets` may appear in its message."""
    assert isinstance(step, Fail), step
    for secret in secrets:
        assert secret not in step.error.message
    return step.error


def advance_error_from(
    spec: AdapterSpec, job: Job, state: Any, response: UpstreamResponse, secrets: Iterable[str] = ()
) -> Any:
    """The error `spec` fails `job` with when `response` answers the call made in `state`."""
    return fail_error(advanced(spec, job, state, response), secrets)


def advance_error(spec: AdapterSpec, job: Job, response: UpstreamResponse, secrets: Iterable[str] = ()) -> Any:
    """The error `spec` fails `job` with when `response` answers its first call (made with no state)."""
    return advance_error_from(spec, job, None, response, secrets)


def envelope(error: ProxyError, retryable: bool = False) -> tuple[Any, ...]:
    """What a client sees of an error: status, type, param and code (and whether it is retried)."""
    seen = (error.status, error.type, error.param, error.code)
    return (*seen, error.retryable) if retryable else seen


# --- an adapter against a fake upstream -------------------------------------------------------------------


async def round_trip(client: TestClient, spec: AdapterSpec, job: Job) -> Step:  # type: ignore[type-arg]
    """Start `job`, send its call through the test `client` and advance with what came back."""
    step = started(spec, job)
    assert isinstance(step, Send), step
    call = step.call
    async with client.session.request(call.method, call.url, headers=dict(call.headers), json=call.json) as resp:
        response = UpstreamResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())
    return advanced(spec, job, step.state, response)


async def drive(spec: AdapterSpec, job: Job) -> Any:
    """The whole job on the real driver, in a session of its own: the result, or the ProxyError raised."""
    async with aiohttp.ClientSession() as session:
        return await run_job(Driver(session, {spec.name: spec}), spec, job)


# --- rules -----------------------------------------------------------------------------------------------

# The two channels most shell tests route to: a fake OpenAI at ${UPSTREAM} and the built-in local model.
OPENAI: dict[str, Any] = {"type": "openai", "base_url": "${UPSTREAM}/v1", "api_key": "${OPENAI_API_KEY}"}
LOCAL: dict[str, Any] = {"type": "local"}

# dall-e-3 as OpenAI takes it: one image a call, three sizes, two qualities (as a rule, and for rules_yaml).
DALL_E_3: dict[str, Any] = {
    "channels": ["openai"],
    "defaults": {"quality": "standard", "response_format": "url"},
    "sizes": ["1024x1024", "1792x1024", "1024x1792"],
    "values": {"quality": ["standard", "hd"]},
    "max_n": 1,
    "passthrough": ["response_format", "style", "user"],
}
DALLE3 = ModelRule(
    pattern="dall-e-3",
    channels=("openai",),
    defaults=MappingProxyType({"quality": "standard", "response_format": "url"}),
    sizes=("1024x1024", "1792x1024", "1024x1792"),
    max_n=1,
    passthrough=frozenset({"response_format", "style", "user"}),
    values=MappingProxyType({"quality": ("standard", "hd")}),
)


def rules_yaml(
    models: Mapping[str, Mapping[str, Any]],
    channels: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    default_channel: str | None = None,
) -> str:
    """Rules text: `server`, `default_channel`, `channels` (default: openai and local) and `models`."""
    document: dict[str, Any] = {}
    if server is not None:
        document["server"] = dict(server)
    if default_channel is not None:
        document["default_channel"] = default_channel
    document["channels"] = {name: dict(value) for name, value in (channels or {"openai": OPENAI, "local": LOCAL}).items()}
    document["models"] = {name: dict(value) for name, value in models.items()}
    return yaml.safe_dump(document, sort_keys=False)


def make_rules(
    models: Mapping[str, Mapping[str, Any]],
    channels: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    server: Mapping[str, Any] | None = None,
    default_channel: str | None = None,
) -> Rules:
    """`Rules` parsed from `rules_yaml(...)` with the real adapters' schemas."""
    text = rules_yaml(models, channels, server=server, default_channel=default_channel)
    return parse_rules(text, dict(env or {}), SCHEMAS)


# --- the proxy in front of a fake upstream ---------------------------------------------------------------

ProxyFactory = Callable[..., Awaitable[TestClient]]  # type: ignore[type-arg]


async def start_proxy(app: Application, rules: Rules) -> TestServer:
    """A started TestServer for `app` with the CLI's server options (aiohttp_client's `server_kwargs` are not
    passed on to the server, so the options are given to `start_server` here)."""
    server = TestServer(app)
    options = server_options(rules)
    del options["handler_cancellation"]  # TestServer always sets it, to True as the CLI does
    await server.start_server(**options)
    return server


def url_of(server: TestServer | TestClient, path: str = "") -> str:  # type: ignore[type-arg]
    """The started test server's (or client's) URL for `path`, without a trailing slash."""
    return str(server.make_url(path)).rstrip("/")


async def serve_fake(aiohttp_server: Callable[[Application], Awaitable[TestServer]], fake: Any) -> str:
    """Start a fake from tests/fakes; its base URL without the trailing slash."""
    return url_of(await aiohttp_server(fake.app()))


async def serve_fakes(aiohttp_server: Callable[[Application], Awaitable[TestServer]], fakes: Mapping[str, Any]) -> dict[str, str]:
    """Start each fake; their base URLs by the same names."""
    return {name: await serve_fake(aiohttp_server, fake) for name, fake in fakes.items()}


async def proxy_with_fake(
    make_proxy: ProxyFactory,
    aiohttp_server: Callable[[Application], Awaitable[TestServer]],
    fake: Any,
    rules: str,
    **env: str,
) -> TestClient:  # type: ignore[type-arg]
    """A client for the proxy on `rules`, with ${UPSTREAM} the started `fake` and ${OPENAI_API_KEY} its key
    (a fake with a `key`, as FakeOpenAI); `env` adds to or overrides them."""
    upstream = await serve_fake(aiohttp_server, fake)
    keys = {"OPENAI_API_KEY": fake.key} if hasattr(fake, "key") else {}
    return await make_proxy(rules, {"UPSTREAM": upstream, **keys, **env})


async def ledger_rows(client: TestClient) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    """Every record the client's proxy has written to its ledger, oldest first (its queue written out first)."""
    ledger = client.server.app[SERVICES].ledger
    await ledger.write_queued()
    async with ledger.engine.connect() as connection:
        result = await connection.execute(sa.select(GENERATIONS).order_by(GENERATIONS.c.id))
        return [dict(row) for row in result.mappings()]


# --- processes -------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh machine: no provider keys, no PROXY_* settings."""
    env = {
        key: value for key, value in os.environ.items() if not key.endswith(("_API_KEY", "_KEY")) and not key.startswith("PROXY_")
    }
    return {**env, **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ARGS` from the repository root (default environment: `clean_env()`)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=60
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_text(log: Path | None, otherwise: str) -> str:
    return log.read_text() if log is not None else otherwise


async def wait_listening(
    port: int, process: asyncio.subprocess.Process | None = None, log: Path | None = None, *, tries: int = 300,
    pause: float = 0.05,
) -> None:
    """Return once 127.0.0.1:`port` accepts a connection. AssertionError (with the `log`'s text, if given)
    when `process` exits first or after `tries` attempts `pause` seconds apart."""
    for _ in range(tries):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if process is not None and process.returncode is not None:
                raise AssertionError(_log_text(log, "the proxy exited")) from None
            await asyncio.sleep(pause)
    raise AssertionError(_log_text(log, "the proxy did not start"))


class RedisServer:
    """A real redis-server on loopback for one test; `stop` and `start` simulate an outage."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    """A throwaway PostgreSQL cluster on loopback (Debian's postgresql 15), run as the `postgres` user from a
    temporary directory; `database()` makes a fresh database for one test."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.data = directory / "data"

    def _run(self, *command: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._run(str(POSTGRES_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-k {self.directory} -h 127.0.0.1 -p {self.port} -c fsync=off -c full_page_writes=off"
        log = str(self.directory / "log")
        self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-o", options, "start")

    def stop(self) -> None:
        self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:not-a-secret@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"ledger_{uuid.uuid4().hex[:12]}"
        self._run(str(POSTGRES_BIN / "psql"), "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
                  "-q", "-c", f"CREATE DATABASE {name}")
        return self.url(name)


# --- multipart forms -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def decode_form(body: bytes, content_type: str) -> list[Field]:
    """A strict decoder for the encoder's output: exact bytes, CRLF everywhere, one final delimiter."""
    match = re.fullmatch(r"multipart/form-data; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", content_type)
    assert match is not None, content_type
    delimiter = b"--" + match.group(1).encode("ascii")
    closing = delimiter + b"--\r\n"
    assert body.startswith(delimiter + b"\r\n") and body.endswith(closing)
    fields = []
    for segment in body[: -len(closing)].split(delimiter + b"\r\n")[1:]:
        assert segment.endswith(b"\r\n")
        head, separator, data = segment[:-2].partition(b"\r\n\r\n")
        assert separator, segment[:200]
        headers = dict(line.split(": ", 1) for line in head.decode("utf-8").split("\r\n"))
        disposition = headers["Content-Disposition"]
        name = re.search(r'; name="([^"]*)"', disposition)
        filename = re.search(r'; filename="([^"]*)"', disposition)
        assert disposition.startswith("form-data; ") and name is not None
        fields.append(Field(name.group(1), filename.group(1) if filename else None, headers.get("Content-Type"), data))
    return fields


def form_values(fields: list[Field]) -> list[tuple[str, str]]:
    """The text fields as (name, value), in order."""
    return [(field.name, field.data.decode("utf-8")) for field in fields if field.filename is None]
