"""Adapter layer: a self-hosted AUTOMATIC1111 / Forge Stable Diffusion WebUI (started with `--api`).

Mapping: `POST {base_url}/sdapi/v1/txt2img`, or `/sdapi/v1/img2img` when `image` is forwarded. `prompt` ->
`prompt`; `n` -> `batch_size` (one call: bound it with the model's `max_n`, VRAM is the limit); `size` WxH ->
`width`/`height` (sides multiples of 8, at least 64); `auto` or absent -> the channel's `default_size`, else no
width/height at all (the WebUI's own default, 512x512); `seed` -> `seed` (absent -> -1, the WebUI's "random");
`negative_prompt`, `steps`, `cfg_scale`, `sampler_name`, `scheduler` verbatim, the client's value before the
channel setting of the same name; `quality` -> `steps` through the channel's `quality_steps` map (else unused);
`image` -> `init_images` (raw base64: a `data:image/...;base64,` prefix is stripped, URLs are refused with 400,
since the WebUI fetches them only when its operator allows); `strength` -> `denoising_strength` (img2img only);
a rule's `upstream_model` -> `override_settings.sd_model_checkpoint`; `extra_body` adds keys (enable_hr, ...).
Unsupported: `mask` (400: the WebUI paints white where OpenAI masks are transparent), `background`, `style`
(no per-request equivalent); the output format is the server's `samples_format`, so the proxy converts.
Auth: none, or HTTP Basic (`--api-auth`) when the channel's
api_key is `user:password`. Answer: `images[]` base64 -> b64_json (type sniffed; PNG unless the WebUI saves
jpg/webp), skipping a grid (`info.index_of_first_image`) and extension extras beyond n; `info.all_seeds` ->
`metadata.seeds`. Failures: 422 `detail[]` -> 400 naming the client's param; 500 "Invalid encoded
image" -> 400 `image`; the rest via proxy.core.upstream_errors (5xx -> 502, 401 -> 502 channel auth).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from proxy.adapters.base import AdapterSpec, Job, Send, Step, UpstreamResponse
from proxy.adapters.inline_images import sniff_base64
from proxy.adapters.kit import images_step, json_call, misconfigured, setting, upstream_failure
from proxy.core.channel_settings import Setting, SettingError
from proxy.core.errors import InvalidRequest, ProxyError
from proxy.core.extra_body import merge_extra_body
from proxy.core.formats import NativeFormats
from proxy.core.image_input import parse_data_uri
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import ChannelSchema
from proxy.core.sizes import AUTO, Size, parse_size
from proxy.core.upstream_errors import scrub

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
RANDOM_SEED = -1
MIN_SIDE = 64
SIDE_STEP = 8  # the latent is 1/8 of the image: other sides would come back silently cropped
# The WebUI's body field -> the client's field it came from, so a 422 names what the client can fix.
CLIENT_PARAMS = MappingProxyType(
    {"width": "size", "height": "size", "batch_size": "n", "init_images": "image", "denoising_strength": "strength"}
)
INVALID_IMAGE = "Invalid encoded image"  # the WebUI's 500 detail when init_images do not decode
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_MAX_MESSAGE = 500
T = TypeVar("T")


# The checks below serve both the channel's settings (when the rules load) and the same fields sent by a
# client (forwarded unchecked by the rules: a 400 naming the field).


def _steps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError(f"expected a positive integer, got {value!r}")
    return value


def _cfg_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SettingError(f"expected a positive number, got {value!r}")
    return float(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingError(f"expected a non-empty string, got {value!r}")
    return value


def _size(value: Any) -> Size:
    size = parse_size(value) if isinstance(value, str) else None
    if size is None:
        raise SettingError(f"expected WIDTHxHEIGHT, got {value!r}")
    if min(size.width, size.height) < MIN_SIDE or size.width % SIDE_STEP or size.height % SIDE_STEP:
        raise SettingError(f"both sides of {size} must be multiples of {SIDE_STEP} and at least {MIN_SIDE}")
    return size


def _quality_steps(value: Any) -> Mapping[str, int]:
    if not isinstance(value, dict):
        raise SettingError(f"expected a mapping of quality to steps, got {value!r}")
    return MappingProxyType({str(quality): _steps(steps) for quality, steps in value.items()})


# No defaults but `quality_steps`: an unset setting leaves the WebUI's own default.
SCHEMA = ChannelSchema(settings={
    "default_size": Setting(_size),
    "steps": Setting(_steps),
    "cfg_scale": Setting(_cfg_scale),
    "sampler_name": Setting(_name),
    "scheduler": Setting(_name),
    "quality_steps": Setting(_quality_steps, MappingProxyType({})),
})


def _credentials(api_key: str) -> str:
    return base64.b64encode(api_key.encode()).decode("ascii")


def basic_auth(api_key: str | None) -> dict[str, str]:
    """`--api-auth user:password` is HTTP Basic; no key, no header (the WebUI's default is no auth)."""
    return {"Authorization": f"Basic {_credentials(api_key)}"} if api_key else {}


def secrets_of(api_key: str | None) -> tuple[str, ...]:
    """The key and its encoded form, so that neither spelling can leak into a message."""
    if not api_key or ":" not in api_key:
        return (api_key,) if api_key else ()
    return api_key, _credentials(api_key)


def _client(fields: Mapping[str, Any], name: str, check: Callable[[Any], T]) -> T | None:
    """A forwarded client field the request parser does not know (the rules pass it through unchecked)."""
    if name not in fields:
        return None
    try:
        return check(fields[name])
    except ValueError as exc:
        raise InvalidRequest(f"Invalid '{name}': {exc}.", param=name, code="invalid_value") from None


def resolve_size(job: Job) -> Size | None:
    text = job.plan.fields.get("size")
    if text is None or text == AUTO:
        size: Size | None = setting(job, SCHEMA, "default_size")
        return size
    try:
        return _size(text)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid size for Stable Diffusion WebUI: {exc}.", param="size", code="invalid_size") from None


def sampling(job: Job) -> dict[str, Any]:
    """steps, cfg_scale, sampler_name, scheduler: the client's value, else the channel's; absent stays absent."""
    fields, quality = job.plan.fields, job.plan.fields.get("quality")
    by_quality = setting(job, SCHEMA, "quality_steps").get(str(quality)) if quality is not None else None
    steps = _client(fields, "steps", _steps) or by_quality or setting(job, SCHEMA, "steps")
    chosen = {
        "steps": steps,
        "cfg_scale": _client(fields, "cfg_scale", _cfg_scale) or setting(job, SCHEMA, "cfg_scale"),
        "sampler_name": _client(fields, "sampler_name", _name) or setting(job, SCHEMA, "sampler_name"),
        "scheduler": _client(fields, "scheduler", _name) or setting(job, SCHEMA, "scheduler"),
    }
    return {name: value for name, value in chosen.items() if value is not None}


def init_image(value: str) -> str:
    """Raw base64 for `init_images`: base64 data URIs lose their prefix (parameters and all); URLs are refused."""
    uri = parse_data_uri(value)
    if uri is not None and uri.base64:
        return uri.payload
    if _SCHEME.match(value[:32]):
        raise InvalidRequest(
            "Stable Diffusion WebUI takes 'image' as base64 or a data:image/...;base64, URI, not as a URL.",
            param="image",
            code="invalid_value",
        )
    return value


def _img2img(fields: Mapping[str, Any]) -> dict[str, Any]:
    images = fields["image"] if isinstance(fields["image"], list) else [fields["image"]]
    body: dict[str, Any] = {"init_images": [init_image(image) for image in images]}
    if "strength" in fields:
        body["denoising_strength"] = fields["strength"]
    return body


def build_body(job: Job) -> tuple[str, dict[str, Any]]:
    """The WebUI path and JSON body; raises InvalidRequest naming the client's param."""
    plan, fields = job.plan, job.plan.fields
    if "mask" in fields:
        raise InvalidRequest(
            "Stable Diffusion WebUI channels do not take 'mask' (its masks paint white where OpenAI's are transparent).",
            param="mask",
            code="unsupported_parameter",
        )
    body: dict[str, Any] = {"prompt": plan.prompt, "batch_size": plan.n, "seed": fields.get("seed", RANDOM_SEED)}
    if "negative_prompt" in fields:
        body["negative_prompt"] = fields["negative_prompt"]
    size = resolve_size(job)
    if size is not None:
        body.update(width=size.width, height=size.height)
    body.update(sampling(job))
    if plan.rule.upstream_model:
        body["override_settings"] = {"sd_model_checkpoint": plan.rule.upstream_model}
    path = TXT2IMG
    if "image" in fields:
        path = IMG2IMG
        body.update(_img2img(fields))
    body = merge_extra_body(body, fields.get("extra_body", {}))
    return path, body


def start(job: Job) -> Step:
    if job.api_key and ":" not in job.api_key:
        raise misconfigured(job, "api_key must be 'user:password', as given to the WebUI's --api-auth")
    path, body = build_body(job)
    return Send(json_call(job, f"{job.channel.base_url}{path}", body, basic_auth))


def _info(value: Any) -> dict[str, Any]:
    """The WebUI's `info`: a JSON string (processed.js()); anything unreadable counts as empty."""
    if not isinstance(value, str):
        return {}
    try:
        info = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    return info if isinstance(info, dict) else {}


def _image(item: Any) -> GeneratedImage:
    if not isinstance(item, str) or not item:
        raise ValueError("images[] holds something other than base64 text")
    prefix = _DATA_URI.match(item[:80])
    b64 = item[prefix.end() :] if prefix is not None else item
    return GeneratedImage(b64_json=b64, content_type=sniff_base64(b64))


def _first_index(info: Mapping[str, Any]) -> int:
    # With `return_grid` on, the grid comes first and `index_of_first_image` says where the batch starts.
    first = info.get("index_of_first_image", 0)
    return first if isinstance(first, int) and not isinstance(first, bool) and first >= 0 else 0


def _seeds(info: Mapping[str, Any], count: int) -> dict[str, Any]:
    seeds = info.get("all_seeds")
    if not isinstance(seeds, list) or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds):
        return {}
    return {"seeds": seeds[:count]} if seeds else {}


def parse_answer(body: bytes, n: int) -> ImagesResult:
    """`{"images", "parameters", "info"}` -> the result; ValueError when no image is in it."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError("no images[] in the answer")
    info = _info(data.get("info"))
    first = _first_index(info)
    # Extensions (ControlNet's detected maps, ...) append images after the batch: the client asked for n.
    kept = data["images"][first : first + n]
    if not kept:
        raise ValueError("images[] is empty")
    images = tuple(_image(item) for item in kept)
    return ImagesResult(images=images, extra=_seeds(info, len(images)))


def _detail(body: bytes) -> tuple[str | None, str | None]:
    """(message, WebUI field) from FastAPI's `detail[]`, an HTTPException's `detail`, or `error`/`errors`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    detail = data.get("detail")
    if isinstance(detail, list):
        return _validation_detail(detail)
    if isinstance(detail, str) and detail:
        return detail, None
    # An unexpected exception: `error` is its class name, `errors` its text (e.g. CUDA out of memory).
    parts = [str(data[key]) for key in ("error", "errors") if data.get(key)]
    return (": ".join(parts) or None), None


def _validation_detail(detail: list[Any]) -> tuple[str | None, str | None]:
    messages: list[str] = []
    fields: list[str] = []
    for item in detail[:5]:
        if not isinstance(item, dict):
            continue
        loc = [str(part) for part in item.get("loc", []) if part != "body"] if isinstance(item.get("loc"), list) else []
        fields.extend(loc[:1])
        messages.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', 'invalid')}")
    return ("; ".join(messages) or None), (fields[0] if fields else None)


def failure(job: Job, response: UpstreamResponse) -> ProxyError:
    secrets = secrets_of(job.api_key)
    message, upstream_field = _detail(response.body)
    if message is not None:
        message = scrub(message, secrets)[:_MAX_MESSAGE]
        if response.status == 422:
            # FastAPI's request validation: the body we built from the client's fields did not fit.
            param = CLIENT_PARAMS.get(upstream_field or "", upstream_field)
            return InvalidRequest(f"Stable Diffusion WebUI rejected the request: {message}", param=param, code="invalid_value")
        if message == INVALID_IMAGE:
            return InvalidRequest("Stable Diffusion WebUI could not decode 'image'.", param="image", code="invalid_image")
    # Everything else keeps the shared meaning (429, channel auth, 4xx kept, 5xx -> 502) with the WebUI's text.
    body = json.dumps({"error": {"message": message}}).encode() if message else response.body
    return upstream_failure(job, response, body=body, secrets=secrets)


def advance(job: Job, state: None, response: UpstreamResponse) -> Step:
    # A 200 without images (send_images off, a broken extension) is a failure, never an empty success.
    return images_step(job, response, failure, lambda answer: parse_answer(answer.body, job.plan.n))


SPEC = AdapterSpec(
    name="sdwebui",
    schema=SCHEMA,
    start=start,
    advance=advance,
    needs_image_bytes=True,
    # The API answers in the server's own `samples_format` setting (png, jpg or webp), which a request
    # cannot change: nothing is asked and the proxy looks at the bytes.
    output_formats=NativeFormats(default=None),
)
