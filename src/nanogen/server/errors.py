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


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.APIError)
    return render(exc)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    cls = _HTTP_ERRORS.get(exc.status_code)
    if cls is errors.NotFound:
        return render(errors.NotFound("Not found"))
    if cls is not None:
        return render(cls())
    return FastJSONResponse(
        {"error": str(exc.detail), "errorCode": "HTTP_ERROR"}, status_code=exc.status_code
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return render(errors.InvalidParameter(f"{field}: {first.get('msg', 'invalid')}", field=field))


async def _database_error(_request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return render(errors.ServiceUnavailable())


async def _unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return render(errors.InternalError())


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
