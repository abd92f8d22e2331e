"""Shell tests: a ProxyError an adapter raises in `start` or `advance` is answered exactly like the Fail it
stands for (ARCHITECTURE.md §5): the same status and code, failover to the next channel when it is retryable,
none when it is not."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.adapters.base import AdapterSpec, Call, Done, Fail, Job, Send, Step, UpstreamResponse
from proxy.core.errors import ChannelMisconfigured, InvalidRequest, ProxyError
from proxy.core.plan import build_plan
from proxy.core.request import parse_image_request
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema, Rules, parse_rules
from proxy.driver import Driver, generate

RULES = """
channels:
  failing: {type: failing, base_url: "${UPSTREAM}"}
  good: {type: good}
models:
  pair: {channels: [failing, good]}
  solo: {channels: [failing]}
"""
IMAGE = GeneratedImage(url="https://cdn.example.com/1.png")


def failing(where: str, how: str, error: ProxyError) -> AdapterSpec:
    """An adapter that fails in `start` or in `advance`, by raising `error` or by returning Fail(error)."""

    def fail() -> Step:
        if how == "raise":
            raise error
        return Fail(error)

    def start(job: Job) -> Step:
        return fail() if where == "start" else Send(Call("GET", f"{job.channel.base_url}/ok"))

    def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
        return fail()

    return AdapterSpec(name="failing", schema=ChannelSchema(), start=start, advance=advance)


GOOD = AdapterSpec(name="good", schema=ChannelSchema(requires_base_url=False, uses_key=False),
                   start=lambda job: Done(ImagesResult(images=(IMAGE,))))


async def ok(request: web.Request) -> web.Response:
    return web.json_response({})


async def run(aiohttp_server: Any, spec: AdapterSpec, model: str) -> tuple[str, int] | ProxyError:
    """(channel, attempts) of the answer, or the error the request is answered with."""
    upstream = web.Application()
    upstream.router.add_get("/ok", ok)
    server: TestServer = await aiohttp_server(upstream)
    rules: Rules = parse_rules(RULES, {"UPSTREAM": str(server.make_url("")).rstrip("/")},
                               {"failing": spec.schema, "good": GOOD.schema})
    plan = build_plan(parse_image_request({"model": model, "prompt": "p"}), rules.match_model(model))
    async with aiohttp.ClientSession() as session:
        driver = Driver(session=session, adapters={"failing": spec, "good": GOOD})
        try:
            outcome = await generate(driver, rules, plan, None)
        except ProxyError as error:
            return error
    return outcome.channel, outcome.attempts


@pytest.mark.parametrize("where", ["start", "advance"])
async def test_a_raised_error_is_answered_like_a_returned_fail(aiohttp_server: Any, where: str) -> None:
    def answers(how: str, error: ProxyError, model: str) -> Any:
        return run(aiohttp_server, failing(where, how, error), model)

    # Retryable (a misconfigured channel): the next channel serves the request, whichever way it failed.
    for how in ("raise", "return"):
        assert await answers(how, ChannelMisconfigured("failing", "no such model"), "pair") == ("good", 2)
    # With no other channel the error is the answer: 503 channel_misconfigured either way.
    raised = await answers("raise", ChannelMisconfigured("failing", "no such model"), "solo")
    returned = await answers("return", ChannelMisconfigured("failing", "no such model"), "solo")
    assert isinstance(raised, ProxyError) and isinstance(returned, ProxyError)
    assert (raised.status, raised.code, raised.message) == (returned.status, returned.code, returned.message)
    assert (raised.status, raised.code) == (503, "channel_misconfigured")
    # The client's mistake is not failed over: the 400 is the answer although another channel exists.
    for how in ("raise", "return"):
        error = await answers(how, InvalidRequest("bad size", param="size", code="invalid_value"), "pair")
        assert isinstance(error, InvalidRequest) and (error.status, error.param) == (400, "size")
