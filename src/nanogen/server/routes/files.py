"""Outputs, served at unguessable URLs with their content type and HTTP Range (video players seek)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response

from nanogen import errors
from nanogen.server.deps import services
from nanogen.server.inputs import upload_expired
from nanogen.storage import content_type_for

router = APIRouter(tags=["Files"])


@router.get(
    "/files/{key:path}", summary="Download a generated file", responses={404: {"description": "NOT_FOUND"}}
)
async def download(key: str, request: Request) -> Response:
    path = services(request).runtime.storage.local_path(key)
    if path is None or upload_expired(key):
        raise errors.NotFound("File not found")
    return FileResponse(
        path,
        media_type=content_type_for(key),
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )
