"""Core tests: image sizes and ratios as values."""

from __future__ import annotations

import pytest

from proxy.core.sizes import AUTO, Size, nearest_ratio, nearest_size, normalise_size, parse_ratio, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024x1024", Size(1024, 1024)),
        ("1792×1024", Size(1792, 1024)),
        ("1024*1792", Size(1024, 1792)),
        ("512X256", Size(512, 256)),
        ("  64 x 32  ", Size(64, 32)),
        ("0001x0002", Size(1, 2)),
    ],
)
def test_parse_size(text: str, expected: Size) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "auto", "1024", "0x10", "10x0", "-1x10", "1.5x2", "10x10x10", "1234567x1", "10 10", "a x b"]
)
def test_parse_size_rejects(text: str) -> None:
    assert parse_size(text) is None


def test_size_str_pixels_and_order() -> None:
    size = Size(1792, 1024)
    assert str(size) == "1792x1024"
    assert size.pixels == 1_835_008
    assert sorted([Size(2, 1), Size(1, 5), Size(1, 2)]) == [Size(1, 2), Size(1, 5), Size(2, 1)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024×1024", "1024x1024"), ("1024*1024", "1024x1024"), ("1024X1024", "1024x1024"), ("auto", AUTO),
     (" Auto ", "auto"), ("AUTO", "auto"), ("bogus", None), ("", None)],
)
def test_normalise_size(text: str, expected: str | None) -> None:
    assert normalise_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16:9", (16, 9)), (" 4 : 3 ", (4, 3)), ("1:1", (1, 1)), ("0:1", None), ("1:0", None), ("16x9", None),
     ("a:b", None), (":", None), ("1.5:1", None), ("-1:2", None)],
)
def test_parse_ratio(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_ratio(text) == expected


def test_nearest_ratio() -> None:
    ratios = ["1:1", "16:9", "9:16", "4:3", "3:4"]
    assert nearest_ratio(Size(1024, 1024), ratios) == "1:1"
    assert nearest_ratio(Size(1792, 1024), ratios) == "16:9"
    assert nearest_ratio(Size(1024, 1792), ratios) == "9:16"
    assert nearest_ratio(Size(1024, 768), ratios) == "4:3"
    assert nearest_ratio(Size(1000, 1300), ratios) == "3:4"


def test_nearest_ratio_is_symmetric_on_a_log_scale_and_first_wins_a_tie() -> None:
    # 2:1 and 1:2 are equally far from 1:1.
    assert nearest_ratio(Size(100, 100), ["2:1", "1:2"]) == "2:1"
    assert nearest_ratio(Size(100, 100), ["1:2", "2:1"]) == "1:2"


def test_nearest_ratio_skips_unparseable_and_needs_one() -> None:
    assert nearest_ratio(Size(10, 10), ["bad", "3:2"]) == "3:2"
    with pytest.raises(ValueError, match="no W:H ratio"):
        nearest_ratio(Size(10, 10), ["bad"])


def test_nearest_size() -> None:
    sizes = [Size(1024, 1024), Size(1344, 768), Size(768, 1344), Size(1440, 720), Size(720, 1440)]
    assert nearest_size(Size(1792, 1024), sizes) == Size(1344, 768)
    assert nearest_size(Size(1024, 1792), sizes) == Size(768, 1344)
    assert nearest_size(Size(512, 512), sizes) == Size(1024, 1024)
    assert nearest_size(Size(2000, 1000), sizes) == Size(1440, 720)


def test_nearest_size_prefers_shape_then_pixel_count() -> None:
    sizes = [Size(256, 256), Size(512, 512), Size(1024, 1024), Size(1024, 512)]
    assert nearest_size(Size(600, 600), sizes) == Size(512, 512)
    assert nearest_size(Size(900, 900), sizes) == Size(1024, 1024)
    assert nearest_size(Size(4000, 2000), sizes) == Size(1024, 512)


def test_nearest_size_needs_one() -> None:
    with pytest.raises(ValueError, match="no size"):
        nearest_size(Size(1, 1), [])
