"""Every error leaves the server in the contract's envelope: ``{"error", "errorCode", ...}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from nanogen import errors
from nanogen.server.responses import FastJSONResponse

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[errors.APIError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


def render(exc: errors.APIError) -> Response:
    return FastJSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers())


def response_for(exc: Exception) -> Response:
    """The response an exception leaves as: the contract's error code where there is one, 503 while
    the database is unreachable, 500 (logged) for anything unexpected."""
    if isinstance(exc, errors.APIError):
        return render(exc)
    if isinstance(exc, HTTPException):
        cls = _HTTP_ERRORS.get(exc.status_code)
        if cls is errors.NotFound:
            return render(errors.NotFound("Not found"))
        if cls is not None:
            return render(cls())
        return FastJSONResponse(
            {"error": str(exc.detail), "errorCode": "HTTP_ERROR"}, status_code=exc.status_code
        )
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return render(errors.InvalidParameter(f"{field}: {first.get('msg', 'invalid')}", field=field))
    if isinstance(exc, OperationalError):
        log.warning("database unavailable: %s", exc)
        return render(errors.ServiceUnavailable())
    log.exception("unhandled error", exc_info=exc)
    return render(errors.InternalError())


async def _handle(_request: Request, exc: Exception) -> Response:
    return response_for(exc)


def install(app: FastAPI) -> None:
    for kind in (errors.APIError, HTTPException, RequestValidationError, OperationalError, Exception):
        app.add_exception_handler(kind, _handle)
