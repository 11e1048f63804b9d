"""Google's errors in one shape, and retrying what is worth retrying inside a task's deadline.

Google answers an error as ``{"error": {"code", "message", "status", "details"}}``, through the
SDK (``google.genai.errors.APIError``) or as a plain HTTP response on the REST
path. Both become a :class:`ProviderError` here: the one place that decides what is retried and what
a failed task's ``error`` says.

Retried: 408, 429 (after Google's RetryInfo delay when it gives one) and 5xx, and connections that
never reached Google; not a 429 whose ErrorInfo reason is ``INSUFFICIENT_CREDITS`` (another nanogen's
``/v1beta`` saying the account is short: waiting does not add credits). A call that may have been
billed (it reached Google, then the connection broke or timed out) is repeated only when it is free to
repeat (``idempotent``: polling, downloading).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pydantic
from google.auth import exceptions as auth_exceptions
from google.genai import errors as genai_errors

from nanogen import metrics
from nanogen.errors import EngineError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CREDENTIAL_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})
# Final whatever the status: a nanogen upstream (its Gemini-compatible /v1beta) out of credits.
FINAL_REASONS = frozenset({"INSUFFICIENT_CREDITS"})
# Never reached Google: always safe to try again.
UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
MAX_MESSAGE = 500


class ProviderError(Exception):
    """An error answer from Google."""

    def __init__(
        self,
        http_status: int,
        status: str,
        message: str,
        reason: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        self.http_status = http_status
        self.status = status
        self.message = message[:MAX_MESSAGE]
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(f"{http_status} {status}: {self.message}")

    @classmethod
    def from_body(cls, http_status: int, body: Any) -> ProviderError:
        """From Google's error envelope; anything else (an HTML error page) keeps the HTTP status."""
        error = body.get("error", body) if isinstance(body, dict) else None  # the SDK unwraps non-JSON
        if not isinstance(error, dict):
            text = body if isinstance(body, str) else ""
            return cls(http_status, "", text.strip()[:200] or "no error details")
        reason, retry_after = "", None
        for detail in error.get("details") or []:
            if not isinstance(detail, dict):
                continue
            reason = reason or str(detail.get("reason") or "")
            match = _DURATION.match(str(detail.get("retryDelay") or ""))
            if match:
                retry_after = float(match.group(1))
        return cls(
            http_status, str(error.get("status") or ""), str(error.get("message") or ""), reason, retry_after
        )

    @classmethod
    def from_sdk(cls, exc: genai_errors.APIError) -> ProviderError:
        return cls.from_body(int(exc.code or 0), exc.details)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProviderError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls.from_body(response.status_code, body)

    @property
    def retryable(self) -> bool:
        return self.http_status in RETRYABLE_STATUS and self.reason not in FINAL_REASONS

    @property
    def credentials_rejected(self) -> bool:
        return self.reason in CREDENTIAL_REASONS or self.http_status in (401, 403)

    def describe(self) -> str:
        label = "/".join(p for p in (str(self.http_status), self.status, self.reason) if p)
        return f"{label}: {self.message}" if self.message else label

    def engine_error(self) -> EngineError:
        """What the task's ``error`` says when this ends it."""
        if self.credentials_rejected:
            return EngineError(
                f"Google rejected nanogen's credentials ({self.describe()}). The operator must fix "
                "NANOGEN_GOOGLE_API_KEY or the Vertex AI credentials; `nanogen doctor` checks them."
            )
        if self.reason == "INSUFFICIENT_CREDITS":
            return EngineError(
                f"The upstream's account has too few credits ({self.describe()}). The operator must add "
                "credits to the account of NANOGEN_GOOGLE_API_KEY there."
            )
        if self.http_status == 404:
            return EngineError(f"Google does not offer the configured model ({self.describe()})")
        if self.http_status == 429:
            return EngineError(f"Google's quota is exhausted ({self.describe()})")
        if self.http_status >= 500:
            return EngineError(f"Google failed ({self.describe()})")
        return EngineError(f"Google refused the request ({self.describe()})")


def sdk(call: Callable[[], T]) -> T:
    """Run an SDK call, translating its HTTP errors and answers it cannot parse."""
    try:
        return call()
    except genai_errors.APIError as exc:
        raise ProviderError.from_sdk(exc) from exc
    except (json.JSONDecodeError, pydantic.ValidationError) as exc:
        raise EngineError(f"Google returned a malformed response ({type(exc).__name__})") from exc
    except auth_exceptions.TransportError as exc:  # the token endpoint did not answer: try again
        raise ProviderError(503, "UNAVAILABLE", f"cannot reach Google's token endpoint: {exc}") from exc
    except auth_exceptions.GoogleAuthError as exc:
        raise EngineError(
            f"Vertex AI credentials do not work ({type(exc).__name__}: {exc}). The operator must fix the "
            "application default credentials; `nanogen doctor` checks them."
        ) from exc


def checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    raise ProviderError.from_response(response)


@dataclass(frozen=True)
class Backoff:
    base_s: float
    max_s: float

    def delay(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(self.max_s, hinted)
        ceiling = min(self.max_s, self.base_s * 2.0**attempt)
        return ceiling * random.uniform(0.5, 1.0)  # jitter: many shots backing off don't retry in step


def retrying(
    call: Callable[[], T],
    *,
    what: str,
    deadline: float,
    backoff: Backoff,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
    before: Callable[[], None] | None = None,
    throttled: Callable[[float], None] | None = None,
    begun_at: float | None = None,
) -> T:
    """``call()`` until it succeeds, retrying transient failures until ``deadline`` (epoch seconds).
    Raises :class:`EngineError` with the reason when it gives up or the failure is final.

    ``before`` runs ahead of every attempt (a quota's wait); ``throttled(delay)`` hears of each 429,
    so that the other calls of its kind wait out the same delay (quota.CallGate). ``begun_at``: the
    first attempt was begun earlier (at this ``time.perf_counter()``, admitted by its quota then),
    and ``call()`` first waits for its answer; its duration counts from then."""
    attempt = 0
    label = CALL_LABELS.get(what, "other")
    duration = metrics.PROVIDER_DURATION.labels(ENGINE, label)
    while True:
        if attempt == 0 and begun_at is not None:
            started = begun_at
        else:
            if before is not None:
                before()
            started = time.perf_counter()
        try:
            return call()
        except ProviderError as exc:
            count_error(label, error_kind(exc.http_status))
            if not exc.retryable:
                raise exc.engine_error() from exc
            failure, hinted, quota = exc.describe(), exc.retry_after_s, exc.http_status == 429
        except EngineError as exc:  # a final answer: a safety block, a malformed response
            count_refusal(label, exc)
            raise
        except httpx.TransportError as exc:
            count_error(label, "connection")
            if not (idempotent or isinstance(exc, UNSENT)):
                raise EngineError(
                    f"The connection to Google broke during {what} ({type(exc).__name__}); not repeated, "
                    "as Google may have billed it"
                ) from exc
            failure, hinted, quota = f"{type(exc).__name__}: {exc}", None, False
        finally:
            duration.observe(time.perf_counter() - started)
        delay = backoff.delay(attempt, hinted)
        attempt += 1
        if quota and throttled is not None:
            throttled(delay)
        if time.time() + delay >= deadline:
            raise EngineError(
                f"Generation timed out (deadline exceeded) retrying {what} after {attempt} tries; "
                f"last answer: {failure}"
            )
        # A 429 a quota gate heard of is logged once per pause there, not once per waiting call.
        level = logging.DEBUG if quota and throttled is not None else logging.WARNING
        log.log(level, "%s: %s; retry %d in %.1fs", what, failure, attempt, delay)
        sleep(delay)


# Metrics (nanogen/metrics.py): the engine, and the call each ``what`` of ``retrying`` is.
ENGINE = "google"
CALL_LABELS = {
    "image generation": "generate_image",
    "video submission": "submit_video",
    "polling the video operation": "poll_video",
    "downloading the video": "download_video",
}


def error_kind(http_status: int) -> str:
    if http_status == 429:
        return "429"
    if http_status >= 500:
        return "5xx"
    return "4xx" if http_status >= 400 else "other"


def blocked(exc: EngineError) -> bool:
    """A safety filter's refusal (images.py and veo.py word every one of them so)."""
    return exc.message.startswith("Google blocked")


def count_error(call: str, kind: str) -> None:
    metrics.PROVIDER_ERRORS.labels(ENGINE, call, kind).inc()


def count_refusal(call: str, exc: EngineError) -> None:
    """Count an answer that ends a task although the call succeeded: a safety block, or anything
    else Google said (a malformed answer, a failed operation). nanogen's own deadline is not one."""
    if blocked(exc):
        count_error(call, "safety")
    elif exc.message.startswith("Google"):
        count_error(call, "other")


def remaining(deadline: float, cap: float, what: str) -> float:
    """Seconds a call may take: its own cap, or less when the task's deadline is nearer."""
    left = deadline - time.time()
    if left <= 0:
        raise EngineError(f"Generation timed out (deadline exceeded) before {what}")
    return min(cap, left)
