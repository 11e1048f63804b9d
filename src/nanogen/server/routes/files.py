"""Outputs, served at unguessable URLs with their content type and HTTP Range (video players seek).

What the storage backend says decides the answer: a local file (FileResponse serves the ranges),
bytes streamed from the bucket (its 200/206 and Content-Range passed on), or a 307 to a presigned
URL. A file that retention deleted answers 410 GONE; one that never existed, 404 NOT_FOUND. ``HEAD``
answers the same headers without the bytes. A ``Range`` header that is not a valid byte range set (or
of another unit) is ignored: 200 and the whole file (RFC 9110 14.2); a valid one that selects nothing
of the file is 416 RANGE_NOT_SATISFIABLE.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO

import anyio
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

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
from nanogen.storage.base import parse_range, range_header, satisfiable
from nanogen.tasks.retention import is_expired

router = APIRouter(tags=["Files"])


def _expired(svc: Services, key: str) -> bool:
    with read_connection(svc.runtime.db) as conn:
        return is_expired(conn, key)


class _File(FileResponse):
    """A FileResponse of a file opened before its headers were sent: retention may delete the file
    meanwhile, and the open file is still read whole (rather than a 200 whose body never comes).
    It sees ``byte_range`` as the request's Range header (None: no header), so that it serves
    exactly the ranges checked here (its own parser answers 400 to what RFC 9110 says to ignore)."""

    def __init__(self, file: BinaryIO, key: str, byte_range: str | None, stat: os.stat_result) -> None:
        headers = {"Cache-Control": CACHE_CONTROL}
        super().__init__(file.name, headers=headers, media_type=content_type_for(key), stat_result=stat)
        self.byte_range = byte_range
        self._file = file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        if self.byte_range is not None:
            headers.append((b"range", self.byte_range.encode()))
        try:
            await super().__call__({**scope, "headers": headers}, receive, send)
        finally:
            self._file.close()

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        yield anyio.wrap_file(self._file)  # closed by __call__ once the response is sent


def _local(path: os.PathLike[str], key: str, header: str | None) -> Response:
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the response once it is sent
    except FileNotFoundError:
        raise FileMissing(key) from None
    try:
        stat = os.fstat(file.fileno())
        ranges = parse_range(header)
        selected = satisfiable(ranges, stat.st_size) if ranges is not None else None
        if selected == []:
            raise errors.RangeNotSatisfiable(stat.st_size)
        return _File(file, key, range_header(selected) if selected else None, stat)
    except BaseException:
        file.close()
        raise


@router.get(
    "/files/{key:path}",
    summary="Download a generated file",
    responses={
        206: {"description": "Partial content (HTTP Range)"},
        307: {"description": "Redirect to a presigned URL (NANOGEN_S3_URLS=presigned)"},
        404: {"description": "NOT_FOUND"},
        410: {"description": "GONE: deleted by the retention setting"},
        416: {"description": "RANGE_NOT_SATISFIABLE: a valid Range that selects nothing of the file"},
    },
)
async def download(key: str, request: Request) -> Response:
    if upload_expired(key):  # an upload past its expiry is gone for good (docs/api.md)
        raise errors.NotFound("File not found")
    svc = services(request)
    byte_range = request.headers.get("range")
    try:
        found = await run_in_threadpool(svc.runtime.storage.open, key, byte_range)
        if isinstance(found, LocalFile):
            return await run_in_threadpool(_local, found.path, key, byte_range)
    except FileMissing:
        if is_valid_key(key) and await run_in_threadpool(_expired, svc, key):
            raise errors.Gone() from None
        raise errors.NotFound("File not found") from None
    except RangeNotSatisfiable as exc:
        raise errors.RangeNotSatisfiable(exc.size) from None
    if isinstance(found, Redirect):
        return RedirectResponse(found.url, status_code=307, headers={"Cache-Control": "no-store"})
    assert isinstance(found, Stream)
    if request.method == "HEAD":  # the headers the bucket answered, without its bytes
        found.close()
        return Response(status_code=found.status, headers=found.headers)
    return StreamingResponse(found.chunks, status_code=found.status, headers=found.headers)


# HEAD: the same answer without the body (FileResponse and uvicorn leave it out); not in the schema,
# where it would repeat GET's operation.
router.add_api_route("/files/{key:path}", download, methods=["HEAD"], include_in_schema=False)
