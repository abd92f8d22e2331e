"""merge_extra_body: extra_body adds provider fields but never replaces what the proxy validated."""

from __future__ import annotations

import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.extra_body import merge_extra_body


def test_new_keys_are_added_verbatim_at_any_depth() -> None:
    body = {"model": "m", "parameters": {"n": 1}}
    extra = {"guidance": 7.5, "parameters": {"prompt_extend": False, "style": {"a": [1, None]}}}
    assert merge_extra_body(body, extra) == {
        "model": "m",
        "guidance": 7.5,
        "parameters": {"n": 1, "prompt_extend": False, "style": {"a": [1, None]}},
    }
    assert body == {"model": "m", "parameters": {"n": 1}}  # the input is not changed


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 10}, "extra_body.n"),
        ({"model": "other"}, "extra_body.model"),
        ({"parameters": {"n": 4}}, "extra_body.parameters.n"),
    ],
)
def test_replacing_a_set_value_is_a_400_naming_the_key(extra: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        merge_extra_body({"model": "m", "n": 1, "parameters": {"n": 1}}, extra)
    assert caught.value.status == 400
    assert caught.value.param == param
