"""Direct routes: the API's endpoints, dispatched without FastAPI's per-request machinery.

A route declared with ``route_class=DirectRoute`` is an endpoint that takes the ``Request`` and returns
a ``Response``: it authenticates and parses its body itself (the contract's error codes need that
anyway), so FastAPI has no dependencies to solve for it. FastAPI still documents it (OpenAPI) and
can route it; ``App`` sends an exact ``(method, path)`` match straight to the endpoint, before the
middleware stack and the router. On check-status that halved the application's time per request
(bench/bench_server.py measures it). Errors leave as they would through the stack: ``response_for``
is the exception handlers' own mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nanogen.server.errors import response_for

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint is called as it is: ``endpoint(request) -> Response``."""

    def get_route_handler(self) -> Endpoint:
        endpoint: Endpoint = self.endpoint
        return endpoint


class App(FastAPI):
    """FastAPI, with exact matches of direct routes answered before the middleware stack."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._direct: dict[tuple[str, str], Endpoint] = {}

    def include_router(self, router: APIRouter, *, prefix: str = "", **options: Any) -> None:
        super().include_router(router, prefix=prefix, **options)
        for route in router.routes:
            if isinstance(route, DirectRoute):
                for method in route.methods or ():
                    self._direct[(method, prefix + route.path)] = route.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._direct.get((scope["method"], _route_path(scope)))
            if endpoint is not None:
                scope["app"] = self
                await self._call_direct(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    @staticmethod
    async def _call_direct(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await endpoint(Request(scope, receive, send))
        except Exception as exc:  # every error leaves in the contract's envelope
            response = response_for(exc, scope)
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
