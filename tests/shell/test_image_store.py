"""The directory store decodes large base64 images while it writes them: the same bytes and the same
refusals as one whole decode, and nothing left behind by a refused or failed write."""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from pathlib import Path

import pytest

from proxy.core.errors import BadGateway
from proxy.core.received import Base64Chunks
from proxy.core.response import GeneratedImage
from proxy.finish import NOT_HOSTED, Delivery, Finisher, host
from proxy.image_store import FileImageStore, decode_slices
from tests.fakes.openai import PNG

SLICE = 256 * 1024  # proxy.image_store's slice, in base64 characters
IMAGE = PNG + os.urandom(SLICE)  # base64 of over one slice: decoded by the store


def whole(b64: bytes) -> bytes | None:
    try:
        return base64.b64decode(b64, validate=True)
    except binascii.Error:
        return None


def sliced(b64: bytes | Base64Chunks) -> bytes | None:
    try:
        return b"".join(decode_slices(b64))
    except binascii.Error:
        return None


def received(b64: bytes, size: int) -> Base64Chunks:
    """The text as views of the chunks an answer might have arrived in, `size` bytes each."""
    return Base64Chunks([memoryview(b64)[at : at + size] for at in range(0, len(b64), size)])


CHUNKS = [5, 1001, 65536 + 3]  # every quad boundary is cut somewhere


@pytest.mark.parametrize("size", [0, 1, 2, 3, SLICE * 3 // 4, SLICE * 3 // 4 + 1, SLICE * 3 // 4 + 3, SLICE * 3 // 2, 700_001])
def test_slices_decode_to_the_whole_decode(size: int) -> None:
    data = os.urandom(size)
    assert sliced(base64.b64encode(data)) == data
    assert all(sliced(received(base64.b64encode(data), chunk)) == data for chunk in CHUNKS)


GOOD = base64.b64encode(os.urandom(SLICE * 3 // 4 * 2 + 300))  # two full slices and a part
EVEN = base64.b64encode(os.urandom(SLICE * 3 // 4 * 2))  # two full slices


@pytest.mark.parametrize(
    "b64",
    [
        GOOD[: SLICE - 2] + b"==" + GOOD[SLICE:],  # padding that ends the first slice, more after it
        GOOD[: SLICE - 1] + b"=" + GOOD[SLICE:],
        GOOD[:SLICE] + b"=" + GOOD[SLICE + 1 :],  # padding that starts a slice
        GOOD[:100] + b"=" + GOOD[101:],  # padding in the middle of a slice
        GOOD[: SLICE + 5] + b"!" + GOOD[SLICE + 6 :],  # a character that is not base64, in a later slice
        GOOD[: SLICE + 5] + b"\n" + GOOD[SLICE + 6 :],
        GOOD[:-1],  # cut short: the padding is wrong
        GOOD + b"=",
        GOOD + b"QQ==QQ==",  # data after the padding
        b"=" + GOOD[1:],
        EVEN + b"=",  # that lone '=' alone after the last slice
        EVEN + b"QQ=",
        EVEN[:-1],
    ],
    ids=["pad-ends-slice-2", "pad-ends-slice-1", "pad-starts-slice", "pad-mid-slice", "bad-char", "newline", "short",
         "extra-pad", "after-padding", "leading-pad", "even-extra-pad", "even-short-tail", "even-cut"],
)
def test_slices_refuse_what_the_whole_decode_refuses(b64: bytes) -> None:
    assert sliced(b64) == whole(b64)  # refused (None), but for a lone '=' after whole quads, which both accept
    for chunk in CHUNKS:
        assert sliced(received(b64, chunk)) == whole(b64), chunk


def finisher(directory: Path) -> Finisher:
    return Finisher(session=None, store=FileImageStore(directory, 600), download=None)  # type: ignore[arg-type]


DELIVERY = Delivery("url", "http://proxy.example", 600)


@pytest.mark.parametrize("b64", [base64.b64encode(IMAGE), base64.b64encode(IMAGE).decode()], ids=["bytes", "str"])
async def test_a_large_image_is_stored_as_its_bytes(tmp_path: Path, b64: str | bytes) -> None:
    hosted = await host(finisher(tmp_path / "images"), GeneratedImage(b64_json=b64, revised_prompt="r"), DELIVERY)
    assert hosted.content_type == "image/png" and hosted.revised_prompt == "r" and hosted.unhosted is None
    assert hosted.url is not None and hosted.url.startswith("http://proxy.example/images/") and hosted.url.endswith(".png")
    assert [path.read_bytes() for path in (tmp_path / "images").iterdir()] == [IMAGE]


@pytest.mark.parametrize(
    "b64",
    [base64.b64encode(IMAGE)[:-1], base64.b64encode(IMAGE) + b"!", base64.b64encode(IMAGE).decode()[:-1] + "é"],
    ids=["short", "not-base64", "not-ascii"],
)
async def test_a_large_image_that_is_not_base64_is_a_502_and_leaves_no_file(tmp_path: Path, b64: str | bytes) -> None:
    with pytest.raises(BadGateway) as caught:
        await host(finisher(tmp_path / "images"), GeneratedImage(b64_json=b64), DELIVERY)
    assert caught.value.code == "bad_upstream_response"
    assert caught.value.message == "the upstream returned an image that is not valid base64"
    assert list((tmp_path / "images").iterdir()) == []


async def test_a_store_that_fails_delivers_the_image_as_base64(tmp_path: Path) -> None:
    hosting = finisher(tmp_path / "images")
    shutil.rmtree(tmp_path / "images")  # every write fails
    b64 = base64.b64encode(IMAGE)
    hosted = await host(hosting, GeneratedImage(b64_json=b64), DELIVERY)
    assert (hosted.url, hosted.b64_json, hosted.unhosted, hosted.content_type) == (None, b64, NOT_HOSTED, "image/png")


async def test_a_store_that_fails_first_still_refuses_what_is_not_base64(tmp_path: Path) -> None:
    hosting = finisher(tmp_path / "images")
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(BadGateway):
        await host(hosting, GeneratedImage(b64_json=base64.b64encode(IMAGE)[:-1]), DELIVERY)


async def test_the_sweep_removes_writes_abandoned_an_hour_ago_and_only_those(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = FileImageStore(tmp_path / "images", ttl=600, clock=lambda: now[0])
    name = await store.put(PNG, "image/png")
    os.utime(store.directory / name, (now[0], now[0]))
    files = {
        "abandoned": f".{'a' * 32}.png.part",  # a process killed mid-write
        "writing": f".{'b' * 32}.webp.part",  # a write going on now
        "foreign": ".notes.part",  # not one of the store's
    }
    for age, file in zip((3601, 5, 86_400), files.values(), strict=True):
        (store.directory / file).write_bytes(b"half an image")
        os.utime(store.directory / file, (now[0] - age, now[0] - age))
    assert await store.sweep() == 1
    assert sorted(path.name for path in store.directory.iterdir()) == sorted([name, files["writing"], files["foreign"]])
    now[0] += 601
    assert await store.sweep() == 1  # the image itself, once expired


@pytest.mark.parametrize("content_type", ["image/bmp", "image/tiff"])
async def test_every_type_a_name_is_made_for_is_served_and_swept(tmp_path: Path, content_type: str) -> None:
    now = [1_000_000.0]
    store = FileImageStore(tmp_path / "images", ttl=600, clock=lambda: now[0])
    name = await store.put(b"not checked here", content_type)
    os.utime(store.directory / name, (now[0], now[0]))
    stored = await store.get(name)
    assert stored is not None and stored.content_type == content_type  # a URL that works, not a 404
    now[0] += 601
    assert await store.sweep() == 1 and not (store.directory / name).exists()
