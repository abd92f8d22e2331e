"""Shell layer: `GET /v1/models` and `GET /v1/models/{id}`, answered by the proxy itself.

The proxy's own models (proxy.core.catalog) are always there; the default channel's list is merged in
when that channel has its credentials and answers within MODELS_TIMEOUT. A default channel without a
key, down, slow or answering something else costs the client nothing: the failure is logged and
noted in the access line (`default_channel`), and the proxy's own list is the answer. A retrieve
asks the default channel only for names the proxy does not serve itself.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

from aiohttp import web

from proxy.adapters import ADAPTERS
from proxy.adapters.base import Call, UpstreamResponse
from proxy.core.catalog import (
    askable,
    find_model,
    list_body,
    merge,
    model_not_found,
    own_models,
    upstream_entries,
    upstream_model,
)
from proxy.core.errors import ProxyError
from proxy.core.limit_windows import key_id
from proxy.key_limits import imageless
from proxy.observe import note
from proxy.passthrough import upstream_url
from proxy.services import CLIENT_KEY, SERVICES
from proxy.upstream import SESSION, send

log = logging.getLogger("imagegate")

# A model list is a convenience: a client waiting on it must not wait for a channel's image timeout.
MODELS_TIMEOUT = 5.0


def _decoded(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


async def ask_default_channel(request: web.Request, path: str) -> UpstreamResponse | None:
    """The default channel's answer to `GET {path}`, or None when there is none to be had (noted, logged)."""
    rules = request.app[SERVICES].rules
    channel = rules.channels.get(rules.default_channel) if rules.default_channel else None
    spec = ADAPTERS.get(channel.type) if channel is not None else None
    if channel is None or spec is None or spec.auth_headers is None or not channel.base_url:
        return None  # no default channel that speaks OpenAI's API: nothing to merge, nothing to log
    if not channel.usable:
        note(default_channel="no credentials")
        return None
    key = (request[CLIENT_KEY] or None) if channel.passthrough_key else channel.api_key
    call = Call("GET", upstream_url(channel, path, ""), headers={**channel.headers, **spec.auth_headers(key)})
    try:
        answer = await send(request.app[SESSION], call, channel=channel.name, timeout=MODELS_TIMEOUT)
    except ProxyError as error:
        note(default_channel="unreachable")
        log.warning("default channel '%s' was not asked for %s: %s", channel.name, path, error.message)
        return None
    note(default_channel=str(answer.status))
    return answer


async def list_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    client_key = request[CLIENT_KEY] or None
    async with imageless(services.counters, key_id(client_key), services.rules.server.limits_for(client_key)):
        own = own_models(services.rules, services.started)
        answer = await ask_default_channel(request, "/v1/models")
    upstream: list[dict[str, Any]] = []
    if answer is not None:
        entries = upstream_entries(_decoded(answer.body)) if answer.status == 200 else None
        if entries is None:
            log.warning("default channel answered GET /v1/models with status %d and no model list: listing the "
                        "proxy's own models only", answer.status)
        upstream = entries or []
    return web.json_response(list_body(merge(own, upstream)))


async def retrieve_model(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name = request.match_info["model"]
    client_key = request[CLIENT_KEY] or None
    async with imageless(services.counters, key_id(client_key), services.rules.server.limits_for(client_key)):
        own = find_model(services.rules, name, services.started)
        if own is not None:
            return web.json_response(own)
        if not askable(name):
            raise model_not_found(name)
        answer = await ask_default_channel(request, "/v1/models/" + quote(name, safe="/:@"))
    found = upstream_model(_decoded(answer.body), name) if answer is not None and answer.status == 200 else None
    if answer is not None and answer.status not in (200, 404):
        log.warning("default channel answered GET /v1/models/{id} with status %d", answer.status)
    if found is None:
        raise model_not_found(name)
    return web.json_response(found)
