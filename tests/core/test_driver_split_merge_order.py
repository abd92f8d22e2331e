"""Core-style tests of the driver's pure helpers: splitting n across calls, merging their answers, and the order
in which a model's channels are tried."""

from __future__ import annotations

import pytest

from proxy.core.response import GeneratedImage, ImagesResult
from proxy.driver import merge_results, split_n


@pytest.mark.parametrize(
    ("n", "per_call", "expected"),
    [
        (5, 2, [2, 2, 1]),
        (4, 2, [2, 2]),
        (1, 1, [1]),
        (3, 1, [1, 1, 1]),
        (10, 4, [4, 4, 2]),
        (2, 5, [2]),
        (5, 5, [5]),
        (7, None, [7]),
    ],
)
def test_split_n(n: int, per_call: int | None, expected: list[int]) -> None:
    assert split_n(n, per_call) == expected
    assert sum(split_n(n, per_call)) == n


def _image(name: str) -> GeneratedImage:
    return GeneratedImage(url=f"https://cdn.example.com/{name}.png")


def test_merge_keeps_image_order_and_first_created_and_extra() -> None:
    first = ImagesResult(images=(_image("a"), _image("b")), created=100, extra={"size": "1024x1024"})
    second = ImagesResult(images=(_image("c"),), created=200, extra={"size": "512x512"})
    assert merge_results([first, second]) == ImagesResult(
        images=(_image("a"), _image("b"), _image("c")), created=100, usage=None, extra={"size": "1024x1024"}
    )


def test_merge_sums_usage_including_nested_dicts() -> None:
    results = [
        ImagesResult(images=(_image("a"),), usage={
            "total_tokens": 10, "input_tokens": 4, "output_tokens": 6,
            "input_tokens_details": {"text_tokens": 3, "image_tokens": 1}, "model": "gpt-image-1",
        }),
        ImagesResult(images=(_image("b"),), usage=None),
        ImagesResult(images=(_image("c"),), usage={
            "total_tokens": 5, "input_tokens": 2, "output_tokens": 3.5,
            "input_tokens_details": {"text_tokens": 2, "cached_tokens": 7}, "model": "other", "extra_count": 1,
        }),
    ]
    merged = merge_results(results)
    assert merged.usage == {
        "total_tokens": 15,
        "input_tokens": 6,
        "output_tokens": 9.5,
        "input_tokens_details": {"text_tokens": 5, "image_tokens": 1, "cached_tokens": 7},
        "model": "gpt-image-1",
        "extra_count": 1,
    }
    assert len(merged.images) == 3


def test_merge_does_not_mutate_inputs() -> None:
    usage = {"total_tokens": 1, "details": {"a": 1}}
    results = [ImagesResult(images=(), usage=usage), ImagesResult(images=(), usage={"total_tokens": 2, "details": {"a": 2}})]
    merged = merge_results(results)
    assert merged.usage == {"total_tokens": 3, "details": {"a": 3}}
    assert usage == {"total_tokens": 1, "details": {"a": 1}}
    assert results[1].usage == {"total_tokens": 2, "details": {"a": 2}}


def test_merge_booleans_are_not_summed() -> None:
    merged = merge_results([ImagesResult(images=(), usage={"cached": True}), ImagesResult(images=(), usage={"cached": True})])
    assert merged.usage == {"cached": True}


def test_merge_without_usage() -> None:
    results = [ImagesResult(images=(_image("a"),)), ImagesResult(images=(_image("b"),))]
    assert merge_results(results).usage is None


def test_merge_single() -> None:
    only = ImagesResult(images=(_image("a"),), created=5, usage={"total_tokens": 3})
    assert merge_results([only]) == only


def test_attempt_order_keeps_failover_order_without_weights() -> None:
    from proxy.core.rules import Channel
    from proxy.driver import attempt_order

    a, b, c = Channel("a", "openai"), Channel("b", "openai"), Channel("c", "openai")
    assert attempt_order([a, b, c], 0.99) == [a, b, c]


def test_attempt_order_picks_the_first_by_weight_and_keeps_the_rest_in_order() -> None:
    from proxy.core.rules import Channel
    from proxy.driver import attempt_order

    a, b, c = Channel("a", "openai", weight=1), Channel("b", "openai", weight=3), Channel("c", "openai")
    assert attempt_order([a, b, c], 0.0) == [a, b, c]
    assert attempt_order([a, b, c], 0.24) == [a, b, c]
    assert attempt_order([a, b, c], 0.25) == [b, a, c]
    assert attempt_order([a, b, c], 0.99) == [b, a, c]


def test_merge_renumbers_failed_images_and_adds_up_filtered_counts() -> None:
    # n=4 fanned out as 2+2, the first call lost to an error: the calls that answered began at images 2 and 4
    # (of a 6-image request split 2+2+2); each numbered its failures from 0.
    second = ImagesResult(images=(_image("c"),), extra={
        "failed_images": [{"index": 1, "code": "moderation", "message": "no"}], "filtered_images": 1, "seeds": [7]})
    third = ImagesResult(images=(_image("e"),), extra={
        "failed_images": [{"index": 0, "code": "timeout", "message": "late"}], "filtered_images": 1, "seeds": [9]})
    merged = merge_results([second, third], [2, 4])
    assert merged.extra == {
        "failed_images": [
            {"index": 3, "code": "moderation", "message": "no"},
            {"index": 4, "code": "timeout", "message": "late"},
        ],
        "filtered_images": 2,
        "seeds": [7, 9],
    }
