"""A task's checkpoint (proxy.core.task_checkpoint) goes through JSON and comes back as it was: every
resumable adapter's state, the trace and the reservation; a state of another kind or version is refused."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from proxy.adapters import ADAPTERS
from proxy.adapters.flux import Task as FluxTask
from proxy.adapters.replicate import Prediction
from proxy.core.task_checkpoint import Checkpoint, Reserved, Trace, decode_state, encode_state

TRACE = Trace("req-1", 1_764_000_000.5, {"model": "kling-v2", "n": 2}, {"key_name": "alice", "prompt": "a crane"})


def through_json(checkpoint: Checkpoint) -> Checkpoint:
    return Checkpoint.loads(json.loads(json.dumps(checkpoint.dumps())))


def test_every_resumable_adapter_declares_a_state_and_a_resume_step_together() -> None:
    resumable = {name for name, spec in ADAPTERS.items() if spec.resume is not None}
    assert resumable == {name for name, spec in ADAPTERS.items() if spec.task_state is not None}
    assert resumable == {"kling", "dashscope", "flux", "replicate"}


@pytest.mark.parametrize("name", ["kling", "dashscope", "flux", "replicate"])
def test_each_task_state_survives_json(name: str) -> None:
    kind = ADAPTERS[name].task_state
    assert kind is not None
    values = {item.name: f"{item.name}-value" for item in fields(kind) if item.type == "str"}
    state = kind(**values, polls=3, failed_polls=1)
    assert decode_state(kind, json.loads(json.dumps(encode_state(state)))) == state


def test_tuples_in_a_state_come_back_as_tuples() -> None:
    state = FluxTask("t-1", polling_url="https://api.bfl.ai/poll", send_key=True, usage=(("credits", 4.0),))
    assert decode_state(FluxTask, json.loads(json.dumps(encode_state(state)))) == state


def test_a_state_of_another_kind_is_refused_and_unknown_fields_are_dropped() -> None:
    saved = encode_state(Prediction("p-1", get_url="https://r/p-1"))
    assert decode_state(FluxTask, saved) is None
    newer = {**saved, "fields": {**saved["fields"], "added_later": 1}}
    assert decode_state(Prediction, newer) == Prediction("p-1", get_url="https://r/p-1")
    with pytest.raises(TypeError):
        encode_state("not a dataclass")


def test_a_checkpoint_is_resumable_once_the_upstream_task_is_known() -> None:
    reserved = Reserved("ipd:k:1", 2, (("usd-day:k:1", 86460), ("usd-month:k:1", 2764800)), 500_000)
    created = Checkpoint(TRACE, "b64_json", "http://127.0.0.1:8080", 86400.0, reserved)
    assert not created.resumable and through_json(created) == created
    later = Trace("req-1", TRACE.arrived, {**TRACE.fields, "channel": "kling"}, TRACE.unlogged)
    upstream = created.at_upstream("kling", Prediction("p-1"), {"model": "kling-v2", "prompt": "a crane"}, later)
    assert upstream.resumable and through_json(upstream) == upstream
    assert upstream.state == {"type": "Prediction", "fields": {"task_id": "p-1", "polls": 0, "failed_polls": 0,
                                                                "get_url": "", "cancel_url": ""}}
    assert not created.at_upstream("kling", Prediction("p-1"), None, later).resumable  # an upload: not kept


def test_a_record_that_is_not_a_checkpoint_is_an_error_the_keeper_can_catch() -> None:
    for saved in ({}, {"trace": {"request_id": "r"}}, {"trace": TRACE.__dict__, "response_format": None}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            Checkpoint.loads(saved)


def test_checkpoints_of_other_versions_are_read_and_redis_ones_keep_the_earlier_shape() -> None:
    # Counted in Redis (a lifetime of ""): written as versions before `counted_in` wrote it, so they read it.
    shared = Checkpoint(TRACE, "url", "http://p", 600.0, Reserved("ipd:k:1", 2, (), 0))
    assert "counted_in" not in shared.dumps()["reserved"] and through_json(shared) == shared
    counted = Checkpoint(TRACE, "url", "http://p", 600.0, Reserved("ipd:k:1", 2, (), 0, counted_in="host:/run/c.map"))
    assert through_json(counted) == counted
    # A later version's fields, at every level, are left out rather than refused.
    later = counted.dumps()
    later = {**later, "added": 1, "trace": {**later["trace"], "added": 2}, "reserved": {**later["reserved"], "added": 3}}
    assert Checkpoint.loads(later) == counted
