"""proxy.core.formats and the plan's output-format fields: what a channel is asked, what the proxy converts."""

from __future__ import annotations

import pytest

from proxy.core.formats import Conversion, NativeFormats, canonical_format, choose
from proxy.core.plan import build_plan, with_output_format
from proxy.core.request import parse_image_request
from proxy.core.rules import ModelRule

ALL = NativeFormats(asked=frozenset({"png", "jpeg", "webp"}), default="png", compression=True)
PNG_JPEG = NativeFormats(asked=frozenset({"png", "jpeg"}), default="jpeg")  # BFL
PNG_ONLY = NativeFormats(default="png")  # a provider with no format field
UNKNOWN = NativeFormats(default=None)


@pytest.mark.parametrize(("value", "canonical"), [("png", "png"), ("JPG", "jpeg"), ("jpeg", "jpeg"), (" webp", "webp"),
                                                  ("gif", None), ("svg", None), ("bmp", None), ("", None)])
def test_canonical_format(value: str, canonical: str | None) -> None:
    assert canonical_format(value) == canonical


def test_a_format_the_provider_makes_is_asked_and_not_converted() -> None:
    choice = choose("webp", 70, ALL)
    assert (dict(choice.fields), choice.conversion) == ({"output_format": "webp", "output_compression": 70}, None)
    choice = choose("jpeg", None, PNG_JPEG)
    assert (dict(choice.fields), choice.conversion) == ({"output_format": "jpeg"}, None)


def test_the_providers_only_format_needs_neither_a_field_nor_a_conversion() -> None:
    choice = choose("png", None, PNG_ONLY)
    assert (dict(choice.fields), choice.conversion) == ({}, None)


def test_a_format_the_provider_cannot_make_is_converted_from_lossless_png_when_it_can_make_png() -> None:
    choice = choose("webp", None, PNG_JPEG)
    assert (dict(choice.fields), choice.conversion) == ({"output_format": "png"}, Conversion("webp"))
    # Its default already is png: nothing to ask.
    choice = choose("webp", 30, PNG_ONLY)
    assert (dict(choice.fields), choice.conversion) == ({}, Conversion("webp", 30))


def test_compression_the_provider_cannot_take_is_applied_by_the_proxy() -> None:
    choice = choose("jpeg", 40, PNG_JPEG)
    assert (dict(choice.fields), choice.conversion) == ({"output_format": "png"}, Conversion("jpeg", 40))


def test_compression_means_nothing_for_png() -> None:
    assert choose("png", 40, ALL).fields == {"output_format": "png"}
    assert choose("png", 40, PNG_ONLY).conversion is None


def test_an_unknown_default_is_checked_on_the_bytes() -> None:
    choice = choose("png", None, UNKNOWN)
    assert (dict(choice.fields), choice.conversion) == ({}, Conversion("png"))


@pytest.mark.parametrize(("conversion", "source", "needed"), [
    (Conversion("webp"), "webp", False),
    (Conversion("webp"), "png", True),
    (Conversion("webp", 50), "webp", True),  # re-encoded at the asked compression
    (Conversion("png"), "unknown", True),
])
def test_conversion_needed(conversion: Conversion, source: str, needed: bool) -> None:
    assert conversion.needed(source) is needed



def test_output_format_is_understood_for_every_model_without_passthrough() -> None:
    plan = build_plan(parse_image_request({"model": "m", "prompt": "p", "output_format": "JPG", "output_compression": 55}),
                      ModelRule(pattern="m", channels=("c",)))
    assert (plan.output_format, plan.output_compression, plan.ignored) == ("jpeg", 55, ())
    assert "output_format" not in plan.fields and "output_compression" not in plan.fields
    # Each channel then gets what its provider can take.
    assert with_output_format(plan, ALL).fields == {"output_format": "jpeg", "output_compression": 55}
    converting = with_output_format(plan, PNG_ONLY)
    assert (dict(converting.fields), converting.conversion) == ({}, Conversion("jpeg", 55))


def test_compression_without_a_lossy_format_stays_a_passthrough_field() -> None:
    rule = ModelRule(pattern="m", channels=("c",))
    alone = build_plan(parse_image_request({"model": "m", "prompt": "p", "output_compression": 55}), rule)
    assert (alone.output_compression, alone.ignored) == (None, ("output_compression",))
    forwarding = ModelRule(pattern="m", channels=("c",), passthrough=frozenset({"output_compression"}))
    forwarded = build_plan(parse_image_request({"model": "m", "prompt": "p", "output_compression": 55}), forwarding)
    assert (dict(forwarded.fields), forwarded.ignored) == ({"output_compression": 55}, ())


def test_a_plan_without_output_format_is_left_alone() -> None:
    plan = build_plan(parse_image_request({"model": "m", "prompt": "p"}), ModelRule(pattern="m", channels=("c",)))
    assert with_output_format(plan, PNG_ONLY) is plan
