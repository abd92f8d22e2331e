"""The adapter kit's shared pieces, as every adapter meets them."""

from __future__ import annotations

import pytest

from proxy.adapters import azure, dashscope, gemini, kling, replicate, sdwebui, seedream, stability, zhipu
from proxy.adapters.base import AdapterSpec, Send
from proxy.adapters.kit import bad_answer, setting
from proxy.core.channel_settings import one_of
from proxy.core.rules import ChannelSchema
from tests.factories import envelope, make_job

KEY = "sk-kit-secret-7e1d"


def test_a_bad_answer_is_a_502_scrubbed_of_the_key_and_not_retried() -> None:
    job = make_job({"model": "m", "prompt": "p"}, channel="c", api_key=KEY)

    error = bad_answer(job, f"the body echoed {KEY}")

    assert envelope(error, retryable=True) == (502, "upstream_error", None, "bad_upstream_response", False)
    assert error.message.startswith("channel 'c' answered with no usable images: the body echoed ")
    assert KEY not in error.message


def test_a_bad_answer_scrubs_the_secrets_it_is_given_and_may_be_retryable() -> None:
    job = make_job({"model": "m", "prompt": "p"}, channel="c", api_key=KEY)

    error = bad_answer(job, "pair ak-1:sk-2 leaked", secrets=(KEY, "ak-1:sk-2"), retryable=True)

    assert "ak-1:sk-2" not in error.message and error.retryable


@pytest.mark.parametrize(("spec", "model", "key"), [
    (gemini.SPEC, "imagen-4.0-generate-001", "k"),
    (gemini.SPEC, "gemini-2.5-flash-image", "k"),
    (stability.SPEC, "stable-image-core", "k"),
    (zhipu.SPEC, "cogview-4-250304", "k"),
    (seedream.SPEC, "seedream-4-0-250828", "k"),
    (sdwebui.SPEC, None, "user:password"),  # the WebUI's key is user:password
    (azure.SPEC, "gpt-image-1", "k"),
    (kling.SPEC, "kling-v2", "k"),
    (dashscope.SPEC, "qwen-image", "k"),
    (replicate.SPEC, "black-forest-labs/flux-schnell", "k"),
])
def test_a_channel_built_in_code_without_its_settings_gets_their_defaults(spec: AdapterSpec, model: str | None,
                                                                           key: str) -> None:
    # Not loaded from rules: the channel's settings are empty, and every adapter falls back to the declared defaults.
    job = make_job({"model": "m", "prompt": "p", "quality": "high"}, channel="c", channel_type=spec.name,
                   base_url="https://upstream.example/v1", api_key=key, upstream=model)
    assert job.channel.settings == {}

    assert isinstance(spec.start(job), Send)


def test_setting_reads_the_channel_value_else_the_declared_default() -> None:
    schema = ChannelSchema(settings={"tone": one_of("warm", "cold", default="warm"), "extra": one_of("x")})
    plain = make_job({"model": "m", "prompt": "p"}, channel="c")
    chosen = make_job({"model": "m", "prompt": "p"}, channel="c", settings={"tone": "cold"})

    assert (setting(plain, schema, "tone"), setting(plain, schema, "extra")) == ("warm", None)
    assert setting(chosen, schema, "tone") == "cold"
