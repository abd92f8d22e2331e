"""Fake Volcengine Ark Seedream upstream: `POST /api/v3/images/generations` as the Ark image API documents it.

Checks the Bearer key (401 AuthenticationError otherwise), rejects a WxH below the model family's
pixel floor (400 InvalidParameter, param size), honours `response_format` (url or b64_json) and
`sequential_image_generation: auto` with `max_images`, and can fail chosen items inside data[]
(OutputImageSensitiveContentDetected) the way Ark reports moderation within a batch. URLs point to a
tiny real PNG served by the same app under `/files/<name>.png`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PREFIX = "/api/v3"
PNG = encode_png(2, 2, [b"\x00\xff\x00\x00\xff\x00", b"\xff\x00\xff\x00\x00\xff"])
CREATED = 1757323224
FLOORS = {"seedream-4-5": 2560 * 1440, "seedream-4-0": 1280 * 720, "seedream-3-0": 512 * 512}
ITEM_MODERATED = {
    "code": "OutputImageSensitiveContentDetected",
    "message": "The request failed because the output image may contain sensitive information.",
}


def ark_error(status: int, code: str, message: str, param: str = "") -> tuple[int, dict[str, Any]]:
    """An Ark error answer `{"error": {"code", "message", "param", "type"}}` for `fail_with`."""
    kind = {400: "BadRequest", 401: "Unauthorized", 429: "TooManyRequests"}.get(status, "InternalServerError")
    return status, {"error": {"code": code, "message": message, "param": param, "type": kind}}


INPUT_MODERATED = ark_error(400, "InputTextSensitiveContentDetected", "The input text may contain sensitive information.")
QUOTA = ark_error(429, "QuotaExceeded", "Your account has exhausted its quota.")
RATE = ark_error(429, "RateLimitExceeded.EndpointRPMExceeded", "The Requests Per Minute (RPM) limit has been exceeded.")


def _floor(model: str) -> int:
    return next((floor for fragment, floor in FLOORS.items() if fragment in model), 0)


def _error(status: int, code: str, message: str, param: str = "") -> web.Response:
    status, body = ark_error(status, code, message, param)
    return web.json_response(body, status=status)


@dataclass
class FakeSeedream:
    api_key: str = "ark-test-key"
    # Canned failure answered instead of images: (HTTP status, JSON body), e.g. INPUT_MODERATED or QUOTA.
    fail_with: tuple[int, dict[str, Any]] | None = None
    # Indexes of data[] items that come back as moderation errors instead of images.
    moderate_items: frozenset[int] = frozenset()
    recorder: Recorder = field(default_factory=Recorder)
    served: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"{PREFIX}/images/generations", self.generate)
        app.router.add_get("/files/{name}", self.file)
        return app

    def _check_size(self, body: dict[str, Any]) -> web.Response | None:
        size = str(body.get("size", ""))
        width, _, height = size.partition("x")
        if width.isdigit() and height.isdigit() and int(width) * int(height) < _floor(str(body["model"])):
            return _error(400, "InvalidParameter", f"The parameter `size` specified in the request is not valid: {size}", "size")
        return None

    def _item(self, request: web.Request, body: dict[str, Any], index: int) -> dict[str, Any]:
        if index in self.moderate_items:
            return {"error": dict(ITEM_MODERATED)}
        self.served += 1
        size = str(body.get("size", "2048x2048"))
        if body.get("response_format") == "b64_json":
            return {"b64_json": base64.b64encode(PNG).decode("ascii"), "size": size}
        return {"url": f"{request.scheme}://{request.host}/files/seedream-{self.served}.png", "size": size}

    async def generate(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "AuthenticationError", "The API key or AK/SK in the request is missing or invalid.")
        if self.fail_with is not None:
            return web.json_response(self.fail_with[1], status=self.fail_with[0])
        body = received.json()
        if not body.get("model") or not body.get("prompt"):
            return _error(400, "MissingParameter", "The request is missing one or multiple required parameters.")
        rejected = self._check_size(body)
        if rejected is not None:
            return rejected
        count = 1
        if body.get("sequential_image_generation") == "auto":
            count = int(body.get("sequential_image_generation_options", {}).get("max_images", 15))
        data = [self._item(request, body, index) for index in range(count)]
        done = sum(1 for item in data if "error" not in item)
        usage = {"generated_images": done, "output_tokens": done * 16384, "total_tokens": done * 16384}
        if body.get("stream") is True:
            return await self._stream(request, body, data, usage)
        return web.json_response({"model": body["model"], "created": CREATED, "data": data, "usage": usage})

    async def _stream(
        self, request: web.Request, body: dict[str, Any], data: list[dict[str, Any]], usage: dict[str, Any]
    ) -> web.StreamResponse:
        """Ark's stream: one `partial_succeeded` / `partial_failed` event per image, `completed`, `[DONE]`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, item in enumerate(data):
            kind = "image_generation.partial_failed" if "error" in item else "image_generation.partial_succeeded"
            event = {"type": kind, "model": body["model"], "created": CREATED, "image_index": index, **item}
            await response.write(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())
        completed = {"type": "image_generation.completed", "model": body["model"], "created": CREATED, "usage": usage}
        await response.write(f"event: image_generation.completed\ndata: {json.dumps(completed)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")
