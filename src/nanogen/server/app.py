"""The app factory: routes, error handlers and the lifespan that starts the services."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from nanogen import __version__
from nanogen.server import errors
from nanogen.server.deps import BEARER_SCHEME
from nanogen.server.direct import App
from nanogen.server.routes import (
    account,
    admin,
    files,
    gemini,
    generations,
    generations_cancel,
    generations_events,
    health,
    images,
    openai,
    playground,
    uploads,
    videos,
    webhooks,
)
from nanogen.server.services import lifespan
from nanogen.server.watch import with_watcher
from nanogen.settings import Settings

DESCRIPTION = """Self-hosted, API-compatible NanoPhoto image (Nano Banana 2) and video (Veo 3.1) generation.
Authenticate with `Authorization: Bearer YOUR_API_KEY`. Every error is `{"error", "errorCode", ...}`;
see docs/api.md for the contract as implemented."""

DOCS_URL = "/docs"
# Swagger UI's JavaScript, CSS and icon, served from the installed fastapi-offline package: the page
# works without internet (FastAPI's default loads them from a CDN).
DOCS_ASSETS_URL = "/docs/assets"


def create_app(settings: Settings, *, work: bool = True) -> FastAPI:
    """``work``: also run generation workflows in this process (``nanogen serve`` does by default)."""
    app = App(
        title="nanogen",
        version=__version__,
        description=DESCRIPTION,
        # the services, and the watcher that event streams and Prefer: wait use (server/watch.py)
        lifespan=with_watcher(lifespan(settings, work=work), settings.watch_interval_s),
        docs_url=None,  # _install_docs: the same page with the assets served from here
        redoc_url=None,
    )
    errors.install(app)
    for module in (images, videos, uploads, account, generations, files, admin, health, openai):
        app.include_router(module.router)
    app.include_router(gemini.router)  # Gemini-compatible /v1beta (docs/api.md)
    app.include_router(generations_cancel.router)  # POST /api/generations/{id}/cancel (docs/api.md)
    app.include_router(generations_events.router)  # GET /api/generations/{id}/events (docs/api.md)
    app.include_router(webhooks.router)  # /api/account/webhook* (docs/api.md, Webhooks)
    playground.install(app)
    _install_docs(app)
    app.openapi = lambda: _openapi_with_body_models(app)  # type: ignore[method-assign]
    return app


def _install_docs(app: FastAPI) -> None:
    """FastAPI's Swagger UI page at ``/docs``, with its assets from the package instead of a CDN."""
    assert app.openapi_url is not None and app.swagger_ui_oauth2_redirect_url is not None
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")


def _openapi_with_body_models(app: FastAPI) -> dict[str, Any]:
    """Routes parse their bodies themselves (for the contract's error codes) and document them with
    ``openapi_extra``; move those schemas' nested models into ``components`` where $refs point.
    Every /api operation takes the Bearer API key (server/deps.py reads it)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        schema["components"].setdefault("securitySchemes", {})["ApiKey"] = BEARER_SCHEME
        for url, path in schema["paths"].items():
            for operation in path.values():
                if url.startswith("/api/"):
                    operation.setdefault("security", [{"ApiKey": []}])
                content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                components.update(content.get("schema", {}).pop("$defs", {}))
        app.openapi_schema = schema
    return app.openapi_schema
