"""Core tests: an upstream's failure answer becomes a ProxyError with a faithful status (ARCHITECTURE.md §3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.errors import BadGateway, GatewayTimeout, RateLimited, ServiceUnavailable, UpstreamError
from proxy.core.upstream_errors import error_from_response, parse_retry_after, scrub

KEY = "Zx9-channel-secret-abcdefghijklmnop"  # not key-shaped: only the explicit secret list catches it


def _openai_error(message: str, kind: str | None = None, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def _map(status: int, body: bytes, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return error_from_response(status, headers or {}, body, channel="openai", secrets=(KEY,), **kwargs)


# --- 429 ----------------------------------------------------------------------------------------


def test_429_is_rate_limited_and_retryable_with_retry_after() -> None:
    body = _openai_error("Rate limit reached for images per minute.", "requests", None, "rate_limit_exceeded")
    error = _map(429, body, {"retry-after": "20"})
    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.type == "rate_limit_exceeded"
    assert error.code == "rate_limit_exceeded"
    assert error.message == "Rate limit reached for images per minute."
    assert error.retryable is True
    assert error.retry_after == 20.0
    assert error.headers() == {"Retry-After": "20"}


def test_429_retry_after_ms() -> None:
    error = _map(429, b"{}", {"retry-after-ms": "1500"})
    assert error.retry_after == 1.5
    assert error.headers() == {"Retry-After": "2"}
    assert error.code == "rate_limit_exceeded"


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after-ms": "oops", "retry-after": "4"}, 4.0),
        ({"retry-after-ms": "-5", "retry-after": "4"}, 4.0),
        ({"retry-after": "nan"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e400"])
def test_non_finite_retry_after_cannot_break_the_error_response(value: str) -> None:
    # An upstream header is untrusted input: whatever it says, rendering the client's error must work.
    error = _map(429, b"{}", {"retry-after": value})
    headers = error.headers()
    assert error.retry_after is None or error.retry_after < float("inf")
    assert set(headers) <= {"Retry-After"}


def test_429_without_retry_after() -> None:
    error = _map(429, _openai_error("slow down"))
    assert error.retry_after is None
    assert error.headers() == {}
    assert error.retryable is True


@pytest.mark.parametrize("code", ["insufficient_quota", "billing_hard_limit_reached", "billing_not_active"])
def test_billing_429_is_not_retryable(code: str) -> None:
    body = _openai_error("You exceeded your current quota, please check your plan and billing details.", code, None, code)
    error = _map(429, body, {"retry-after": "5"})
    assert isinstance(error, RateLimited)
    assert error.status == 429
    assert error.type == "insufficient_quota"
    assert error.code == code
    assert error.retryable is False
    assert error.retry_after is None
    assert error.headers() == {}


def test_billing_detected_by_type_alone() -> None:
    error = _map(429, _openai_error("quota", "insufficient_quota", None, None))
    assert error.type == "insufficient_quota"
    assert error.retryable is False
    assert error.code == "rate_limit_exceeded"


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_channel_key_is_a_502(status: int) -> None:
    body = _openai_error(f"Incorrect API key provided: {KEY}.", "invalid_request_error", None, "invalid_api_key")
    error = _map(status, body)
    assert isinstance(error, BadGateway)
    assert error.status == 502
    assert error.type == "upstream_error"
    assert error.code == "upstream_auth_failed"
    assert error.retryable is True
    assert error.message == f"channel 'openai' was refused by its upstream (HTTP {status}): Incorrect API key provided: ***."
    assert KEY not in json.dumps(error.envelope())


def test_rejected_client_key_keeps_401() -> None:
    body = _openai_error("Incorrect API key provided: sk-abc*****xyz.", "invalid_request_error", None, "invalid_api_key")
    error = _map(401, body, client_key=True)
    assert isinstance(error, UpstreamError)
    assert error.status == 401
    assert error.envelope() == {
        "error": {
            "message": "Incorrect API key provided: sk-***.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert error.retryable is False


# --- other 4xx and 5xx --------------------------------------------------------------------------


def test_400_keeps_message_param_and_code() -> None:
    message = "Invalid size '512x512'. Supported sizes are 1024x1024."
    body = _openai_error(message, "invalid_request_error", "size", "invalid_size")
    error = _map(400, body)
    assert isinstance(error, UpstreamError)
    assert error.status == 400
    assert error.envelope() == {
        "error": {
            "message": "Invalid size '512x512'. Supported sizes are 1024x1024.",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_size",
        }
    }
    assert error.retryable is False


def test_400_moderation_keeps_the_providers_type() -> None:
    body = _openai_error("Your request was rejected by the safety system.", "image_generation_user_error", None,
                         "moderation_blocked")
    error = _map(400, body)
    assert (error.status, error.type, error.code) == (400, "image_generation_user_error", "moderation_blocked")


def test_404_and_422_keep_status() -> None:
    assert _map(404, _openai_error("no such model", code="model_not_found")).status == 404
    error = _map(422, json.dumps({"message": "prompt too long"}).encode())
    assert (error.status, error.message, error.type, error.code) == (422, "prompt too long", "invalid_request_error", None)


def test_flat_and_string_error_bodies() -> None:
    assert _map(400, b'{"error": "bad prompt"}').message == "bad prompt"
    assert _map(400, b'{"error": {"detail": "bad seed"}}').message == "bad seed"
    assert _map(400, b'{"message": "top-level"}').message == "top-level"
    assert _map(400, b'{"error": {"code": 1214}, "message": "outer"}').message == "outer"
    assert _map(400, b'{"error": {"code": 1214, "message": "inner"}}').code == "1214"


@pytest.mark.parametrize("status", [500, 502, 520])
def test_5xx_is_a_retryable_502(status: int) -> None:
    error = _map(status, _openai_error("The server had an error while processing your request.", "server_error"))
    assert isinstance(error, BadGateway)
    assert error.status == 502
    assert error.type == "upstream_error"
    assert error.code == "upstream_error"
    assert error.retryable is True
    assert error.message == "channel 'openai' failed: The server had an error while processing your request."


@pytest.mark.parametrize("status", [504, 524])
def test_an_answered_gateway_timeout_is_a_504_like_a_read_timeout(status: int) -> None:
    error = _map(status, b"<html>A timeout occurred</html>")
    assert isinstance(error, GatewayTimeout)
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert error.message.startswith(f"channel 'openai' timed out upstream (HTTP {status})")


def test_503_stays_503() -> None:
    error = _map(503, _openai_error("overloaded"))
    assert isinstance(error, ServiceUnavailable)
    assert error.status == 503
    assert error.code == "upstream_unavailable"
    assert error.retryable is True
    assert error.message == "channel 'openai' is unavailable: overloaded"


def test_non_json_body() -> None:
    error = _map(502, b"<html><body>Bad Gateway</body></html>\n")
    assert error.status == 502
    assert error.message == "channel 'openai' failed: upstream answered HTTP 502: <html><body>Bad Gateway</body></html>"


def test_non_json_4xx_and_empty_body() -> None:
    error = _map(413, b"Request Entity Too Large")
    assert (error.status, error.message) == (413, "upstream answered HTTP 413: Request Entity Too Large")
    assert _map(400, b"").message == "upstream answered HTTP 400"
    assert _map(400, b"[1, 2]").message == "upstream answered HTTP 400: [1, 2]"
    assert _map(400, b"\xff\xfe\xfa").message.startswith("upstream answered HTTP 400: ")


def test_long_messages_are_capped() -> None:
    error = _map(400, _openai_error("x" * 5000))
    assert error.message == "x" * 500


# --- secrets ------------------------------------------------------------------------------------


def test_scrub_removes_the_key_and_key_shaped_strings() -> None:
    text = f"key {KEY} rejected; also sk-proj-AbC123xyz789, key-abcdef12, pk-live_0000000 and rk-******QWERTY"
    assert scrub(text, [KEY, None, ""]) == "key *** rejected; also sk-***, key-***, pk-*** and rk-***"


def test_scrub_leaves_ordinary_text() -> None:
    assert scrub("the sky-blue task-1 failed", []) == "the sky-blue task-1 failed"
    assert scrub("sk-short", []) == "sk-short"


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_key_never_reaches_the_message(status: int) -> None:
    body = _openai_error(f"bad key {KEY} for this request", "invalid_request_error", None, "x")
    error = _map(status, body)
    assert KEY not in error.message
    assert "bad key *** for this request" in error.message


@pytest.mark.parametrize("status", [400, 404, 429, 500])
def test_key_never_reaches_the_envelope_whatever_field_echoes_it(status: int) -> None:
    error = _map(status, _openai_error("bad", KEY, KEY, KEY))
    assert KEY not in json.dumps(error.envelope())


def test_key_in_a_non_json_body_is_scrubbed() -> None:
    error = _map(500, f"upstream said: Authorization: Bearer {KEY}".encode())
    assert error.message == "channel 'openai' failed: upstream answered HTTP 500: upstream said: Authorization: Bearer ***"


@pytest.mark.parametrize("offset", [170, 190])
def test_no_part_of_the_key_survives_snippet_truncation(offset: int) -> None:
    # The non-JSON snippet is cut at 200 bytes; a key that straddles the cut must not leak its head.
    body = b"<html>" + b"x" * (offset - 6) + KEY.encode() + b"</html>"
    error = _map(500, body)
    assert KEY[:4] not in error.message
