"""``POST /api/uploads`` (nanogen): a local file becomes a URL the generate endpoints accept.

The body is the raw image (no multipart). It is size-capped while it streams in, decoded with
Pillow to prove it is an image, and stored under a key that carries its expiry. When the URL comes
back in ``inputImageUrls`` / ``imageUrls`` the server reads it from storage (server/inputs.py).
Uploads cost no credits; they count against their own per-key budget.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors
from nanogen.media.images import ImageInfo, probe_image_async
from nanogen.schemas import UploadResponse
from nanogen.server.deps import services, upload_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.inputs import EXTENSIONS, files_url, upload_key
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import error_responses
from nanogen.server.services import Services

router = APIRouter(prefix="/api", tags=["Uploads"], route_class=DirectRoute)

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "The raw image bytes (not multipart).",
        "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in EXTENSIONS},
    }
}


async def _read_body(request: Request, cap: int) -> bytes:
    too_large = errors.UploadTooLarge(f"Upload larger than {cap} bytes", maxBytes=cap)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_large
    return bytes(body)


async def _probe(data: bytes, max_pixels: int) -> ImageInfo:
    try:
        return await probe_image_async(data, max_pixels)
    except ValueError as exc:
        raise errors.InvalidImage(f"Not a usable image: {exc}") from None


def _store(svc: Services, data: bytes, info: ImageInfo) -> tuple[str, int]:
    expires_at = int(time.time() + svc.settings.upload_ttl_s)
    key = upload_key(expires_at, info.mime_type)
    svc.runtime.storage.put_bytes(key, data)
    return key, expires_at


@router.post(
    "/uploads",
    status_code=201,
    summary="Upload an image to use as an input (nanogen)",
    response_model=UploadResponse,
    responses={
        **error_responses(400, 401, 429, 503),
        413: {"description": "REQUEST_TOO_LARGE: over NANOGEN_UPLOAD_MAX_BYTES"},
        415: {"description": "UNSUPPORTED_MEDIA_TYPE: Content-Type is not image/png, jpeg, webp or gif"},
    },
    openapi_extra=_BODY_DOC,
)
async def upload(request: Request) -> Response:
    await upload_caller(request)
    svc = services(request)
    declared = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if declared not in EXTENSIONS:
        raise errors.UnsupportedMediaType(
            f"Content-Type {declared or '(none)'!r} is not one of {', '.join(EXTENSIONS)}"
        )
    data = await _read_body(request, svc.settings.upload_max_bytes)
    info = await _probe(data, svc.settings.fetch_max_pixels)
    key, expires_at = await run_in_threadpool(_store, svc, data, info)
    body = UploadResponse(
        url=files_url(svc, key),
        expiresAt=datetime.fromtimestamp(expires_at, UTC),
        contentType=info.mime_type,
        width=info.width,
        height=info.height,
        bytes=len(data),
    )
    return FastJSONResponse(body.model_dump(mode="json"), status_code=201)
