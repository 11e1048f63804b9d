"""Every error leaves the server in the contract's envelope: ``{"error", "errorCode", ...}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import Scope

from nanogen import errors
from nanogen.server.protocol import TIMED_OUT
from nanogen.server.responses import FastJSONResponse

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[errors.APIError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


def render(exc: errors.APIError, headers: Mapping[str, str] | None = None) -> Response:
    return FastJSONResponse(
        exc.body(), status_code=exc.http_status, headers={**exc.headers(), **(headers or {})}
    )


def response_for(exc: Exception, scope: Scope | None = None) -> Response:
    """The response an exception leaves as: the contract's error code where there is one, 503 while
    the database is unreachable, 500 (logged) for anything unexpected. ``scope``: the request's, for
    the log line of a client that went away."""
    if isinstance(exc, errors.APIError):
        return render(exc)
    if isinstance(exc, HTTPException):
        cls = _HTTP_ERRORS.get(exc.status_code)
        if cls is errors.NotFound:
            return render(errors.NotFound("Not found"))
        if cls is not None:
            return render(cls(), exc.headers)  # 405's Allow
        return FastJSONResponse(
            {"error": str(exc.detail), "errorCode": "HTTP_ERROR"},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    if isinstance(exc, ClientDisconnect):
        # The client closed the connection before its request was read (or the server did, for a body
        # too slow: server/protocol.py logged that): nothing went wrong here, and nobody is left to answer.
        if not (scope and scope.get(TIMED_OUT)):
            where = f" ({scope.get('method')} {scope.get('path')})" if scope else ""
            log.warning("client disconnected before its request was complete%s", where)
        return render(errors.BadRequest("The client disconnected before its request was complete"))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return render(errors.InvalidParameter(f"{field}: {first.get('msg', 'invalid')}", field=field))
    if isinstance(exc, DataError):  # a value the database cannot store or compare (NUL, out of range)
        log.info("refused a value the database cannot take: %s", str(exc.orig).splitlines()[0])
        return render(
            errors.InvalidParameter("A value in the request cannot be stored; check its characters")
        )
    if isinstance(exc, OperationalError | PoolTimeout):  # PoolTimeout: no pooled connection freed in time
        log.warning("database unavailable: %s", exc)
        return render(errors.ServiceUnavailable())
    log.exception("unhandled error", exc_info=exc)
    return render(errors.InternalError())


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        return render(errors.MethodNotAllowed(), {"Allow": allowed} if allowed else None)
    return response_for(exc, request.scope)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path: Starlette's 405 names only the first route's
    (``/files/…`` has a GET route and a HEAD route). Mounts (static files) answer for themselves."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    for kind in (
        errors.APIError,
        HTTPException,
        RequestValidationError,
        ClientDisconnect,
        DataError,
        OperationalError,
        Exception,
    ):
        app.add_exception_handler(kind, _handle)
