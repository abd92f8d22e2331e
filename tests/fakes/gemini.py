"""Fake upstream: Google's Generative Language API for images, Imagen and Gemini.

`POST /v1beta/models/{imagen-*}:predict` -> `{"predictions": [{"bytesBase64Encoded", "mimeType"}]}` and
`POST /v1beta/models/{model}:generateContent` -> `candidates[0].content.parts` with a text and an inlineData
part, `finishReason` and `usageMetadata`. The key goes in `x-goog-api-key`: missing -> 403
PERMISSION_DENIED, wrong -> 400 API_KEY_INVALID, as Google answers. Errors use Google's envelope.
Knobs: `fail_next()` queues errors, `filtered` drops that many Imagen samples (all of them: `{}`),
`image_safety` answers IMAGE_SAFETY with no image, `block_reason` blocks the prompt via promptFeedback.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PNG = encode_png(1, 1, [b"\xe0\x80\x20"])
PNG_B64 = base64.b64encode(PNG).decode("ascii")
IMAGEN_RATIOS = frozenset({"1:1", "3:4", "4:3", "9:16", "16:9"})
GEMINI_RATIOS = IMAGEN_RATIOS | {"2:3", "3:2", "4:5", "5:4", "21:9"}
IMAGE_SIZES = frozenset({"1K", "2K", "4K"})
VERTEX_ONLY = frozenset({"negativePrompt", "seed", "addWatermark", "enhancePrompt", "storageUri"})


@dataclass
class QueuedError:
    code: int
    status: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status, **({"details": details} if details else {})}}
    return web.json_response(body, status=code)


def invalid(message: str) -> web.Response:
    return google_error(400, "INVALID_ARGUMENT", message)


class FakeGemini:
    def __init__(self, api_key: str = "fake-gemini-api-key") -> None:
        self.api_key = api_key
        self.recorder = Recorder()
        self.queued: list[QueuedError] = []
        self.filtered = 0
        self.image_safety = False
        self.block_reason: str | None = None
        self.text = "Here is the image you asked for."

    def fail_next(self, code: int, status: str, message: str, *details: dict[str, Any]) -> None:
        """Answer the next request with this Google error (after the key check)."""
        self.queued.append(QueuedError(code, status, message, list(details)))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1beta/models/{call}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers. Please use an API key.")
        if key != self.api_key:
            reason = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                      "domain": "googleapis.com"}
            return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [reason])
        if self.queued:
            queued = self.queued.pop(0)
            return google_error(queued.code, queued.status, queued.message, queued.details)
        try:
            body = json.loads(received.body)
        except ValueError:
            return invalid("Invalid JSON payload received.")
        if not isinstance(body, dict):
            return invalid("Invalid JSON payload received. Expected an object.")
        model, _, method = request.match_info["call"].rpartition(":")
        if method == "predict" and model.startswith("imagen"):
            return self.predict(body)
        if method == "generateContent" and model.startswith("gemini"):
            return self.generate_content(body)
        message = f"models/{model} is not found for API version v1beta, or does not support {method}."
        return google_error(404, "NOT_FOUND", message)

    def predict(self, body: dict[str, Any]) -> web.Response:
        instances = body.get("instances")
        parameters = body.get("parameters") or {}
        if not isinstance(instances, list) or not instances or not isinstance(instances[0].get("prompt"), str):
            return invalid("instances[0].prompt is required.")
        count = parameters.get("sampleCount", 4)  # Imagen's documented default
        if not isinstance(count, int) or not 1 <= count <= 4:
            return invalid("sampleCount must be between 1 and 4.")
        if parameters.get("aspectRatio", "1:1") not in IMAGEN_RATIOS:
            return invalid("Unsupported aspect ratio.")
        if VERTEX_ONLY & parameters.keys():
            return invalid(f"{sorted(VERTEX_ONLY & parameters.keys())[0]} parameter is not supported in Gemini API.")
        kept = max(0, count - self.filtered)
        if not kept:
            return web.json_response({})  # every sample filtered: Imagen answers an empty object
        mime = (parameters.get("outputOptions") or {}).get("mimeType", "image/png")
        return web.json_response({"predictions": [{"mimeType": mime, "bytesBase64Encoded": PNG_B64}] * kept})

    def generate_content(self, body: dict[str, Any]) -> web.Response:
        contents = body.get("contents")
        parts = contents[0].get("parts") if isinstance(contents, list) and contents else None
        if not isinstance(parts, list) or not any(isinstance(part.get("text"), str) for part in parts):
            return invalid("contents[0].parts must hold the prompt text.")
        config = body.get("generationConfig") or {}
        if "IMAGE" not in config.get("responseModalities", []):
            return invalid("responseModalities must include IMAGE for an image model.")
        image_config = config.get("imageConfig") or {}
        if image_config.get("aspectRatio", "1:1") not in GEMINI_RATIOS or image_config.get("imageSize", "1K") not in IMAGE_SIZES:
            return invalid("Unsupported imageConfig.")
        usage = {"promptTokenCount": 7, "candidatesTokenCount": 1290, "totalTokenCount": 1297,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]}
        if self.block_reason:
            return web.json_response({"promptFeedback": {"blockReason": self.block_reason}, "usageMetadata": usage})
        if self.image_safety:
            candidate = {"content": {"role": "model", "parts": []}, "finishReason": "IMAGE_SAFETY", "index": 0}
        else:
            answer = [{"text": self.text}, {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]
            candidate = {"content": {"role": "model", "parts": answer}, "finishReason": "STOP", "index": 0}
        return web.json_response({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "fake"})
