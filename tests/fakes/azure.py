"""Fake Azure OpenAI images upstream: both URL forms, `api-key` auth, api-version checks, content filter.

Routes:
- `POST /openai/deployments/{deployment}/images/generations?api-version=<dated version>`
- `POST /openai/v1/images/generations` (`model` = deployment name; `api-version` absent, `preview` or `latest`)
Answers as the real service does: 401 for a wrong or missing `api-key`, 404 "Resource not found" without an
api-version, 400 for an unsupported one, 404 `DeploymentNotFound`, 400 for webp, the content-filter 400.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Received, Recorder
from tests.fakes.png import encode_png

PNG = encode_png(2, 2, [b"\x10\x20\x30" * 2, b"\x40\x50\x60" * 2])
PNG_B64 = base64.b64encode(PNG).decode("ascii")
DATED_VERSIONS = frozenset({"2024-02-01", "2024-10-21", "2025-04-01-preview", "2025-04-14"})
V1_VERSIONS = frozenset({"preview", "latest"})
ACCESS_DENIED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
        "valid key for an active subscription and use a correct regional API endpoint for your resource.",
    }
}
FILTERED = {
    "error": {
        "code": "content_policy_violation",
        "message": "Your request was rejected as a result of our safety system. Your prompt may contain text "
        "that is not allowed by our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "inner_error": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_results": {
                "hate": {"filtered": False, "severity": "safe"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "high"},
            },
        },
    }
}


def _error(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "type": "invalid_request_error", "param": param}}
    return web.json_response(body, status=status)


@dataclass
class FakeAzure:
    api_key: str = "azure-fake-key-123456"
    deployments: frozenset[str] = frozenset({"gpt-image-1", "dall-e-3"})
    # Canned failure for every generation: (status, JSON body), plus headers such as retry-after-ms.
    fail_with: tuple[int, dict[str, Any]] | None = None
    fail_headers: dict[str, str] = field(default_factory=dict)
    moderate: bool = False  # answer every generation with the content-filter 400
    created: int = 1_760_000_000
    recorder: Recorder = field(default_factory=Recorder)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/images/generations", self._deployment)
        app.router.add_post("/openai/v1/images/generations", self._v1)
        return app

    async def _deployment(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        version = received.query.get("api-version")
        if version is None:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        if version not in DATED_VERSIONS:
            return web.json_response({"error": {"code": "BadRequest", "message": "API version not supported"}}, status=400)
        return self._generate(received, request.match_info["deployment"])

    async def _v1(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        version = received.query.get("api-version")
        if version is not None and version not in V1_VERSIONS:
            return web.json_response({"error": {"code": "BadRequest", "message": "API version not supported"}}, status=400)
        body = received.json()
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            return _error(400, "missing_required_parameter", "Missing required parameter: 'model'.", "model")
        return self._generate(received, model)

    def _generate(self, received: Received, deployment: str) -> web.Response:
        if received.header("api-key") != self.api_key:
            return web.json_response(ACCESS_DENIED, status=401)
        if deployment not in self.deployments:
            message = (
                "The API deployment for this resource does not exist. If you created the deployment within the "
                "last 5 minutes, please wait a moment and try again."
            )
            return web.json_response({"error": {"code": "DeploymentNotFound", "message": message}}, status=404)
        if self.fail_with is not None:
            status, body = self.fail_with
            return web.json_response(body, status=status, headers=self.fail_headers)
        if self.moderate:
            return web.json_response(FILTERED, status=400)
        return self._answer(received.json())

    def _answer(self, body: Any) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return _error(400, "missing_required_parameter", "Missing required parameter: 'prompt'.", "prompt")
        if body.get("output_format", "png") not in ("png", "jpeg"):
            message = f"Invalid value: '{body['output_format']}'. Supported values are: 'png' and 'jpeg'."
            return _error(400, "invalid_value", message, "output_format")
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10:
            return _error(400, "invalid_value", f"Invalid value: {n}. 'n' must be between 1 and 10.", "n")
        data = [{"b64_json": PNG_B64} for _ in range(n)]
        usage = {"input_tokens": 12, "output_tokens": 272 * n, "total_tokens": 12 + 272 * n}
        answer = {"created": self.created, "data": data, "usage": usage}
        return web.json_response(answer)
