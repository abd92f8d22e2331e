"""Shell layer: the admin API the console calls, every route behind proxy.middleware.require_admin.

    GET  /admin/channels              each channel in the rules: its models, its last hour and day from the
                                      ledger (requests, errors, success rate, p50/p95), its newest errors
    POST /admin/channels/{name}/test  one tiny generation through that channel alone, on the production path
    GET  /admin/tasks                 the newest async tasks of every owner, summarised
    GET  /admin/tasks/{id}            one task as its owner sees it

No answer holds a key: channels are described by their rules' names, types and whether their
credentials are set, tasks by their owner's key name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from proxy.core.errors import InvalidRequest, NotFound, ProxyError
from proxy.core.plan import GENERATE, build_plan
from proxy.core.request import parse_image_request
from proxy.core.rules import ADMIN_NAME, Channel, ModelRule, Rules
from proxy.core.size_rules import size_problem
from proxy.core.sizes import parse_size
from proxy.core.usage_query import UsageQuery, UsageRow
from proxy.database import GENERATIONS
from proxy.finish import Delivery, public_base
from proxy.ledger import channel_tested, planned
from proxy.middleware import require_admin
from proxy.observe import note, note_unlogged
from proxy.production import Caller, produce_body
from proxy.services import SERVICES, Services
from proxy.tasks import TaskRecord, answer_of, unfinished
from proxy.usage import iso, ledger_of, report
from proxy.webhooks import with_webhook

WINDOWS = (("1h", 3600), ("24h", 86400))
LAST_ERRORS = 5
TEST_PROMPT = "a small red circle"
TEST_SIZE = "1024x1024"
TASK_PAGE, MAX_TASK_PAGE = 50, 500


# -- channels -------------------------------------------------------------------------------------


async def channels(request: web.Request) -> web.Response:
    """GET /admin/channels: every channel in the rules' order, with its ledger figures."""
    require_admin(request)
    services = request.app[SERVICES]
    rules = services.rules
    now = time.time()
    windows = {label: await _window(services, now - seconds, now) for label, seconds in WINDOWS}
    data = []
    for name, channel in rules.channels.items():
        figures = [_figures(label, windows[label].get(name)) for label, _ in WINDOWS]
        data.append({**_described(rules, channel), "windows": figures,
                     "last_errors": await _last_errors(services, name, now - WINDOWS[-1][1])})
    return web.json_response({"object": "list", "data": data})


def _described(rules: Rules, channel: Channel) -> dict[str, Any]:
    return {"name": channel.name, "type": channel.type, "credentials": channel.usable,
            "models": [rule.pattern for rule in rules.models if channel.name in rule.channels]}


async def _window(services: Services, start: float, end: float) -> dict[str, UsageRow]:
    """The window's figures per channel, summed and bucketed by the usage API's own query (proxy.usage)."""
    rows = await report(services, UsageQuery(start, end, ("channel",)), None)
    return {str(row.group["channel"]): row for row in rows if row.group["channel"] is not None}


def _figures(label: str, row: UsageRow | None) -> dict[str, Any]:
    requests, errors = (row.requests, row.errors) if row is not None else (0, 0)
    return {"window": label, "requests": requests, "errors": errors,
            "success_rate": round((requests - errors) / requests, 4) if requests else None,
            "p50_ms": row.p50_ms if row is not None else None, "p95_ms": row.p95_ms if row is not None else None}


async def _last_errors(services: Services, channel: str, since: float) -> list[dict[str, Any]]:
    table = GENERATIONS
    statement = (
        sa.select(table.c.at, table.c.status, table.c.error_code, table.c.error_type, table.c.model, table.c.request_id)
        .where(table.c.channel == channel, table.c.status >= 400, table.c.at >= datetime.fromtimestamp(since, UTC))
        .order_by(table.c.id.desc()).limit(LAST_ERRORS)
    )
    async with ledger_of(services).engine.connect() as connection:
        rows = (await connection.execute(statement)).all()
    return [{**row._mapping, "at": iso(row.at)} for row in rows]


# -- the test button ------------------------------------------------------------------------------


def _test_rule(rules: Rules, channel: str) -> ModelRule:
    """The first rule that lists the channel under a name the upstream knows: an exact model name, or a pattern
    with an upstream model for it (a pattern itself is no model name)."""
    listing = [rule for rule in rules.models if channel in rule.channels]
    named = [rule for rule in listing if not rule.is_glob or rule.upstream_models.get(channel) or rule.upstream_model]
    if named:
        return named[0]
    why = "No model rule lists" if not listing else "Only patterns without an upstream_model list"
    raise InvalidRequest(f"{why} channel '{channel}': there is no model name to test it with.", param="name",
                         code="channel_without_models")


def _test_fields(rule: ModelRule, channel: str) -> dict[str, Any]:
    """The tiniest request the rule takes: one image, its smallest listed size (else its default size, else
    1024x1024 where its size rules allow it), as base64 so nothing is hosted."""
    # A glob is no model name: the name the channel is asked for stands in (_test_rule made sure there is one).
    model = rule.upstream_for(channel, rule.pattern) if rule.is_glob else rule.pattern
    fields: dict[str, Any] = {"model": model, "prompt": TEST_PROMPT, "n": 1, "response_format": "b64_json"}
    listed = [(size.width * size.height, text) for text in rule.sizes or () if (size := parse_size(text)) is not None]
    if listed:
        fields["size"] = min(listed)[1]
    elif "size" not in rule.defaults and (rule.size_rules is None or size_problem(TEST_SIZE, rule.size_rules) is None):
        fields["size"] = TEST_SIZE
    return fields


async def test_channel(request: web.Request) -> web.Response:
    """POST /admin/channels/{name}/test: one generation through this channel only, recorded in the ledger under
    the key name "admin". An upstream's failure is the test's result (ok: false), not the console's error."""
    require_admin(request)
    services = request.app[SERVICES]
    name = request.match_info["name"]
    if name not in services.rules.channels:
        raise NotFound(f"There is no channel named '{name}'.", param="name", code="channel_not_found")
    if services.rules.channels[name].passthrough_key:
        raise InvalidRequest(f"Channel '{name}' sends the client's own key upstream; an admin key is never sent, so "
                             "it cannot be tested from here.", param="name", code="admin_key_not_forwarded")
    rule = _test_rule(services.rules, name)
    fields = _test_fields(rule, name)
    note(model=fields["model"], operation=GENERATE)
    note_unlogged(key_name=ADMIN_NAME)
    started = time.perf_counter()
    try:
        plan = build_plan(parse_image_request(fields), rule)
        planned(plan)
        delivery = Delivery("b64_json", public_base(request, services.rules), services.store.ttl)
        body, _ = await produce_body(services, plan, Caller(None, ADMIN_NAME), delivery,
                                     serves=lambda channel: channel.name == name)
    except ProxyError as error:
        failure = error.envelope()["error"]
        note(error_type=error.type, error_code=error.code)
        channel_tested(services, error.status, failure)
        return web.json_response(_tested(name, fields, started, error.status, failure, {}))
    channel_tested(services, 200, None)
    return web.json_response(_tested(name, fields, started, 200, None, body))


def _tested(name: str, fields: Mapping[str, Any], started: float, status: int, error: dict[str, Any] | None,
            body: Mapping[str, Any]) -> dict[str, Any]:
    return {"channel": name, "model": fields["model"], "ok": error is None, "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 1), "error": error,
            "data": list(body.get("data", [])), "metadata": dict(body.get("metadata", {}))}


# -- tasks ----------------------------------------------------------------------------------------


def _task_limit(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit", str(TASK_PAGE)))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_TASK_PAGE:
        raise InvalidRequest(f"Invalid 'limit': expected a whole number from 1 to {MAX_TASK_PAGE}.", param="limit",
                             code="invalid_value")
    return limit


async def tasks(request: web.Request) -> web.Response:
    """GET /admin/tasks: the newest tasks of every owner, newest first."""
    require_admin(request)
    limit = _task_limit(request.query)
    services = request.app[SERVICES]
    summaries = [task_summary(record) for record in await services.tasks.recent(limit)]
    await _owners_from_ledger(services, summaries)
    return web.json_response({"object": "list", "data": summaries})


async def _owners_from_ledger(services: Services, summaries: list[dict[str, Any]]) -> None:
    """An ended task's record no longer holds its checkpoint: its key name (and model, channel, when its answer
    did not say them) come from its ledger record, written when it ended (a moment later: batched)."""
    ended = {summary["id"]: summary for summary in summaries if summary["key_name"] is None}
    if not ended or services.ledger is None:
        return
    table = GENERATIONS
    since = datetime.fromtimestamp(min(summary["created"] for summary in ended.values()) - 1, UTC)
    statement = sa.select(table.c.task_id, table.c.key_name, table.c.model, table.c.channel).where(
        table.c.at >= since, table.c.task_id.in_(list(ended)))  # through the index on `at`
    async with services.ledger.engine.connect() as connection:
        rows = (await connection.execute(statement)).all()
    for row in rows:
        summary = ended[row.task_id]
        summary.update(key_name=row.key_name, model=summary["model"] or row.model, channel=summary["channel"] or row.channel)


def _at(value: Any, *path: str) -> Any:
    """A value deep in saved JSON, or None where the path does not lead (a record written by an older proxy)."""
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def task_summary(record: TaskRecord) -> dict[str, Any]:
    """What the console lists of a task: while it runs, from its checkpoint (the request's notes, the channel
    and the adapter's polling state); once it ended, from its answer's metadata or its error (and the ledger,
    `_owners_from_ledger`)."""
    summary: dict[str, Any] = {"id": record.id, "status": record.status, "created": record.created,
                               "expires_at": record.expires_at, "model": None, "key_name": None, "channel": None,
                               "polls": None, "images": 0, "error": None}
    saved = record.checkpoint
    if unfinished(record.status) and saved is not None:
        summary.update(model=_at(saved, "trace", "fields", "model"), key_name=_at(saved, "trace", "unlogged", "key_name"),
                       channel=_at(saved, "channel") or _at(saved, "trace", "fields", "channel"),
                       polls=_at(saved, "state", "fields", "polls"))
    if record.body is not None:
        summary.update(model=_at(record.body, "metadata", "model"), channel=_at(record.body, "metadata", "channel"),
                       images=len(record.body.get("data") or []))
    if record.error is not None:
        summary.update(error=_at(record.error, "error") or record.error, model=_at(record.error, "metadata", "model"),
                       channel=_at(record.error, "metadata", "channel"))
    return summary


async def task(request: web.Request) -> web.Response:
    """GET /admin/tasks/{id}: the task as its owner sees it (`GET /v1/images/generations/{id}`), whoever owns it."""
    require_admin(request)
    record = await request.app[SERVICES].tasks.get(request.match_info["task_id"])
    if record is None:
        raise NotFound("No task with this id exists, or it has expired.", param="task_id", code="task_not_found")
    body, status = answer_of(record)
    return web.json_response(await with_webhook(request.app[SERVICES], record, body), status=status)
