"""Fake AUTOMATIC1111 / Forge Stable Diffusion WebUI API (`--api`, optionally `--api-auth user:pass`).

Routes: `POST /sdapi/v1/txt2img`, `POST /sdapi/v1/img2img`, `GET /sdapi/v1/samplers`. Answers as the WebUI
does: `{"images": [base64...], "parameters": {...}, "info": "<json string>"}`; FastAPI's 422
`{"detail": [{"loc", "msg", "type"}]}` for a mistyped field; the WebUI's own exception envelope
`{"error", "detail", "body", "errors"}` for 401 (Basic auth), 404 "Sampler not found" and 500
"Invalid encoded image".
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes import Received, Recorder
from tests.fakes.png import encode_png

PNG = encode_png(2, 2, [b"\x80\x10\x10" * 2, b"\x10\x80\x10" * 2])
PNG_B64 = base64.b64encode(PNG).decode("ascii")
GRID_B64 = base64.b64encode(encode_png(1, 1, [b"\x00\x00\x00"])).decode("ascii")
SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M SDE", "DDIM")
DEFAULTS: dict[str, Any] = {
    "negative_prompt": "",
    "seed": -1,
    "sampler_name": "Euler a",
    "batch_size": 1,
    "n_iter": 1,
    "steps": 50,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
}
# Field -> (pydantic v1 message, error type) for FastAPI's 422.
INTEGER = ("value is not a valid integer", "type_error.integer")
NUMBER = ("value is not a valid float", "type_error.float")
STRING = ("str type expected", "type_error.str")
TYPES: dict[str, tuple[tuple[type, ...], tuple[str, str]]] = {
    "prompt": ((str,), STRING),
    "negative_prompt": ((str,), STRING),
    "sampler_name": ((str,), STRING),
    "seed": ((int,), INTEGER),
    "batch_size": ((int,), INTEGER),
    "steps": ((int,), INTEGER),
    "width": ((int,), INTEGER),
    "height": ((int,), INTEGER),
    "cfg_scale": ((int, float), NUMBER),
    "denoising_strength": ((int, float), NUMBER),
}


def webui_error(status: int, detail: str) -> web.Response:
    """The envelope of the WebUI's api_middleware exception handler."""
    body = {"error": "HTTPException", "detail": detail, "body": "", "errors": f"{status}: {detail}"}
    return web.json_response(body, status=status)


def _validation(body: dict[str, Any]) -> list[dict[str, Any]]:
    problems = []
    for name, (types, (message, kind)) in TYPES.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            problems.append({"loc": ["body", name], "msg": message, "type": kind})
    return problems


def _decodes(image: Any) -> bool:
    if not isinstance(image, str):
        return False
    if image.startswith("data:image/"):
        image = image.split(";")[1].split(",")[1]
    try:
        return base64.b64decode(image, validate=True).startswith(b"\x89PNG")
    except (binascii.Error, ValueError):
        return False


@dataclass
class FakeSDWebUI:
    credentials: tuple[str, str] | None = None  # `--api-auth user:pass`; None: no auth, like the default
    fail_with: tuple[int, dict[str, Any]] | None = None  # canned failure for every generation
    return_grid: bool = False  # the grid first, as with opts.return_grid and save_images
    extra_images: int = 0  # images appended after the batch, as ControlNet's detected maps are
    random_seed: int = 1_234_567_890  # what seed -1 resolves to, so tests stay deterministic
    recorder: Recorder = field(default_factory=Recorder)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/sdapi/v1/txt2img", self._txt2img)
        app.router.add_post("/sdapi/v1/img2img", self._img2img)
        app.router.add_get("/sdapi/v1/samplers", self._samplers)
        return app

    def _refused(self, received: Received) -> web.Response | None:
        if self.credentials is None:
            return None
        header = received.header("Authorization") or ""
        if not header.startswith("Basic "):
            return webui_error(401, "Not authenticated")
        try:
            user, _, password = base64.b64decode(header[len("Basic ") :]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return webui_error(401, "Not authenticated")
        if (user, password) != self.credentials:
            return webui_error(401, "Incorrect username or password")
        return None

    async def _samplers(self, request: web.Request) -> web.Response:
        refused = self._refused(await self.recorder.record(request))
        return refused or web.json_response([{"name": name, "aliases": [], "options": {}} for name in SAMPLERS])

    async def _txt2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, img2img=False)

    async def _img2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, img2img=True)

    async def _generate(self, request: web.Request, *, img2img: bool) -> web.Response:
        received = await self.recorder.record(request)
        refused = self._refused(received)
        if refused is not None:
            return refused
        try:
            body = received.json()
        except ValueError:
            return web.json_response(
                {"detail": [{"loc": ["body", 0], "msg": "Expecting value", "type": "value_error.jsondecode"}]}, status=422
            )
        if not isinstance(body, dict):
            return web.json_response(
                {"detail": [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]}, status=422
            )
        problems = _validation(body)
        if problems:
            return web.json_response({"detail": problems}, status=422)
        return self._process({**DEFAULTS, **body}, img2img)

    def _process(self, params: dict[str, Any], img2img: bool) -> web.Response:
        if params["sampler_name"] not in SAMPLERS:
            return webui_error(404, "Sampler not found")
        if img2img and not params.get("init_images"):
            return webui_error(404, "Init image not found")
        if img2img and not all(_decodes(image) for image in params["init_images"]):
            return webui_error(500, "Invalid encoded image")
        if self.fail_with is not None:
            status, failure = self.fail_with
            return web.json_response(failure, status=status)
        return web.json_response(self._answer(params))

    def _answer(self, params: dict[str, Any]) -> dict[str, Any]:
        count = params["batch_size"] * params["n_iter"]
        seed = self.random_seed if params["seed"] == -1 else params["seed"]
        images = [PNG_B64] * count + [GRID_B64] * self.extra_images
        if self.return_grid:
            images.insert(0, GRID_B64)
        info = {
            "prompt": params["prompt"],
            "all_prompts": [params["prompt"]] * count,
            "negative_prompt": params["negative_prompt"],
            "seed": seed,
            "all_seeds": [seed + index for index in range(count)],
            "subseed": 42,
            "width": params["width"],
            "height": params["height"],
            "sampler_name": params["sampler_name"],
            "cfg_scale": params["cfg_scale"],
            "steps": params["steps"],
            "batch_size": params["batch_size"],
            "index_of_first_image": 1 if self.return_grid else 0,
            "infotexts": [f"{params['prompt']}\nSteps: {params['steps']}, Seed: {seed + index}" for index in range(count)],
        }
        parameters = {key: value for key, value in params.items() if key != "init_images"}
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}
