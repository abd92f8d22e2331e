"""Golden tests of the Stable Diffusion WebUI adapter: client body -> upstream call -> canned answer -> result or error."""

from __future__ import annotations

import base64
import json
from functools import partial
from typing import Any

import pytest

from proxy.adapters.base import Call, Done, Fail, Job, Send, UpstreamResponse
from proxy.adapters.sdwebui import SPEC
from proxy.core.errors import BadGateway, InvalidRequest, UpstreamError
from proxy.core.response import GeneratedImage, ImagesResult
from tests import factories
from tests.factories import advance_error, start_call, started
from tests.fakes.png import encode_png

BASE = "http://gpu-box:7860"
PNG_B64 = base64.b64encode(encode_png(1, 1, [b"\x01\x02\x03"])).decode("ascii")
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20).decode("ascii")
GRID_B64 = base64.b64encode(encode_png(2, 1, [b"\x00" * 6])).decode("ascii")
JSON_HEADERS = {"Content-Type": "application/json"}
AUTH = "painter:s3cret-pass"
ALL_EXTRAS = frozenset(
    {"seed", "negative_prompt", "image", "strength", "steps", "cfg_scale", "sampler_name", "scheduler", "mask", "extra_body"}
)

make_job = partial(factories.make_job, spec=SPEC, finished=False,
                   channel="webui", channel_type="sdwebui", base_url=BASE, max_n=8,
                   passthrough=ALL_EXTRAS)


sent = partial(start_call, SPEC)


def refused(job: Job) -> Any:
    step = started(SPEC, job)
    assert isinstance(step, Fail), step
    return step.error


answer = partial(factories.answer, content_type="application/json")


def webui_answer(images: list[str], info: dict[str, Any] | str) -> dict[str, Any]:
    return {"images": images, "parameters": {"prompt": "p"}, "info": info if isinstance(info, str) else json.dumps(info)}


failed = partial(advance_error, SPEC)


# --- the call -------------------------------------------------------------------------------------------


def test_minimal_request_sends_only_the_prompt_batch_and_random_seed() -> None:
    assert SPEC.start(make_job({"model": "sd-webui", "prompt": "a lighthouse"})) == Send(
        Call(
            "POST", f"{BASE}/sdapi/v1/txt2img", headers=JSON_HEADERS, json={"prompt": "a lighthouse", "batch_size": 1, "seed": -1}
        )
    )


def test_fields_map_onto_txt2img() -> None:
    job = make_job(
        {
            "model": "sd-webui",
            "prompt": "a lighthouse",
            "n": 3,
            "size": "768x512",
            "seed": 7,
            "negative_prompt": "blurry",
            "steps": 30,
            "cfg_scale": 5.5,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
        }
    )
    assert sent(job).json == {
        "prompt": "a lighthouse",
        "batch_size": 3,
        "seed": 7,
        "negative_prompt": "blurry",
        "width": 768,
        "height": 512,
        "steps": 30,
        "cfg_scale": 5.5,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
    }


def test_seed_zero_is_kept_not_replaced_by_random() -> None:
    assert sent(make_job({"model": "sd-webui", "prompt": "p", "seed": 0})).json["seed"] == 0


def test_channel_settings_fill_what_the_client_left_absent() -> None:
    settings = {"default_size": "1024x1024", "steps": 25, "cfg_scale": 7, "sampler_name": "Euler a", "scheduler": "Automatic"}
    job = make_job({"model": "sd-webui", "prompt": "p", "sampler_name": "DDIM"}, settings=settings)
    assert sent(job).json == {
        "prompt": "p",
        "batch_size": 1,
        "seed": -1,
        "width": 1024,
        "height": 1024,
        "steps": 25,
        "cfg_scale": 7.0,
        "sampler_name": "DDIM",
        "scheduler": "Automatic",
    }


def test_quality_picks_steps_through_quality_steps_but_the_clients_steps_win() -> None:
    settings = {"steps": 20, "quality_steps": {"low": 12, "high": 40}}
    assert sent(make_job({"model": "sd-webui", "prompt": "p", "quality": "high"}, settings=settings)).json["steps"] == 40
    assert sent(make_job({"model": "sd-webui", "prompt": "p", "quality": "auto"}, settings=settings)).json["steps"] == 20
    assert (
        sent(make_job({"model": "sd-webui", "prompt": "p", "quality": "high", "steps": 9}, settings=settings)).json["steps"] == 9
    )


def test_auto_size_without_a_default_leaves_the_size_to_the_webui() -> None:
    body = sent(make_job({"model": "sd-webui", "prompt": "p", "size": "auto"})).json
    assert "width" not in body and "height" not in body
    body = sent(make_job({"model": "sd-webui", "prompt": "p", "size": "auto"}, settings={"default_size": "512x768"})).json
    assert (body["width"], body["height"]) == (512, 768)


def test_fields_not_in_passthrough_are_not_sent() -> None:
    job = make_job({"model": "sd-webui", "prompt": "p", "seed": 5, "negative_prompt": "x"}, passthrough=frozenset())
    assert sent(job).json == {"prompt": "p", "batch_size": 1, "seed": -1}
    assert job.plan.ignored == ("negative_prompt", "seed")


def test_upstream_model_selects_the_checkpoint_and_extra_body_merges_last() -> None:
    job = make_job(
        {"model": "sdxl", "prompt": "p", "extra_body": {"enable_hr": True, "hr_scale": 2}},
        upstream_model="sd_xl_base_1.0.safetensors [31e35c80fc]",
    )
    assert sent(job).json == {
        "prompt": "p",
        "batch_size": 1,
        "seed": -1,
        "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"},
        "enable_hr": True,
        "hr_scale": 2,
    }


def test_image_switches_to_img2img_with_raw_base64_and_denoising_strength() -> None:
    job = make_job({"model": "sd-webui", "prompt": "p", "image": [f"data:image/png;base64,{PNG_B64}", PNG_B64], "strength": 0.35})
    assert sent(job) == Call(
        "POST",
        f"{BASE}/sdapi/v1/img2img",
        headers=JSON_HEADERS,
        json={"prompt": "p", "batch_size": 1, "seed": -1, "init_images": [PNG_B64, PNG_B64], "denoising_strength": 0.35},
    )


def test_data_uri_parameters_are_stripped_with_the_prefix() -> None:
    # RFC 2397 allows parameters before ;base64: the WebUI still gets the bare base64, not a refusal as a URL.
    image = f"data:image/png;name=cat.png;base64,{PNG_B64}"
    assert sent(make_job({"model": "sd-webui", "prompt": "p", "image": image})).json["init_images"] == [PNG_B64]


def test_strength_without_image_stays_on_txt2img_and_is_not_sent() -> None:
    call = sent(make_job({"model": "sd-webui", "prompt": "p", "strength": 0.5}))
    assert call.url == f"{BASE}/sdapi/v1/txt2img"
    assert "denoising_strength" not in call.json


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://10.0.0.1/x.png", "file:///etc/passwd"])
def test_an_image_url_is_a_400(url: str) -> None:
    error = refused(make_job({"model": "sd-webui", "prompt": "p", "image": url}))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.param, error.code) == (400, "image", "invalid_value")


@pytest.mark.parametrize("size", ["1000x1001", "1020x1024", "32x32"])
def test_a_size_the_latent_cannot_hold_is_a_400(size: str) -> None:
    error = refused(make_job({"model": "sd-webui", "prompt": "p", "size": size}))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.type, error.param, error.code) == (400, "invalid_request_error", "size", "invalid_size")


def test_mask_is_refused_naming_the_param() -> None:
    error = refused(make_job({"model": "sd-webui", "prompt": "p", "image": PNG_B64, "mask": PNG_B64}))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.param, error.code) == (400, "mask", "unsupported_parameter")


@pytest.mark.parametrize(("field", "value"), [("steps", "many"), ("steps", 0), ("cfg_scale", True), ("sampler_name", "")])
def test_mistyped_webui_fields_are_400s(field: str, value: Any) -> None:
    error = refused(make_job({"model": "sd-webui", "prompt": "p", field: value}))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.param, error.code) == (400, field, "invalid_value")


def test_basic_auth_from_a_user_password_key() -> None:
    call = sent(make_job({"model": "sd-webui", "prompt": "p"}, api_key=AUTH))
    token = base64.b64encode(AUTH.encode()).decode()
    assert call.headers == {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


def test_a_key_that_is_not_user_password_fails_the_channel() -> None:
    error = refused(make_job({"model": "sd-webui", "prompt": "p"}, api_key="no-colon"))
    assert (error.status, error.code, error.retryable) == (503, "channel_misconfigured", True)
    assert "user:password" in error.message
    assert "no-colon" not in error.message


def test_spec_shape() -> None:
    assert SPEC.name == "sdwebui"
    assert SPEC.max_n_per_call is None  # batch_size carries n
    assert SPEC.auth_headers is None  # the WebUI does not speak the OpenAI API: no pass-through


# --- the answer -----------------------------------------------------------------------------------------


def test_success_gives_b64_images_with_sniffed_types_and_seeds() -> None:
    job = make_job({"model": "sd-webui", "prompt": "p", "n": 2})
    info = {"seed": 99, "all_seeds": [99, 100], "index_of_first_image": 0, "width": 512, "height": 512}
    assert SPEC.advance(job, None, answer(200, webui_answer([PNG_B64, JPEG_B64], info))) == Done(
        ImagesResult(
            images=(
                GeneratedImage(b64_json=PNG_B64, content_type="image/png"),
                GeneratedImage(b64_json=JPEG_B64, content_type="image/jpeg"),
            ),
            extra={"seeds": [99, 100]},
        )
    )


def test_the_grid_and_extension_images_beyond_n_are_skipped() -> None:
    job = make_job({"model": "sd-webui", "prompt": "p", "n": 2})
    info = {"all_seeds": [5, 6], "index_of_first_image": 1}
    step = SPEC.advance(job, None, answer(200, webui_answer([GRID_B64, PNG_B64, PNG_B64, GRID_B64], info)))
    assert isinstance(step, Done)
    assert [image.b64_json for image in step.result.images] == [PNG_B64, PNG_B64]
    assert step.result.extra == {"seeds": [5, 6]}


def test_data_uri_images_and_unreadable_info_are_tolerated() -> None:
    job = make_job({"model": "sd-webui", "prompt": "p"})
    step = SPEC.advance(job, None, answer(200, webui_answer([f"data:image/png;base64,{PNG_B64}"], "not json")))
    assert step == Done(ImagesResult(images=(GeneratedImage(b64_json=PNG_B64, content_type="image/png"),)))


@pytest.mark.parametrize("body", [{"images": [], "info": "{}"}, {"detail": "x"}, {"images": [None]}, ["not", "an", "object"]])
def test_a_200_without_images_is_a_bad_gateway(body: Any) -> None:
    error = failed(make_job({"model": "sd-webui", "prompt": "p"}), answer(200, body))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code) == (502, "bad_upstream_response")


def test_422_validation_names_the_clients_param() -> None:
    body = {"detail": [{"loc": ["body", "width"], "msg": "value is not a valid integer", "type": "type_error.integer"}]}
    error = failed(make_job({"model": "sd-webui", "prompt": "p"}), answer(422, body))
    assert isinstance(error, InvalidRequest)
    assert error.envelope() == {
        "error": {
            "message": "Stable Diffusion WebUI rejected the request: width: value is not a valid integer",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_value",
        }
    }


def test_undecodable_init_image_500_is_the_clients_400() -> None:
    body = {"error": "HTTPException", "detail": "Invalid encoded image", "body": "", "errors": "500: Invalid encoded image"}
    error = failed(make_job({"model": "sd-webui", "prompt": "p", "image": "AAAA"}), answer(500, body))
    assert isinstance(error, InvalidRequest)
    assert (error.status, error.param, error.code) == (400, "image", "invalid_image")


def test_out_of_memory_is_a_retryable_bad_gateway_with_the_webuis_text() -> None:
    body = {"error": "OutOfMemoryError", "detail": "", "body": "", "errors": "CUDA out of memory. Tried to allocate 2.00 GiB"}
    error = failed(make_job({"model": "sd-webui", "prompt": "p", "n": 8}), answer(500, body))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code, error.retryable) == (502, "upstream_error", True)
    assert error.message == "channel 'webui' failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_sampler_not_found_keeps_its_404_and_message() -> None:
    body = {"error": "HTTPException", "detail": "Sampler not found", "body": "", "errors": "404: Sampler not found"}
    error = failed(make_job({"model": "sd-webui", "prompt": "p", "sampler_name": "Nope"}), answer(404, body))
    assert isinstance(error, UpstreamError)
    assert (error.status, error.message) == (404, "Sampler not found")


def test_401_is_the_channels_problem_and_credentials_are_scrubbed() -> None:
    token = base64.b64encode(AUTH.encode()).decode()
    body = {"error": "HTTPException", "detail": f"Incorrect username or password ({AUTH} / {token})", "body": "", "errors": ""}
    error = failed(make_job({"model": "sd-webui", "prompt": "p"}, api_key=AUTH), answer(401, body))
    assert isinstance(error, BadGateway)
    assert (error.status, error.code) == (502, "upstream_auth_failed")
    assert AUTH not in error.message and token not in error.message
    assert "Incorrect username or password" in error.message


def test_an_empty_error_body_still_names_the_status() -> None:
    response = UpstreamResponse(status=502, headers={}, body=b"Bad Gateway")
    error = failed(make_job({"model": "sd-webui", "prompt": "p"}), response)
    assert isinstance(error, BadGateway)
    assert error.message == "channel 'webui' failed: upstream answered HTTP 502: Bad Gateway"
