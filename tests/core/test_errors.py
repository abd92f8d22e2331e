"""Core tests: the error tree, its statuses and the OpenAI envelope."""

from __future__ import annotations

import json

import pytest

from proxy.core.errors import (
    AuthenticationFailed,
    BadGateway,
    ContentPolicyViolation,
    GatewayTimeout,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    UpstreamError,
)


@pytest.mark.parametrize(
    ("cls", "status", "kind"),
    [
        (ProxyError, 500, "server_error"),
        (InvalidRequest, 400, "invalid_request_error"),
        (AuthenticationFailed, 401, "invalid_request_error"),
        (NotFound, 404, "invalid_request_error"),
        (PayloadTooLarge, 413, "invalid_request_error"),
        (UnsupportedMediaType, 415, "invalid_request_error"),
        (RateLimited, 429, "rate_limit_exceeded"),
        (BadGateway, 502, "upstream_error"),
        (ServiceUnavailable, 503, "server_error"),
        (GatewayTimeout, 504, "timeout"),
    ],
)
def test_status_and_type(cls: type[ProxyError], status: int, kind: str) -> None:
    error = cls("boom")
    assert error.status == status
    assert error.type == kind
    assert error.envelope() == {"error": {"message": "boom", "type": kind, "param": None, "code": None}}
    assert error.headers() == {}
    # A timeout may be retried where the channel allows it (driver.should_retry); nothing else by default.
    assert error.retryable is (cls is GatewayTimeout)
    assert isinstance(error, ProxyError)
    assert str(error) == "boom"


def test_envelope_shape_is_exactly_openais() -> None:
    error = InvalidRequest("Invalid size", param="size", code="invalid_size")
    envelope = error.envelope()
    assert envelope == {
        "error": {"message": "Invalid size", "type": "invalid_request_error", "param": "size", "code": "invalid_size"}
    }
    assert list(envelope) == ["error"]
    assert list(envelope["error"]) == ["message", "type", "param", "code"]
    assert json.loads(json.dumps(envelope)) == envelope


def test_content_policy_violation() -> None:
    error = ContentPolicyViolation("Your request was rejected by the safety system.")
    assert isinstance(error, InvalidRequest)
    assert error.status == 400
    assert error.envelope() == {
        "error": {
            "message": "Your request was rejected by the safety system.",
            "type": "image_generation_user_error",
            "param": None,
            "code": "moderation_blocked",
        }
    }
    assert ContentPolicyViolation("x", code="content_filter").code == "content_filter"


def test_status_and_type_can_be_overridden_per_instance() -> None:
    error = UpstreamError("quota", status=403, type="permission_error", code="forbidden")
    assert error.status == 403
    assert error.envelope()["error"] == {"message": "quota", "type": "permission_error", "param": None, "code": "forbidden"}
    # The class attributes are not touched.
    assert UpstreamError("x").type == "invalid_request_error"
    assert UpstreamError("x").status == 500
    assert RateLimited("x", type="insufficient_quota").type == "insufficient_quota"
    assert RateLimited("x").type == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(7, "7"), (7.0, "7"), (0, "0"), (1.4, "2"), (0.5, "1"), (1.6, "2"), (120.0, "120"), (-3, "0")],
)
def test_retry_after_header(retry_after: float, header: str) -> None:
    error = RateLimited("slow down", retry_after=retry_after, retryable=True)
    assert error.headers() == {"Retry-After": header}
    assert error.retryable is True
    assert error.retry_after == retry_after


def test_no_retry_after_no_header() -> None:
    assert RateLimited("slow down").headers() == {}
