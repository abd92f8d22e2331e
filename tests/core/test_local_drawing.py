"""Core tests: the local model's drawing pieces (pattern, layout, mask, variation, previews, codec) on pixels."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from proxy.adapters import local_codec, local_edit, local_pattern
from proxy.core.errors import InvalidRequest
from proxy.core.sizes import Size


def test_digest_depends_on_every_part() -> None:
    base = local_pattern.digest_of("p", 1, 0)
    assert base == local_pattern.digest_of("p", 1, 0)
    assert len({base, local_pattern.digest_of("p", 2, 0), local_pattern.digest_of("p", 1, 1),
                local_pattern.digest_of("q", 1, 0)}) == 4


def test_gradient_runs_between_its_colours() -> None:
    image = local_pattern.gradient((255, 0, 0), (0, 0, 255), (0, 255, 0), Size(64, 64))
    top_left, top_right = image.getpixel((0, 0)), image.getpixel((63, 0))
    bottom = image.getpixel((32, 63))
    assert isinstance(top_left, tuple) and isinstance(top_right, tuple) and isinstance(bottom, tuple)
    assert top_left[0] > 240 and top_left[2] < 15
    assert top_right[2] > 240 and top_right[0] < 15
    assert bottom[1] > 240


def test_shapes_stay_related_to_the_size() -> None:
    digest = local_pattern.digest_of("p", 0, 0)
    found = local_pattern.shapes(digest, Size(200, 100))
    assert 2 <= len(found) <= 4
    for kind, cx, cy, radius, _ in found:
        assert kind in ("circle", "square")
        assert 0 <= cx < 200 and 0 <= cy < 100 and 1 <= radius <= 100


def test_pattern_shapes_are_painted_in_their_colour() -> None:
    digest = local_pattern.digest_of("a fox", 0, 0)
    size = Size(128, 128)
    image = local_pattern.pattern(digest, size)
    kind, cx, cy, _, colour = local_pattern.shapes(digest, size)[-1]  # drawn last: nothing covers its centre
    assert image.getpixel((cx, cy)) == (*colour, 255)
    assert kind in ("circle", "square")


def test_transparent_pattern_keeps_only_the_shapes() -> None:
    digest = local_pattern.digest_of("a fox", 0, 0)
    image = local_pattern.pattern(digest, Size(64, 64), transparent=True)
    _, cx, cy, _, _ = local_pattern.shapes(digest, Size(64, 64))[-1]
    alpha = image.getchannel("A")
    assert alpha.getpixel((cx, cy)) == 255
    assert alpha.getextrema() == (0, 255)


def test_cells_tile_the_output_exactly() -> None:
    assert local_edit.cells(1, Size(10, 6)) == [(0, 0, 10, 6)]
    assert local_edit.cells(2, Size(10, 6)) == [(0, 0, 5, 6), (5, 0, 10, 6)]
    assert local_edit.cells(3, Size(10, 6)) == [(0, 0, 5, 3), (5, 0, 10, 3), (0, 3, 5, 6)]
    boxes = local_edit.cells(5, Size(99, 77))
    assert sum((right - left) * (bottom - top) for left, top, right, bottom in boxes) <= 99 * 77


def test_compose_places_each_input_in_its_cell() -> None:
    red, blue = Image.new("RGBA", (7, 3), (255, 0, 0, 255)), Image.new("RGBA", (2, 9), (0, 0, 255, 255))
    canvas = local_edit.compose(iter([red, blue]), 2, Size(20, 10))
    assert canvas.getpixel((0, 0)) == canvas.getpixel((9, 9)) == (255, 0, 0, 255)
    assert canvas.getpixel((10, 0)) == canvas.getpixel((19, 9)) == (0, 0, 255, 255)


def test_fit_returns_a_same_size_image_untouched() -> None:
    image = Image.new("RGBA", (5, 5))
    assert local_edit.fit(image, 5, 5) is image
    assert local_edit.fit(image, 8, 2).size == (8, 2)


def test_keep_map_covers_only_the_first_cell() -> None:
    mask = Image.new("L", (4, 4), 0)  # all of the first image is to be edited
    keep = local_edit.keep_map(mask, 2, Size(8, 4))
    assert keep.getpixel((0, 0)) == keep.getpixel((3, 3)) == 0
    assert keep.getpixel((4, 0)) == keep.getpixel((7, 3)) == 255


def test_repaint_mixes_where_the_mask_is_half_transparent() -> None:
    picture = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    pattern = Image.new("RGBA", (2, 1), (0, 0, 200, 255))
    keep = Image.new("L", (2, 1), 255)
    keep.putpixel((0, 0), 128)
    out = local_edit.repaint(picture, pattern, keep)
    assert out.getpixel((1, 0)) == (200, 0, 0, 255)
    mixed = out.getpixel((0, 0))
    assert isinstance(mixed, tuple) and 90 < mixed[0] < 110 and 90 < mixed[2] < 110


def test_restyle_keeps_most_of_the_picture() -> None:
    out = local_edit.restyle(Image.new("RGBA", (1, 1), (200, 0, 0, 255)), Image.new("RGBA", (1, 1), (0, 0, 200, 255)))
    assert out.getpixel((0, 0)) == (120, 0, 80, 255)


def test_vary_turns_hues_and_keeps_alpha() -> None:
    picture = Image.new("RGBA", (4, 4), (255, 0, 0, 100))
    pattern = Image.new("RGBA", (4, 4), (255, 0, 0, 100))  # a pattern like the picture isolates the hue turn
    digest = bytes([64]) + bytes(31)
    assert local_edit.hue_shift(digest) == 96
    out = local_edit.vary(picture, pattern, digest)
    pixel = out.getpixel((0, 0))
    assert isinstance(pixel, tuple)
    assert pixel[1] > pixel[0]  # 96/256 of the wheel from red is green
    assert pixel[3] == 100


@pytest.mark.parametrize("byte", range(0, 256, 17))
def test_hue_shift_is_never_nearly_none(byte: int) -> None:
    assert 32 <= local_edit.hue_shift(bytes([byte]) + bytes(31)) <= 223


def test_previews_get_finer_and_keep_the_size() -> None:
    image = local_pattern.pattern(local_pattern.digest_of("p", 0, 0), Size(128, 96))
    previews = [local_edit.preview(image, step, 3) for step in range(3)]
    assert all(preview.size == (128, 96) for preview in previews)
    counts = [len(preview.getcolors(128 * 96) or ()) for preview in previews]
    assert counts[0] < counts[1] < counts[2] < len(image.getcolors(128 * 96) or ())


def _encoded(image: Image.Image, output_format: str, compression: int | None = None) -> Image.Image:
    decoded = Image.open(io.BytesIO(local_codec.encode(image, output_format, compression)))
    decoded.load()
    return decoded


def test_encode_drops_alpha_only_where_it_says_nothing_or_cannot_be_kept() -> None:
    opaque = Image.new("RGBA", (4, 4), (1, 2, 3, 255))
    see_through = Image.new("RGBA", (4, 4), (1, 2, 3, 0))
    assert _encoded(opaque, "png").mode == "RGB"
    assert _encoded(see_through, "png").mode == "RGBA"
    assert _encoded(see_through, "webp").mode == "RGBA"
    assert _encoded(see_through, "jpeg").mode == "RGB"
    assert _encoded(opaque, "png").getpixel((0, 0)) == (1, 2, 3)


def test_decode_gives_rgba_of_any_accepted_format() -> None:
    for pillow_format in ("PNG", "JPEG", "WEBP", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (3, 2), (0, 0, 0)).save(buffer, pillow_format)
        image = local_codec.decode(buffer.getvalue(), "image")
        assert (image.mode, image.size) == ("RGBA", (3, 2))


def test_decode_refuses_other_formats_naming_the_param() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2)).save(buffer, "BMP")
    with pytest.raises(InvalidRequest) as caught:
        local_codec.decode(buffer.getvalue(), "image")
    assert caught.value.param == "image"


def test_decode_mask_reads_the_alpha_channel() -> None:
    buffer = io.BytesIO()
    mask = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    mask.putpixel((0, 0), (0, 0, 0, 0))
    mask.save(buffer, "PNG")
    alpha = local_codec.decode_mask(buffer.getvalue())
    assert (alpha.mode, alpha.getpixel((0, 0)), alpha.getpixel((1, 0))) == ("L", 0, 255)
