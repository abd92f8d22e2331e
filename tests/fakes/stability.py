"""Fake upstream: Stability AI v2beta Stable Image generate, multipart in, JSON or bytes out.

Like the real server it parses the form with aiohttp's `request.post()`, refuses anything that is not
multipart/form-data, checks the bearer key and the documented field values, and answers per `Accept`:
`application/json` -> `{"image", "finish_reason", "seed"}`, `image/*` (the default) -> raw PNG bytes with
`finish-reason` and `seed` headers. Knobs: `fail_next()` queues error answers, `blocked_word` makes prompts
containing it a 403 content_moderation, `content_filtered` turns the output into CONTENT_FILTERED.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_request import FileField

from tests.fakes import Recorder
from tests.fakes.png import encode_png

PNG = encode_png(1, 1, [b"\x20\x80\xe0"])
ASPECT_RATIOS = frozenset({"16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21"})
OUTPUT_FORMATS = {"ultra": {"png", "jpeg", "webp"}, "core": {"png", "jpeg", "webp"}, "sd3": {"png", "jpeg"}}
SD3_MODELS = frozenset({"sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash", "sd3-large", "sd3-medium"})


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class QueuedError:
    status: int
    name: str
    errors: list[str]
    headers: dict[str, str] = field(default_factory=dict)


def error_response(status: int, name: str, *errors: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"id": f"fake-{status}-{name}", "name": name, "errors": list(errors)}
    return web.json_response(body, status=status, headers=headers)


async def parse_form(request: web.Request, raw: bytes) -> dict[str, str | Upload]:
    """The form parsed by aiohttp's own `post()`, over the bytes the recorder already read."""
    # The recorder consumed the body stream; replay it into a fresh request so post() parses it as the server would.
    # A limit above the body's size means the reader never asks the (real) protocol to pause the transport.
    payload = StreamReader(request.protocol, limit=len(raw) + 1, loop=asyncio.get_running_loop())
    payload.feed_data(raw)
    payload.feed_eof()
    replay = make_mocked_request(request.method, request.path_qs, headers=request.headers, payload=payload,
                                 client_max_size=len(raw) + 1)
    form: dict[str, str | Upload] = {}
    for name, value in (await replay.post()).items():
        if isinstance(value, FileField):
            with value.file:  # a spooled temporary file: close it, or it warns when collected
                form[name] = Upload(value.filename, value.content_type, value.file.read())
        else:
            form[name] = str(value)
    return form


class FakeStability:
    def __init__(self, api_key: str = "sk-fake-stability-key") -> None:
        self.api_key = api_key
        self.recorder = Recorder()
        self.forms: list[dict[str, str | Upload]] = []  # each request's parsed form, in order
        self.queued: list[QueuedError] = []
        self.blocked_word: str | None = None
        self.content_filtered = False
        self.seed = 4242

    def fail_next(self, status: int, name: str, *errors: str, headers: dict[str, str] | None = None) -> None:
        """Answer the next request with this Stability error (after the auth and format checks)."""
        self.queued.append(QueuedError(status, name, list(errors), dict(headers or {})))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2beta/stable-image/generate/{endpoint}", self.generate)
        return app

    async def generate(self, request: web.Request) -> web.StreamResponse:
        received = await self.recorder.record(request)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_response(401, "unauthorized", "authorization: invalid or missing API key")
        if request.content_type != "multipart/form-data":
            return error_response(400, "bad_request", "content-type: must be multipart/form-data")
        form = await parse_form(request, received.body)
        self.forms.append(form)
        if self.queued:
            queued = self.queued.pop(0)
            return error_response(queued.status, queued.name, *queued.errors, headers=queued.headers)
        problem = self.check(request.match_info["endpoint"], form)
        if problem is not None:
            return problem
        return self.answer(request, form)

    def check(self, endpoint: str, form: dict[str, Any]) -> web.Response | None:
        """The documented 4xx answers for a form this endpoint would refuse; None when it is acceptable."""
        if endpoint not in OUTPUT_FORMATS:
            return error_response(404, "not_found", f"unknown endpoint '{endpoint}'")
        text = {name: value for name, value in form.items() if isinstance(value, str)}
        problems = []
        if not text.get("prompt", "").strip():
            problems.append("prompt: cannot be empty")
        if text.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
            problems.append(f"aspect_ratio: must be one of {', '.join(sorted(ASPECT_RATIOS))}")
        if text.get("output_format", "png") not in OUTPUT_FORMATS[endpoint]:
            problems.append(f"output_format: must be one of {', '.join(sorted(OUTPUT_FORMATS[endpoint]))}")
        if endpoint == "sd3" and text.get("model", "sd3.5-large") not in SD3_MODELS:
            problems.append("model: unknown model")
        if "image" in form and (endpoint == "core" or not isinstance(form["image"], Upload) or "strength" not in text):
            problems.append("image: needs an image file and strength, on ultra or sd3")
        if problems:
            return error_response(400, "bad_request", *problems)
        if self.blocked_word and self.blocked_word in text["prompt"]:
            return error_response(403, "content_moderation", "Your request was flagged by our content moderation system.")
        return None

    def answer(self, request: web.Request, form: dict[str, Any]) -> web.Response:
        finish = "CONTENT_FILTERED" if self.content_filtered else "SUCCESS"
        seed = int(form.get("seed") or self.seed)
        accept = request.headers.get("Accept", "image/*")
        if accept == "application/json":
            body = {"image": base64.b64encode(PNG).decode("ascii"), "finish_reason": finish, "seed": seed}
            return web.Response(body=json.dumps(body).encode(), content_type="application/json")
        if accept not in ("image/*", "*/*"):
            return error_response(400, "bad_request", "accept: must be image/* or application/json")
        # The real server sends the image in the requested format; the fake always has a PNG at hand.
        return web.Response(body=PNG, content_type="image/png", headers={"finish-reason": finish, "seed": str(seed)})
