"""Core tests: the multipart/form-data encoder, checked by a strict decoder here and by the stdlib email parser."""

from __future__ import annotations

import re
from email.message import MIMEPart
from email.parser import BytesParser
from email.policy import HTTP

import pytest

from proxy.core.multipart import BOUNDARY_PREFIX, encode, file_part, pick_boundary, text_part
from tests.factories import Field, decode_form

# Every byte value, CRLFs and things that look like delimiters: what a binary image part can hold.
AWKWARD = bytes(range(256)) + b"\r\n--\r\n\r\n--imagegate-\r\n"


def email_parts(body: bytes, content_type: str) -> list[MIMEPart]:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert not message.defects
    return list(message.iter_parts())


def test_text_and_file_parts_round_trip_exactly_in_order() -> None:
    form = encode([text_part("prompt", "a red fox, 狐"), file_part("image", AWKWARD, "image.png", "image/png"),
                   text_part("empty", "")])

    assert decode_form(form.body, form.content_type) == [
        Field("prompt", None, None, "a red fox, 狐".encode()),
        Field("image", "image.png", "image/png", AWKWARD),
        Field("empty", None, None, b""),
    ]


def test_exact_wire_layout() -> None:
    form = encode([text_part("seed", "42")])

    boundary = form.boundary.encode()
    assert form.body == (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="seed"\r\n\r\n42\r\n--'
                         + boundary + b"--\r\n")
    assert form.content_type == f"multipart/form-data; boundary={form.boundary}"
    assert re.fullmatch(re.escape(BOUNDARY_PREFIX) + "[0-9a-f]{40}", form.boundary)


def test_boundary_is_deterministic_and_depends_on_the_parts() -> None:
    parts = [text_part("prompt", "cat"), file_part("image", b"\x89PNG", "image.png", "image/png")]

    assert encode(parts) == encode(list(parts))
    assert encode(parts).boundary != encode([text_part("prompt", "dog"), parts[1]]).boundary
    # Moving bytes from one part to the next is a different form, so it must not hash alike.
    split_late = encode([text_part("a", "xy"), text_part("b", "")])
    split_early = encode([text_part("a", "x"), text_part("b", "y")])
    assert split_late.boundary != split_early.boundary


def test_boundary_never_occurs_in_the_content() -> None:
    digest = bytes(32)
    first = pick_boundary(digest, [])

    second = pick_boundary(digest, [b"prefix " + first.encode() + b" suffix"])

    assert second != first
    assert second.startswith(BOUNDARY_PREFIX)
    assert pick_boundary(digest, [b"nothing to see"]) == first


def test_names_and_filenames_are_escaped_as_browsers_do() -> None:
    form = encode([file_part('we"ird\r\nname', b"x", 'a"b\n.png', "image/png")])

    assert b'name="we%22ird%0D%0Aname"; filename="a%22b%0A.png"' in form.body
    assert decode_form(form.body, form.content_type)[0].name == "we%22ird%0D%0Aname"


def test_a_content_type_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode([file_part("image", b"x", "a.png", "image/png\r\nX-Injected: 1")])


def test_the_stdlib_email_parser_reads_the_same_form() -> None:
    form = encode([text_part("prompt", "a lighthouse at dusk"), text_part("aspect_ratio", "16:9"),
                   file_part("image", b"\x89PNG\r\n\x1a\n0000", "image.png", "image/png")])

    parts = email_parts(form.body, form.content_type)

    assert [(p.get_param("name", header="content-disposition"), p.get_filename()) for p in parts] == [
        ("prompt", None), ("aspect_ratio", None), ("image", "image.png")]
    assert parts[0].get_payload(decode=True) == b"a lighthouse at dusk"
    assert parts[1].get_payload(decode=True) == b"16:9"
    assert parts[2].get_content_type() == "image/png"
