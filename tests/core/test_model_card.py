"""Model cards: what the shipped rules and the adapters' declarations say about each image model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.adapters import SCHEMAS, channel_facts
from proxy.core.errors import NotFound
from proxy.core.model_card import ChannelFacts, find_card, model_cards
from proxy.core.rules import Rules, parse_rules
from tests.factories import LOCAL, make_rules

SHIPPED_TEXT = (Path(__file__).resolve().parents[2] / "rules.yaml").read_text()
OPENAI_KEY = "sk-shipped-secret-123"


def shipped(env: dict[str, str] | None = None) -> Rules:
    return parse_rules(SHIPPED_TEXT, env or {}, SCHEMAS)


def cards(rules: Rules) -> dict[str, dict[str, Any]]:
    return {card["id"]: card for card in model_cards(rules, channel_facts)}


def test_every_rule_has_a_card_in_file_order_globs_included() -> None:
    rules = shipped()
    listed = model_cards(rules, channel_facts)
    assert [card["id"] for card in listed] == [rule.pattern for rule in rules.models]
    assert {card["object"] for card in listed} == {"image_model"}
    assert cards(rules)["gpt-image-*"]["pattern"] is True and cards(rules)["gpt-image-2"]["pattern"] is False


def test_the_local_model_takes_any_size_and_every_operation_natively_streamed() -> None:
    card = cards(shipped())["local-image"]
    assert card["sizes"] is None and card["size_rules"] is None
    assert card["operations"] == {"generate": True, "edit": True, "variation": True, "stream": {"native": True}, "async": True}
    assert card["values"] == {"output_format": ["png", "jpeg", "webp"], "background": ["auto", "opaque", "transparent"]}
    assert card["max_n"] == 10 and card["available"] is True
    assert card["channels"] == [{
        "name": "local", "type": "local", "credentials": True, "weight": 0, "upstream_model": "local-image",
        "max_n_per_call": None, "native_stream": True,
        "output_formats": {"native": ["png", "jpeg", "webp"], "default": "png", "compression": True},
    }]
    assert card["price"] == {"per_image": [{"size": "*", "quality": "*", "usd": 0.0}]}


def test_a_gpt_image_model_has_its_size_rules_default_quality_and_token_price() -> None:
    card = cards(shipped({"OPENAI_API_KEY": OPENAI_KEY}))["gpt-image-2"]
    assert card["size_rules"] == {
        "multiple_of": 16, "max_side": 3840, "min_pixels": 655360, "max_pixels": 8294400, "max_aspect_ratio": "3:1",
        "auto": True,
        "description": "WIDTHxHEIGHT with sides multiples of 16, each side at most 3840 px, width x height 655,360 to "
                       "8,294,400 pixels, aspect ratio at most 3:1; or 'auto'",
    }
    assert card["sizes"] is None
    assert "quality" not in card["values"]  # the rules list no qualities for it: none are invented
    assert card["defaults"] == {"quality": "auto"}
    assert card["price"] == {"per_million_tokens": {"text_input": 5.0, "image_input": 8.0, "image_output": 30.0}}
    assert "input_fidelity" in card["fields"]["forwarded"] and "size" in card["fields"]["forwarded"]
    assert card["channels"][0]["credentials"] is True and card["upstream_model"] == "gpt-image-2"


def test_a_retired_model_says_what_serves_it_and_how_it_is_translated() -> None:
    card = cards(shipped())["dall-e-3"]
    assert card["values"]["quality"] == ["standard", "hd"] and card["values"]["style"] == ["vivid", "natural"]
    assert card["sizes"] == ["1024x1024", "1792x1024", "1024x1792"] and card["max_n"] == 1
    assert card["upstream_model"] == "gpt-image-2"
    translation = card["translation"]
    assert translation["served_by"] == "gpt-image-2"
    assert translation["values"] == {"quality": {"standard": "medium", "hd": "high"}}
    assert translation["upstream_sizes"] == ["1024x1024", "1536x1024", "1024x1536"]
    assert set(translation["prompt_suffix"]["style"]) == {"vivid", "natural"}
    assert translation["revised_prompt_is_original"] is True
    assert card["fields"]["folded_into_prompt"] == ["style"]
    assert cards(shipped())["gpt-image-2"]["translation"] is None


def test_without_a_key_a_channel_says_it_has_no_credentials_and_never_shows_a_key() -> None:
    keyless = cards(shipped())
    assert keyless["stable-image-core"]["channels"][0]["credentials"] is False
    assert keyless["stable-image-core"]["available"] is False
    keyed = model_cards(shipped({"OPENAI_API_KEY": OPENAI_KEY}), channel_facts)
    assert OPENAI_KEY not in json.dumps(keyed)
    assert {card["id"]: card for card in keyed}["dall-e-2"]["channels"][0]["credentials"] is True


def test_a_glob_has_no_one_upstream_name_and_no_price() -> None:
    card = cards(shipped())["gpt-image-*"]
    assert card["upstream_model"] is None and card["channels"][0]["upstream_model"] is None
    assert card["price"] is None
    assert card["sizes"] == ["1024x1024", "1536x1024", "1024x1536", "auto"]


def test_an_alias_lists_its_channels_in_failover_order_with_their_own_upstream_names() -> None:
    card = cards(shipped())["flux-pro"]
    assert [(entry["name"], entry["type"], entry["upstream_model"]) for entry in card["channels"]] == [
        ("bfl", "flux", "flux-pro-1.1"), ("replicate", "replicate", "black-forest-labs/flux-1.1-pro")]
    assert card["upstream_model"] is None  # the channels disagree: each says its own
    assert [entry["max_n_per_call"] for entry in card["channels"]] == [1, 1]
    assert card["operations"]["stream"] == {"native": False}  # emulated
    assert (card["operations"]["edit"], card["operations"]["variation"]) == (False, False)
    assert card["size_rules"] == {"max_aspect_ratio": "16:9", "auto": True,
                                  "description": "WIDTHxHEIGHT with aspect ratio at most 16:9; or 'auto'"}
    assert card["price"] == {"per_image": [{"size": "*", "quality": "*", "usd": 0.04}]}


def test_edits_come_from_the_adapter_or_from_forwarding_image() -> None:
    all_cards = cards(shipped())
    assert all_cards["doubao-seedream-4.0"]["operations"]["edit"] is True  # `image` is forwarded
    assert all_cards["doubao-seedream-4.0"]["operations"]["variation"] is False
    assert all_cards["doubao-seedream-4.0"]["operations"]["stream"] == {"native": True}  # Ark's own stream
    assert all_cards["cogview-4"]["operations"]["edit"] is False


def test_formats_and_images_per_call_are_read_for_the_model_the_channel_serves() -> None:
    all_cards = cards(shipped())
    imagen, gemini = all_cards["imagen-4.0-generate-001"], all_cards["gemini-2.5-flash-image"]
    assert imagen["channels"][0]["max_n_per_call"] == 4 and gemini["channels"][0]["max_n_per_call"] == 1
    sd3 = all_cards["sd3.5-large"]["channels"][0]["output_formats"]
    assert sd3 == {"native": ["png", "jpeg"], "default": "png", "compression": False}


def test_a_retrieve_takes_the_exact_pattern_first_then_a_name_a_glob_serves() -> None:
    rules = shipped()
    assert find_card(rules, "gpt-image-*", channel_facts)["id"] == "gpt-image-*"
    assert "requested" not in find_card(rules, "dall-e-3", channel_facts)
    dated = find_card(rules, "gpt-image-2-2026-01-01", channel_facts)
    assert (dated["id"], dated["requested"], dated["pattern"]) == ("gpt-image-2-*", "gpt-image-2-2026-01-01", True)
    assert dated["channels"][0]["upstream_model"] == "gpt-image-2-2026-01-01"  # the name is sent as asked
    assert find_card(rules, "gpt-image-9", channel_facts)["id"] == "gpt-image-*"


def test_an_unknown_model_is_a_404_naming_the_model_param() -> None:
    with pytest.raises(NotFound) as raised:
        find_card(shipped(), "no-such-model", channel_facts)
    assert (raised.value.status, raised.value.param, raised.value.code) == (404, "model", "model_not_found")
    assert "no-such-model" in raised.value.message


def test_stream_is_native_when_the_first_channel_with_credentials_streams_natively() -> None:
    channels = {"local": LOCAL, "openai": {"type": "openai", "base_url": "http://x/v1", "api_key": "${OPENAI_API_KEY}",
                                           "weight": 3}}
    rules = make_rules({"m": {"channels": ["openai", "local"]}}, channels)

    def facts(rule: Any, channel: Any, model: str) -> ChannelFacts:
        return ChannelFacts(native_stream=channel.type == "openai")

    card = model_cards(rules, facts)[0]
    assert card["operations"]["stream"] == {"native": False}  # openai has no key: local is first, and emulates here
    assert [(entry["name"], entry["credentials"], entry["weight"]) for entry in card["channels"]] == [
        ("openai", False, 3), ("local", True, 0)]
    keyed = make_rules({"m": {"channels": ["openai", "local"]}}, channels, env={"OPENAI_API_KEY": "k"})
    assert model_cards(keyed, facts)[0]["operations"]["stream"] == {"native": True}


def test_per_megapixel_and_per_image_tables_are_shown_as_written() -> None:
    rules = make_rules({
        "a": {"channels": ["local"], "price": {"per_megapixel": "0.05"}},
        "b": {"channels": ["local"], "price": {"per_image": {"1024x1024 low": 0.011, "*": 0.042}}},
    }, {"local": LOCAL})
    listed = cards(rules)
    assert listed["a"]["price"] == {"per_megapixel": 0.05}
    assert listed["b"]["price"] == {"per_image": [{"size": "1024x1024", "quality": "low", "usd": 0.011},
                                                  {"size": "*", "quality": "*", "usd": 0.042}]}
