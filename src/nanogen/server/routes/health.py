"""Liveness, readiness and Prometheus metrics.

``/readyz`` checks, at once and each within a few seconds, what a request may need: the database,
the shared rate-limit storage (Redis, when configured) and output storage. Any one down: 503 with the
JSON envelope and a ``checks`` map naming it, so a load balancer stops sending traffic here.
``/healthz`` and ``/readyz`` answer HEAD too. ``/metrics`` needs ``Authorization: Bearer
<NANOGEN_METRICS_TOKEN>`` and answers 404 while that setting is unset or blank.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

import sqlalchemy as sa
from dbos._schemas import SCHEMA_PLACEHOLDER
from dbos._schemas.system_database import SystemSchema
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors
from nanogen.metrics import set_queue_depths
from nanogen.server.deps import services
from nanogen.server.responses import FastJSONResponse
from nanogen.server.services import Services
from nanogen.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(tags=["Operations"])

CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", summary="The process is up")
async def healthz() -> Response:
    return FastJSONResponse({"status": "ok"})


router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)


def _database(svc: Services) -> str:
    try:
        with svc.runtime.db.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return "unreachable"
    return "ok"


def _redis(svc: Services) -> str:
    return "ok" if svc.limiter.ping() else "unreachable"


def _storage(svc: Services) -> str:
    try:
        svc.runtime.storage.ping()
    except errors.ServiceUnavailable as exc:
        return exc.message
    return "ok"


async def _check(probe: Callable[[Services], str], svc: Services) -> str:
    try:
        return await asyncio.wait_for(run_in_threadpool(probe, svc), CHECK_TIMEOUT_S)
    except TimeoutError:
        return "timed out"


@router.get(
    "/readyz",
    summary="Database, rate-limit storage and output storage are reachable",
    responses={503: {"description": "SERVICE_UNAVAILABLE, with `checks` naming what is down"}},
)
async def readyz(request: Request) -> Response:
    svc = services(request)
    probes = {"database": _database, "storage": _storage}
    if svc.limiter.shared:
        probes["redis"] = _redis
    results = await asyncio.gather(*(_check(probe, svc) for probe in probes.values()))
    checks = dict(zip(probes, results, strict=True))
    down = sorted(name for name, result in checks.items() if result != "ok")
    if down:
        raise errors.ServiceUnavailable(f"Not ready: {', '.join(down)} unavailable", checks=checks)
    return FastJSONResponse({"status": "ready", "checks": checks})


router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)


def metrics_token(settings: Settings) -> str | None:
    """The token /metrics takes; None (the endpoint is off) when unset, empty or blank."""
    token = settings.metrics_token.get_secret_value().strip() if settings.metrics_token else ""
    return token or None


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    token = metrics_token(services(request).settings)
    if token is None:
        raise errors.NotFound("Not found")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise errors.MetricsForbidden()
    svc = services(request)
    try:
        depths = await asyncio.wait_for(run_in_threadpool(queue_depths, svc), CHECK_TIMEOUT_S)
    except (TimeoutError, sa.exc.SQLAlchemyError) as exc:  # the rest is still worth scraping
        log.warning("queue depths not read: %s", type(exc).__name__)
    else:
        set_queue_depths(depths)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


_ENQUEUED = (
    sa.select(SystemSchema.workflow_status.c.queue_name, sa.func.count())
    .where(
        SystemSchema.workflow_status.c.status == "ENQUEUED",
        SystemSchema.workflow_status.c.queue_name.is_not(None),
    )
    .group_by(SystemSchema.workflow_status.c.queue_name)
)


def queue_depths(svc: Services) -> dict[str, int]:
    """Workflows waiting in each queue (DBOS's ENQUEUED rows: indexed by status), at scrape time."""
    rt = svc.runtime
    translate = {SCHEMA_PLACEHOLDER: rt.dbos_client._sys_db.schema}
    with rt.db.connect() as conn:
        rows = conn.execution_options(schema_translate_map=translate).execute(_ENQUEUED)
        return {str(name): int(count) for name, count in rows}
