"""Shell layer: the aiohttp application: its routes and their handlers (the lifecycle is proxy.lifecycle).

Routes:
    POST /v1/images/generations   the product: rules -> adapter -> driver -> finish
    POST /v1/images/edits         the same, from a multipart upload (images + mask)
    POST /v1/images/variations    the same, from one uploaded image
    GET  /v1/images/generations/{task_id}   an async task's state and result (seed 001), and its webhook's
                                            (`metadata.webhook`, proxy.webhooks)
    GET  /images/{name}           images the proxy hosts for `response_format: url`
    GET  /v1/models[/{id}]        the models the rules serve, merged with the default channel's (proxy.catalog)
    GET  /v1/images/models[/{id}] what the rules say about each image model: operations, sizes, values,
                                  channels, price (proxy.image_models)
    GET  /v1/usage                the calling key's usage from the ledger; /admin/usage, /admin/generations
                                  every key's, for server.admin_keys (proxy.usage)
    GET  /admin/channels          each channel's models, last hour and day, newest errors (proxy.admin)
    POST /admin/channels/{name}/test   one tiny generation through that channel alone
    GET  /admin/tasks[/{id}]      the newest async tasks of every owner; one task as its owner sees it
    GET  /console[/{file}]        the operators' console, a single-page app over these APIs (proxy.console)
    *    /v1/{anything else}      passed through to `default_channel` (proxy.passthrough)
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from proxy import admin
from proxy.adapters import ADAPTERS
from proxy.body import defer_continue, read_body
from proxy.catalog import list_models, retrieve_model
from proxy.console import add_console_routes
from proxy.core.budgets import ceiling
from proxy.core.errors import InvalidRequest, MethodNotAllowed, NotFound, RequestTimeout, ServiceUnavailable
from proxy.core.form import coerce_fields
from proxy.core.limit_windows import key_id
from proxy.core.plan import EDIT, VARIATION, Plan, build_plan
from proxy.core.request import parse_image_request, parse_json_object
from proxy.core.rules import Rules
from proxy.driver import forwardable
from proxy.finish import Delivery, public_base
from proxy.idempotent import HEADER as IDEMPOTENCY_HEADER
from proxy.idempotent import check_header, fingerprint, once
from proxy.image_models import list_image_models, retrieve_image_model
from proxy.image_store import IMAGE_ROUTE, ImageStore
from proxy.input_images import check_client_images
from proxy.json_answer import json_answer
from proxy.key_limits import Admission, admit, imageless
from proxy.ledger import planned
from proxy.lifecycle import services_context
from proxy.middleware import add_request_id, front_middleware
from proxy.observe import note
from proxy.ops import healthz, metrics_endpoint, on_shutdown, readyz, watch_reload_signal
from proxy.passthrough import relay
from proxy.production import Caller, key_name, produce
from proxy.services import CLIENT_KEY, HOST_STATE, JSON_FIELDS, RULES, RULES_PATH, SERVICES, STORE, TASK_STORE, Services
from proxy.streaming import Sink, stream
from proxy.task_runner import TaskRun, created, run_task, start_background
from proxy.tasks import TaskStore, answer_of, owner_of
from proxy.upload_form import Form, read_form
from proxy.upstream import SESSION
from proxy.usage import admin_generations, admin_usage, own_usage
from proxy.webhooks import requested, with_webhook

log = logging.getLogger("imagegate")


T = TypeVar("T")
IGNORED_HEADER = "X-Imagegate-Ignored-Params"
# An image is served from the console's own origin: one that can hold script (an SVG an upstream made) must run
# none there, opened directly or not, and no type is sniffed into another.
IMAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
                 "X-Content-Type-Options": "nosniff"}
MAX_LOGGED_MODEL = 200  # characters of a client's model name an access line keeps


# -- handlers -------------------------------------------------------------------------------------


# What identifies a request's content for its Idempotency-Key: computed only for requests that send one
# (an edit's fingerprint hashes every uploaded byte).
Fingerprint = Callable[[], str]


def respond(request: web.Request, plan: Plan, request_fingerprint: Fingerprint) -> Awaitable[web.StreamResponse]:
    """Run a plan once per Idempotency-Key (when the client sends one), within the key's limits. Not a coroutine
    itself: without the header it hands back `serve`'s, so a request in flight carries no frame of this one."""
    planned(plan)  # also for requests refused below (limits, idempotency): the ledger records what they asked
    header = request.headers.get(IDEMPOTENCY_HEADER)
    if header is None:
        return serve(request, plan)
    if plan.stream:
        raise InvalidRequest("A stream cannot be replayed: drop Idempotency-Key or `stream`.", param="stream")
    return _once_per_key(request, plan, header, request_fingerprint)


async def _once_per_key(request: web.Request, plan: Plan, header: str, request_fingerprint: Fingerprint) -> web.StreamResponse:
    services = request.app[SERVICES]
    client_key = request[CLIENT_KEY] or None
    key = f"{key_id(client_key)}:{fingerprint([check_header(header).encode()])}"
    rules = services.rules

    async def run() -> web.Response:
        response = await serve(request, plan)
        assert isinstance(response, web.Response)  # streams were refused above
        return response

    def spawn(work: Coroutine[Any, Any, web.Response]) -> asyncio.Task[web.Response]:
        task = asyncio.get_running_loop().create_task(work)
        services.background.add(task)  # drained at shutdown like async tasks
        task.add_done_callback(services.background.discard)
        return task

    wait = max(c.deadline for c in rules.channels.values()) if rules.channels else 600.0
    retention = rules.server.idempotency_retention
    return await once(services.idempotency, key, request_fingerprint(), retention, wait, run, spawn)


async def admission_for(request: web.Request, plan: Plan) -> Admission | None:
    """The request counted against its key's limits and budget (429 when over); None when the key has neither."""
    services = request.app[SERVICES]
    client_key = request[CLIENT_KEY] or None
    if services.metrics is not None:
        services.metrics.key_requests.labels(key_name(services, client_key)).inc()
    limits = services.rules.server.limits_for(client_key)
    budget = services.rules.server.budget_for(client_key)
    if limits.any or budget.any:
        reserve = ceiling(plan.rule.price, plan.n, plan.fields.get("size"), plan.fields.get("quality"))
        return await admit(services.counters, key_id(client_key), limits, plan.n, budget=budget, reserve=reserve)
    return None


def hosted_for(request: web.Request, services: Services) -> float:
    """How long an answer's hosted images live: an answer kept for replay (Idempotency-Key) keeps them as long,
    so that a retry never gets URLs that are gone."""
    ttl = services.store.ttl
    return max(ttl, services.rules.server.idempotency_retention) if IDEMPOTENCY_HEADER in request.headers else ttl


async def serve(request: web.Request, plan: Plan) -> web.StreamResponse:
    """Admit a plan (429 when over its key's limits), then run it: at once, as a stream, or as an async task
    (seed 001), as the client asked."""
    admission = await admission_for(request, plan)
    services = request.app[SERVICES]
    rules = services.rules
    headers = {IGNORED_HEADER: ", ".join(plan.ignored)} if plan.ignored else {}
    client_key = request[CLIENT_KEY] or None
    note(model=plan.model, rule=plan.rule.pattern, n=plan.n, operation=plan.operation, stream=plan.stream or None)
    if rules.server.log_prompts:
        note(prompt=plan.client_prompt)
    delivered, spent = 0, None
    try:
        if plan.stream and plan.wants_async:
            raise InvalidRequest("`stream` and `async` cannot be combined: choose one.", param="stream", code="invalid_value")
        if plan.stream:
            # OpenAI's stream events carry `b64_json`: that is what a stream delivers unless the client asked
            # for `url` (the proxy's extension), whatever form the channel answers in.
            delivery = Delivery(plan.response_format or "b64_json", public_base(request, rules), services.store.ttl)
            sink = Sink(request)
            try:
                return await stream(sink, services, plan, client_key, delivery)
            finally:  # a client that left after its images pays for them, as the ledger says it did
                delivered, spent = sink.completed, sink.cost
        if plan.wants_async:
            retention = rules.server.tasks.retention
            delivery = Delivery(plan.response_format, public_base(request, rules), max(retention, services.store.ttl))
            webhook = await requested(services, plan.callback_url, client_key)
            if admission is not None:
                admission.to_task()  # kept in the task's record from here on, not held by this process
            record = created(services, owner_of(client_key), delivery, admission, webhook)
            await services.tasks.put(record)  # the task writes this request's ledger record when it ends
            run = TaskRun(record, plan, Caller(client_key), delivery, admission, request.get(JSON_FIELDS))
            start_background(services, run_task(services, run))
            admission = None  # the task settles it when it ends
            return web.json_response(record.view(), headers=headers)
        delivery = Delivery(plan.response_format, public_base(request, rules), hosted_for(request, services))
        # produce itself, not produce_body: one coroutine frame fewer for each request held here.
        produced = await produce(services, plan, Caller(client_key), delivery)
        body, spent = produced.body(raw_base64=True), produced.cost
        delivered = len(body["data"])
        return json_answer(body, headers=headers)
    finally:
        if admission is not None:
            await asyncio.shield(admission.settle(delivered, spent))


async def generations(request: web.Request) -> web.StreamResponse:
    rules = request.app[SERVICES].rules
    # Parsed as JSON whatever the Content-Type says: seed 000's curl examples send none that is usable.
    raw = await body_within(request, read_body(request, body_limit(request)))
    fields = parse_json_object(raw)
    request[JSON_FIELDS] = fields  # an async task keeps them to be resumed after a restart (proxy.task_runner)
    note_model(fields)
    image_request = parse_image_request(fields)
    plan = build_plan(image_request, rules.match_model(image_request.model))
    await check_client_images(image_request.options)
    return await respond(request, plan, functools.partial(fingerprint, [request.path.encode(), raw]))


def note_model(fields: Mapping[str, Any]) -> None:
    """The model a request named goes in its access line even when the request is then refused."""
    model = fields.get("model")
    if isinstance(model, str):
        note(model=model[:MAX_LOGGED_MODEL])


def body_limit(request: web.Request) -> int:
    # The start-up value, as aiohttp's client_max_size: a reload does not move it (README, Reload).
    return request.app[RULES].server.max_request_bytes


async def body_within(request: web.Request, reading: Awaitable[T]) -> T:
    """A request body must arrive within `server.body_timeout`: a stalled upload does not hold a handler forever."""
    if request.content.is_eof():
        # The whole body has arrived (a small one comes with the head): there is nothing left to wait for.
        return await reading
    seconds = request.app[SERVICES].rules.server.body_timeout
    try:
        async with asyncio.timeout(seconds):
            return await reading
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {seconds:g} seconds.", code="request_timeout") from None


def form_fingerprint(path: str, form: Form) -> str:
    fields = json.dumps(form.fields, sort_keys=True).encode()
    files = [f"{part.name}\0{part.filename}\0".encode() + hashlib.sha256(part.data).digest() for part in form.files]
    return fingerprint([path.encode(), fields, *files])


async def _form_plan(request: web.Request, operation: str) -> tuple[Plan, Fingerprint]:
    rules = request.app[SERVICES].rules
    form = await body_within(request, read_form(request, body_limit(request)))
    if not form.images:
        raise InvalidRequest("An image file is required.", param="image", code="missing_required_parameter")
    fields = coerce_fields(form.fields)
    note_model(fields)
    image_request = parse_image_request(fields, require_prompt=operation == EDIT)
    plan = build_plan(image_request, rules.match_model(image_request.model), operation)
    await check_client_images(image_request.options, form.images, form.mask)
    plan = replace(plan, uploads=form.images, mask=form.mask)
    return plan, functools.partial(form_fingerprint, request.path, form)


async def edits(request: web.Request) -> web.StreamResponse:
    return await respond(request, *await _form_plan(request, EDIT))


async def variations(request: web.Request) -> web.StreamResponse:
    plan, request_fingerprint = await _form_plan(request, VARIATION)
    if plan.mask is not None:
        raise InvalidRequest("Variations take no mask.", param="mask", code="invalid_value")
    if plan.client_prompt:  # OpenAI's variations take none: named as ignored, never dropped silently
        plan = replace(plan, ignored=tuple(sorted({*plan.ignored, "prompt"})))
    return await respond(request, plan, request_fingerprint)


async def post_only(request: web.Request) -> web.Response:
    raise MethodNotAllowed(f"{request.method} is not supported on {request.path}: send a POST.", allow="POST")


async def task_status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    record = await services.tasks.get(request.match_info["task_id"])
    owner = owner_of(request[CLIENT_KEY] or None)
    # Another key's task answers exactly like a missing one: ids must not be probed.
    if record is None or not hmac.compare_digest(record.owner, owner):
        raise NotFound("No task with this id exists, or it has expired.", param="task_id", code="task_not_found")
    body, status = answer_of(record)
    return json_answer(await with_webhook(services, record, body), status=status)


async def hosted_image(request: web.Request) -> web.StreamResponse:
    stored = await request.app[SERVICES].store.get(request.match_info["name"])
    if stored is None:
        raise NotFound("The image does not exist or has expired.", code="image_not_found")
    response: web.StreamResponse
    if stored.data is not None:
        response = web.Response(body=stored.data, headers={"Content-Type": stored.content_type})
        size = len(stored.data)
    else:
        assert stored.path is not None
        response = web.FileResponse(stored.path, headers={"Content-Type": stored.content_type})
        size = stored.path.stat().st_size
    metrics = request.app[SERVICES].metrics
    if metrics is not None:
        metrics.image_bytes.inc(size)
    # The name is unguessable and the bytes never change: caches may keep them for what is left of the image's
    # life (no longer: past it, the image is gone here too).
    left = request.app[SERVICES].store.ttl if stored.expires_at is None else max(0, int(stored.expires_at - time.time()))
    response.headers.update({"Cache-Control": f"private, max-age={left}", **IMAGE_HEADERS})
    return response


async def passthrough(request: web.Request) -> web.StreamResponse:
    rules = request.app[SERVICES].rules
    channel = rules.channels.get(rules.default_channel) if rules.default_channel else None
    spec = ADAPTERS.get(channel.type) if channel is not None else None
    if channel is not None and not channel.usable:
        missing = ", ".join(channel.missing_key)
        raise ServiceUnavailable(f"Set {missing} to enable channel '{channel.name}'.", code="channel_unavailable")
    client_key = request[CLIENT_KEY] or None
    if channel is not None and not forwardable(rules, channel, client_key):
        raise InvalidRequest("This proxy passes the client's own provider key through, and an admin key is never "
                             "sent upstream: call it with a client key.", code="admin_key_not_forwarded")
    # Pass-through spends the operator's key too (chat, responses with image tools): the key's request
    # limits apply (images per day cannot be counted here: the proxy does not read those bodies).
    async with imageless(request.app[SERVICES].counters, key_id(client_key), rules.server.limits_for(client_key)):
        return await relay(request, request.app[SESSION], channel, spec, client_key)


# Container allocations between two young-generation collections (Python's default: 700). A small request
# allocates hundreds, and each collection costs about the same whatever the threshold: measured under the
# small-request load, the collector's share of the proxy's CPU went from 6.4% to 1.0%.
GC_YOUNG_THRESHOLD = 10_000


async def long_lived_heap(app: web.Application) -> AsyncIterator[None]:
    """While the app serves: what exists once it has started (modules, rules, services) is moved out of the
    collector's generations, so full collections do not scan it again (their share of the CPU under the
    small-request load: 13.9% -> 7.0%), and young collections run less often. Both are undone at cleanup:
    they are the process's settings, and tests run apps inside one process."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def make_app(
    rules: Rules, *, store: ImageStore | None = None, tasks: TaskStore | None = None, rules_path: str | None = None,
    host_state: Path | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[front_middleware],
        client_max_size=rules.server.max_request_bytes,
    )
    app[RULES] = rules
    if rules_path is not None:
        app[RULES_PATH] = rules_path
    if store is not None:
        app[STORE] = store
    if tasks is not None:
        app[TASK_STORE] = tasks
    if host_state is not None:  # one of several workers: counters and idempotency in this run directory's files
        app[HOST_STATE] = host_state
    app.cleanup_ctx.append(services_context)
    app.cleanup_ctx.append(watch_reload_signal)
    app.cleanup_ctx.append(long_lived_heap)  # after the services: their objects are long-lived too
    app.on_shutdown.append(on_shutdown)
    app.on_response_prepare.append(add_request_id)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    # Body routes check the head before `100 Continue` (proxy.body): a body they refuse is never sent.
    for path, handler in (("/v1/images/generations", generations), ("/v1/images/edits", edits),
                          ("/v1/images/variations", variations)):
        app.router.add_post(path, handler, expect_handler=defer_continue)
        # Any other method here is the client's mistake, answered by the proxy, never passed through.
        app.router.add_route("*", path, post_only)
    app.router.add_get("/v1/images/generations/{task_id}", task_status)
    app.router.add_get(IMAGE_ROUTE + "{name}", hosted_image)
    # Model lists are the proxy's own; other methods there (deleting a fine-tune) still pass through.
    app.router.add_get("/v1/usage", own_usage)
    app.router.add_get("/admin/usage", admin_usage)
    app.router.add_get("/admin/generations", admin_generations)
    app.router.add_get("/admin/channels", admin.channels)
    app.router.add_post("/admin/channels/{name}/test", admin.test_channel)
    app.router.add_get("/admin/tasks", admin.tasks)
    app.router.add_get("/admin/tasks/{task_id}", admin.task)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    app.router.add_get("/v1/images/models", list_image_models)
    app.router.add_get("/v1/images/models/{model:.+}", retrieve_image_model)
    add_console_routes(app.router)
    app.router.add_route("*", "/v1/{tail:.*}", passthrough)
    return app
