"""The adapter kit's shared pieces, as every adapter meets them."""

from __future__ import annotations

from proxy.adapters.kit import bad_answer
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
