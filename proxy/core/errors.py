"""Core layer: the one error tree. Every error knows its HTTP status and renders the OpenAI envelope.

    ProxyError                      status  type
    ├── InvalidRequest               400    invalid_request_error    (client mistake, `param` set)
    │   └── ContentPolicyViolation   400    image_generation_user_error (moderation)
    ├── AuthenticationFailed         401    invalid_request_error
    ├── NotFound                     404    invalid_request_error    (model_not_found, ...)
    ├── MethodNotAllowed             405    invalid_request_error    (+ Allow)
    ├── RequestTimeout               408    invalid_request_error    (body not received in time)
    ├── PayloadTooLarge              413    invalid_request_error
    ├── UnsupportedMediaType         415    invalid_request_error
    │   └── UnsupportedEncoding      415    invalid_request_error    (+ Accept-Encoding)
    ├── RateLimited                  429    rate_limit_exceeded / insufficient_quota (+ Retry-After)
    ├── UpstreamError           (upstream's 4xx, kept)  as the upstream said
    ├── BadGateway                   502    upstream_error           (upstream 5xx, transport, bad answer)
    ├── ServiceUnavailable           503    server_error             (no usable channel)
    └── GatewayTimeout               504    timeout                  (deadline passed)

The envelope is `{"error": {"message", "type", "param", "code"}}`, as OpenAI sends it.
"""

from __future__ import annotations

import math
from typing import Any


class ProxyError(Exception):
    """Base of every error the proxy answers with."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        # Whether another attempt (same or next channel) may succeed where this one failed.
        self.retryable = retryable
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None or not math.isfinite(self.retry_after):
            return {}
        # Round up: "retry-after-ms: 500" must not become "retry now".
        return {"Retry-After": str(max(0, math.ceil(self.retry_after)))}


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class ContentPolicyViolation(InvalidRequest):
    type = "image_generation_user_error"

    def __init__(self, message: str, *, code: str = "moderation_blocked") -> None:
        super().__init__(message, code=code)


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message, code="method_not_allowed")
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ProxyError):
    status = 415
    type = "invalid_request_error"


class UnsupportedEncoding(UnsupportedMediaType):
    """A Content-Encoding the route cannot decode; `Accept-Encoding` lists the ones it can (RFC 7694 §3)."""

    def __init__(self, message: str, accepted: tuple[str, ...]) -> None:
        super().__init__(message, code="unsupported_content_encoding")
        self.accepted = accepted

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Accept-Encoding": ", ".join(self.accepted) or "identity"}


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_exceeded"


class UpstreamError(ProxyError):
    """An upstream 4xx that is the client's to see: status and message as the provider gave them."""

    type = "invalid_request_error"


class BadGateway(ProxyError):
    status = 502
    type = "upstream_error"


class ServiceUnavailable(ProxyError):
    status = 503
    type = "server_error"


class ChannelMisconfigured(ServiceUnavailable):
    """The channel cannot serve this request as the operator configured it (an upstream model name its
    endpoint does not know, say). Another channel may: retryable, like a channel whose key is unset."""

    def __init__(self, channel: str, problem: str) -> None:
        super().__init__(f"channel '{channel}' is misconfigured: {problem}", code="channel_misconfigured", retryable=True)


class GatewayTimeout(ProxyError):
    status = 504
    type = "timeout"

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = True) -> None:
        # Retried only where the channel says `retry_timeouts` (the work may be done and billed), and never
        # once it is known to exist upstream (a task being polled, a stream the client already receives).
        super().__init__(message, code=code, retryable=retryable)
