"""One exception tree for the server, the engines and the SDK.

Every :class:`APIError` carries the contract's ``errorCode`` and HTTP status and renders as the pages'
envelope ``{"error": ..., "errorCode": ..., **extra}``. The server maps them to responses in one place
(``server/errors.py``); the SDK maps responses back to the same classes in one place
(:func:`from_response`), so ``except nanogen.errors.InsufficientCredits`` works on both sides::

    NanogenError
    ├── APIError                          -> {"error", "errorCode", ...} with .http_status
    │   ├── BadRequest (400)
    │   │   ├── InvalidPrompt              INVALID_PROMPT          (contract, images)
    │   │   ├── MissingInputImage          MISSING_INPUT_IMAGE     (contract, images)
    │   │   ├── TooManyImages              TOO_MANY_IMAGES         (contract, images)
    │   │   ├── ImageUrlsRequired          IMAGE_URLS_REQUIRED     (contract, both)
    │   │   ├── ShotsRequired              SHOTS_REQUIRED          (contract, video)
    │   │   ├── PromptRequired             PROMPT_REQUIRED         (contract, video)
    │   │   ├── InvalidImageCount          INVALID_IMAGE_COUNT     (contract, video)
    │   │   ├── TaskIdsRequired            TASK_IDS_REQUIRED       (contract, video)
    │   │   ├── GenerationIdRequired       GENERATION_ID_REQUIRED  (nanogen)
    │   │   ├── InvalidJSON                INVALID_JSON            (nanogen)
    │   │   ├── InvalidParameter           INVALID_PARAMETER       (nanogen: type, enum, length)
    │   │   ├── TooManyShots               TOO_MANY_SHOTS          (nanogen)
    │   │   ├── DuplicateShotId            DUPLICATE_SHOT_ID       (nanogen)
    │   │   ├── ResolutionNotAvailable     RESOLUTION_NOT_AVAILABLE (nanogen: 1080p/4k, >1 shot)
    │   │   ├── InvalidImageUrl            INVALID_IMAGE_URL       (nanogen: refused, unreachable, expired...)
    │   │   ├── InvalidImage               INVALID_IMAGE           (nanogen: an upload that is not an image)
    │   │   └── RequestTooLarge            REQUEST_TOO_LARGE       (nanogen: body over the size cap)
    │   │       └── UploadTooLarge (413)   REQUEST_TOO_LARGE       (nanogen: upload over its size cap)
    │   ├── LoginRequired (401)            LOGIN_REQUIRED
    │   ├── InsufficientCredits (402)      INSUFFICIENT_CREDITS, requiredCredits
    │   ├── Forbidden (403)                FORBIDDEN
    │   ├── AdminForbidden (403)           ADMIN_TOKEN_INVALID
    │   ├── MetricsForbidden (403)         METRICS_TOKEN_INVALID (nanogen: GET /metrics)
    │   ├── NotFound (404)                 NOT_FOUND
    │   │   └── TaskNotFound               TASK_NOT_FOUND
    │   ├── MethodNotAllowed (405)         METHOD_NOT_ALLOWED
    │   ├── RequestTimeout (408)           REQUEST_TIMEOUT (nanogen: a request header or body too slow)
    │   ├── IdempotencyKeyInUse (409)      IDEMPOTENCY_KEY_IN_USE (nanogen: its first request still runs)
    │   ├── AlreadyEnded (409)             ALREADY_ENDED (nanogen: cancel of a generation that ended)
    │   ├── GenerationRunning (409)        GENERATION_RUNNING (nanogen: DELETE of a generation still running)
    │   ├── Gone (410)                     GONE (nanogen: a file deleted by the retention setting)
    │   ├── UnsupportedMediaType (415)     UNSUPPORTED_MEDIA_TYPE  (nanogen: upload Content-Type)
    │   ├── RangeNotSatisfiable (416)      RANGE_NOT_SATISFIABLE (nanogen: /files Range outside the file)
    │   ├── IdempotencyKeyReused (422)     IDEMPOTENCY_KEY_REUSED (nanogen: the key came with another body)
    │   ├── RateLimited (429)              API_KEY_RATE_LIMIT_EXCEEDED (+ Retry-After)
    │   ├── InternalError (500)            INTERNAL_ERROR
    │   │   ├── CreditReservationFailed    CREDIT_RESERVATION_FAILED
    │   │   └── GenerationFailed           GENERATION_FAILED       (contract; the SDK raises it when a
    │   │                                                            generation ends failed, with .result)
    │   └── ServiceUnavailable (503)       SERVICE_UNAVAILABLE
    ├── EngineError                        an engine could not make the output; the task fails and is refunded
    ├── FetchError                         an input URL was refused or unusable (becomes InvalidImageUrl)
    └── ClientError                        SDK side, no answer from the server to map
        ├── ConnectionFailed               the server could not be reached (network, DNS, timeout)
        ├── UnexpectedResponse             a success answer that does not fit the contract's models
        └── WaitTimeout                    wait() gave up before the generation ended (also a TimeoutError)

A response whose ``errorCode`` has no class here (another server's code) becomes the class for its HTTP
status (``BadRequest`` for 400, ``InternalError`` for 5xx...) with ``.code`` set to the code it carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar


class NanogenError(Exception):
    """Base of every error nanogen raises on purpose."""


class APIError(NanogenError):
    """An error with the contract's envelope."""

    http_status: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "Internal server error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.default_message
        self.extra = extra
        # What was (or will be) answered: the class's values, or a response's when the SDK built it.
        self.status: int = self.http_status
        self.code: str = self.error_code
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "errorCode": self.code, **self.extra}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(APIError):
    http_status = 400
    error_code = "INVALID_PARAMETER"
    default_message = "Invalid request"


class InvalidPrompt(BadRequest):
    error_code = "INVALID_PROMPT"
    default_message = "Prompt is missing or empty"


class MissingInputImage(BadRequest):
    error_code = "MISSING_INPUT_IMAGE"
    default_message = "Edit mode requires input images"


class TooManyImages(BadRequest):
    error_code = "TOO_MANY_IMAGES"
    default_message = "More than 14 input images"


class ImageUrlsRequired(BadRequest):
    error_code = "IMAGE_URLS_REQUIRED"
    default_message = "API calls require public image URLs (base64 upload is not supported)"


class ShotsRequired(BadRequest):
    error_code = "SHOTS_REQUIRED"
    default_message = "Missing shots array"


class PromptRequired(BadRequest):
    error_code = "PROMPT_REQUIRED"
    default_message = "Missing prompt in a shot"


class InvalidImageCount(BadRequest):
    error_code = "INVALID_IMAGE_COUNT"
    default_message = "Wrong number of images for generation type"


class TaskIdsRequired(BadRequest):
    error_code = "TASK_IDS_REQUIRED"
    default_message = "Missing task IDs"


class GenerationIdRequired(BadRequest):
    error_code = "GENERATION_ID_REQUIRED"
    default_message = "Missing generationId"


class InvalidHTTPRequest(BadRequest):
    error_code = "INVALID_HTTP_REQUEST"
    default_message = "The request is not valid HTTP/1.1"


class InvalidJSON(BadRequest):
    error_code = "INVALID_JSON"
    default_message = "The request body must be a JSON object"


class InvalidParameter(BadRequest):
    error_code = "INVALID_PARAMETER"


class TooManyShots(BadRequest):
    error_code = "TOO_MANY_SHOTS"
    default_message = "At most 21 shots per request"


class DuplicateShotId(BadRequest):
    error_code = "DUPLICATE_SHOT_ID"
    default_message = "Shot ids must be unique within a request"


class ResolutionNotAvailable(BadRequest):
    error_code = "RESOLUTION_NOT_AVAILABLE"
    default_message = "1080p and 4k are only available for single-shot generation"


class InvalidImageUrl(BadRequest):
    error_code = "INVALID_IMAGE_URL"
    default_message = "An image URL could not be used"


class InvalidImage(BadRequest):
    error_code = "INVALID_IMAGE"
    default_message = "The upload is not a PNG, JPEG, WebP or GIF image"


class RequestTooLarge(BadRequest):
    error_code = "REQUEST_TOO_LARGE"
    default_message = "Request body too large"


class UploadTooLarge(RequestTooLarge):
    http_status = 413
    default_message = "Upload too large"


class LoginRequired(APIError):
    http_status = 401
    error_code = "LOGIN_REQUIRED"
    default_message = "Authentication required"


class InsufficientCredits(APIError):
    http_status = 402
    error_code = "INSUFFICIENT_CREDITS"
    default_message = "Insufficient credits"

    def __init__(self, required_credits: int, message: str | None = None) -> None:
        super().__init__(message, requiredCredits=required_credits)

    @property
    def required_credits(self) -> int | None:
        value = self.extra.get("requiredCredits")
        return value if isinstance(value, int) else None


class Forbidden(APIError):
    http_status = 403
    error_code = "FORBIDDEN"
    default_message = "Access denied (not your generation)"


class AdminForbidden(APIError):
    http_status = 403
    error_code = "ADMIN_TOKEN_INVALID"
    default_message = "A valid admin token is required"


class MetricsForbidden(APIError):
    http_status = 403
    error_code = "METRICS_TOKEN_INVALID"
    default_message = "A valid metrics token is required"


class NotFound(APIError):
    http_status = 404
    error_code = "NOT_FOUND"
    default_message = "Generation ID not found"


class TaskNotFound(NotFound):
    error_code = "TASK_NOT_FOUND"
    default_message = "Task not found or not owned by user"


class MethodNotAllowed(APIError):
    http_status = 405
    error_code = "METHOD_NOT_ALLOWED"
    default_message = "Method not allowed"


class RequestTimeout(APIError):
    http_status = 408
    error_code = "REQUEST_TIMEOUT"
    default_message = "The request was not received in time"


class AlreadyEnded(APIError):
    """nanogen: a cancel of a generation (or of shots) that had already ended."""

    http_status = 409
    error_code = "ALREADY_ENDED"
    default_message = "The generation has already ended"


class IdempotencyKeyInUse(APIError):
    http_status = 409
    error_code = "IDEMPOTENCY_KEY_IN_USE"
    default_message = "A request with this Idempotency-Key is still being processed; retry shortly"


class IdempotencyKeyReused(APIError):
    http_status = 422
    error_code = "IDEMPOTENCY_KEY_REUSED"
    default_message = "This Idempotency-Key was used with a different request body"


class GenerationRunning(APIError):
    """nanogen: ``DELETE /api/generations/{id}`` of a generation that has not ended."""

    http_status = 409
    error_code = "GENERATION_RUNNING"
    default_message = "The generation is still running; delete its files once it has ended"


class Gone(APIError):
    http_status = 410
    error_code = "GONE"
    default_message = "This file was deleted by the server's retention policy"


class UnsupportedMediaType(APIError):
    http_status = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"
    default_message = "Upload an image/png, image/jpeg, image/webp or image/gif body"


class RangeNotSatisfiable(APIError):
    http_status = 416
    error_code = "RANGE_NOT_SATISFIABLE"
    default_message = "The requested range is outside the file"

    def __init__(self, size: int, message: str | None = None) -> None:
        super().__init__(message)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class RateLimited(APIError):
    http_status = 429
    error_code = "API_KEY_RATE_LIMIT_EXCEEDED"
    default_message = "Rate limit exceeded (100 req/hour)"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, retryAfter=retry_after)

    @property
    def retry_after(self) -> int | None:
        """Seconds until the next request may pass (the body's ``retryAfter`` or the header)."""
        value = self.extra.get("retryAfter")
        return value if isinstance(value, int) else None

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class InternalError(APIError):
    pass


class CreditReservationFailed(InternalError):
    error_code = "CREDIT_RESERVATION_FAILED"
    default_message = "Failed to reserve credits"


class GenerationFailed(InternalError):
    """The pages' GENERATION_FAILED; the SDK raises it when a generation it waits for ends failed."""

    error_code = "GENERATION_FAILED"
    default_message = "Generation failed"

    def __init__(self, message: str | None = None, *, result: Any = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.result = result  # the final status response (SDK), completed shots included


class ServiceUnavailable(APIError):
    http_status = 503
    error_code = "SERVICE_UNAVAILABLE"
    default_message = "Service temporarily unavailable, retry shortly"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class EngineError(NanogenError):
    """An engine could not produce the output. The message is shown to the client in ``error``."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class FetchError(NanogenError):
    """An input URL was refused (policy) or could not be used (network, size, not an image)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{reason}: {url}")
        self.url = url
        self.reason = reason


class ClientError(NanogenError):
    """SDK side: something went wrong before a server answer could be mapped to an APIError."""


class ConnectionFailed(ClientError):
    """The server could not be reached (connection refused, DNS, network timeout)."""


class UnexpectedResponse(ClientError):
    """A success answer whose body does not fit the contract's response models."""


class WaitTimeout(ClientError, TimeoutError):
    """``wait()`` stopped at its timeout; the generation goes on on the server."""


# -- the SDK's side of the boundary: a response back into the tree ---------------------------------------
_STATUS_FALLBACK: dict[int, type[APIError]] = {
    400: BadRequest,
    401: LoginRequired,
    402: InsufficientCredits,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: UploadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _subclasses(cls: type[APIError]) -> list[type[APIError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


@cache
def _class_for(code: str, status: int) -> type[APIError]:
    """The most specific class for ``code``, preferring one with this HTTP status."""
    candidates = [c for c in _subclasses(APIError) if c.error_code == code and c is not APIError]
    if candidates:
        same_status = [c for c in candidates if c.http_status == status] or candidates
        return max(same_status, key=lambda c: len(c.__mro__))
    if status in _STATUS_FALLBACK:
        return _STATUS_FALLBACK[status]
    return InternalError if status >= 500 else BadRequest if status >= 400 else APIError


def from_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> APIError:
    """Rebuild the server's exception from an error response (its status, JSON body and headers).

    Extra fields (``requiredCredits``, ``retryAfter``, ``field``, ``url``...) stay in ``.extra``;
    a ``Retry-After`` header fills ``retryAfter`` when the body has none.
    """
    if isinstance(body, dict) and isinstance(body.get("errorCode"), str):
        code: str = body["errorCode"]
        message = str(body.get("error") or code)
        extra = {k: v for k, v in body.items() if k not in ("error", "errorCode")}
    else:
        code, message, extra = f"HTTP_{status}", f"Unexpected HTTP {status} response", {}
    retry_after = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after", "")
    if "retryAfter" not in extra and retry_after.strip().isdigit():
        extra["retryAfter"] = int(retry_after)
    cls = _class_for(code, status)
    # Bypass the subclasses' convenience constructors: the body is already the envelope.
    exc = cls.__new__(cls)
    APIError.__init__(exc, message, **extra)
    exc.status, exc.code = status, code
    if isinstance(exc, GenerationFailed):
        exc.result = None
    return exc
