"""Received: bytes kept as the chunks they arrived in answer `find` and slices as the joined bytes would."""

from __future__ import annotations

import itertools

import pytest

from proxy.core.received import Base64Chunks, Received

WHOLE = b'{"data": [{"b64_json": "QUJD"}], "b64_json": "x"}' * 3
NEEDLES = [b'"b64_json"', b'"', b"QUJD", b"}]", b"absent", WHOLE[-20:], WHOLE]


def cuts(whole: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(whole[at : at + size] for at in range(0, len(whole), size))


@pytest.mark.parametrize("size", [1, 2, 3, 9, 10, 11, 64, 1000])
def test_find_is_bytes_find_wherever_the_chunks_are_cut(size: int) -> None:
    received = Received(cuts(WHOLE, size))
    assert len(received) == len(WHOLE) and received.whole() == WHOLE
    for needle, start in itertools.product(NEEDLES, range(0, len(WHOLE) + 2, 5)):
        assert received.find(needle, start) == WHOLE.find(needle, start), (needle, start)


@pytest.mark.parametrize("size", [1, 4, 13, 1000])
def test_span_is_a_slice_of_the_whole(size: int) -> None:
    received = Received(cuts(WHOLE, size))
    for start, end in itertools.product(range(-2, len(WHOLE) + 3, 7), range(-2, len(WHOLE) + 3, 11)):
        assert received.span(start, end) == WHOLE[max(start, 0) : max(end, 0)], (start, end)


def test_empty_chunks_are_skipped_and_one_chunk_is_not_copied() -> None:
    assert Received((b"", b"ab", b"", b"c")).find(b"bc") == 1
    assert Received(WHOLE).whole() is WHOLE
    assert Received(()).find(b"x") == -1 and Received(()).span(0, 5) == b""


@pytest.mark.parametrize("size", [1, 4, 13, 1000])
def test_views_are_the_span_without_a_copy(size: int) -> None:
    received = Received(cuts(WHOLE, size))
    for start, end in itertools.product(range(-2, len(WHOLE) + 3, 7), range(-2, len(WHOLE) + 3, 11)):
        views = received.views(start, end)
        assert b"".join(views) == received.span(start, end), (start, end)
        assert all(isinstance(view.obj, bytes) and len(view) > 0 for view in views)


@pytest.mark.parametrize("size", [1, 3, 64])
def test_base64_chunks_answer_as_the_joined_bytes(size: int) -> None:
    text = b"QUJD" * 50 + b"QQ=="
    chunks = Base64Chunks(Received(cuts(text, size)).views(0, len(text)))
    assert len(chunks) == len(text) and bytes(chunks) == text and chunks.decode("ascii") == text.decode()
    assert chunks == text and chunks == Base64Chunks([memoryview(text)]) and hash(chunks) == hash(text)
    for start, stop in itertools.product([None, 0, 3, 50, 199], [None, 1, 4, 100, 203, 500]):
        assert chunks[start:stop] == text[start:stop], (start, stop)
    assert chunks[::2] == text[::2]
