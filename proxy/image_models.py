"""Shell layer: `GET /v1/images/models` and `GET /v1/images/models/{id}`, the loaded rules' model cards.

The cards are built by proxy.core.model_card from `services.rules` on every request, so a reload (SIGHUP)
changes the answer; nothing is asked of any upstream. Like the model lists, a request counts against the
key's request limits (it makes no images).
"""

from __future__ import annotations

from aiohttp import web

from proxy.adapters import channel_facts
from proxy.core.limit_windows import key_id
from proxy.core.model_card import find_card, model_cards
from proxy.key_limits import imageless
from proxy.services import CLIENT_KEY, SERVICES


async def list_image_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    rules = services.rules  # one read: the whole list comes from the same rules, even across a reload
    client_key = request[CLIENT_KEY] or None
    async with imageless(services.counters, key_id(client_key), rules.server.limits_for(client_key)):
        return web.json_response({"object": "list", "data": model_cards(rules, channel_facts)})


async def retrieve_image_model(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    rules = services.rules
    client_key = request[CLIENT_KEY] or None
    async with imageless(services.counters, key_id(client_key), rules.server.limits_for(client_key)):
        return web.json_response(find_card(rules, request.match_info["model"], channel_facts))
