"""The browser playground: static files shipped in the package (``nanogen/playground/``), served at
``/playground/`` with ``/`` redirecting there, and the catalogue the page builds its forms from.

The page keeps the API key in the browser and calls the public API like any client; the server
knows nothing of it beyond serving files. The catalogue comes from ``products.py`` and the configured
engines, so the page never hard-codes an option, price or limit.
"""

from __future__ import annotations

import os
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from nanogen.products import (
    IMAGE_CREDITS,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SHOTS,
    SHOT_CREDITS,
    SHOT_IMAGE_COUNT,
    SHOT_SECONDS,
    SINGLE_SHOT_RESOLUTIONS,
    GenerationType,
    ImageAspectRatio,
    Product,
    VideoAspectRatio,
)
from nanogen.server.deps import services
from nanogen.server.responses import FastJSONResponse
from nanogen.server.services import Services

# The pages' polling advice: images every 3-5 s (their example waits 3 s), videos every 5-10 s.
IMAGE_POLL_SECONDS: Final = 3
VIDEO_POLL_SECONDS: Final = 5

# Scripts and styles only from the page's own origin (the key lives in localStorage, so no inline
# or foreign script may run); results may come from any http(s) host (NANOGEN_PUBLIC_URL, a CDN).
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data: http: https:; media-src 'self' blob: http: https:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Revalidate (ETag) every time, so an upgraded server never runs with yesterday's modules.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class _PageFiles(StaticFiles):
    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(PAGE_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """The routes, then the files under them (a mount must come after the routes it would shadow)."""
    app.include_router(router)
    app.mount("/playground", _PageFiles(packages=[("nanogen", "playground")], html=True), name="playground")


@router.get("/")
@router.get("/playground")
async def to_playground() -> Response:
    # Relative, so the redirect stays right behind a proxy that serves nanogen under a path prefix.
    return RedirectResponse("playground/", status_code=307)


@router.get("/playground/catalogue.json")
async def catalogue(request: Request) -> Response:
    return FastJSONResponse(build_catalogue(services(request)), headers={"Cache-Control": "no-cache"})


def build_catalogue(svc: Services) -> dict[str, Any]:
    """Every option the contract offers, its price, and whether this server's engine takes it."""
    images, videos = svc.runtime.engines[Product.IMAGE], svc.runtime.engines[Product.VIDEO]
    return {
        "image": {
            "aspectRatios": [r.value for r in ImageAspectRatio],
            "qualities": [
                {
                    "value": q.value,
                    "credits": credits,
                    "available": images.unsupported(Product.IMAGE, quality=q.value) is None,
                }
                for q, credits in IMAGE_CREDITS.items()
            ],
            "maxInputImages": MAX_INPUT_IMAGES,
            "maxPromptChars": MAX_PROMPT_CHARS,
            "pollSeconds": IMAGE_POLL_SECONDS,
        },
        "video": {
            "aspectRatios": [r.value for r in VideoAspectRatio],
            "resolutions": [
                {
                    "value": r.value,
                    "credits": credits,
                    "singleShotOnly": r in SINGLE_SHOT_RESOLUTIONS,
                    "available": videos.unsupported(Product.VIDEO, resolution=r.value) is None,
                }
                for r, credits in SHOT_CREDITS.items()
            ],
            "generationTypes": [
                {
                    "value": t.value,
                    "minImages": SHOT_IMAGE_COUNT[t][0],
                    "maxImages": SHOT_IMAGE_COUNT[t][1],
                    "available": videos.unsupported(Product.VIDEO, generation_type=t.value) is None,
                }
                for t in GenerationType
            ],
            "maxShots": MAX_SHOTS,
            "shotSeconds": SHOT_SECONDS,
            "maxPromptChars": MAX_PROMPT_CHARS,
            "pollSeconds": VIDEO_POLL_SECONDS,
        },
    }
