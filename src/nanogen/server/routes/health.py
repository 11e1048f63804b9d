"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors
from nanogen.server.deps import services
from nanogen.server.responses import FastJSONResponse

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> Response:
    return FastJSONResponse({"status": "ok"})


def _database_ok(db: sa.Engine) -> bool:
    try:
        with db.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.SQLAlchemyError:
        return False


@router.get("/readyz", summary="The database is reachable")
async def readyz(request: Request) -> Response:
    if not await run_in_threadpool(_database_ok, services(request).runtime.db):
        raise errors.ServiceUnavailable("Database unreachable")
    return FastJSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
