"""The model catalog: which names are listed, and how the default channel's list merges in."""

from __future__ import annotations

from proxy.core.catalog import find_model, merge, own_models, served_names, upstream_entries, upstream_model
from tests.factories import LOCAL, make_rules

MODELS = {
    "local-image": {"channels": ["local"]},
    "gpt-image-*": {"channels": ["openai"]},
    "dall-e-3": {"channels": ["openai"]},
    "fallback": {"channels": ["openai", "local"]},
    "img-[ab]": {"channels": ["local"]},
}
CHANNELS = {"local": LOCAL, "openai": {"type": "openai", "base_url": "http://x/v1", "api_key": "${OPENAI_API_KEY}"}}


def test_exact_names_with_a_usable_channel_are_served_in_file_order() -> None:
    assert served_names(make_rules(MODELS, CHANNELS)) == ("local-image", "fallback")
    assert served_names(make_rules(MODELS, CHANNELS, env={"OPENAI_API_KEY": "k"})) == ("local-image", "dall-e-3", "fallback")


def test_model_objects_have_openais_fields() -> None:
    rules = make_rules(MODELS, CHANNELS)
    assert own_models(rules, 1700000000)[0] == {"id": "local-image", "object": "model", "created": 1700000000,
                                                "owned_by": "imagegate"}
    assert find_model(rules, "fallback", 5) == {"id": "fallback", "object": "model", "created": 5, "owned_by": "imagegate"}
    assert find_model(rules, "gpt-image-1", 5) is None  # globs are served, not listed
    assert find_model(rules, "dall-e-3", 5) is None  # no key: not served


def test_the_proxys_entries_win_and_the_first_duplicate_is_kept() -> None:
    own = [{"id": "a", "owned_by": "imagegate"}, {"id": "b", "owned_by": "imagegate"}]
    upstream = [{"id": "b", "owned_by": "system"}, {"id": "c", "owned_by": "system"}, {"id": "c", "owned_by": "other"}]
    assert merge(own, upstream) == [
        {"id": "a", "owned_by": "imagegate"},
        {"id": "b", "owned_by": "imagegate"},
        {"id": "c", "owned_by": "system"},
    ]


def test_upstream_answers_are_read_defensively() -> None:
    assert upstream_entries({"object": "list", "data": [{"id": "x"}, {"id": 3}, "y", {"name": "z"}, {"id": "w"}]}) == [
        {"id": "x"},
        {"id": "w"},
    ]
    assert upstream_entries({"data": {}}) is None
    assert upstream_entries(["x"]) is None
    assert upstream_entries(None) is None
    assert upstream_model({"id": "gpt-4o", "object": "model"}, "gpt-4o") == {"id": "gpt-4o", "object": "model"}
    assert upstream_model({"id": "gpt-4o"}, "gpt-4") is None
    assert upstream_model([], "gpt-4") is None
