"""Core tests: size rules, what a WxH must satisfy for a provider that takes a range (each rule kind)."""

from __future__ import annotations

import pytest

from proxy.core.size_rules import SizeRules, describe, size_problem, widest

# OpenAI's documented range for gpt-image-2: every rule kind at once.
GPT_IMAGE_2 = SizeRules(
    multiple_of=16, max_side=3840, min_pixels=655_360, max_pixels=8_294_400, max_aspect_ratio=(3, 1), auto=True
)
COGVIEW_4 = SizeRules(multiple_of=16, min_side=512, max_side=2048, max_pixels=2**21)


@pytest.mark.parametrize("size", ["1024x1024", "1536x1024", "3840x2160", "2160x3840", "2048x2048", "1024x768", "auto"])
def test_documented_sizes_keep_the_rules(size: str) -> None:
    assert size_problem(size, GPT_IMAGE_2) is None


def test_multiple_of() -> None:
    assert size_problem("1000x1008", GPT_IMAGE_2) == "width and height must be multiples of 16"
    assert size_problem("1008x1000", GPT_IMAGE_2) == "width and height must be multiples of 16"
    assert size_problem("1008x1008", SizeRules(multiple_of=16)) is None


def test_min_side() -> None:
    assert size_problem("496x1024", COGVIEW_4) == "each side must be at least 512 px"
    assert size_problem("1024x496", COGVIEW_4) == "each side must be at least 512 px"
    assert size_problem("512x512", COGVIEW_4) is None


def test_max_side() -> None:
    assert size_problem("3856x1296", GPT_IMAGE_2) == "each side must be at most 3840 px"
    assert size_problem("1296x3856", GPT_IMAGE_2) == "each side must be at most 3840 px"
    assert size_problem("2048x1024", COGVIEW_4) is None


def test_min_pixels() -> None:
    # 512x512 is 262,144 pixels, under gpt-image-2's floor; 1024x640 is exactly on it.
    assert size_problem("512x512", GPT_IMAGE_2) == "width x height must be at least 655,360 pixels"
    assert size_problem("1024x640", GPT_IMAGE_2) is None


def test_max_pixels() -> None:
    assert size_problem("2048x1040", COGVIEW_4) == "width x height must be at most 2,097,152 pixels"
    assert size_problem("2048x1024", COGVIEW_4) is None
    assert size_problem("3840x2176", GPT_IMAGE_2) == "width x height must be at most 8,294,400 pixels"


def test_max_aspect_ratio_either_orientation() -> None:
    assert size_problem("3072x1024", GPT_IMAGE_2) is None  # exactly 3:1
    assert size_problem("3088x1024", GPT_IMAGE_2) == "the aspect ratio must be at most 3:1"
    assert size_problem("1024x3088", GPT_IMAGE_2) == "the aspect ratio must be at most 3:1"
    wide = SizeRules(max_aspect_ratio=(21, 9))
    assert size_problem("2100x900", wide) is None
    assert size_problem("2101x900", wide) == "the aspect ratio must be at most 21:9"


def test_auto_only_when_the_rules_say_so() -> None:
    assert size_problem("auto", GPT_IMAGE_2) is None
    assert size_problem("auto", COGVIEW_4) == "'auto' is not accepted"


def test_widest_orders_a_ratio_long_side_first() -> None:
    assert widest((9, 21)) == (21, 9)
    assert widest((3, 1)) == (3, 1)


def test_describe_says_what_is_allowed() -> None:
    assert describe(GPT_IMAGE_2) == (
        "WIDTHxHEIGHT with sides multiples of 16, each side at most 3840 px, "
        "width x height 655,360 to 8,294,400 pixels, aspect ratio at most 3:1; or 'auto'"
    )
    assert describe(COGVIEW_4) == (
        "WIDTHxHEIGHT with sides multiples of 16, each side 512 to 2048 px, width x height at most 2,097,152 pixels"
    )
    assert describe(SizeRules(min_pixels=100, auto=True)) == "WIDTHxHEIGHT with width x height at least 100 pixels; or 'auto'"
    assert describe(SizeRules(auto=True)) == "WIDTHxHEIGHT; or 'auto'"
