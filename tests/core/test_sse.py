"""Core tests: the SSE parser (WHATWG event-stream rules, arbitrary chunking, size guard) and the formatters."""

from __future__ import annotations

import json

import pytest

from proxy.core.errors import ContentPolicyViolation
from proxy.core.sse import (
    KEEPALIVE,
    Event,
    SSEParser,
    completed_event,
    error_event,
    error_payload,
    format_event,
    format_json_event,
    is_done,
)

# A stream with every feature at once: BOM, comments, named and unnamed events, multi-line data, an id that
# persists, retry, a field without colon, a value without the optional space, non-ASCII text, an event with
# no data (not dispatched), [DONE].
SAMPLE = (
    "\ufeff: keep-alive\n"
    "event: image_generation.partial_image\n"
    'data: {"type":"image_generation.partial_image","b64_json":"QUJD","partial_image_index":0}\n'
    "id: 7\n"
    "\n"
    "data: first line\r\n"
    "data:second line without space\r\n"
    "data\r\n"
    "retry: 1500\r\n"
    "\r\n"
    "event: only-a-name\r"
    "\r"
    "data: ünïcödé → 画像\r"
    "\r"
    "data: [DONE]\n"
    "\n"
).encode()

EXPECTED = [
    Event("image_generation.partial_image",
          '{"type":"image_generation.partial_image","b64_json":"QUJD","partial_image_index":0}', id="7"),
    Event(None, "first line\nsecond line without space\n", id="7", retry=1500),
    Event(None, "ünïcödé → 画像", id="7"),
    Event(None, "[DONE]", id="7"),
]


def parse(chunks: list[bytes], **kwargs: int) -> list[Event]:
    parser = SSEParser(**kwargs)
    events: list[Event] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def test_whole_sample() -> None:
    assert parse([SAMPLE]) == EXPECTED


@pytest.mark.parametrize("offset", range(len(SAMPLE) + 1))
def test_every_split_point_gives_the_same_events(offset: int) -> None:
    # Splits land mid-line, between CR and LF, and inside multi-byte UTF-8 sequences (ü, →, 画).
    assert parse([SAMPLE[:offset], SAMPLE[offset:]]) == EXPECTED


def test_one_byte_at_a_time() -> None:
    assert parse([SAMPLE[i:i + 1] for i in range(len(SAMPLE))]) == EXPECTED


def test_two_split_points() -> None:
    for first in range(0, len(SAMPLE), 7):
        for second in range(first, len(SAMPLE), 11):
            assert parse([SAMPLE[:first], SAMPLE[first:second], SAMPLE[second:]]) == EXPECTED


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"])
def test_line_endings(newline: str) -> None:
    text = newline.join(["event: a", "data: 1", "data: 2", "", "data: 3", "", ""])
    assert parse([text.encode()]) == [Event("a", "1\n2"), Event(None, "3")]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    # Were the LF a second line end, the blank line would dispatch "x" before "y" arrives.
    assert parse([b"data: x\r", b"\ndata: y\r\n\r\n"]) == [Event(None, "x\ny")]


def test_cr_cr_is_a_blank_line() -> None:
    assert parse([b"data: x\r", b"\r"]) == [Event(None, "x")]


def test_comments_and_keepalives_are_ignored() -> None:
    assert parse([b": hello\n" + KEEPALIVE + b":\n\ndata: x\n\n"]) == [Event(None, "x")]


def test_field_without_colon_and_unknown_fields() -> None:
    assert parse([b"data\ndata\nfoo: bar\n\n"]) == [Event(None, "\n")]


def test_only_one_space_is_stripped() -> None:
    assert parse([b"data:  two spaces\n\n"]) == [Event(None, " two spaces")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    assert parse([b"event: lonely\n\ndata: x\n\n"]) == [Event(None, "x")]


def test_bom_only_at_the_start() -> None:
    assert parse([b"\xef\xbb", b"\xbfdata: a\n\n"]) == [Event(None, "a")]
    # A second BOM is content: the field name is then "\ufeffdata", an unknown field.
    assert parse([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"]) == []


def test_invalid_utf8_is_replaced() -> None:
    assert parse([b"data: \xff\n\n"]) == [Event(None, "\ufffd")]


def test_id_with_nul_is_ignored_and_retry_must_be_digits() -> None:
    assert parse([b"id: 1\n\nid: a\x00b\nretry: 1s\ndata: x\n\n"]) == [Event(None, "x", id="1")]


def test_unterminated_final_event_is_discarded() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: cut off") == [Event(None, "complete")]
    assert parser.pending
    assert parser.close() == []
    assert not parser.pending


def test_data_lines_without_the_blank_line_are_discarded_too() -> None:
    assert parse([b"data: a\ndata: b\n"]) == []


def test_feed_after_close_fails() -> None:
    parser = SSEParser()
    parser.close()
    with pytest.raises(ValueError):
        parser.feed(b"data: x\n\n")


def test_size_guard_on_one_long_line() -> None:
    parser = SSEParser(max_event_size=100)
    parser.feed(b"data: " + b"A" * 90)
    with pytest.raises(ValueError, match="larger than 100"):
        parser.feed(b"A" * 20)


def test_size_guard_on_many_data_lines() -> None:
    parser = SSEParser(max_event_size=100)
    with pytest.raises(ValueError):
        parser.feed(b"data: 0123456789\n" * 20)


def test_size_guard_resets_per_event() -> None:
    chunk = b"data: " + b"A" * 60 + b"\n\n"
    assert parse([chunk] * 10, max_event_size=100) == [Event(None, "A" * 60)] * 10


def test_megabytes_of_base64_in_small_chunks() -> None:
    payload = json.dumps({"type": "image_generation.completed", "b64_json": "QUJD" * 500_000})
    stream = format_event(payload, "image_generation.completed")
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    assert parse(chunks) == [Event("image_generation.completed", payload)]


def test_is_done() -> None:
    assert is_done(Event(None, "[DONE]"))
    assert is_done(Event("done", " [DONE] "))
    assert not is_done(Event(None, '{"type":"image_generation.completed"}'))


def test_format_event() -> None:
    assert format_event("a\nb", "x") == b"event: x\ndata: a\ndata: b\n\n"
    assert format_event("") == b"data: \n\n"
    with pytest.raises(ValueError):
        format_event("a", "bad\nname")


@pytest.mark.parametrize("data", ["one", "two\nlines", " leading space", "", "\n", "ünï:cödé", ": not a comment"])
def test_format_round_trips(data: str) -> None:
    assert parse([format_event(data, "name")]) == [Event("name", data)]
    assert parse([format_event(data)]) == [Event(None, data)]


def test_format_json_event_is_compact_one_line_utf8() -> None:
    raw = format_json_event({"type": "t", "text": "画像\nnext"}, "t")
    assert raw == 'event: t\ndata: {"type":"t","text":"画像\\nnext"}\n\n'.encode()
    (event,) = parse([raw])
    assert json.loads(event.data) == {"type": "t", "text": "画像\nnext"}


def test_error_event_shape() -> None:
    envelope = ContentPolicyViolation("blocked by the safety system").envelope()
    raw = error_event(envelope)
    assert raw.startswith(b"event: error\ndata: ")
    (event,) = parse([raw])
    assert event.event == "error"
    assert json.loads(event.data) == {
        "type": "error",
        "error": {"message": "blocked by the safety system", "type": "image_generation_user_error",
                  "param": None, "code": "moderation_blocked"},
    }


def test_error_payload_needs_an_error_object() -> None:
    with pytest.raises(ValueError):
        error_payload({"message": "no envelope"})


def test_completed_event_keeps_only_known_keys() -> None:
    usage = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
             "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}
    assert completed_event(b64_json="QUJD", created_at=1757323224, size="1024x1024", quality="high",
                           background="opaque", output_format="png", usage=usage) == {
        "type": "image_generation.completed", "b64_json": "QUJD", "created_at": 1757323224, "size": "1024x1024",
        "quality": "high", "background": "opaque", "output_format": "png", "usage": usage,
    }
    assert completed_event(kind="image_edit", url="https://x/1.jpeg") == {
        "type": "image_edit.completed", "url": "https://x/1.jpeg",
    }


def test_completed_event_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        completed_event(created_at=1)
    with pytest.raises(ValueError):
        completed_event(kind="image_variation", b64_json="QUJD")


def test_a_lone_surrogate_in_an_event_goes_out_as_its_json_escape() -> None:
    # An upstream's `"\ud800"` is valid JSON; the character it decodes to has no UTF-8 form.
    event = format_json_event({"revised_prompt": "cat \ud800 é"})
    assert event == 'data: {"revised_prompt":"cat \\ud800 é"}\n\n'.encode()
    assert json.loads(event[len(b"data: "):]) == {"revised_prompt": "cat \ud800 é"}
