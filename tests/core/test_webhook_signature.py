"""Standard Webhooks signing and the retry schedule (proxy.core.webhook_signature), and the webhook rules."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.limit_windows import key_id
from proxy.core.plan import build_plan
from proxy.core.request import parse_image_request
from proxy.core.rules import ModelRule, RulesError
from proxy.core.webhook_signature import DELIVERED, FAILED, RETRY, backoff, headers, secret_problem, verdict
from tests.factories import LOCAL, make_rules

# The Standard Webhooks specification's own test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER = "whsec_" + base64.b64encode(b"another secret key").decode()


def test_the_specifications_vector_is_signed_as_it_says() -> None:
    assert headers([SPEC_SECRET], SPEC_ID, SPEC_TS, SPEC_BODY) == {
        "content-type": "application/json", "webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_two_secrets_sign_twice_for_rotation() -> None:
    both = headers([SPEC_SECRET, OTHER], SPEC_ID, SPEC_TS, SPEC_BODY)["webhook-signature"].split(" ")
    key = base64.b64decode(OTHER.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{SPEC_ID}.{SPEC_TS}.".encode() + SPEC_BODY, hashlib.sha256).digest())
    assert both == [SPEC_SIGNATURE, "v1," + expected.decode()]


def test_secret_problems_never_quote_the_secret() -> None:
    assert secret_problem(SPEC_SECRET) is None
    assert secret_problem("whsec_") == "the part after 'whsec_' must not be empty"
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!"):
        problem = secret_problem(bad)
        assert problem is not None and bad.removeprefix("whsec_") not in problem


@pytest.mark.parametrize(("status", "meaning"), [
    (200, DELIVERED), (204, DELIVERED), (None, RETRY), (429, RETRY), (500, RETRY), (503, RETRY),
    (400, FAILED), (404, FAILED), (410, FAILED), (301, FAILED),
])
def test_what_an_answer_means(status: int | None, meaning: str) -> None:
    assert verdict(status) == meaning


def test_backoff_doubles_with_full_jitter_up_to_an_hour() -> None:
    def top(low: float, high: float) -> float:
        assert low == 0.0
        return high

    assert [backoff(attempt, 1.0, top) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(30, 1.0, top) == 3600.0 and backoff(10_000, 1.0, top) == 3600.0
    assert backoff(3, 1.0, lambda low, high: (low + high) / 2) == 2.0


def test_callback_url_is_lifted_out_of_extra_body_and_needs_async() -> None:
    rule = ModelRule(pattern="m", channels=("local",), passthrough=frozenset({"extra_body"}))
    lifted = parse_image_request({"model": "m", "prompt": "p", "async": True,
                                  "extra_body": {"callback_url": "https://example.com/hook", "seed": 1}})
    plan = build_plan(lifted, rule)
    assert plan.callback_url == "https://example.com/hook" and plan.fields["extra_body"] == {"seed": 1}
    only = build_plan(parse_image_request({"model": "m", "prompt": "p", "async": True,
                                           "extra_body": {"callback_url": "https://example.com/hook"}}), rule)
    assert "extra_body" not in only.fields and "callback_url" not in only.ignored and only.ignored == ()
    with pytest.raises(InvalidRequest) as raised:
        build_plan(parse_image_request({"model": "m", "prompt": "p", "callback_url": "https://example.com/hook"}), rule)
    assert raised.value.param == "callback_url"
    with pytest.raises(InvalidRequest) as twice:
        parse_image_request({"model": "m", "prompt": "p", "callback_url": "https://a.example",
                             "extra_body": {"callback_url": "https://b.example"}})
    assert twice.value.param == "callback_url"


def test_webhook_rules_load_with_secrets_kept_out_of_reprs() -> None:
    server = {"api_keys": [{"key": "k1", "name": "alice", "webhook_url": "https://example.com/a"},
                           {"key": "k2", "name": "bob", "webhook_secrets": ["${BOB_SECRET}"]},
                           {"key": "k3", "name": "bob"}],  # a name need not be unique: sets go by the key's id
              "webhooks": {"secrets": [SPEC_SECRET], "retry_for": 60, "timeout": 2, "allow_hosts": ["Hooks.Local"],
                           "min_backoff": 0.05}}
    rules = make_rules({"m": {"channels": ["local"]}}, {"local": LOCAL}, server=server, env={"BOB_SECRET": OTHER})
    hooks = rules.server.webhooks
    assert (hooks.retry_for, hooks.timeout, hooks.allow_hosts, hooks.min_backoff) == (60.0, 2.0, ("hooks.local",), 0.05)
    assert rules.server.webhook_secrets_of("server") == (SPEC_SECRET,)
    assert rules.server.webhook_secrets_of(f"key:{key_id('k2')}") == (OTHER,)
    assert rules.server.webhook_secrets_of(f"key:{key_id('k3')}") == (SPEC_SECRET,)  # the other bob: not k2's set
    assert rules.server.webhook_secrets_of(f"key:{key_id('k1')}") == (SPEC_SECRET,)  # no set of its own: the server's
    assert rules.server.webhook_secrets_of("key:bob") == (SPEC_SECRET,)  # a name is no set
    assert rules.server.clients[0].webhook_url == "https://example.com/a"
    assert SPEC_SECRET.removeprefix("whsec_") not in repr(rules) and OTHER.removeprefix("whsec_") not in repr(rules)


def test_webhook_rules_problems() -> None:
    with pytest.raises(RulesError) as raised:
        make_rules({"m": {"channels": ["local"]}}, {"local": LOCAL}, server={
            "api_keys": [{"key": "k1", "webhook_url": "ftp://example.com/a"}, {"key": "k2", "webhook_url": "https://x.example"}],
            "webhooks": {"secrets": ["nope"], "colour": 1}})
    paths = {problem.path for problem in raised.value.problems}
    assert paths == {"server.api_keys[0].webhook_url", "server.api_keys[1].webhook_url", "server.webhooks.secrets[0]",
                     "server.webhooks.colour"}
    assert "nope" not in str(raised.value).replace("server.webhooks.secrets", "")
