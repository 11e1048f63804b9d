"""Direct routes: the API's endpoints, dispatched without FastAPI's per-request machinery.

A route declared with ``route_class=DirectRoute`` is an endpoint that takes the ``Request`` and returns
a ``Response``: it authenticates and parses its body itself (the contract's error codes need that
anyway), so FastAPI has no dependencies to solve for it. FastAPI still documents it (OpenAPI) and
can route it; ``App`` sends an exact ``(method, path)`` match straight to the endpoint, before the
middleware stack and the router. On check-status that halved the application's time per request
(bench/bench_server.py measures it). Errors leave as they would through the stack: ``response_for``
is the exception handlers' own mapping.

``App`` is also where every HTTP request is observed once, direct or not: its request id (a sane
incoming ``X-Request-Id``, else a new one) is returned as ``X-Request-Id`` on every response, errors
included, and set for the log lines written while it is served (logs.REQUEST_ID); then it is counted
and timed by route template (metrics.py) and logged as one access line (``nanogen.access``, INFO).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import Message, Receive, Scope, Send

from nanogen.logs import REQUEST_ID
from nanogen.metrics import UNMATCHED, HttpObserver
from nanogen.server.errors import response_for

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]

access_log = logging.getLogger("nanogen.access")

# Keys of a request's scope: its id, and the account its key belongs to once authenticated
# (server/deps.py sets it), for the access line.
REQUEST_ID_KEY = "nanogen.request_id"
ACCOUNT_KEY = "nanogen.account_id"
_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` when it is sane (1-128 printable ASCII characters), else a new one."""
    for name, value in headers:
        if name == _HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                text = value.decode("ascii")
                if text.isprintable() and text.strip() == text:
                    return text
            break
    return f"{random.getrandbits(64):016x}"  # not a secret: an id to find a request's lines by


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is called as it is: ``endpoint(request) -> Response``."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


class App(FastAPI):
    """FastAPI, with exact matches of direct routes answered before the middleware stack, and every
    HTTP request given an id, counted, timed and logged."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._direct: dict[tuple[str, str], Endpoint] = {}
        self._observe = HttpObserver()

    def include_router(self, router: APIRouter, *, prefix: str = "", **options: Any) -> None:
        super().include_router(router, prefix=prefix, **options)
        for route in router.routes:
            if isinstance(route, DirectRoute):
                for method in route.methods or ():
                    self._direct[(method, prefix + route.path)] = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        rid = scope[REQUEST_ID_KEY] = request_id(scope["headers"])
        token = REQUEST_ID.set(rid)
        method: str = scope["method"]
        path = _route_path(scope)
        endpoint = self._direct.get((method, path))
        if method not in _METHODS:  # a bounded label: any other token the parser let through is one
            method = "OTHER"
        status, route = 500, UNMATCHED
        try:
            if endpoint is not None:
                scope["app"] = self
                route = path  # an exact match: the path is the route's template
                response = await self._call_direct(endpoint, scope, receive, send)
                response.raw_headers.append((_HEADER, rid.encode()))
                status = response.status_code
                await response(scope, receive, send)
            else:
                tagged = _Tagged(send, rid.encode())
                try:
                    await super().__call__(scope, receive, tagged.send)
                finally:
                    status, route = tagged.status, _route_template(scope)
        finally:
            seconds = time.perf_counter() - started
            self._observe(route, method, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, method, route, status, seconds)
            REQUEST_ID.reset(token)

    @staticmethod
    async def _call_direct(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> Response:
        try:
            return await endpoint(Request(scope, receive, send))
        except Exception as exc:  # every error leaves in the contract's envelope
            return response_for(exc, scope)


class _Tagged:
    """``send`` adding the request id to the response's headers and remembering its status."""

    __slots__ = ("_rid", "_send", "status")

    def __init__(self, send: Send, rid: bytes) -> None:
        self._send = send
        self._rid = rid
        self.status = 500  # until a response starts (an exception that escaped: uvicorn answers 500)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
            message = {**message, "headers": [*headers, (_HEADER, self._rid)]}
        await self._send(message)


def _route_template(scope: Scope) -> str:
    """The template of the route that served the request (``/files/{key:path}``), never its path."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    if isinstance(route, Mount):
        return f"{route.path}/{{path:path}}"
    return str(getattr(route, "path", UNMATCHED))


def _log_access(scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
    account = scope.get(ACCOUNT_KEY)
    ms = round(seconds * 1000, 2)
    access_log.info(
        "%s %s %d %.2fms id=%s account=%s",
        method,
        route,
        status,
        ms,
        scope[REQUEST_ID_KEY],
        account or "-",
        extra={"method": method, "route": route, "status": status, "duration_ms": ms, "account_id": account},
    )


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
