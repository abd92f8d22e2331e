"""Core tests: a ledger record from a request's notes (proxy.core.ledger_record)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.core.ledger_record import Outcome, build_record, micro_usd, operation_of

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NOTES = {
    "model": "gpt-image-1", "rule": "gpt-image-*", "channel": "openai", "attempts": 2, "n": 3, "images": 2,
    "input_tokens": 10, "output_tokens": 4160, "total_tokens": 4170, "cost_usd": 0.16645, "key_name": "team-a",
    "prompt": "a heron", "operation": "generate", "upstream_model": "gpt-image-1",
}


def test_notes_become_the_record() -> None:
    record = build_record(AT, "req", "/v1/images/generations", NOTES, Outcome(200, 12.34, 5.67), log_prompts=False)
    assert (record.model, record.rule, record.channel, record.attempts, record.n, record.images) == (
        "gpt-image-1", "gpt-image-*", "openai", 2, 3, 2)
    assert (record.cost_micro_usd, record.total_tokens, record.key_name, record.mode) == (166_450, 4170, "team-a", "sync")
    assert (record.prompt, record.prompt_sha256) == (None, hashlib.sha256(b"a heron").hexdigest())
    assert (record.total_ms, record.upstream_ms, record.at) == (12.3, 5.7, AT)
    assert build_record(AT, "req", "/", NOTES, Outcome(200, 1, 1), log_prompts=True).prompt == "a heron"


def test_a_task_is_async_and_its_own_error_wins() -> None:
    notes = {**NOTES, "task_id": "t-1", "error_code": "stale"}
    record = build_record(AT, "req", "/", notes, Outcome(400, 1, 0, "invalid_request_error", "bad_prompt"), log_prompts=False)
    assert (record.mode, record.task_id, record.status, record.error_code, record.error_type) == (
        "async", "t-1", 400, "bad_prompt", "invalid_request_error")
    assert build_record(AT, "r", "/", {"stream": True}, Outcome(200, 1, 0), log_prompts=False).mode == "stream"


def test_wrong_types_are_left_empty_and_texts_are_made_storable() -> None:
    notes = {"model": "m\x00\ud800", "attempts": "2", "images": True, "n": -1, "cost_usd": "0.1", "key_name": 7}
    record = build_record(AT, "r", "/v1/images/edits", notes, Outcome(499, 1, 0), log_prompts=False)
    assert (record.model, record.attempts, record.images, record.n, record.cost_micro_usd) == ("m\ufffd?", None, 0, None, None)
    assert (record.key_name, record.operation, record.prompt_sha256) == ("anonymous", "edit", None)


@pytest.mark.parametrize(("amount", "micro"), [(0.04, 40_000), (Decimal("0.0000005"), 0), (Decimal("1.234567"), 1_234_567),
                                               (0.000001, 1), (3, 3_000_000), (None, None), (float("nan"), None)])
def test_usd_amounts_are_whole_micro_dollars(amount: object, micro: int | None) -> None:
    assert micro_usd(amount) == micro


def test_only_image_routes_have_an_operation() -> None:
    assert [operation_of(path) for path in ("/v1/images/generations", "/v1/images/variations", "/v1/models")] == [
        "generate", "variation", None]
