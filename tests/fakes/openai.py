"""A fake OpenAI API: `/v1/images/generations` as documented, plus `/v1/models`, `/v1/files` and a streamed chat.

It checks the bearer key as OpenAI does (401 envelope otherwise), answers dall-e models with URLs
pointing at its own `/files/` route and GPT image models with base64, and can be told to fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from tests.fakes import Received, Recorder


@dataclass(frozen=True)
class FormPart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()


KEY = "sk-upstream-secret-0123456789"


def tiny_png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    row = b"\x00" + bytes(rgb) * width
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


PNG = tiny_png()


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    envelope = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(envelope, status=status, headers=headers)


@dataclass
class FakeOpenAI:
    key: str = KEY
    recorder: Recorder = field(default_factory=Recorder)
    # (status, body, headers) answered instead of images, one per call, in order; then normal answers.
    failures: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    revised_prompt: str | None = None
    image: bytes = PNG
    file_content_type: str = "image/png"
    # Edits and variations: each request's multipart parts, as the fake's multipart reader saw them.
    forms: list[list[FormPart]] = field(default_factory=list)
    # Streams: the last event waits for this gate (when set), so a test can prove events are not buffered.
    stream_gate: asyncio.Event | None = None
    stream_delay: float = 0.0
    stream_hold: float = 0.0  # seconds the stream stays open after its last event
    stream_error_after: int | None = None  # send an error event after this many partial images
    stream_disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    # What `GET /v1/models` lists (and `GET /v1/models/{id}` finds), and how long it takes to answer.
    model_ids: list[str] = field(default_factory=lambda: ["gpt-image-1.5", "gpt-4o"])
    models_delay: float = 0.0
    # When set, a JSON answer goes out in writes of this many bytes, each in its own turn of the event loop,
    # so the proxy receives it in many chunks (as a large answer arrives from a real upstream).
    answer_piece: int | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # edits carry big uploads
        app.router.add_post("/v1/images/generations", self.generations)
        app.router.add_post("/v1/images/edits", self.multipart)
        app.router.add_post("/v1/images/variations", self.multipart)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_delete("/v1/models/{model}", self.delete_model)
        app.router.add_get("/v1/files", self.file_list)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/files/{name}", self.files)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.key}"

    async def generations(self, request: web.Request) -> web.Response:
        received = await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided: sk-cl***.", code="invalid_api_key")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            status, body, headers = self.failures.pop(0)
            return await self.answer(request, body, status, headers)
        body = received.json()
        model = str(body.get("model", "dall-e-2"))
        if body.get("stream") is True:
            return await self.stream(request, "image_generation", int(body.get("partial_images", 0)))
        if model.startswith("gpt-image") and "response_format" in body:
            return openai_error(400, "Unknown parameter: 'response_format'.", param="response_format", code="unknown_parameter")
        n = int(body.get("n", 1))
        wants_b64 = model.startswith("gpt-image") or body.get("response_format") == "b64_json"
        items: list[dict[str, Any]] = []
        for index in range(n):
            item: dict[str, Any] = (
                {"b64_json": base64.b64encode(self.image).decode()}
                if wants_b64
                else {"url": f"{request.scheme}://{request.host}/files/img-{index}.png"}
            )
            if self.revised_prompt is not None:
                item["revised_prompt"] = self.revised_prompt
            items.append(item)
        answer: dict[str, Any] = {"created": 1700000000, "data": items}
        if model.startswith("gpt-image"):
            answer.update(
                background="opaque",
                output_format="png",
                quality=body.get("quality", "auto"),
                size="1024x1024",
                usage={
                    "input_tokens": 10,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": 10},
                    "output_tokens": 4160,
                    "total_tokens": 4170,
                },
            )
        return await self.answer(request, answer)

    async def answer(self, request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
                     ) -> web.StreamResponse:
        """A JSON answer, whole or in `answer_piece`-byte writes under its Content-Length."""
        if self.answer_piece is None:
            return web.json_response(body, status=status, headers=headers)
        raw = json.dumps(body).encode()
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/json"
        response.content_length = len(raw)
        await response.prepare(request)
        for start in range(0, len(raw), self.answer_piece):
            await response.write(raw[start : start + self.answer_piece])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    async def multipart(self, request: web.Request) -> web.Response:
        """Edits and variations: multipart only, as OpenAI's API takes them."""
        self.recorder.received.append(Received(request.method, request.path, dict(request.query), dict(request.headers), b""))
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        if request.content_type != "multipart/form-data":
            return openai_error(400, "Invalid Content-Type header, expected multipart/form-data.")
        parts: list[FormPart] = []
        reader = await request.multipart()
        async for part in reader:
            assert isinstance(part, BodyPartReader)
            data = await part.read()
            parts.append(FormPart(part.name or "", part.filename, part.headers.get("Content-Type"), bytes(data)))
        self.forms.append(parts)
        fields = {part.name: part.text for part in parts if part.filename is None}
        if not any(part.filename for part in parts if part.name in ("image", "image[]")):
            return openai_error(400, "Missing required parameter: 'image'.", param="image")
        model = fields.get("model", "dall-e-2")
        if fields.get("stream") == "true":
            return await self.stream(request, "image_edit", int(fields.get("partial_images", "0")))
        n = int(fields.get("n", "1"))
        if model.startswith("gpt-image") or fields.get("response_format") == "b64_json":
            items = [{"b64_json": base64.b64encode(self.image).decode()} for _ in range(n)]
        else:
            items = [{"url": f"{request.scheme}://{request.host}/files/edit-{index}.png"} for index in range(n)]
        answer: dict[str, Any] = {"created": 1700000001, "data": items}
        if model.startswith("gpt-image") and request.path.endswith("/edits"):
            # GPT image edits report usage as generations do (text and image input tokens, image output).
            answer["usage"] = {"input_tokens": 330, "input_tokens_details": {"image_tokens": 320, "text_tokens": 10},
                               "output_tokens": 3840, "total_tokens": 4170}
        return web.json_response(answer)

    async def stream(self, request: web.Request, kind: str, partials: int) -> web.StreamResponse:
        """OpenAI's image stream: `<kind>.partial_image` events, then `<kind>.completed` with usage."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        b64 = base64.b64encode(self.image).decode()
        common = {"background": "opaque", "created_at": 1700000002, "output_format": "png", "quality": "low", "size": "1024x1024"}
        events: list[dict[str, Any]] = [
            {"type": f"{kind}.partial_image", "b64_json": b64, "partial_image_index": index, **common}
            for index in range(partials)
        ]
        events.append(
            {
                "type": f"{kind}.completed",
                "b64_json": b64,
                **common,
                "usage": {"input_tokens": 5, "output_tokens": 100, "total_tokens": 105},
            }
        )
        try:
            for index, event in enumerate(events):
                if self.stream_error_after is not None and index == self.stream_error_after:
                    error = {
                        "type": "error",
                        "error": {
                            "message": "The image could not be finished.",
                            "type": "server_error",
                            "param": None,
                            "code": "image_generation_failed",
                        },
                    }
                    await response.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
                    break
                if index == len(events) - 1 and self.stream_gate is not None:
                    await self.stream_gate.wait()
                await asyncio.sleep(self.stream_delay)
                await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(self.stream_hold)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.stream_disconnected.set()
            raise
        return response

    async def files(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        return web.Response(body=self.image, content_type=self.file_content_type)

    @staticmethod
    def model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 1698785189, "owned_by": "system"}

    async def models(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        if self.models_delay:
            await asyncio.sleep(self.models_delay)
        return web.json_response({"object": "list", "data": [self.model_object(model) for model in self.model_ids]})

    async def model(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        model = request.match_info["model"]
        if model not in self.model_ids:
            message = f"The model '{model}' does not exist or you do not have access to it."
            return openai_error(404, message, param="model", code="model_not_found")
        return web.json_response(self.model_object(model))

    async def delete_model(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        return web.json_response({"id": request.match_info["model"], "object": "model", "deleted": True})

    async def file_list(self, request: web.Request) -> web.Response:
        await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        return web.json_response(
            {"object": "list", "data": [{"id": "file-abc123", "object": "file", "purpose": "vision"}]},
            headers={"X-Upstream": "fake", "Set-Cookie": "session=abc"},
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        received = await self.recorder.record(request)
        if not self._authorised(request):
            return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = json.loads(received.body)["messages"][-1]["content"].split()
        for word in words:
            chunk = {"choices": [{"delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
