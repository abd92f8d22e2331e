"""Retired-model translation: every legacy value in the shipped rules becomes a valid current request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.adapters import SCHEMAS
from proxy.core.errors import InvalidRequest
from proxy.core.plan import Plan, build_plan
from proxy.core.request import parse_image_request
from proxy.core.response import GeneratedImage, ImagesResult
from proxy.core.rules import parse_rules
from proxy.core.size_rules import size_problem
from proxy.core.sizes import Size
from proxy.core.translate import ORIGINAL, Translation, translate_size, with_revised_prompt

SHIPPED = parse_rules((Path(__file__).resolve().parents[2] / "rules.yaml").read_text(), {}, SCHEMAS)
GPT_IMAGE_SIZES = {"1024x1024", "1536x1024", "1024x1536", "auto"}
GPT_IMAGE_QUALITIES = {"low", "medium", "high", "auto"}


def plan(model: str, **body: Any) -> Plan:
    return build_plan(parse_image_request({"model": model, "prompt": "a fox", **body}), SHIPPED.match_model(model))


@pytest.mark.parametrize(("size", "sent"), [("1024x1024", "1024x1024"), ("1792x1024", "1536x1024"), ("1024x1792", "1024x1536")])
def test_dall_e_3_sizes(size: str, sent: str) -> None:
    assert plan("dall-e-3", size=size).fields["size"] == sent


@pytest.mark.parametrize(("quality", "sent"), [(None, "medium"), ("standard", "medium"), ("hd", "high")])
def test_dall_e_3_qualities(quality: str | None, sent: str) -> None:
    body = {} if quality is None else {"quality": quality}
    assert plan("dall-e-3", **body).fields["quality"] == sent


@pytest.mark.parametrize(
    ("style", "suffix"),
    [
        (None, ""),
        ("vivid", "\n\nStyle: vivid, hyper-real and dramatic."),
        ("natural", "\n\nStyle: natural, realistic, not hyper-real."),
    ],
)
def test_dall_e_3_style_becomes_words_not_a_field(style: str | None, suffix: str) -> None:
    result = plan("dall-e-3", **({} if style is None else {"style": style}))
    assert "style" not in result.fields
    assert result.prompt == "a fox" + suffix
    assert result.client_prompt == "a fox"
    assert result.ignored == ()  # consumed, not dropped


def test_dall_e_3_keeps_its_legacy_checks_and_answers_in_url() -> None:
    result = plan("dall-e-3", size="1792x1024", quality="hd", style="vivid")
    assert result.upstream_model == "gpt-image-2"
    assert result.response_format == "url"
    assert "response_format" not in result.fields  # GPT image models reject it: the proxy hosts instead
    assert set(result.fields) == {"size", "quality"}
    assert result.fields["size"] in GPT_IMAGE_SIZES and result.fields["quality"] in GPT_IMAGE_QUALITIES
    for bad in ({"size": "1536x1024"}, {"quality": "high"}, {"style": "anime"}, {"n": 2}):
        with pytest.raises(InvalidRequest):
            plan("dall-e-3", **bad)


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024"])
def test_dall_e_2_sizes_and_quality(size: str) -> None:
    result = plan("dall-e-2", size=size)
    assert result.upstream_model == "gpt-image-2"
    assert dict(result.fields) == {"size": "1024x1024", "quality": "low"}
    assert result.response_format == "url"


def test_gpt_image_1_is_served_by_a_current_model_unchanged() -> None:
    result = plan("gpt-image-1", size="1536x1024", quality="high", background="transparent")
    assert result.upstream_model == "gpt-image-2"
    assert dict(result.fields) == {"size": "1536x1024", "quality": "high", "background": "transparent"}


@pytest.mark.parametrize("model", ["dall-e-3", "dall-e-2", "gpt-image-1"])
def test_retired_names_send_only_sizes_their_live_target_takes(model: str) -> None:
    # OpenAI shut down the old targets, gpt-image-1.5 and gpt-image-1-mini, on 2026-12-01: gpt-image-2 serves these.
    rule, target = SHIPPED.match_model(model), SHIPPED.match_model("gpt-image-2")
    assert rule.upstream_model == "gpt-image-2" and target.size_rules is not None
    sent = {str(size) for size in rule.translation.upstream_sizes} or set(rule.sizes or ())
    sent |= {translate_size(size, rule.translation) for size in rule.sizes or ()}
    assert sent and all(size_problem(size, target.size_rules) is None for size in sent), sent


def test_an_alias_has_a_name_per_channel() -> None:
    rule = SHIPPED.match_model("flux-pro")
    assert rule.upstream_for("bfl", "flux-pro") == "flux-pro-1.1"
    assert rule.upstream_for("replicate", "flux-pro") == "black-forest-labs/flux-1.1-pro"


def test_sizes_round_to_a_multiple_for_targets_that_take_any_size() -> None:
    translation = Translation(size_multiple=16)
    assert translate_size("1000x1000", translation) == "1008x1008"
    assert translate_size("1792x1024", translation) == "1792x1024"
    assert translate_size("auto", translation) == "auto"
    assert translate_size("1024x1024", Translation(upstream_sizes=(Size(1536, 1024), Size(1024, 1024)))) == "1024x1024"


def test_revised_prompt_falls_back_to_the_clients_prompt_only_when_asked() -> None:
    result = ImagesResult(images=(GeneratedImage(b64_json="x"), GeneratedImage(b64_json="y", revised_prompt="kept")))
    revised = with_revised_prompt(result, "a fox", Translation(revised_prompt=ORIGINAL))
    assert [image.revised_prompt for image in revised.images] == ["a fox", "kept"]
    assert with_revised_prompt(result, "a fox", Translation()) == result


def test_translation_rules_are_validated() -> None:
    from proxy.core.rules import RulesError

    text = """
channels: {local: {type: local}}
models:
  m:
    channels: [local]
    translate: {quality: [a, b]}
    upstream_sizes: [big]
    prompt_suffix: {style: {vivid: 3}}
    revised_prompt: sometimes
    upstream_model: {elsewhere: x}
"""
    with pytest.raises(RulesError) as caught:
        parse_rules(text, {}, SCHEMAS)
    paths = [problem.path for problem in caught.value.problems]
    assert paths == [
        "models.m.translate.quality",
        "models.m.upstream_sizes[0]",
        "models.m.prompt_suffix.style",
        "models.m.revised_prompt",
        "models.m.upstream_model.elsewhere",
    ]


def test_a_variation_has_no_prompt_to_revise() -> None:
    result = ImagesResult(images=(GeneratedImage(url="https://cdn.example.com/a.png"),))
    assert with_revised_prompt(result, "", Translation(revised_prompt=ORIGINAL)) == result
