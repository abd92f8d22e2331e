"""Core tests: rules.yaml parsed into frozen values; every problem names its YAML path (ARCHITECTURE.md §4)."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest

from proxy.adapters import SCHEMAS
from proxy.core.errors import NotFound
from proxy.core.limit_windows import ClientKey, default_name
from proxy.core.rules import (
    Channel,
    DownloadRules,
    ImageStoreRules,
    ModelRule,
    RuleProblem,
    Rules,
    RulesError,
    ServerRules,
    iter_usable,
    parse_rules,
)
from proxy.core.size_rules import SizeRules

SECRET = "sk-test-0123456789abcdefSECRET"

FULL = """
server:
  api_keys: ["${CLIENT_KEY}", literal-client-key]
  public_base_url: ${PUBLIC_URL:-http://localhost:8080/}
  max_request_bytes: 1048576
  max_retries: 3
  images:
    path: /var/lib/imagegate
    ttl: 600
  download:
    max_bytes: 1000
    timeout: 5

default_channel: openai

channels:
  local:
    type: local
  openai:
    type: openai
    base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}
    api_key: ${OPENAI_API_KEY}
    timeout: 120
    concurrency: 2
    headers:
      OpenAI-Organization: ${ORG:-org-default}
  backup:
    type: openai
    base_url: https://relay.example.com/v1/
    api_key: passthrough

models:
  dall-e-3:
    channels: [openai, backup]
    defaults: {quality: standard, response_format: url}
    sizes: [1024x1024, 1792x1024, 1024×1792]
    values: {quality: [standard, hd]}
    max_n: 1
    passthrough: [response_format, style, user]
  gpt-image-*:
    channels: [openai]
    upstream_model: gpt-image-1
    defaults: {quality: auto}
    passthrough: [background, moderation]
  local-image:
    channels: [local]
"""

ENV = {"CLIENT_KEY": "client-key-1", "OPENAI_API_KEY": SECRET}

MODEL_KEYS = (
    "channels, defaults, max_n, passthrough, price, prompt_suffix, revised_prompt, size_rules, sizes, translate, upstream_model, "
    "upstream_size_multiple, upstream_sizes, values"
)


def _problems(text: str, env: dict[str, str] | None = None) -> list[RuleProblem]:
    with pytest.raises(RulesError) as info:
        parse_rules(textwrap.dedent(text), env or {}, SCHEMAS)
    assert str(info.value) == "\n".join(str(problem) for problem in info.value.problems)
    return info.value.problems


def _only_problem(text: str, env: dict[str, str] | None = None) -> RuleProblem:
    problems = _problems(text, env)
    assert len(problems) == 1, problems
    return problems[0]


def _known_types() -> str:
    return ", ".join(sorted(SCHEMAS))


# --- a full valid file ---------------------------------------------------------------------------


def test_full_valid_file() -> None:
    rules = parse_rules(FULL, ENV, SCHEMAS)
    assert rules.warnings == ()
    assert rules.default_channel == "openai"
    assert rules.server.api_keys == ("client-key-1", "literal-client-key")
    assert rules.server == ServerRules(
        clients=tuple(ClientKey(key, default_name(key)) for key in ("client-key-1", "literal-client-key")),
        public_base_url="http://localhost:8080",
        max_request_bytes=1048576,
        max_retries=3,
        images=ImageStoreRules(path="/var/lib/imagegate", ttl=600),
        download=DownloadRules(max_bytes=1000, timeout=5.0),
    )
    assert list(rules.channels) == ["local", "openai", "backup"]
    openai = rules.channels["openai"]
    assert (openai.name, openai.type, openai.base_url) == ("openai", "openai", "https://api.openai.com/v1")
    assert openai.api_key == SECRET
    assert openai.missing_key == ()
    assert openai.usable is True
    assert openai.passthrough_key is False
    assert openai.timeout == 120.0
    assert openai.concurrency == 2
    assert dict(openai.headers) == {"OpenAI-Organization": "org-default"}
    local = rules.channels["local"]
    assert (local.type, local.base_url, local.api_key, local.usable) == ("local", "", None, True)
    assert local.timeout == 300.0
    assert local.concurrency == 4
    backup = rules.channels["backup"]
    assert backup.base_url == "https://relay.example.com/v1"  # trailing slash dropped
    assert backup.passthrough_key is True

    dalle, gpt, local_model = rules.models
    assert dalle == ModelRule(
        pattern="dall-e-3",
        channels=("openai", "backup"),
        upstream_model=None,
        defaults={"quality": "standard", "response_format": "url"},
        sizes=("1024x1024", "1792x1024", "1024x1792"),
        max_n=1,
        passthrough=frozenset({"response_format", "style", "user"}),
        values={"quality": ("standard", "hd")},
    )
    assert gpt.pattern == "gpt-image-*"
    assert gpt.is_glob is True
    assert gpt.upstream_model == "gpt-image-1"
    assert gpt.sizes is None
    assert gpt.max_n == 10
    assert gpt.passthrough == frozenset({"background", "moderation"})
    assert local_model == ModelRule(pattern="local-image", channels=("local",))
    assert dalle.is_glob is False


def test_rules_are_frozen() -> None:
    rules = parse_rules(FULL, ENV, SCHEMAS)
    with pytest.raises(TypeError):
        rules.channels["x"] = rules.channels["local"]  # type: ignore[index]
    with pytest.raises(TypeError):
        rules.models[0].defaults["quality"] = "hd"  # type: ignore[index]


def test_the_shipped_rules_file_loads() -> None:
    with open("rules.yaml", encoding="utf-8") as handle:
        rules = parse_rules(handle.read(), {"OPENAI_API_KEY": SECRET}, SCHEMAS)
    assert rules.match_model("dall-e-3").max_n == 1
    assert rules.match_model("gpt-image-1.5").pattern == "gpt-image-*"
    assert rules.match_model("gpt-image-1").upstream_model == "gpt-image-2"  # shut down: served by the live model
    assert rules.channels["openai"].base_url == "https://api.openai.com/v1"


# --- interpolation ---------------------------------------------------------------------------


CHANNEL_ONLY = """
channels:
  up:
    type: openai
    base_url: ${BASE:-https://default.example.com/v1}
    api_key: ${KEY}
    headers: {X-Team: "${TEAM:-core}-${REGION:-eu}"}
models:
  m: {channels: [up]}
"""


def test_interpolation_uses_the_environment() -> None:
    env = {"BASE": "https://env.example.com/v2", "KEY": "k-123", "TEAM": "img"}
    channel = parse_rules(CHANNEL_ONLY, env, SCHEMAS).channels["up"]
    assert channel.base_url == "https://env.example.com/v2"
    assert channel.api_key == "k-123"
    assert dict(channel.headers) == {"X-Team": "img-eu"}


def test_interpolation_falls_back_to_defaults_when_unset_or_empty() -> None:
    channel = parse_rules(CHANNEL_ONLY, {"KEY": "k", "BASE": ""}, SCHEMAS).channels["up"]
    assert channel.base_url == "https://default.example.com/v1"
    assert dict(channel.headers) == {"X-Team": "core-eu"}


def test_interpolated_value_is_not_parsed_as_yaml() -> None:
    env = {"KEY": "k", "TEAM": "a: [b, c]"}
    channel = parse_rules(CHANNEL_ONLY, env, SCHEMAS).channels["up"]
    assert dict(channel.headers) == {"X-Team": "a: [b, c]-eu"}


def test_interpolated_numbers() -> None:
    text = """
    channels:
      up: {type: openai, base_url: "https://x.example.com", api_key: k, timeout: "${T:-30}"}
    """
    assert parse_rules(textwrap.dedent(text), {}, SCHEMAS).channels["up"].timeout == 30.0
    assert parse_rules(textwrap.dedent(text), {"T": "7.5"}, SCHEMAS).channels["up"].timeout == 7.5


def test_missing_variable_outside_a_key_is_an_error() -> None:
    problems = _problems(
        """
        channels:
          up: {type: openai, base_url: "${BASE}", api_key: k}
        """
    )
    assert [str(problem) for problem in problems] == [
        "channels.up.base_url: environment variable BASE is not set",
        "channels.up.base_url: a 'openai' channel needs a base_url",
    ]


# --- a missing key disables a channel -----------------------------------------------------------


def test_missing_api_key_disables_the_channel_with_a_warning() -> None:
    text = """
    channels:
      first: {type: openai, base_url: "https://a.example.com", api_key: "${FIRST_KEY}"}
      second: {type: openai, base_url: "https://b.example.com", api_key: "${SECOND_KEY}"}
      empty: {type: openai, base_url: "https://c.example.com", api_key: ""}
    models:
      m: {channels: [first, empty, second]}
    """
    rules = parse_rules(textwrap.dedent(text), {"SECOND_KEY": "k2"}, SCHEMAS)
    assert rules.warnings == (
        "channel 'first' is disabled: FIRST_KEY is not set",
        "channel 'empty' is disabled: api_key is not set",
    )
    first = rules.channels["first"]
    assert first.usable is False
    assert first.missing_key == ("FIRST_KEY",)
    assert first.api_key is None  # never an empty key
    assert rules.channels["empty"].missing_key == ("api_key",)
    assert [channel.name for channel in iter_usable(rules, rules.match_model("m"))] == ["second"]


def test_iter_usable_keeps_failover_order() -> None:
    rules = parse_rules(FULL, ENV, SCHEMAS)
    assert [channel.name for channel in iter_usable(rules, rules.match_model("dall-e-3"))] == ["openai", "backup"]


def test_unset_client_key_is_an_error_not_open_access() -> None:
    problem = _only_problem(
        """
        server:
          api_keys: ["${CLIENT_KEY}"]
        """
    )
    assert str(problem) == "server.api_keys[0]: environment variable CLIENT_KEY is not set"


# --- every error names its path -----------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    problem = _only_problem("channel: {}\n")
    assert problem == RuleProblem("channel", "unknown key (known: channels, default_channel, models, server)")


def test_unknown_model_key_is_a_typo_error() -> None:
    problem = _only_problem(
        """
        channels:
          local: {type: local}
        models:
          m:
            channels: [local]
            size: [1024x1024]
        """
    )
    assert problem.path == "models.m.size"
    assert problem.message == f"unknown key (known: {MODEL_KEYS})"


def test_unknown_channel_key() -> None:
    problem = _only_problem(
        """
        channels:
          local: {type: local, timout: 5}
        """
    )
    assert problem.path == "channels.local.timout"
    assert problem.message.startswith("unknown key (known: ")
    assert "timeout" in problem.message


def test_unknown_server_key() -> None:
    problem = _only_problem("server: {max_retry: 1}\n")
    assert problem.path == "server.max_retry"


def test_unknown_channel_in_a_model_lists_known_channels() -> None:
    problem = _only_problem(
        """
        channels:
          openai: {type: openai, base_url: "https://api.openai.com/v1", api_key: k}
          local: {type: local}
        models:
          cogview-4:
            channels: [local, zhipuu]
        """
    )
    assert str(problem) == "models.cogview-4.channels[1]: unknown channel 'zhipuu' (known: local, openai)"


def test_unknown_adapter_type() -> None:
    problem = _only_problem(
        """
        channels:
          up: {type: openaii, base_url: "https://x.example.com"}
        """
    )
    assert problem == RuleProblem("channels.up.type", f"unknown adapter type 'openaii' (known: {_known_types()})")


def test_channel_without_type() -> None:
    problem = _only_problem("channels: {up: {base_url: 'https://x.example.com'}}\n")
    assert problem == RuleProblem("channels.up", "a channel needs at least a `type`")


def test_malformed_size() -> None:
    problem = _only_problem(
        """
        channels: {local: {type: local}}
        models:
          m:
            channels: [local]
            sizes: [1024x1024, 1024-1024, 512x512]
        """
    )
    assert str(problem) == "models.m.sizes[1]: '1024-1024' is not WxH (e.g. 1024x1024) or 'auto'"


def test_default_size_not_in_sizes() -> None:
    problem = _only_problem(
        """
        channels: {local: {type: local}}
        models:
          m:
            channels: [local]
            sizes: [1024x1024]
            defaults: {size: 512x512}
        """
    )
    assert str(problem) == "models.m.defaults.size: '512x512' is not one of the model's sizes"


def _model(body: str) -> str:
    return f"""
    channels: {{local: {{type: local}}}}
    models:
      m: {{channels: [local], {body}}}
    """


def test_size_rules_load_every_kind() -> None:
    text = _model(
        "size_rules: {multiple_of: 16, min_side: 256, max_side: 3840, min_pixels: 655360, max_pixels: 8294400,"
        " max_aspect_ratio: '1:3', auto: true}"
    )
    rule = parse_rules(textwrap.dedent(text), {}, SCHEMAS).models[0]
    assert rule.sizes is None
    assert rule.size_rules == SizeRules(
        multiple_of=16,
        min_side=256,
        max_side=3840,
        min_pixels=655_360,
        max_pixels=8_294_400,
        max_aspect_ratio=(3, 1),
        auto=True,
    )


def test_size_rules_ratio_as_a_whole_number() -> None:
    rule = parse_rules(textwrap.dedent(_model("size_rules: {max_aspect_ratio: 16}")), {}, SCHEMAS).models[0]
    assert rule.size_rules == SizeRules(max_aspect_ratio=(16, 1))


def test_size_rules_unknown_key() -> None:
    problem = _only_problem(_model("size_rules: {multiple: 16}"))
    assert str(problem) == (
        "models.m.size_rules.multiple: unknown key (known: auto, max_aspect_ratio, max_pixels, max_side, "
        "min_pixels, min_side, multiple_of)"
    )


def test_size_rules_bad_values_name_their_paths() -> None:
    problems = _problems(
        _model("size_rules: {multiple_of: 0, min_side: 2048, max_side: 512, max_aspect_ratio: wide, auto: yes-please}")
    )
    assert [str(problem) for problem in problems] == [
        "models.m.size_rules.multiple_of: must be at least 1, got 0",
        "models.m.size_rules.min_side: 2048 is more than max_side (512)",
        "models.m.size_rules.max_aspect_ratio: expected W:H (e.g. 3:1 or 21:9) or a whole number, got 'wide'",
        "models.m.size_rules.auto: expected true or false, got 'yes-please'",
    ]


def test_size_rules_pixel_bounds_in_order() -> None:
    problem = _only_problem(_model("size_rules: {min_pixels: 9000000, max_pixels: 8294400}"))
    assert str(problem) == "models.m.size_rules.min_pixels: 9000000 is more than max_pixels (8294400)"


def test_size_rules_empty() -> None:
    problem = _only_problem(_model("size_rules: {}"))
    assert str(problem) == (
        "models.m.size_rules: expected at least one of auto, max_aspect_ratio, max_pixels, max_side, "
        "min_pixels, min_side, multiple_of"
    )


def test_sizes_and_size_rules_together() -> None:
    problem = _only_problem(_model("sizes: [1024x1024], size_rules: {multiple_of: 16}"))
    assert str(problem) == "models.m.size_rules: a model takes `sizes` or `size_rules`, not both"


def test_default_size_must_keep_the_size_rules() -> None:
    problem = _only_problem(_model("size_rules: {multiple_of: 16}, defaults: {size: 1000x1000}"))
    assert str(problem) == (
        "models.m.defaults.size: '1000x1000' breaks the model's size_rules: width and height must be multiples of 16"
    )
    assert str(_only_problem(_model("size_rules: {multiple_of: 16}, defaults: {size: auto}"))) == (
        "models.m.defaults.size: 'auto' breaks the model's size_rules: 'auto' is not accepted"
    )


def test_default_size_is_normalised_before_the_check() -> None:
    text = """
    channels: {local: {type: local}}
    models:
      m: {channels: [local], sizes: [1024x1024], defaults: {size: "1024×1024"}}
    """
    assert dict(parse_rules(textwrap.dedent(text), {}, SCHEMAS).models[0].defaults) == {"size": "1024x1024"}


def test_default_for_a_field_never_forwarded() -> None:
    problem = _only_problem(
        """
        channels: {local: {type: local}}
        models:
          m:
            channels: [local]
            defaults: {style: vivid}
        """
    )
    assert str(problem) == "models.m.defaults.style: 'style' is never sent upstream: add it to passthrough"


def test_default_for_a_passthrough_field_is_fine() -> None:
    text = """
    channels: {local: {type: local}}
    models:
      m: {channels: [local], defaults: {style: vivid, watermark: false, async: true}, passthrough: [style, watermark]}
    """
    rule = parse_rules(textwrap.dedent(text), {}, SCHEMAS).models[0]
    assert dict(rule.defaults) == {"style": "vivid", "watermark": False, "async": True}


def test_invalid_default_value_uses_the_request_validator() -> None:
    problem = _only_problem(
        """
        channels: {local: {type: local}}
        models:
          m: {channels: [local], defaults: {response_format: png}}
        """
    )
    assert problem.path == "models.m.defaults.response_format"
    assert problem.message.startswith("Invalid response_format 'png'")


def test_default_outside_the_models_values_fails_at_load() -> None:
    # A default the model's own `values` whitelist rejects would make every request that omits the
    # field fail with a 400 blaming the client; like a default size outside `sizes`, it is a rules error.
    problems = _problems(
        """
        channels: {local: {type: local}}
        models:
          m:
            channels: [local]
            defaults: {quality: ultra}
            values: {quality: [standard, hd]}
        """
    )
    assert [problem.path for problem in problems] == ["models.m.defaults.quality"]


def test_model_without_channels() -> None:
    problem = _only_problem("channels: {local: {type: local}}\nmodels: {m: {max_n: 2}}\n")
    assert str(problem) == "models.m.channels: a model needs at least one channel"


def test_bad_numbers() -> None:
    problems = _problems(
        """
        channels:
          local: {type: local, concurrency: 0, timeout: fast}
        models:
          m: {channels: [local], max_n: 0}
        """
    )
    assert [problem.path for problem in problems] == ["channels.local.timeout", "channels.local.concurrency", "models.m.max_n"]


def test_base_url_must_be_http() -> None:
    problem = _only_problem("channels: {up: {type: openai, base_url: 'ftp://x', api_key: k}}\n")
    assert str(problem) == "channels.up.base_url: expected an http:// or https:// URL, got 'ftp://x'"


def test_unknown_default_channel() -> None:
    problem = _only_problem("default_channel: nope\nchannels: {local: {type: local}}\n")
    assert str(problem) == "default_channel: unknown channel 'nope' (known: local)"


def test_bad_yaml_names_line_and_column() -> None:
    problem = _only_problem("channels:\n  local: {type: local\n")
    assert problem.path.startswith("line ")
    assert ", column " in problem.path
    assert problem.message.startswith("not valid YAML: ")


def test_bad_yaml_position() -> None:
    problem = _only_problem("models: [")
    assert problem.path == "line 1, column 10"


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert _only_problem(text) == RuleProblem("", "the rules file is empty")


def test_top_level_must_be_a_mapping() -> None:
    assert _only_problem("- a\n- b\n") == RuleProblem("", "expected a mapping, got list")


def test_several_problems_are_reported_together() -> None:
    problems = _problems(
        """
        bogus: 1
        channels:
          up: {type: openaii}
          local: {type: local}
        models:
          m:
            channels: [local, missing]
            sizes: [1024x1024, wide]
            defaults: {size: 512x512, style: vivid}
            size: 1
        """
    )
    assert [str(problem) for problem in problems] == [
        "bogus: unknown key (known: channels, default_channel, models, server)",
        f"channels.up.type: unknown adapter type 'openaii' (known: {_known_types()})",
        f"models.m.size: unknown key (known: {MODEL_KEYS})",
        "models.m.channels[1]: unknown channel 'missing' (known: local, up)",
        "models.m.sizes[1]: 'wide' is not WxH (e.g. 1024x1024) or 'auto'",
        "models.m.defaults.size: '512x512' is not one of the model's sizes",
        "models.m.defaults.style: 'style' is never sent upstream: add it to passthrough",
    ]


# --- match_model --------------------------------------------------------------------------------


def _rules_with_models(*patterns: str) -> Rules:
    models = "\n".join(f"  '{pattern}': {{channels: [local]}}" for pattern in patterns)
    return parse_rules(f"channels: {{local: {{type: local}}}}\nmodels:\n{models}\n", {}, SCHEMAS)


def test_exact_beats_glob_even_when_the_glob_comes_first() -> None:
    rules = _rules_with_models("gpt-image-*", "gpt-image-1")
    assert rules.match_model("gpt-image-1").pattern == "gpt-image-1"
    assert rules.match_model("gpt-image-2").pattern == "gpt-image-*"


def test_first_glob_wins() -> None:
    rules = _rules_with_models("gpt-*", "gpt-image-*", "*")
    assert rules.match_model("gpt-image-1").pattern == "gpt-*"
    assert rules.match_model("dall-e-2").pattern == "*"
    rules = _rules_with_models("gpt-image-*", "gpt-*")
    assert rules.match_model("gpt-image-1").pattern == "gpt-image-*"


def test_glob_matching_is_case_sensitive_and_supports_classes() -> None:
    rules = _rules_with_models("cogview-[34]", "flux-?")
    assert rules.match_model("cogview-4").pattern == "cogview-[34]"
    assert rules.match_model("flux-1").pattern == "flux-?"
    with pytest.raises(NotFound):
        rules.match_model("CogView-4")


def test_unknown_model_is_404() -> None:
    rules = _rules_with_models("dall-e-3")
    with pytest.raises(NotFound) as info:
        rules.match_model("dall-e-4")
    assert info.value.status == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert info.value.envelope() == {
        "error": {
            "message": "The model 'dall-e-4' does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


# --- secrets ----------------------------------------------------------------------------------


def test_channel_repr_never_contains_the_key() -> None:
    rules = parse_rules(FULL, ENV, SCHEMAS)
    channel = rules.channels["openai"]
    assert repr(channel) == "Channel(name='openai', type='openai', base_url='https://api.openai.com/v1')"
    assert SECRET not in str(channel)
    assert SECRET not in repr(rules.channels)
    direct = Channel(name="c", type="openai", base_url="https://x", api_key=SECRET, headers={"X-Key": SECRET})
    assert SECRET not in repr(direct)
    assert SECRET not in f"{direct}"


def test_rules_errors_never_contain_a_key() -> None:
    problems = _problems(
        """
        channels:
          up: {type: openai, base_url: "https://x.example.com", api_key: "${KEY}", timout: 1}
        """,
        {"KEY": SECRET},
    )
    assert all(SECRET not in str(problem) for problem in problems)


def test_adapter_settings_from_the_environment_keep_their_scalar_type() -> None:
    text = """
channels:
  r:
    type: replicate
    api_key: k
    wait: ${WAIT:-60}
    poll_interval: ${POLL}
    size_mode: ${MODE:-aspect_ratio}
models:
  m: {channels: [r]}
"""
    rules = parse_rules(text, {"POLL": "0.25"}, SCHEMAS)
    settings = rules.channels["r"].settings
    assert settings["wait"] == 60 and isinstance(settings["wait"], int)
    assert settings["poll_interval"] == 0.25
    assert settings["size_mode"] == "aspect_ratio"


def test_the_replicas_example_rules_load() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "deploy" / "replicas.rules.yaml").read_text()
    rules = parse_rules(text, {"REDIS_URL": "redis://redis:6379/0"}, SCHEMAS)
    assert rules.server.state == "redis://redis:6379/0"
    assert rules.server.limits.requests_per_minute == 120



@pytest.mark.parametrize(
    ("channel", "setting", "expected"),
    [
        ("{type: stability, api_key: k, accept: text/html}", "accept", "expected one of application/json, image/*"),
        ("{type: sdwebui, base_url: 'http://w', steps: -1}", "steps", "expected a positive integer, got -1"),
        ("{type: sdwebui, base_url: 'http://w', default_size: 1000x7}", "default_size", "multiples of 8"),
        ("{type: sdwebui, base_url: 'http://w', cfg_scale: 0}", "cfg_scale", "expected a positive number"),
        ("{type: sdwebui, base_url: 'http://w', quality_steps: {high: many}}", "quality_steps", "positive integer"),
        ("{type: gemini, api_key: k, person_generation: bogus}", "person_generation", "expected one of dont_allow"),
        ("{type: gemini, api_key: k, response_modalities: [TEXT]}", "response_modalities", "must include IMAGE"),
        ("{type: gemini, api_key: k, response_modalities: [AUDIO, IMAGE]}", "response_modalities", "unknown 'AUDIO'"),
        ("{type: azure, base_url: 'https://a', api_key: k, api_style: v2}", "api_style", "expected one of v1, deployment"),
        ("{type: azure, base_url: 'https://a', api_key: k, deployment: ''}", "deployment", "non-empty string"),
        ("{type: seedream, base_url: 'https://a', api_key: k, model_families: {ep-1: seedream-9}}", "model_families",
         "unknown 'seedream-9'"),
        ("{type: zhipu, base_url: 'https://a', api_key: k, quality_models: [cogview-4, 3]}", "quality_models",
         "expected a list of names"),
    ],
)
def test_a_sync_adapter_setting_it_cannot_use_is_refused_when_the_rules_load(channel: str, setting: str,
                                                                              expected: str) -> None:
    problem = _only_problem(f"channels:\n  s: {channel}\nmodels:\n  m: {{channels: [s]}}\n")
    assert problem.path == f"channels.s.{setting}"
    assert expected in problem.message


def test_sync_adapter_settings_are_kept_parsed_with_their_defaults() -> None:
    rules = parse_rules(
        """
channels:
  az: {type: azure, base_url: 'https://a', api_key: k, api_version: 2024-10-21}
  st: {type: stability, api_key: k}
  ge: {type: gemini, api_key: k}
  zh: {type: zhipu, base_url: 'https://a', api_key: k, quality_models: cogview-4}
  sd: {type: sdwebui, base_url: 'http://w', default_size: 768x512, cfg_scale: 7}
models:
  m: {channels: [az, st, ge, zh, sd]}
""",
        {},
        SCHEMAS,
    )
    channels = rules.channels
    assert channels["az"].settings == {"api_version": "2024-10-21"}  # an unquoted YAML date, as written
    assert channels["st"].settings == {"accept": "application/json"}
    assert channels["ge"].settings == {"response_modalities": ("TEXT", "IMAGE")}
    assert channels["zh"].settings == {"quality_models": ("cogview-4",)}  # one name without brackets
    sd = channels["sd"].settings
    assert (str(sd["default_size"]), sd["cfg_scale"], dict(sd["quality_steps"])) == ("768x512", 7.0, {})


TASK_CHANNEL = """
channels:
  k:
    type: {type}
    api_key: k
    {setting}
models:
  m: {{channels: [k]}}
"""


@pytest.mark.parametrize(
    ("kind", "setting", "problem"),
    [
        ("kling", "poll_interval: -1", "channels.k.poll_interval: expected a number of seconds above 0, got -1"),
        ("flux", "poll_interval: fast", "channels.k.poll_interval: expected a number of seconds above 0, got 'fast'"),
        ("dashscope", "{poll_interval: 4, max_poll_interval: 2}",
         "channels.k.max_poll_interval: must not be below poll_interval (4), got 2"),
        ("replicate", "size_mode: bogus", "channels.k.size_mode: expected one of aspect_ratio, width_height, got 'bogus'"),
        ("replicate", "wait: 61", "channels.k.wait: expected a whole number from 0 to 60, got 61"),
        ("replicate", "aspect_ratios: [wide]", "channels.k.aspect_ratios: expected a list of W:H ratios, got ['wide']"),
        ("replicate", "image_input: ''", "channels.k.image_input: expected a non-empty string, got ''"),
        ("kling", "hd_models: [1]", "channels.k.hd_models: expected a list of names, got [1]"),
        ("dashscope", "sync_models: {a: b}", "channels.k.sync_models: expected a list of names, got {'a': 'b'}"),
    ],
)
def test_task_channel_settings_are_checked_when_the_rules_load(kind: str, setting: str, problem: str) -> None:
    if setting.startswith("{"):
        setting = "\n    ".join(part.strip() for part in setting.strip("{}").split(","))
    text = TASK_CHANNEL.format(type=kind, setting=setting)
    assert str(_only_problem(text)) == problem


def test_task_channel_settings_get_their_defaults_when_the_rules_load() -> None:
    def settings(kind: str, setting: str = "") -> dict[str, object]:
        return dict(parse_rules(TASK_CHANNEL.format(type=kind, setting=setting), {}, SCHEMAS).channels["k"].settings)

    assert settings("flux") == {"poll_interval": 0.5}
    assert settings("kling", "hd_models: kling-v1-5") == {"hd_models": ("kling-v1-5",), "poll_interval": 1.0}
    assert settings("dashscope", "sync_models: []")["sync_models"] == ()
    assert settings("replicate", "wait: false") == {
        "wait": 0, "size_mode": "aspect_ratio", "image_input": "image", "poll_interval": 0.5,
        "aspect_ratios": ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21", "4:5", "5:4"),
    }
    # An unset max_poll_interval never conflicts with a poll_interval above its default cap.
    assert settings("kling", "poll_interval: 30") == {"hd_models": ("kling-v2", "kling-v2-1"), "poll_interval": 30}


PRICED = """
channels:
  up: {type: openai, base_url: "https://a.example.com"}
models:
  priced: {channels: [up], price: {per_image: {"1024x1024 hd": 0.08, "*": 0.04}}}
  unpriced: {channels: [up]}
"""


def test_a_models_price_is_parsed_exactly() -> None:
    rules = parse_rules(PRICED, {}, SCHEMAS)
    price = rules.match_model("priced").price
    assert price is not None
    assert price.per_image == (("1024x1024", "hd", Decimal("0.08")), ("*", "*", Decimal("0.04")))
    assert rules.match_model("unpriced").price is None


@pytest.mark.parametrize(
    ("price", "problem"),
    [
        ('{per_image: 1, per_megapixel: 1}',
         "models.priced.price.per_megapixel: a price is per image or per megapixel, not both"),
        ('{per_image: {"* hd": free}}', 'models.priced.price.per_image["* hd"]: expected an amount in USD, got \'free\''),
        ("0.04", "models.priced.price: expected per_image, per_megapixel or per_million_tokens"),
    ],
)
def test_a_bad_price_is_named_by_its_path(price: str, problem: str) -> None:
    text = PRICED.replace('{per_image: {"1024x1024 hd": 0.08, "*": 0.04}}', price)
    with pytest.raises(RulesError) as caught:
        parse_rules(text, {}, SCHEMAS)
    assert str(caught.value).splitlines() == [problem]


def test_a_setting_written_as_null_is_unset() -> None:
    text = """
    channels:
      k: {type: kling, api_key: "a:b", poll_interval: null, hd_models: ~}
      s: {type: sdwebui, base_url: "http://w", steps: null}
    models:
      m: {channels: [k, s]}
    """
    nulls = parse_rules(textwrap.dedent(text), {}, SCHEMAS)
    unset = parse_rules(textwrap.dedent(text).replace(", poll_interval: null, hd_models: ~", "").replace(", steps: null", ""),
                        {}, SCHEMAS)
    assert {name: dict(channel.settings) for name, channel in nulls.channels.items()} == {
        name: dict(channel.settings) for name, channel in unset.channels.items()
    }
    assert nulls.channels["k"].settings["poll_interval"] == 1.0 and "steps" not in nulls.channels["s"].settings


def test_budgets_are_parsed_exactly_and_a_bad_one_is_named() -> None:
    text = """
    server:
      budget: {usd_per_month: 1000}
      api_keys:
        - {key: a, budget: {usd_per_day: 0.1}}
        - b
    channels:
      up: {type: openai, base_url: "https://a.example.com"}
    models:
      m: {channels: [up]}
    """
    server = parse_rules(textwrap.dedent(text), {}, SCHEMAS).server
    assert server.budget_for("a").usd_per_day == Decimal("0.1") and server.budget_for("a").usd_per_month is None
    assert server.budget_for("b").usd_per_month == Decimal(1000)
    with pytest.raises(RulesError) as caught:
        parse_rules(textwrap.dedent(text).replace("usd_per_day: 0.1", "usd_per_day: -1, usd_per_week: 2"), {}, SCHEMAS)
    assert sorted(str(caught.value).splitlines()) == [
        "server.api_keys[0].budget.usd_per_day: expected an amount in USD above 0, got -1",
        "server.api_keys[0].budget.usd_per_week: unknown key (known: usd_per_day, usd_per_month)",
    ]


@pytest.mark.parametrize(
    ("written", "env", "expected"),
    [
        (None, {}, ""),
        ("''", {}, ""),
        ("/var/lib/imagegate/ledger.db", {}, "sqlite:////var/lib/imagegate/ledger.db"),
        ("ledger.db", {}, "sqlite:///ledger.db"),
        ("sqlite:////srv/ledger.db", {}, "sqlite:////srv/ledger.db"),
        ("postgres://u:${PGPASSWORD}@db/imagegate", {"PGPASSWORD": "pw"}, "postgresql://u:pw@db/imagegate"),
        ("${DATABASE_URL}", {"DATABASE_URL": "postgresql://u:pw@db:5432/ig"}, "postgresql://u:pw@db:5432/ig"),
    ],
)
def test_server_database_is_a_path_or_a_url(written: str | None, env: dict[str, str], expected: str) -> None:
    server = "" if written is None else f"server:\n  database: {written}\n"
    rules = parse_rules(server + "models: {}\n", env, SCHEMAS)
    assert rules.server.database == expected
    assert "pw" not in repr(rules.server)


@pytest.mark.parametrize("written", ["'mysql://u:secret-pw@db/ig'", "sqlite://relative.db", "'postgresql://'", "[a]"])
def test_a_bad_server_database_names_its_path_and_never_the_password(written: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(f"server:\n  database: {written}\nmodels: {{}}\n", {}, SCHEMAS)
    (problem,) = caught.value.problems
    assert problem.path == "server.database"
    assert "secret-pw" not in problem.message


def test_a_shared_database_without_redis_is_warned_about() -> None:
    shared = parse_rules("server:\n  database: postgresql://u@db/ig\nmodels: {}\n", {}, SCHEMAS)
    assert [w for w in shared.warnings if "server.state is memory" in w]
    with_redis = parse_rules("server:\n  database: postgresql://u@db/ig\n  state: redis://r:6379/0\nmodels: {}\n", {}, SCHEMAS)
    assert not [w for w in with_redis.warnings if "server.state" in w]


def test_the_admin_keys_name_is_kept_for_them() -> None:
    problem = _only_problem(
        """
        server:
          api_keys: [{key: k1, name: admin}]
        """
    )
    assert str(problem) == "server.api_keys[0].name: the name 'admin' is kept for server.admin_keys"


def test_an_admin_key_is_a_client_named_admin_and_other_keys_are_not() -> None:
    rules = parse_rules("server:\n  api_keys: [{key: k1, name: team}]\n  admin_keys: [a1]\n", {}, SCHEMAS)
    client = rules.server.client("a1")
    assert client is not None and client.name == "admin" and rules.server.is_admin("a1")
    assert rules.server.client("k1") is not None and not rules.server.is_admin("k1")
    assert rules.server.client("a") is None and not rules.server.is_admin(None) and not rules.server.is_admin("")


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), ("4", "4"), ("1", "1")])
def test_server_workers_is_a_number_or_auto(value: str, expected: str) -> None:
    rules = parse_rules(f"server: {{workers: {value}}}\nchannels: {{local: {{type: local}}}}\nmodels: {{}}\n", {}, SCHEMAS)
    assert rules.server.workers == expected


@pytest.mark.parametrize("value", ["0", "65", "many", "2.5", "true"])
def test_server_workers_outside_its_range_is_a_problem(value: str) -> None:
    problem = _only_problem(f"server: {{workers: {value}}}\nchannels: {{local: {{type: local}}}}\nmodels: {{}}\n")
    assert problem.path == "server.workers"
    assert "expected auto or a whole number from 1 to 64" in str(problem)


@pytest.mark.parametrize(
    ("text", "env", "problem"),
    [
        # A second `server:` would drop the first one's keys: an open proxy.
        ("server:\n  api_keys: [a-real-key-123]\nserver:\n  max_retries: 1\n", {},
         "line 3, column 1: not valid YAML: the key 'server' is written twice (first at line 1)"),
        ('server:\n  api_keys: ["${CLIENT_KEY:-}"]\n', {}, "server.api_keys[0]: a client key must not be empty"),
        ('server:\n  api_keys: ["${CLIENT-KEY}"]\n', {},
         "server.api_keys[0]: a `${...}` reference that is not `${VAR}` or `${VAR:-default}`"),
        ("server:\n  api_keys: [same-key-1, {key: same-key-1, name: b}]\n", {},
         "server.api_keys[1]: the same key as server.api_keys[0]"),
        ("server:\n  shutdown_grace: .nan\n", {}, "server.shutdown_grace: expected a finite number, got nan"),
        ("server:\n  body_timeout: ${T}\n", {"T": "inf"}, "server.body_timeout: expected a finite number, got inf"),
        ("models:\n  m: {channels: [local], price: {per_image: 10000000000000000000000000}}\nchannels:\n  local: {type: local}\n",
         {}, "models.m.price.per_image: expected at most 1000000 USD with at most 12 decimal places, got "
             "10000000000000000000000000"),
        ("models:\n  m: {channels: [local], values: {qualty: [standard, hd]}}\nchannels:\n  local: {type: local}\n", {},
         "models.m.values.qualty: 'qualty' is never sent upstream: add it to passthrough"),
        ("models:\n  m: {channels: [local], translate: {qualty: {standard: low}}}\nchannels:\n  local: {type: local}\n",
         {}, "models.m.translate.qualty: 'qualty' is never sent upstream: add it to passthrough"),
    ],
    ids=["twice", "empty-key", "bad-reference", "same-key", "nan", "inf", "huge-price", "values-typo", "translate-typo"],
)
def test_rules_that_would_change_meaning_quietly_are_refused(text: str, env: dict[str, str], problem: str) -> None:
    assert str(_only_problem(text, env)) == problem


def test_a_merge_may_still_override_what_it_brings_in() -> None:
    rules = parse_rules(textwrap.dedent("""
        channels:
          local: {type: local}
        models:
          base: &base {channels: [local], max_n: 2}
          m: {<<: *base, max_n: 4}
        """), {}, SCHEMAS)
    assert (rules.match_model("base").max_n, rules.match_model("m").max_n) == (2, 4)
