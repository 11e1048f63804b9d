"""History (nanogen additions): ``GET /api/generations``, ``GET /api/generations/{id}`` and
``DELETE /api/generations/{id}`` (the generation's files; the record and the credits stay).

Reads count against the key's polling budget, as check-status does. Another account's generation
is answered as an unknown one (404), never 403: ids are not to be confirmed to whoever guesses them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors, schemas
from nanogen.db import read_connection, write_transaction
from nanogen.products import Product
from nanogen.server.deps import services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import error_responses
from nanogen.server.services import Services
from nanogen.tasks import history, retention, store

router = APIRouter(prefix="/api", tags=["History"], route_class=DirectRoute)


def iso(ts: float | None) -> str | None:
    """ISO 8601 in UTC, as the uploads' ``expiresAt``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return history.DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= history.MAX_LIMIT:
        message = f"limit must be an integer from 1 to {history.MAX_LIMIT}"
        raise errors.InvalidParameter(message, field="limit")
    return int(raw)


def _summary(g: history.Generation) -> dict[str, Any]:
    return {
        "generationId": g.id,
        "product": g.product.value,
        "status": g.status,
        "prompt": g.prompt,
        "credits": g.credits,
        "taskCount": g.task_count,
        "createdAt": iso(g.created_at),
        "filesDeletedAt": iso(g.files_expired_at),
    }


def _task(t: store.TaskRecord) -> dict[str, Any]:
    return {
        "taskId": t.id,
        "shotId": t.shot_id,
        "position": t.position,
        "status": history.task_status(t.status.value, t.error),
        "progress": t.progress,
        "credits": t.credits,
        "outputUrl": t.output_url,
        "error": t.error,
        "createdAt": iso(t.created_at),
        "startedAt": iso(t.started_at),
        "finishedAt": iso(t.finished_at),
    }


def _page(
    svc: Services, account_id: str, limit: int, product: Product | None, statuses: list[str], after: Any
) -> dict[str, Any]:
    with read_connection(svc.runtime.db) as conn:
        found, next_key = history.list_generations(
            conn, account_id, limit=limit, product=product, statuses=statuses, after=after
        )
    return {
        "data": [_summary(g) for g in found],
        "nextCursor": None if next_key is None else history.encode_cursor(*next_key),
    }


def _statuses(raw: str | None) -> list[str]:
    if raw is None:
        return []
    wanted: list[str] = []
    for value in raw.split(","):
        value = value.strip()
        if value == history.PROCESSING:
            wanted += ["pending", "generating"]
        elif value in history.STATUSES:
            wanted.append(value)
        else:
            allowed = ", ".join((*history.STATUSES, history.PROCESSING))
            raise errors.InvalidParameter(f"status must be one of {allowed}", field="status")
    return wanted


@router.get(
    "/generations",
    summary="The account's generations, newest first (nanogen)",
    response_model=schemas.HistoryPage,
    responses=error_responses(400, 401, 429, 503),
)
async def list_generations(request: Request) -> Response:
    who, _ = await status_caller(request)
    query = request.query_params
    limit = limit_param(request)
    product = query.get("product")
    if product is not None and product not in ("image", "video"):
        raise errors.InvalidParameter("product must be image or video", field="product")
    statuses = _statuses(query.get("status"))
    after = None
    if (cursor := query.get("cursor")) is not None:
        after = history.generation_cursor(cursor)
        if after is None:
            raise errors.InvalidParameter("cursor is not one this server gave", field="cursor")
    body = await run_in_threadpool(
        _page,
        services(request),
        who.account_id,
        limit,
        None if product is None else Product(product),
        statuses,
        after,
    )
    return FastJSONResponse(body)


def _detail(svc: Services, account_id: str, generation_id: str) -> dict[str, Any] | None:
    with read_connection(svc.runtime.db) as conn:
        found = history.get_generation(conn, account_id, generation_id)
        if found is None:
            return None
        tasks = store.generation_tasks(conn, generation_id)
        refunded = history.credits_refunded(conn, generation_id)
    return _summary(found) | {
        "params": found.params,
        "creditsRefunded": refunded,
        "concatenatedVideoUrl": found.concat_url,
        "tasks": [_task(t) for t in tasks],
    }


@router.get(
    "/generations/{generationId}",
    summary="One of the account's generations, with its tasks (nanogen)",
    response_model=schemas.HistoryGenerationDetail,
    responses=error_responses(401, 404, 429, 503),
)
async def get_generation(request: Request) -> Response:
    who, _ = await status_caller(request)
    generation_id = str(request.path_params["generationId"])
    body = await run_in_threadpool(_detail, services(request), who.account_id, generation_id)
    if body is None:
        raise errors.NotFound()
    return FastJSONResponse(body)


def _delete_files(svc: Services, account_id: str, generation_id: str) -> dict[str, Any] | None:
    """Delete the generation's files as retention does: the objects first, then the mark and the
    tombstones in one transaction (a crash between leaves it unmarked; deleting again is harmless)."""
    db = svc.runtime.db
    with read_connection(db) as conn:
        found = history.get_generation(conn, account_id, generation_id)
        if found is None:
            return None
        if found.status in ("pending", "generating"):
            raise errors.GenerationRunning()
        keys = [] if found.files_expired_at is not None else history.file_keys(conn, generation_id)
    if found.files_expired_at is None:
        svc.runtime.storage.delete_many(keys)
        with write_transaction(db) as conn:
            retention.mark_expired(conn, generation_id, keys, time.time())
    return _detail(svc, account_id, generation_id)


@router.delete(
    "/generations/{generationId}",
    summary="Delete a generation's files; the record and the credits stay (nanogen)",
    response_model=schemas.HistoryGenerationDetail,
    responses=error_responses(401, 404, 429, 503)
    | {409: {"model": schemas.ErrorResponse, "description": "GENERATION_RUNNING: it has not ended yet"}},
)
async def delete_generation(request: Request) -> Response:
    who, _ = await status_caller(request)
    generation_id = str(request.path_params["generationId"])
    body = await run_in_threadpool(_delete_files, services(request), who.account_id, generation_id)
    if body is None:
        raise errors.NotFound()
    return FastJSONResponse(body)
