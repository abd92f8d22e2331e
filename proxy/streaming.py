"""Shell layer: `stream: true`. Server-Sent Events to the client, native or emulated, never buffered.

Channels that stream natively (OpenAI-type, Seedream) are relayed event by event as the upstream sends
them; each event passes through the adapter's mapper, and a final image is hosted when the client asked
for `url` (an extension the stream format allows), converted first when the channel cannot make the
client's `output_format` (Seedream before version 5 writes only JPEG). A channel that draws its images
here (the local generator) streams natively too: its adapter's generator yields previews, relayed as
`partial_image` events while the next one is drawn off the event loop, then the completed images.
Other channels stream by emulation: keep-alive comments while the work runs, so idle-timeout
intermediaries (CDNs, load balancers) keep the connection, then one `<kind>.completed` event per image.

The response is committed (status 200 sent) as late as possible: a failure before the first event is
still an ordinary error response with its real status. After that, a failure is an `error` event and
the stream ends. A client that goes away ends the handler, which closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from proxy.adapters.base import AdapterSpec, Drawn, Fail, Job, Partial, Send, UpstreamResponse
from proxy.core.errors import BadGateway, GatewayTimeout, ProxyError, UpstreamError
from proxy.core.mime import sniff_image_type
from proxy.core.plan import EDIT, Plan
from proxy.core.pricing import Delivered, priced
from proxy.core.response import Base64, GeneratedImage, ImagesResult, b64_text
from proxy.core.rules import Rules, iter_usable
from proxy.core.sse import (
    KEEPALIVE,
    Event,
    SSEParser,
    completed_event,
    error_payload,
    format_json_event,
    partial_image_event,
)
from proxy.core.translate import revised_prompt
from proxy.cpu import off_loop
from proxy.driver import Driver, add_usage, generate
from proxy.finish import Delivery, Finisher, convert, measured_size
from proxy.observe import note
from proxy.production import Caller, Served, count_usage, finish_result, produce
from proxy.services import Services
from proxy.upstream import MAX_ANSWER_BYTES, form_data, read_capped, transport_errors, with_request_id

KEEPALIVE_EVERY = 5.0
_CHUNK = 64 * 1024


@dataclass
class Sink:
    """The client's side of the stream, opened on the first thing worth sending."""

    request: web.Request
    response: web.StreamResponse | None = None
    completed: int = 0  # final images sent: what the client got (and is charged for)
    usage: dict[str, Any] | None = None  # the tokens the completed events reported, summed
    channel: str = ""  # the channel whose stream is relayed
    cost: Decimal | None = None  # what the delivered images cost at the model's price
    delivered: list[Delivered] = field(default_factory=list)  # the final images, as priced

    @property
    def started(self) -> bool:
        return self.response is not None

    async def _open(self) -> web.StreamResponse:
        if self.response is None:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
            await response.prepare(self.request)
            self.response = response
        return self.response

    async def send(self, payload: dict[str, Any]) -> None:
        await (await self._open()).write(format_json_event(payload, event=str(payload.get("type"))))
        if payload.get("type") == "error":
            note_stream_error(payload)  # the status was 200: the access line and the ledger say how the stream ended
        if str(payload.get("type", "")).endswith(".completed"):
            self.completed += 1
            self.delivered.append(priced(payload.get("size"), payload.get("quality")))
            if isinstance(payload.get("usage"), Mapping):
                self.usage = add_usage(self.usage or {}, payload["usage"])

    async def keepalive(self) -> None:
        await (await self._open()).write(KEEPALIVE)

    async def close(self) -> web.StreamResponse:
        response = await self._open()
        await response.write_eof()
        return response


def event_kind(plan: Plan) -> str:
    return "image_edit" if plan.operation == EDIT else "image_generation"


def renamed(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    """Events carry the client's endpoint in their type: `/edits` streams `image_edit.*`."""
    kind_of_event = payload.get("type")
    if isinstance(kind_of_event, str) and kind_of_event.startswith("image_generation.") and kind == "image_edit":
        return {**payload, "type": "image_edit." + kind_of_event.split(".", 1)[1]}
    return payload


async def finish_payload(payload: dict[str, Any], finisher: Finisher, delivery: Delivery) -> dict[str, Any]:
    """A final image in the client's format; partial images stay base64 previews."""
    if not str(payload.get("type", "")).endswith(".completed"):
        return payload
    image = GeneratedImage(b64_json=payload.get("b64_json"), url=payload.get("url"))
    if image.b64_json is None and image.url is None:
        return payload
    converted = await convert(finisher, image, delivery)
    out = {key: value for key, value in payload.items() if key not in ("b64_json", "url")}
    if (delivery.response_format in (None, "b64_json") or converted.unhosted is not None) and converted.b64_json is not None:
        out["b64_json"] = b64_text(converted.b64_json)  # an image the store could not take still reaches the client
    if delivery.response_format in (None, "url") and converted.url is not None:
        out["url"] = converted.url
    if delivery.conversion is not None and converted.unconverted is None:
        out["output_format"] = delivery.conversion.to  # the final image was converted to what the client asked
    if converted.unhosted is not None:
        given = payload.get("metadata")
        out["metadata"] = {**(given if isinstance(given, dict) else {}), "not_hosted": {"count": 1, "reason": converted.unhosted}}
    return out


def with_revised_prompt(payload: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A completed event with the revised_prompt a sync answer would have given its image."""
    given = payload.get("revised_prompt")
    if not str(payload.get("type", "")).endswith(".completed") or not (given is None or isinstance(given, str)):
        return payload
    wanted = revised_prompt(given, plan.client_prompt, plan.rule.translation)
    return payload if wanted == given else {**payload, "revised_prompt": wanted}


def _request(driver: Driver, job: Job, step: Send) -> Any:
    call = step.call
    body: dict[str, Any] = {"json": call.json} if call.json is not None else {"data": form_data(call.form or ())}
    # An idle-read timeout: a stream may run for minutes but must keep sending.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=job.channel.timeout)
    return driver.session.request(
        call.method, call.url, headers=with_request_id(call.headers), allow_redirects=False, timeout=timeout, **body
    )


async def _refusal(spec: AdapterSpec, job: Job, upstream: aiohttp.ClientResponse) -> ProxyError:
    """The error for an upstream that answered the stream request with something other than a stream."""
    body = await read_capped(upstream.content, MAX_ANSWER_BYTES, f"the answer of channel '{job.channel.name}'")
    answer = UpstreamResponse(upstream.status, {name.lower(): value for name, value in upstream.headers.items()}, body)
    outcome = spec.advance(job, None, answer)
    if isinstance(outcome, Fail):
        return outcome.error
    return BadGateway(f"channel '{job.channel.name}' answered a stream request without a stream", code="bad_upstream_response")


async def relay_native(
    sink: Sink, driver: Driver, finisher: Finisher, delivery: Delivery, spec: AdapterSpec, job: Job, kind: str
) -> None:
    """Relay one upstream stream event by event; transport failures are the upstream's, never the client's."""
    assert spec.stream_call is not None and spec.stream_events is not None
    step = spec.stream_call(job)
    if isinstance(step, Fail):
        raise step.error
    assert isinstance(step, Send)
    channel, seconds = job.channel.name, job.channel.timeout
    here = replace(delivery.from_channel(job.channel, driver.download), conversion=job.plan.conversion)
    async with contextlib.AsyncExitStack() as stack:
        async with transport_errors(channel, seconds):
            upstream = await stack.enter_async_context(_request(driver, job, step))
            if upstream.status != 200 or upstream.content_type != "text/event-stream":
                raise await _refusal(spec, job, upstream)
        parser = SSEParser()
        chunks = upstream.content.iter_any().__aiter__()
        # A failed image among several (Seedream's partial_failed) is held back to the end: clients stop
        # reading at an error event, and the images still to come were paid for too.
        held: list[dict[str, Any]] = []
        finish = functools.partial(_finish_event, kind=kind, finisher=finisher, delivery=here)
        while True:
            async with transport_errors(channel, seconds):
                chunk = await anext(chunks, None)
            if chunk is None:
                break
            try:
                events = parser.feed(chunk)
            except ValueError:
                raise BadGateway(
                    f"channel '{channel}' streamed an event over the size limit", code="upstream_too_large"
                ) from None
            for event in events:
                if await _relay_event(sink, spec, job, event, finish, held):
                    return
        if parser.pending:
            raise BadGateway(f"channel '{channel}' ended its stream mid-event", code="upstream_stream_cut")
        if held:
            await sink.send(held[0])
        elif sink.completed == 0:
            raise BadGateway(f"channel '{channel}' ended its stream without a final image", code="upstream_stream_cut")


async def _finish_event(payload: dict[str, Any], *, kind: str, finisher: Finisher, delivery: Delivery) -> dict[str, Any]:
    return await finish_payload(renamed(payload, kind), finisher, delivery)


async def _relay_event(
    sink: Sink, spec: AdapterSpec, job: Job, event: Event,
    finish: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], held: list[dict[str, Any]],
) -> bool:
    """Count the usage one upstream event reports, and send what it maps to; True once an error event ended
    the stream. A failed image among several is `held` for the end."""
    assert spec.stream_events is not None
    if spec.stream_usage is not None and (usage := spec.stream_usage(event)) is not None:
        sink.usage = add_usage(sink.usage or {}, usage)
    for payload in spec.stream_events(job, event):
        if payload.get("type") == "error" and "image_index" in payload:
            held.append(payload)
            continue
        if payload.get("type") == "error" and not sink.started:
            # Nothing sent yet: a real error status, and the next channel may still serve it.
            raise error_from_event(job.channel.name, payload)
        await sink.send(with_revised_prompt(await finish(payload), job.plan))
        if payload.get("type") == "error":
            return True
    return False


def note_stream_error(payload: Mapping[str, Any]) -> None:
    """The error event that ended a relayed stream, for the access line and the ledger (the status was 200)."""
    found = payload.get("error")
    error: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    note(error_type=str(error.get("type") or "upstream_error"), error_code=str(error.get("code") or "upstream_error"))


def error_from_event(channel: str, payload: dict[str, Any]) -> ProxyError:
    """An upstream's stream error event, as the error it would have been without a stream."""
    found = payload.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    message = str(error.get("message") or "the upstream stream failed")
    kind = error.get("type")
    if kind in ("invalid_request_error", "image_generation_user_error"):
        return UpstreamError(message, status=400, type=str(kind), param=error.get("param"), code=error.get("code"))
    return BadGateway(f"channel '{channel}' failed: {message}", code=str(error.get("code") or "upstream_error"), retryable=True)


# What an emulated completed event says when neither the provider nor the client said otherwise.
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
_BACKGROUNDS = frozenset({"transparent", "opaque", "auto"})


def zero_usage() -> dict[str, Any]:
    return {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
            "total_tokens": 0}


def sniff_b64(b64: Base64) -> str | None:
    """The image type the first bytes of a base64 image show (every signature fits in 24 bytes)."""
    try:
        return sniff_image_type(base64.b64decode(b64[:32]))
    except (binascii.Error, ValueError):
        return None


def output_format(result: ImagesResult, image: GeneratedImage) -> str:
    """The format the provider reported, else the one the image's bytes (or hosted type) show."""
    if isinstance(result.extra.get("output_format"), str):
        return str(result.extra["output_format"])
    content_type = image.content_type or (sniff_b64(image.b64_json) if image.b64_json else None)
    return _FORMATS.get(content_type or "", "png")


def event_fields(result: ImagesResult, image: GeneratedImage, plan: Plan) -> dict[str, str]:
    """The size, quality, background and output format an image event reports."""
    size = result.extra.get("size") or measured_size(result.images) or plan.fields.get("size") or "auto"
    asked_background = plan.fields.get("background")
    background = result.extra.get("background") or (asked_background if asked_background in _BACKGROUNDS else "auto")
    return {
        "size": str(size),
        "quality": str(result.extra.get("quality") or plan.fields.get("quality") or "auto"),
        "background": str(background),
        "output_format": output_format(result, image),
    }


def completed_payloads(result: ImagesResult, kind: str, plan: Plan, now: int) -> list[dict[str, Any]]:
    """One `<kind>.completed` event per image, with every field OpenAI's event declares, built from the
    same delivered result a sync answer renders. The request's usage rides on the last event (zeros on
    the others; token counts a provider does not report are zeros beside what it does report, such as
    Kling's units), so events add up to the request."""
    payloads = []
    for index, image in enumerate(result.images):
        last = index == len(result.images) - 1
        payload = completed_event(
            kind=kind,
            b64_json=None if image.b64_json is None else b64_text(image.b64_json),
            url=image.url,
            created_at=result.created or now,
            usage={**zero_usage(), **(result.usage or {})} if last else zero_usage(),
            **event_fields(result, image, plan),
        )
        if image.revised_prompt is not None:
            payload["revised_prompt"] = image.revised_prompt
        payloads.append(payload)
    return payloads


def partial_payload(partial: Partial, kind: str, plan: Plan, now: int) -> dict[str, Any]:
    """A preview as OpenAI's `<kind>.partial_image` event, its fields those the final image will have."""
    assert partial.image.b64_json is not None
    sample = ImagesResult(images=(partial.image,), extra=partial.extra)
    return partial_image_event(kind=kind, b64_json=b64_text(partial.image.b64_json), partial_image_index=partial.index,
                               created_at=now, **event_fields(sample, partial.image, plan))


async def _next_drawn(spec: AdapterSpec, steps: Iterator[Drawn], deadline: float, channel: str) -> Drawn | None:
    """The generator's next step, computed off the event loop when the work is CPU-bound, by the deadline."""
    try:
        async with asyncio.timeout_at(deadline):
            if spec.cpu_bound:
                return await off_loop(next, steps, None)
            return next(steps, None)
    except TimeoutError:
        raise GatewayTimeout(f"channel '{channel}' did not finish in time", code="upstream_deadline") from None


async def relay_drawn(sink: Sink, services: Services, delivery: Delivery, plan: Plan, spec: AdapterSpec, job: Job,
                      kind: str) -> None:
    """A channel that makes its images itself (the local generator): each preview as soon as it exists,
    then the completed events, delivered like a sync answer (hosting, revised prompts)."""
    assert spec.stream_steps is not None
    steps = spec.stream_steps(job)
    deadline = asyncio.get_running_loop().time() + job.channel.deadline
    while True:
        step = await _next_drawn(spec, steps, deadline, job.channel.name)
        if isinstance(step, Partial):
            await sink.send(partial_payload(step, kind, plan, int(time.time())))
            continue
        if isinstance(step, Fail):
            raise step.error
        if step is None:
            raise BadGateway(f"channel '{job.channel.name}' ended without images", code="upstream_stream_cut")
        break
    # The images that could not be delivered (a failed conversion) are lost either way: the stream sends the rest.
    result, _ = await finish_result(services, plan, job.channel, job.plan.conversion, step.result, delivery)
    for payload in completed_payloads(result, kind, plan, int(time.time())):
        await sink.send(payload)


async def emulate(sink: Sink, work: Callable[[], Awaitable[ImagesResult]], kind: str, plan: Plan) -> None:
    """Keep the connection alive while a non-streaming channel works, then send its images."""
    keepalive_every = KEEPALIVE_EVERY  # read at call time, so an operator (or a test) can tune it
    task = asyncio.ensure_future(work())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=keepalive_every)
            if done:
                break
            await sink.keepalive()
        for payload in completed_payloads(task.result(), kind, plan, int(time.time())):
            await sink.send(payload)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProxyError):
                await task


def streams_natively(rules: Rules, plan: Plan, driver: Driver) -> bool:
    """Whether the model's first channel has a native stream (then its failover list is the native ones)."""
    first = next(iter_usable(rules, plan.rule), None)
    return first is not None and streams(driver.adapters[first.type])


def streams(spec: AdapterSpec) -> bool:
    """Whether the channel streams natively: over the upstream's own stream, or by drawing it here."""
    return spec.streams_natively


async def stream(
    sink: Sink, services: Services, plan: Plan, client_key: str | None, delivery: Delivery
) -> web.StreamResponse:
    """The stream's response. What it delivered and what that cost are the sink's (`completed`, `cost`),
    also when it ends in an exception (the client left): the caller settles the key's budget from them."""
    kind = event_kind(plan)

    async def work() -> ImagesResult:
        # The production path of a sync request: same failover, delivery, revised prompts and usage.
        produced = await produce(services, plan, Caller(client_key), delivery)
        sink.cost = produced.cost
        return produced.result

    try:
        if streams_natively(services.rules, plan, services.driver):
            try:
                await _native_with_failover(sink, services, delivery, plan, client_key, kind)
            finally:
                # What reached the client is counted, also when the stream then failed or the client left.
                served = Served(plan.rule.pattern, sink.channel, sink.delivered)
                sink.cost = count_usage(services, Caller(client_key), served, sink.usage, plan.rule.price)
        else:
            await emulate(sink, work, kind, plan)
    except ProxyError as error:
        if not sink.started:
            raise
        await sink.send(error_payload(error.envelope()))
    return await sink.close()


async def _native_with_failover(
    sink: Sink, services: Services, delivery: Delivery, plan: Plan, client_key: str | None, kind: str
) -> None:
    """Native streams fail over on the driver's one loop (order, weights, retry rounds, backoff, attempt
    metrics), but only until the first event reached the client."""
    driver = services.driver

    async def relay(job: Job) -> tuple[ImagesResult, tuple[ProxyError, ...]]:
        spec = driver.adapters[job.channel.type]
        sink.channel = job.channel.name
        try:
            if spec.stream_steps is not None:
                await relay_drawn(sink, services, delivery, plan, spec, job, kind)
            else:
                await relay_native(sink, driver, services.finisher, delivery, spec, job, kind)
        except ProxyError as error:
            if sink.started:
                error.retryable = False  # the client has events already: no other channel may start over
            raise
        return ImagesResult(images=()), ()  # the images went to the client as they came

    await generate(driver, services.rules, plan, client_key, relay, lambda channel: streams(driver.adapters[channel.type]))
