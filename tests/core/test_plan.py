"""Core tests: a validated request plus its model rule becomes a Plan (defaults, whitelists, passthrough)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.plan import Plan, build_plan, forwarded
from proxy.core.request import parse_image_request
from proxy.core.rules import ModelRule
from proxy.core.size_rules import SizeRules
from tests.factories import DALLE3

GPT_IMAGE = ModelRule(
    pattern="gpt-image-*",
    channels=("openai",),
    upstream_model="gpt-image-1",
    defaults=MappingProxyType({"quality": "auto"}),
    passthrough=frozenset({"background", "output_format", "watermark", "extra_body"}),
)
OPEN = ModelRule(pattern="*", channels=("local",))
RANGED = ModelRule(
    pattern="ranged",
    channels=("openai",),
    size_rules=SizeRules(multiple_of=16, max_side=3840, min_pixels=655_360, max_pixels=8_294_400,
                         max_aspect_ratio=(3, 1), auto=True),
)


def _plan(rule: ModelRule, **body: Any) -> Plan:
    data = {"model": "dall-e-3", "prompt": "a lighthouse", **body}
    return build_plan(parse_image_request(data), rule)


def _error(rule: ModelRule, **body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        _plan(rule, **body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_dalle3_plan_with_defaults() -> None:
    plan = _plan(DALLE3)
    assert plan == Plan(
        model="dall-e-3",
        upstream_model="dall-e-3",
        prompt="a lighthouse",
        n=1,
        fields={"quality": "standard", "response_format": "url"},
        response_format="url",
        ignored=(),
        retries=0,
        wants_async=False,
        rule=DALLE3,
        client_prompt="a lighthouse",
    )


def test_defaults_fill_only_absent_fields() -> None:
    plan = _plan(DALLE3, quality="hd", response_format="base64")
    assert dict(plan.fields) == {"quality": "hd", "response_format": "b64_json"}
    assert plan.response_format == "b64_json"


def test_null_field_takes_the_default() -> None:
    assert dict(_plan(DALLE3, quality=None).fields) == {"quality": "standard", "response_format": "url"}


def test_max_n() -> None:
    error = _error(DALLE3, n=2)
    assert error.param == "n"
    assert error.code == "invalid_value"
    assert error.message == "Invalid 'n': 2. Model 'dall-e-3' allows between 1 and 1 images."


def test_n_at_max_and_default_max() -> None:
    assert _plan(DALLE3, n=1).n == 1
    assert _plan(DALLE3, n=0).n == 1
    assert _plan(OPEN, n=10).n == 10
    assert _error(OPEN, n=11).param == "n"


def test_size_whitelist() -> None:
    error = _error(DALLE3, size="512x512")
    assert error.param == "size"
    assert error.code == "invalid_size"
    assert error.message == "Invalid size '512x512' for model 'dall-e-3'. Supported sizes: 1024x1024, 1792x1024, 1024x1792."


def test_auto_is_not_allowed_unless_listed() -> None:
    assert _error(DALLE3, size="auto").param == "size"
    assert _plan(OPEN, size="auto").fields["size"] == "auto"


@pytest.mark.parametrize("spelling", ["1792×1024", "1792*1024", "1792X1024", " 1792 x 1024 "])
def test_normalised_size_is_accepted(spelling: str) -> None:
    assert _plan(DALLE3, size=spelling).fields["size"] == "1792x1024"


def test_any_size_without_a_whitelist() -> None:
    assert _plan(OPEN, size="333x777").fields["size"] == "333x777"


RANGED_ALLOWED = (
    "Allowed: WIDTHxHEIGHT with sides multiples of 16, each side at most 3840 px, "
    "width x height 655,360 to 8,294,400 pixels, aspect ratio at most 3:1; or 'auto'."
)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ("512x512", "width x height must be at least 655,360 pixels"),
        ("1000x1000", "width and height must be multiples of 16"),
        ("3856x1024", "each side must be at most 3840 px"),
        ("3840x2176", "width x height must be at most 8,294,400 pixels"),
        ("3088x1024", "the aspect ratio must be at most 3:1"),
    ],
)
def test_size_rules_refuse_with_what_is_allowed(size: str, reason: str) -> None:
    error = _error(RANGED, size=size)
    assert (error.param, error.code) == ("size", "invalid_size")
    assert error.message == f"Invalid size '{size}' for model 'dall-e-3': {reason}. {RANGED_ALLOWED}"


@pytest.mark.parametrize("size", ["2048x1152", "3840x2160", "1024x1536", "auto"])
def test_size_rules_let_a_documented_size_through(size: str) -> None:
    assert _plan(RANGED, size=size).fields["size"] == size


def test_size_rules_refuse_auto_unless_they_allow_it() -> None:
    rule = ModelRule(pattern="m", channels=("x",), size_rules=SizeRules(multiple_of=16))
    error = _error(rule, size="auto")
    assert error.message == (
        "Invalid size 'auto' for model 'dall-e-3': 'auto' is not accepted. Allowed: WIDTHxHEIGHT with sides multiples of 16."
    )
    assert _plan(rule).fields == {}


def test_values_enum() -> None:
    error = _error(DALLE3, quality="ultra")
    assert error.param == "quality"
    assert error.code == "invalid_value"
    assert error.message == "Invalid quality 'ultra' for model 'dall-e-3'. Supported values: standard, hd."


def test_values_enum_accepts_listed_value() -> None:
    assert _plan(DALLE3, quality="hd").fields["quality"] == "hd"


@pytest.mark.parametrize("value", ["vivid", {"preset": "noir", "weights": [1, 0.5]}])
def test_passthrough_forwards_byte_equal(value: Any) -> None:
    plan = _plan(GPT_IMAGE, style=value, background=value)
    assert plan.fields["background"] == value
    assert "style" not in plan.fields  # not listed for this model
    assert plan.ignored == ("style",)
    plan = _plan(DALLE3, style=value, background=value)
    assert plan.fields["style"] == value
    assert "background" not in plan.fields
    assert plan.ignored == ("background",)


def test_ignored_lists_dropped_fields_but_not_proxy_fields() -> None:
    plan = _plan(
        OPEN,
        style="vivid",
        watermark=False,
        negative_prompt="x",
        custom_thing=1,
        response_format="b64_json",
        retries=2,
        stream=False,
        quality="hd",
        size="64x64",
        **{"async": True},
    )
    assert plan.ignored == ("custom_thing", "negative_prompt", "style", "watermark")
    assert dict(plan.fields) == {"quality": "hd", "size": "64x64"}
    assert plan.response_format == "b64_json"
    assert plan.retries == 2
    assert plan.wants_async is True


def test_ignored_does_not_list_defaults() -> None:
    rule = ModelRule(pattern="m", channels=("x",), defaults=MappingProxyType({"response_format": "url"}))
    plan = build_plan(parse_image_request({"model": "m", "prompt": "p"}), rule)
    assert plan.ignored == ()
    assert plan.response_format == "url"
    assert "response_format" not in plan.fields


@pytest.mark.parametrize(("body", "expected"), [({}, None), ({"watermark": False}, False), ({"watermark": True}, True)])
def test_watermark_is_tri_state(body: dict[str, Any], expected: bool | None) -> None:
    plan = _plan(GPT_IMAGE, **body)
    if expected is None:
        assert "watermark" not in plan.fields
    else:
        assert plan.fields["watermark"] is expected
    assert plan.ignored == ()


def test_upstream_model_rename() -> None:
    plan = build_plan(parse_image_request({"model": "gpt-image-1-mini", "prompt": "p"}), GPT_IMAGE)
    assert plan.model == "gpt-image-1-mini"
    assert plan.upstream_model == "gpt-image-1"
    assert dict(plan.fields) == {"quality": "auto"}


def test_no_rename_keeps_the_client_name() -> None:
    plan = build_plan(parse_image_request({"model": "anything-7", "prompt": "p"}), OPEN)
    assert plan.upstream_model == "anything-7"


@pytest.mark.parametrize(
    ("body", "retries", "wants_async"),
    [({}, 0, False), ({"retries": 3}, 3, False), ({"async": True}, 0, True), ({"async": False, "retries": 0}, 0, False)],
)
def test_retries_and_async(body: dict[str, Any], retries: int, wants_async: bool) -> None:
    plan = _plan(OPEN, **body)
    assert plan.retries == retries
    assert plan.wants_async is wants_async


def test_retries_and_async_from_defaults() -> None:
    rule = ModelRule(pattern="m", channels=("x",), defaults=MappingProxyType({"retries": 2, "async": True}))
    plan = build_plan(parse_image_request({"model": "m", "prompt": "p"}), rule)
    assert (plan.retries, plan.wants_async) == (2, True)
    plan = build_plan(parse_image_request({"model": "m", "prompt": "p", "retries": 0, "async": False}), rule)
    assert (plan.retries, plan.wants_async) == (0, False)


def test_extra_body_forwarded_only_when_listed() -> None:
    extra = {"sequential_image_generation": "disabled", "opts": {"max_images": 15}}
    assert _plan(GPT_IMAGE, extra_body=extra).fields["extra_body"] == extra
    plan = _plan(OPEN, extra_body=extra)
    assert "extra_body" not in plan.fields
    assert plan.ignored == ("extra_body",)


def test_forwarded() -> None:
    assert forwarded("size", OPEN) is True
    assert forwarded("quality", OPEN) is True
    assert forwarded("style", OPEN) is False
    assert forwarded("style", DALLE3) is True
    assert forwarded("response_format", OPEN) is False


def test_plan_fields_are_read_only() -> None:
    with pytest.raises(TypeError):
        _plan(DALLE3).fields["quality"] = "hd"  # type: ignore[index]
