"""The retry policy on its own: what is retried, how long it waits, when it gives up (no server needed:
the calls are plain functions that fail the way Google's answers and the network do)."""

from __future__ import annotations

import time

import httpx
import pytest
from tests.fakes.google_server import error_body

from nanogen.engines.google.calls import Backoff, ProviderError, retrying
from nanogen.errors import EngineError

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}


def failing(*errors: Exception) -> tuple[list[int], object]:
    """A call that raises ``errors`` in turn, then returns "done"; and its call counter."""
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "done"

    return calls, call


def test_googles_error_envelope_is_read() -> None:
    limited = ProviderError.from_body(429, error_body(429, "RESOURCE_EXHAUSTED", "quota", [RETRY_INFO]))
    assert (limited.retryable, limited.retry_after_s, limited.status) == (True, 7.5, "RESOURCE_EXHAUSTED")
    wrong_key = ProviderError.from_body(
        400, error_body(400, "INVALID_ARGUMENT", "API key not valid.", [KEY_INVALID])
    )
    assert wrong_key.credentials_rejected and not wrong_key.retryable
    assert wrong_key.engine_error().message.startswith(
        "Google rejected nanogen's credentials (400/INVALID_ARGUMENT/API_KEY_INVALID: API key not valid.)"
    )
    html = ProviderError.from_body(502, "<html>Bad Gateway</html>")
    assert html.retryable and html.describe() == "502: <html>Bad Gateway</html>"


def test_retry_waits_as_google_asks_and_gives_up_at_the_deadline() -> None:
    waits: list[float] = []
    limited = ProviderError(429, "RESOURCE_EXHAUSTED", "quota", retry_after_s=3.0)
    calls, call = failing(limited, ProviderError(503, "UNAVAILABLE", "overloaded"))
    result = retrying(
        call,
        what="x",
        deadline=time.time() + 60,
        backoff=Backoff(2, 30),
        idempotent=False,
        sleep=waits.append,
    )
    assert result == "done" and len(calls) == 3
    assert waits[0] == 3.0, "Google's RetryInfo delay"
    assert 2.0 <= waits[1] <= 4.0, "then exponential backoff (2 s doubled for the second retry, jittered)"

    forever = [ProviderError(500, "INTERNAL", "boom")] * 100
    calls, call = failing(*forever)
    with pytest.raises(
        EngineError, match=r"deadline exceeded\) retrying x after \d+ tries; last answer: 500/INTERNAL"
    ):
        retrying(call, what="x", deadline=time.time() + 0.5, backoff=Backoff(0.1, 0.1), idempotent=True)
    assert 2 <= len(calls) < 100, "retried until the deadline, then gave up (the 101st call would succeed)"


def test_a_call_that_may_have_been_billed_is_not_repeated() -> None:
    request = httpx.Request("POST", "https://generativelanguage.googleapis.com/")
    calls, call = failing(httpx.ReadTimeout("timed out", request=request))
    with pytest.raises(EngineError, match="not repeated, as Google may have billed it"):
        retrying(call, what="x", deadline=time.time() + 60, backoff=Backoff(0.01, 0.01), idempotent=False)
    assert len(calls) == 1

    calls, call = failing(
        httpx.ConnectError("refused", request=request), httpx.ReadTimeout("slow", request=request)
    )
    assert retrying(call, what="x", deadline=time.time() + 60, backoff=Backoff(0.01, 0.01), idempotent=True)
    assert len(calls) == 3, "never connected: retried; a free call: retried"


def test_final_answers_are_not_retried() -> None:
    calls, call = failing(ProviderError(400, "INVALID_ARGUMENT", "bad aspect ratio"))
    with pytest.raises(
        EngineError, match=r"^Google refused the request \(400/INVALID_ARGUMENT: bad aspect ratio\)"
    ):
        retrying(call, what="x", deadline=time.time() + 60, backoff=Backoff(0.01, 0.01), idempotent=True)
    assert len(calls) == 1


def test_a_call_begun_earlier_is_not_admitted_again_and_counts_from_its_beginning() -> None:
    """The first attempt of a call begun at acceptance (tasks/early.py) was admitted by the quota then:
    only a retry waits for the gate again, and the call's duration counts from when it began."""
    from prometheus_client import REGISTRY

    def seconds_observed() -> float:
        value = REGISTRY.get_sample_value(
            "nanogen_provider_request_duration_seconds_sum", {"engine": "google", "call": "generate_image"}
        )
        return value or 0.0

    admitted: list[int] = []
    before = seconds_observed()
    calls, call = failing(ProviderError(503, "UNAVAILABLE", "overloaded"))
    result = retrying(
        call,
        what="image generation",
        deadline=time.time() + 60,
        backoff=Backoff(0.01, 0.01),
        idempotent=False,
        before=lambda: admitted.append(1),
        begun_at=time.perf_counter() - 5.0,
    )
    assert result == "done" and len(calls) == 2
    assert len(admitted) == 1, "the retry went through the gate; the begun attempt did not"
    assert seconds_observed() - before >= 5.0, "the begun attempt's duration counts from its beginning"
