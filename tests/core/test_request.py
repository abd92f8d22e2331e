"""Core tests: parsing the client's body and validating it into an ImageRequest (seeds 000 and 001)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.request import VALIDATORS, ImageRequest, parse_image_request, parse_json_object, validate_option


def _parse(**fields: Any) -> ImageRequest:
    return parse_image_request({"model": "dall-e-3", "prompt": "a red fox", **fields})


def _error(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        _parse(**fields)
    return info.value


def _assert_400(error: InvalidRequest, param: str | None) -> None:
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert error.envelope()["error"]["param"] == param


# --- parse_json_object -------------------------------------------------------------------------


def test_parse_json_object_returns_the_object() -> None:
    body = json.dumps({"model": "m", "prompt": "p", "style": {"a": [1, 2]}}).encode()
    assert parse_json_object(body) == {"model": "m", "prompt": "p", "style": {"a": [1, 2]}}


def test_parse_json_object_accepts_utf8_text() -> None:
    assert parse_json_object('{"prompt": "一只猫"}'.encode()) == {"prompt": "一只猫"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "The request body must be a JSON object, got array."),
        (b'"text"', "The request body must be a JSON object, got string."),
        (b"null", "The request body must be a JSON object, got null."),
        (b"42", "The request body must be a JSON object, got integer."),
        (b"", "The request body is empty: expected a JSON object."),
        (b"  \n\t ", "The request body is empty: expected a JSON object."),
    ],
)
def test_parse_json_object_rejects_non_objects_and_empty_bodies(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(body)
    _assert_400(info.value, None)
    assert info.value.message == message
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("body", "token"),
    [
        (b'{"strength": NaN}', "NaN"),
        (b'{"strength": Infinity}', "Infinity"),
        (b'{"strength": -Infinity}', "-Infinity"),
    ],
)
def test_parse_json_object_rejects_nan_and_infinity(body: bytes, token: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(body)
    _assert_400(info.value, None)
    assert info.value.code == "invalid_json"
    assert info.value.message == f"The request body is not valid JSON: {token} is not valid JSON"


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "caf\xe9"}',  # Latin-1 byte, not UTF-8
        b'{"prompt": "\xff\xfe"}',
        b"{",
        b'{"model": "m",}',
        b"{'model': 'm'}",
        b"[" * 100_000,  # deep nesting must not escape as RecursionError
    ],
)
def test_parse_json_object_rejects_invalid_utf8_and_json(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json_object(body)
    _assert_400(info.value, None)
    assert info.value.code == "invalid_json"
    assert info.value.message.startswith("The request body is not valid JSON: ")


# --- model, prompt, n --------------------------------------------------------------------------


def test_minimal_request() -> None:
    request = parse_image_request({"model": "gpt-image-1", "prompt": "生成一张简洁的产品海报"})
    assert request == ImageRequest(model="gpt-image-1", prompt="生成一张简洁的产品海报", n=1, n_given=False)
    assert dict(request.options) == {}


@pytest.mark.parametrize("body", [{"prompt": "p"}, {"model": None, "prompt": "p"}])
def test_model_is_required(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_image_request(body)
    _assert_400(info.value, "model")
    assert info.value.message == "you must provide a model parameter"
    assert info.value.code == "missing_required_parameter"


@pytest.mark.parametrize(("value", "code"), [("", "invalid_value"), ("   ", "invalid_value"), (3, "invalid_type")])
def test_model_must_be_a_non_empty_string(value: Any, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_image_request({"model": value, "prompt": "p"})
    _assert_400(info.value, "model")
    assert info.value.code == code


@pytest.mark.parametrize("body", [{"model": "m"}, {"model": "m", "prompt": None}])
def test_prompt_is_required(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_image_request(body)
    _assert_400(info.value, "prompt")
    assert info.value.message == "you must provide a prompt parameter"
    assert info.value.code == "missing_required_parameter"


@pytest.mark.parametrize("value", ["", " ", "\n\t"])
def test_prompt_must_not_be_empty(value: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_image_request({"model": "m", "prompt": value})
    _assert_400(info.value, "prompt")
    assert info.value.message == "'prompt' must not be empty."
    assert info.value.code == "invalid_value"


@pytest.mark.parametrize(("value", "kind"), [(["a"], "array"), (5, "integer"), ({"t": "x"}, "object"), (True, "boolean")])
def test_prompt_must_be_a_string(value: Any, kind: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_image_request({"model": "m", "prompt": value})
    _assert_400(info.value, "prompt")
    assert info.value.message == f"Invalid type for 'prompt': expected a string, but got {kind}."
    assert info.value.code == "invalid_type"


def test_prompt_and_model_are_kept_verbatim() -> None:
    request = parse_image_request({"model": "  dall-e-3", "prompt": "  spaced \n prompt  "})
    assert request.model == "  dall-e-3"
    assert request.prompt == "  spaced \n prompt  "


@pytest.mark.parametrize(
    ("body", "n", "n_given"),
    [
        ({}, 1, False),
        ({"n": None}, 1, False),
        ({"n": 0}, 1, False),
        ({"n": 1}, 1, True),
        ({"n": 4}, 4, True),
    ],
)
def test_n_absent_null_or_zero_means_one(body: dict[str, Any], n: int, n_given: bool) -> None:
    request = _parse(**body)
    assert request.n == n
    assert request.n_given is n_given
    assert "n" not in request.options


@pytest.mark.parametrize(
    ("value", "message", "code"),
    [
        (-1, "'n' must be at least 0, got -1.", "invalid_value"),
        (1.5, "Invalid type for 'n': expected an integer, but got number.", "invalid_type"),
        (2.0, "Invalid type for 'n': expected an integer, but got number.", "invalid_type"),
        ("2", "Invalid type for 'n': expected an integer, but got string.", "invalid_type"),
        (True, "Invalid type for 'n': expected an integer, but got boolean.", "invalid_type"),
        (False, "Invalid type for 'n': expected an integer, but got boolean.", "invalid_type"),
        ([1], "Invalid type for 'n': expected an integer, but got array.", "invalid_type"),
    ],
)
def test_bad_n_is_rejected(value: Any, message: str, code: str) -> None:
    error = _error(n=value)
    _assert_400(error, "n")
    assert error.message == message
    assert error.code == code


# --- the optional fields (VALIDATORS) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1024x1024", "1024x1024"),
        ("1024×1024", "1024x1024"),
        ("1024*1024", "1024x1024"),
        ("1024X1024", "1024x1024"),
        (" 1792 x 1024 ", "1792x1024"),
        ("auto", "auto"),
        ("AUTO", "auto"),
    ],
)
def test_size_is_normalised(value: str, expected: str) -> None:
    assert _parse(size=value).options["size"] == expected


@pytest.mark.parametrize("value", ["1024", "1024x", "x1024", "0x1024", "1024x0", "big", "1024:1024", "-1x5", ""])
def test_bad_size_is_rejected(value: str) -> None:
    error = _error(size=value)
    _assert_400(error, "size")
    assert error.code == "invalid_size"
    assert error.message == f"Invalid size '{value}': expected WIDTHxHEIGHT (e.g. 1024x1024) or 'auto'."


def test_size_must_be_a_string() -> None:
    error = _error(size=1024)
    _assert_400(error, "size")
    assert error.code == "invalid_type"


@pytest.mark.parametrize(("value", "expected"), [("url", "url"), ("b64_json", "b64_json"), ("base64", "b64_json")])
def test_response_format(value: str, expected: str) -> None:
    assert _parse(response_format=value).options["response_format"] == expected


@pytest.mark.parametrize("value", ["png", "URL", "b64", "json", ""])
def test_bad_response_format_is_rejected(value: str) -> None:
    error = _error(response_format=value)
    _assert_400(error, "response_format")
    assert error.code == "invalid_value"
    assert error.message == (
        f"Invalid response_format '{value}': expected 'url' or 'b64_json' ('base64' is accepted as b64_json)."
    )


def test_response_format_must_be_a_string() -> None:
    _assert_400(_error(response_format=1), "response_format")


@pytest.mark.parametrize("value", [True, False])
def test_watermark_is_a_boolean_kept_as_given(value: bool) -> None:
    assert _parse(watermark=value).options["watermark"] is value


def test_watermark_absent_stays_absent() -> None:
    assert "watermark" not in _parse().options
    assert "watermark" not in _parse(watermark=None).options


@pytest.mark.parametrize(("value", "kind"), [("true", "string"), ("false", "string"), (1, "integer"), (0, "integer")])
def test_watermark_rejects_non_booleans(value: Any, kind: str) -> None:
    error = _error(watermark=value)
    _assert_400(error, "watermark")
    assert error.message == f"Invalid type for 'watermark': expected a boolean, but got {kind}."
    assert error.code == "invalid_type"


@pytest.mark.parametrize("name", ["style", "background"])
@pytest.mark.parametrize("value", ["vivid", {"preset": "anime", "weights": [0.2, 0.8], "nested": {"k": None}}, {}])
def test_style_and_background_are_kept_equal(name: str, value: Any) -> None:
    kept = _parse(**{name: value}).options[name]
    assert kept == value
    assert json.dumps(kept) == json.dumps(value)


@pytest.mark.parametrize("name", ["style", "background"])
@pytest.mark.parametrize(("value", "kind"), [(1, "integer"), (["a"], "array"), (True, "boolean")])
def test_style_and_background_reject_other_types(name: str, value: Any, kind: str) -> None:
    error = _error(**{name: value})
    _assert_400(error, name)
    assert error.message == f"Invalid type for '{name}': expected a string or an object, but got {kind}."


@pytest.mark.parametrize("value", [0, 0.5, 1, 1.0, 0.0])
def test_strength_in_range(value: float) -> None:
    kept = _parse(strength=value).options["strength"]
    assert kept == value
    assert type(kept) is type(value)


@pytest.mark.parametrize(("value", "code"), [(-0.01, "invalid_value"), (1.01, "invalid_value"), (2, "invalid_value"),
                                             ("0.5", "invalid_type"), (True, "invalid_type")])
def test_strength_out_of_range_or_wrong_type(value: Any, code: str) -> None:
    error = _error(strength=value)
    _assert_400(error, "strength")
    assert error.code == code


def test_strength_range_message() -> None:
    assert _error(strength=1.5).message == "'strength' must be between 0 and 1, got 1.5."


@pytest.mark.parametrize(("value", "expected"), [("16:9", "16:9"), ("1:1", "1:1"), (" 4 : 3 ", "4:3"), ("016:09", "16:9")])
def test_aspect_ratio(value: str, expected: str) -> None:
    assert _parse(aspect_ratio=value).options["aspect_ratio"] == expected


@pytest.mark.parametrize("value", ["16x9", "16/9", "0:1", "1:0", "16:", ":9", "a:b", "1.5:1", ""])
def test_bad_aspect_ratio(value: str) -> None:
    error = _error(aspect_ratio=value)
    _assert_400(error, "aspect_ratio")
    assert error.message == f"Invalid aspect_ratio '{value}': expected W:H with positive integers (e.g. 16:9)."


def test_aspect_ratio_must_be_a_string() -> None:
    error = _error(aspect_ratio=1.5)
    _assert_400(error, "aspect_ratio")
    assert error.code == "invalid_type"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("png", "png"), ("jpg", "jpeg"), ("jpeg", "jpeg"), ("webp", "webp"), ("PNG", "png"), ("JPG", "jpeg"), (" WebP ", "webp")],
)
def test_output_format(value: str, expected: str) -> None:
    assert _parse(output_format=value).options["output_format"] == expected


@pytest.mark.parametrize("value", ["gif", "svg", "bmp", "tiff", "heic", "jpe g", ""])
def test_bad_output_format(value: str) -> None:
    error = _error(output_format=value)
    _assert_400(error, "output_format")
    assert error.code == "invalid_value"
    assert error.message == f"Invalid output_format '{value}': expected one of png, jpeg, webp ('jpg' is accepted as jpeg)."


def test_output_format_must_be_a_string() -> None:
    _assert_400(_error(output_format=["png"]), "output_format")


def test_extra_body_object_is_kept() -> None:
    extra = {"sequential_image_generation": "disabled", "sequential_image_generation_options": {"max_images": 15}}
    assert _parse(extra_body=extra).options["extra_body"] == extra


@pytest.mark.parametrize(("value", "kind"), [("{}", "string"), ([1], "array"), (1, "integer")])
def test_extra_body_must_be_an_object(value: Any, kind: str) -> None:
    error = _error(extra_body=value)
    _assert_400(error, "extra_body")
    assert error.message == f"Invalid type for 'extra_body': expected an object, but got {kind}."


@pytest.mark.parametrize("name", ["async", "stream"])
def test_async_and_stream_booleans(name: str) -> None:
    assert _parse(**{name: True}).options[name] is True
    assert _parse(**{name: False}).options[name] is False


@pytest.mark.parametrize("name", ["async", "stream"])
@pytest.mark.parametrize("value", ["true", 1, 0])
def test_async_and_stream_reject_non_booleans(name: str, value: Any) -> None:
    error = _error(**{name: value})
    _assert_400(error, name)
    assert error.code == "invalid_type"


@pytest.mark.parametrize("value", [0, 1, 5, 100])
def test_retries_non_negative_integer(value: int) -> None:
    assert _parse(retries=value).options["retries"] == value


@pytest.mark.parametrize(("value", "code"), [(-1, "invalid_value"), (1.5, "invalid_type"), ("2", "invalid_type"),
                                             (True, "invalid_type")])
def test_bad_retries(value: Any, code: str) -> None:
    error = _error(retries=value)
    _assert_400(error, "retries")
    assert error.code == code


def test_retries_negative_message() -> None:
    assert _error(retries=-1).message == "'retries' must be at least 0, got -1."


@pytest.mark.parametrize("value", [0, 1, 2, 3])
def test_partial_images_in_range(value: int) -> None:
    assert _parse(partial_images=value).options["partial_images"] == value


@pytest.mark.parametrize("value", [-1, 4])
def test_partial_images_out_of_range(value: int) -> None:
    error = _error(partial_images=value)
    _assert_400(error, "partial_images")
    assert error.message == f"'partial_images' must be between 0 and 3, got {value}."


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("quality", "hd", ""),
        ("negative_prompt", "", 3),
        ("style_preset", "3d-model", " "),
        ("output_compression", 100, 101),
        ("mask", "data:image/png;base64,AAAA", ""),
        ("seed", 4294967295, 4294967296),
        ("seed", -1, -2),
        ("user", "user-1", 1),
        ("safety_identifier", "abc", {}),
        ("moderation", "low", ""),
        ("image", "https://example.com/a.png", ""),
        ("image", ["https://example.com/a.png", "b64data"], []),
        ("image", ["a"], ["a", ""]),
    ],
)
def test_other_validators(name: str, good: Any, bad: Any) -> None:
    assert _parse(**{name: good}).options[name] == good
    _assert_400(_error(**{name: bad}), name)


def test_every_validator_rejects_a_wrong_type_naming_its_param() -> None:
    # A list is valid for no field but `image` (and only a list of non-empty strings there).
    for name in VALIDATORS:
        value: Any = [1] if name == "image" else [object()]
        with pytest.raises(InvalidRequest) as info:
            validate_option(name, value)
        _assert_400(info.value, name)


def test_null_is_the_same_as_absent() -> None:
    body = {name: None for name in VALIDATORS}
    body["unknown_field"] = None
    request = _parse(**body)
    assert dict(request.options) == {}
    assert request == _parse()


def test_unknown_fields_are_kept_verbatim() -> None:
    odd = {"x": [1, 2.5, None, "s"], "y": {"z": True}}
    request = _parse(provider_option=odd, flag=False, count=0, text="  ")
    assert dict(request.options) == {"provider_option": odd, "flag": False, "count": 0, "text": "  "}
    assert validate_option("anything", {"a": 1}) == {"a": 1}


def test_all_fields_of_seed_001_together() -> None:
    body = {
        "model": "gpt-image-1",
        "prompt": "画一只可爱的小猫",
        "negative_prompt": "blurry",
        "image": "https://example.com/cat.png",
        "strength": 0.5,
        "size": "1024×1024",
        "aspect_ratio": "1:1",
        "n": 2,
        "quality": "medium",
        "style_preset": "3d-model",
        "response_format": "base64",
        "output_format": "png",
        "mask": "https://example.com/mask.png",
        "watermark": False,
        "background": "auto",
        "extra_body": {"sequential_image_generation": "disabled"},
        "async": False,
        "retries": 0,
    }
    request = parse_image_request(body)
    assert request.model == "gpt-image-1"
    assert request.n == 2
    assert request.n_given is True
    expected = {key: value for key, value in body.items() if key not in ("model", "prompt", "n")}
    expected["size"] = "1024x1024"
    expected["response_format"] = "b64_json"
    assert dict(request.options) == expected


def test_parsing_does_not_mutate_the_body() -> None:
    body = {"model": "m", "prompt": "p", "size": "1024×1024", "response_format": "base64"}
    snapshot = json.loads(json.dumps(body))
    parse_image_request(body)
    assert body == snapshot


def test_options_are_read_only() -> None:
    request = _parse(size="1024x1024")
    with pytest.raises(TypeError):
        request.options["size"] = "1x1"  # type: ignore[index]
