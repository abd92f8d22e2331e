"""Core layer: a client's generation request, parsed from bytes and validated into an ImageRequest.

Semantics from the seeds: `model` and `prompt` are required; `n` absent, null or 0 means 1;
`base64` is an alias of `b64_json`; `watermark` is tri-state (absent, false, true are three different
requests), so optional fields live in a mapping where absence is kept as absence.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from proxy.core.errors import InvalidRequest
from proxy.core.formats import FORMATS, canonical_format
from proxy.core.sizes import normalise_size

RESPONSE_FORMATS = {"url": "url", "b64_json": "b64_json", "base64": "b64_json"}
_RATIO = re.compile(r"^\s*([0-9]{1,5})\s*:\s*([0-9]{1,5})\s*$")  # ASCII digits, as sizes


@dataclass(frozen=True)
class ImageRequest:
    model: str
    prompt: str
    n: int  # already resolved: absent, null and 0 became 1
    n_given: bool  # the client sent an n of its own
    # Every other field the client sent, validated and in canonical form; absent fields are absent.
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _fail(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def _string(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(param, "a string", value)
    return value


def _nonempty_string(param: str, value: Any) -> str:
    text = _string(param, value)
    if not text.strip():
        raise InvalidRequest(f"'{param}' must not be empty.", param=param, code="invalid_value")
    return text


def _boolean(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(param, "a boolean", value)
    return value


def _integer(param: str, value: Any) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(param, "an integer", value)
    return value


def _bounded_integer(low: int, high: int | None) -> Callable[[str, Any], int]:
    def check(param: str, value: Any) -> int:
        number = _integer(param, value)
        if number < low or (high is not None and number > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise InvalidRequest(
                f"'{param}' must be {bound}, got {number}.", param=param, code="invalid_value"
            )
        return number

    return check


def _string_or_object(param: str, value: Any) -> str | dict[str, Any]:
    if not isinstance(value, (str, dict)):
        raise _fail(param, "a string or an object", value)
    return value


def _object(param: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(param, "an object", value)
    return value


def _size(param: str, value: Any) -> str:
    size = normalise_size(_string(param, value))
    if size is None:
        raise InvalidRequest(
            f"Invalid size '{value}': expected WIDTHxHEIGHT (e.g. 1024x1024) or 'auto'.",
            param=param,
            code="invalid_size",
        )
    return size


def _response_format(param: str, value: Any) -> str:
    canonical = RESPONSE_FORMATS.get(_string(param, value))
    if canonical is None:
        raise InvalidRequest(
            f"Invalid response_format '{value}': expected 'url' or 'b64_json' ('base64' is accepted as b64_json).",
            param=param,
            code="invalid_value",
        )
    return canonical


def _output_format(param: str, value: Any) -> str:
    # Only what OpenAI's API defines: the proxy can make each of them from any provider's image (by
    # conversion where needed), and nothing else, so another format is refused before any paid call.
    canonical = canonical_format(_string(param, value))
    if canonical is None:
        raise InvalidRequest(
            f"Invalid output_format '{value}': expected one of {', '.join(FORMATS)} ('jpg' is accepted as jpeg).",
            param=param,
            code="invalid_value",
        )
    return canonical


def _strength(param: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(param, "a number", value)
    if not 0 <= value <= 1:
        raise InvalidRequest(
            f"'{param}' must be between 0 and 1, got {value}.", param=param, code="invalid_value"
        )
    return value


def _aspect_ratio(param: str, value: Any) -> str:
    match = _RATIO.match(_string(param, value))
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise InvalidRequest(
            f"Invalid aspect_ratio '{value}': expected W:H with positive integers (e.g. 16:9).",
            param=param,
            code="invalid_value",
        )
    return f"{int(match.group(1))}:{int(match.group(2))}"


def _images(param: str, value: Any) -> str | list[str]:
    """One image (URL or base64, with or without a data-URI prefix) or a list of them."""
    if isinstance(value, list):
        if not value:
            raise InvalidRequest(f"'{param}' must not be an empty list.", param=param, code="invalid_value")
        return [_nonempty_string(param, item) for item in value]
    return _nonempty_string(param, value)


# Each known optional field and its validator. The validator returns the canonical value.
VALIDATORS: Mapping[str, Callable[[str, Any], Any]] = MappingProxyType({
    "size": _size,
    "quality": _nonempty_string,
    "response_format": _response_format,
    "style": _string_or_object,
    "background": _string_or_object,
    "watermark": _boolean,
    "negative_prompt": _string,
    "image": _images,
    "strength": _strength,
    "aspect_ratio": _aspect_ratio,
    "style_preset": _nonempty_string,
    "output_format": _output_format,
    "output_compression": _bounded_integer(0, 100),
    "mask": _nonempty_string,
    "extra_body": _object,
    "async": _boolean,
    "retries": _bounded_integer(0, None),
    "seed": _bounded_integer(-1, 2**32 - 1),
    "user": _string,
    "safety_identifier": _string,
    "moderation": _nonempty_string,
    "stream": _boolean,
    "partial_images": _bounded_integer(0, 3),
    "callback_url": _nonempty_string,
})


def validate_option(name: str, value: Any) -> Any:
    """Canonical form of one optional field; unknown fields pass as they are (rules decide their fate)."""
    validator = VALIDATORS.get(name)
    return value if validator is None else validator(name, value)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _finite_float(text: str) -> float:
    # `1e400` is valid JSON syntax, but Python reads it as inf, which would leave as `Infinity` (not JSON)
    # in an upstream body or an answer: a number no double can hold is refused like NaN and Infinity.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _check_strings(data: Any) -> None:
    """Refuse lone surrogates (`"\ud800"` escapes, or their raw bytes, which json decodes with surrogatepass).

    They are legal JSON escapes but no UTF-8 text can carry them, so any later encode (a hash of the prompt,
    an upstream form field, a response header) would fail with a 500. Walked without recursion: the body
    may nest as deep as the parser allowed.
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def loads_strict(text: str | bytes | bytearray) -> Any:
    """json.loads that accepts only what RFC 8259 calls JSON text: no NaN/Infinity, no overflowing
    numbers, no lone surrogates. Raises ValueError (or RecursionError on absurd nesting)."""
    data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    _check_strings(data)
    return data


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """The body as a JSON object, whatever Content-Type the client claimed (seed 000's curl sends none)."""
    if not body.strip():
        raise InvalidRequest("The request body is empty: expected a JSON object.", code="invalid_json")
    try:
        # NaN and Infinity are not JSON (RFC 8259 §6); Python accepts them unless told not to.
        data = loads_strict(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, got {_type_name(data)}.", code="invalid_json"
        )
    return data


def _resolve_n(value: Any) -> int:
    # Seed 000: n absent or explicitly 0 falls back to 1; null is treated as absent.
    if value is None:
        return 1
    number = _bounded_integer(0, None)("n", value)
    return number or 1


# Unknown fields are named back in the X-Imagegate-Ignored-Params response header. Without bounds a body
# of 20,000 keys made a header no HTTP client reads (aiohttp's limit is 8190 bytes), and a key holding
# CR, LF or NUL made aiohttp refuse the header and drop the connection. No real request comes near these.
MAX_FIELDS = 64
MAX_FIELD_NAME = 100


def _plain_name(name: str) -> bool:
    """No control character (Cc) and no lone surrogate (Cs) in a field name."""
    if name.isascii() and name.isprintable():
        return True  # every real field name: printable ASCII holds neither, so no character need be looked up
    return not any(unicodedata.category(char) in ("Cc", "Cs") for char in name)


def _check_field_names(data: Mapping[str, Any]) -> None:
    if len(data) > MAX_FIELDS:
        raise InvalidRequest(
            f"The request has {len(data)} fields; at most {MAX_FIELDS} are accepted.", code="too_many_fields"
        )
    for name in data:
        if len(name) > MAX_FIELD_NAME or not _plain_name(name):
            raise InvalidRequest(
                f"Invalid field name {name[:40]!r}: field names are at most {MAX_FIELD_NAME} characters, "
                "with no control characters.",
                code="invalid_field_name",
            )


def _lift_callback(options: dict[str, Any]) -> None:
    """`extra_body.callback_url` (how SDKs send fields they do not know) is the proxy's, like a top-level one:
    it is taken out of `extra_body`, so it never reaches an upstream."""
    extra = options.get("extra_body")
    if not isinstance(extra, dict) or "callback_url" not in extra:
        return
    if "callback_url" in options:
        raise InvalidRequest("Send callback_url once: at the top level or in extra_body.", param="callback_url",
                             code="invalid_value")
    rest = {name: value for name, value in extra.items() if name != "callback_url"}
    if extra["callback_url"] is not None:
        options["callback_url"] = _nonempty_string("callback_url", extra["callback_url"])
    if rest:
        options["extra_body"] = rest
    else:
        del options["extra_body"]


def parse_image_request(data: Mapping[str, Any], *, require_prompt: bool = True) -> ImageRequest:
    """Validate a decoded generation body; raises InvalidRequest naming the offending param.

    Variations take no prompt (`require_prompt=False`): an absent one is the empty string there.
    """
    _check_field_names(data)
    if data.get("model") is None:
        raise InvalidRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    model = _nonempty_string("model", data["model"])
    if data.get("prompt") is None and require_prompt:
        raise InvalidRequest("you must provide a prompt parameter", param="prompt", code="missing_required_parameter")
    prompt = _nonempty_string("prompt", data["prompt"]) if data.get("prompt") is not None else ""
    options = {
        name: validate_option(name, value)
        for name, value in data.items()
        if name not in ("model", "prompt", "n") and value is not None
    }
    _lift_callback(options)
    return ImageRequest(
        model=model,
        prompt=prompt,
        n=_resolve_n(data.get("n")),
        n_given=data.get("n") not in (None, 0),
        options=MappingProxyType(options),
    )
