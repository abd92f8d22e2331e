"""`GET /v1/images/models` and `GET /v1/images/models/{id}` through the real app: the loaded rules' model cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.adapters import SCHEMAS
from proxy.core.rules import parse_rules
from proxy.services import SERVICES
from tests.factories import CLIENT_KEY, LOCAL, auth, rules_yaml

SHIPPED = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()
SECRET = "sk-live-do-not-show-7f3a9"


async def get_json(client: Any, path: str, **headers: str) -> tuple[int, Any]:
    response = await client.get(path, headers=headers)
    return response.status, await response.json()


async def test_the_shipped_rules_are_listed_with_their_values(make_proxy: Any) -> None:
    client = await make_proxy(SHIPPED, {})
    status, body = await get_json(client, "/v1/images/models")
    assert status == 200 and body["object"] == "list"
    listed = {card["id"]: card for card in body["data"]}
    assert list(listed)[:3] == ["local-image", "dall-e-3", "dall-e-2"]
    local = listed["local-image"]
    assert local["operations"] == {"generate": True, "edit": True, "variation": True, "stream": {"native": True}, "async": True}
    assert local["sizes"] is None and local["price"] == {"per_image": [{"size": "*", "quality": "*", "usd": 0.0}]}
    assert listed["gpt-image-*"]["pattern"] is True and listed["gpt-image-*"]["price"] is None
    assert listed["gpt-image-2"]["price"]["per_million_tokens"] == {"text_input": 5.0, "image_input": 8.0, "image_output": 30.0}
    assert listed["dall-e-3"]["values"]["quality"] == ["standard", "hd"]
    assert listed["dall-e-3"]["translation"]["served_by"] == "gpt-image-2"
    assert listed["dall-e-3"]["channels"][0] == {
        "name": "openai", "type": "openai", "credentials": False, "weight": 0, "upstream_model": "gpt-image-2",
        "max_n_per_call": None, "native_stream": True,
        "output_formats": {"native": ["png", "jpeg", "webp"], "default": "png", "compression": True},
    }


async def test_a_channel_key_set_in_the_environment_is_never_in_the_answer(make_proxy: Any) -> None:
    client = await make_proxy(SHIPPED, {"OPENAI_API_KEY": SECRET, "STABILITY_API_KEY": SECRET + "-s"})
    listed = await client.get("/v1/images/models")
    one = await client.get("/v1/images/models/gpt-image-2")
    for response in (listed, one):
        text = await response.text()
        assert response.status == 200 and SECRET not in text
    card = await one.json()
    assert card["id"] == "gpt-image-2" and card["channels"][0]["credentials"] is True and card["available"] is True


async def test_one_model_by_pattern_or_by_a_name_its_glob_serves(make_proxy: Any) -> None:
    client = await make_proxy(SHIPPED, {})
    status, card = await get_json(client, "/v1/images/models/gpt-image-*")
    assert status == 200 and card["id"] == "gpt-image-*" and "requested" not in card
    status, card = await get_json(client, "/v1/images/models/gpt-image-2-2026-01-01")
    assert status == 200 and (card["id"], card["requested"]) == ("gpt-image-2-*", "gpt-image-2-2026-01-01")
    assert card["size_rules"]["max_aspect_ratio"] == "3:1"


async def test_an_unknown_model_is_an_openai_style_404(make_proxy: Any) -> None:
    client = await make_proxy(SHIPPED, {})
    status, body = await get_json(client, "/v1/images/models/no-such-model")
    assert status == 404
    assert body["error"]["param"] == "model" and body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error" and "no-such-model" in body["error"]["message"]


async def test_the_route_needs_a_client_key_like_every_v1_route(make_proxy: Any) -> None:
    client = await make_proxy(rules_yaml({"local-image": {"channels": ["local"]}}, {"local": LOCAL},
                                         server={"api_keys": [CLIENT_KEY]}), {})
    status, body = await get_json(client, "/v1/images/models")
    assert status == 401 and "error" in body
    status, body = await get_json(client, "/v1/images/models", **auth())
    assert status == 200 and [card["id"] for card in body["data"]] == ["local-image"]


async def test_a_reload_changes_the_answer(make_proxy: Any) -> None:
    before = rules_yaml({"local-image": {"channels": ["local"], "max_n": 2}}, {"local": LOCAL})
    client = await make_proxy(before, {})
    status, card = await get_json(client, "/v1/images/models/local-image")
    assert status == 200 and card["max_n"] == 2
    after = rules_yaml({"renamed": {"channels": ["local"], "sizes": ["512x512"], "price": {"per_image": 0.01}}},
                       {"local": LOCAL})
    # What a SIGHUP does with a valid file (proxy.ops.reload_rules).
    client.server.app[SERVICES].use_rules(parse_rules(after, {}, SCHEMAS))
    status, body = await get_json(client, "/v1/images/models")
    assert status == 200 and [card["id"] for card in body["data"]] == ["renamed"]
    assert body["data"][0]["sizes"] == ["512x512"]
    assert body["data"][0]["price"] == {"per_image": [{"size": "*", "quality": "*", "usd": 0.01}]}
    status, _ = await get_json(client, "/v1/images/models/local-image")
    assert status == 404
