"""Outputs, served at unguessable URLs with their content type and HTTP Range (video players seek).

What the storage backend says decides the answer: a local file (FileResponse handles Range), bytes
streamed from the bucket (its 200/206 and Content-Range passed on), or a 307 to a presigned URL.
A file that retention deleted answers 410 GONE; one that never existed, 404 NOT_FOUND.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from nanogen import errors
from nanogen.db import read_connection
from nanogen.server.deps import services
from nanogen.server.inputs import upload_expired
from nanogen.server.services import Services
from nanogen.storage import (
    CACHE_CONTROL,
    FileMissing,
    LocalFile,
    RangeNotSatisfiable,
    Redirect,
    Stream,
    content_type_for,
    is_valid_key,
)
from nanogen.tasks.retention import is_expired

router = APIRouter(tags=["Files"])


def _expired(svc: Services, key: str) -> bool:
    with read_connection(svc.runtime.db) as conn:
        return is_expired(conn, key)


@router.get(
    "/files/{key:path}",
    summary="Download a generated file",
    responses={
        206: {"description": "Partial content (HTTP Range)"},
        307: {"description": "Redirect to a presigned URL (NANOGEN_S3_URLS=presigned)"},
        404: {"description": "NOT_FOUND"},
        410: {"description": "GONE: deleted by the retention setting"},
        416: {"description": "Range not satisfiable"},
    },
)
async def download(key: str, request: Request) -> Response:
    if upload_expired(key):  # an upload past its expiry is gone for good (docs/api.md)
        raise errors.NotFound("File not found")
    svc = services(request)
    try:
        found = await run_in_threadpool(svc.runtime.storage.open, key, request.headers.get("range"))
    except FileMissing:
        if is_valid_key(key) and await run_in_threadpool(_expired, svc, key):
            raise errors.Gone() from None
        raise errors.NotFound("File not found") from None
    except RangeNotSatisfiable as exc:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})
    if isinstance(found, LocalFile):
        return FileResponse(
            found.path, media_type=content_type_for(key), headers={"Cache-Control": CACHE_CONTROL}
        )
    if isinstance(found, Redirect):
        return RedirectResponse(found.url, status_code=307, headers={"Cache-Control": "no-store"})
    assert isinstance(found, Stream)
    return StreamingResponse(found.chunks, status_code=found.status, headers=found.headers)
