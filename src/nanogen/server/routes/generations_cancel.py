"""``POST /api/generations/{generationId}/cancel`` (nanogen): stop a generation, or some shots of a video.

Each unfinished task targeted is failed with ``error: "Canceled"`` and refunded in one transaction of
its own (store.cancel: a conditional transition, so a task that completed meanwhile keeps its output
and its debit, and a refund happens at most once). Then the work stops: a job running in this process
is stopped at once (its engine's wait ends), any other task's DBOS workflow is canceled (a queued one
never starts: its start is conditional on the task being open too), and a job running in another
process is stopped by that process's watchdog within ``NANOGEN_WATCHDOG_INTERVAL_S``. A multi-shot video
with a canceled shot settles its concatenation as failed, like any failed shot.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors, metrics, schemas
from nanogen.db import conflict, read_connection, write_transaction
from nanogen.products import Product
from nanogen.server.deps import json_body, services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.responses import FastJSONResponse, without_none
from nanogen.server.routes._common import error_responses
from nanogen.server.routes.images import image_status
from nanogen.server.routes.videos import video_status
from nanogen.tasks import store
from nanogen.tasks.runtime import Runtime
from nanogen.webhooks import events as webhook_events

log = logging.getLogger(__name__)
# A cancel rolled back by the database to resolve a conflict runs again, this many tries in all.
CONFLICT_ATTEMPTS = 3

router = APIRouter(prefix="/api/generations", tags=["Generations"], route_class=DirectRoute)

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "generationId", "in": "path", "required": True, "schema": {"type": "string"}},
    ],
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": schemas.CancelRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            }
        },
    },
}


@router.post(
    "/{generationId}/cancel",
    summary="Cancel a generation, or some shots of a video (nanogen)",
    response_model=schemas.CancelResponse,
    responses={
        **error_responses(400, 401, 404, 429, 503),
        409: {"model": schemas.ErrorResponse, "description": "ALREADY_ENDED"},
    },
    openapi_extra=_OPENAPI,
)
async def cancel(request: Request) -> Response:
    # The polling budget, not the generate one: a client that spent its submissions can still cancel.
    who, _ = await status_caller(request)
    svc = services(request)
    body = schemas.validate(schemas.CancelRequest, await _optional_body(request))
    generation_id = str(request.path_params["generationId"])
    answer = await run_in_threadpool(_cancel, svc.runtime, who.account_id, generation_id, body.shotIds)
    return FastJSONResponse(answer)


async def _optional_body(request: Request) -> dict[str, Any]:
    """The body may be absent (cancel everything) or a JSON object."""
    declared = request.headers.get("content-length")
    if declared == "0" or (declared is None and "transfer-encoding" not in request.headers):
        return {}
    return await json_body(request)


def _cancel(rt: Runtime, account_id: str, generation_id: str, shot_ids: list[str] | None) -> dict[str, Any]:
    with read_connection(rt.db) as conn:
        tasks = store.generation_tasks(conn, generation_id)
    if not tasks or any(t.account_id != account_id for t in tasks):
        raise errors.NotFound(f"Generation not found or not owned by user: {generation_id}")
    targets = tasks
    if shot_ids is not None:
        if tasks[0].product is not Product.VIDEO:
            raise errors.InvalidParameter("shotIds: only a video has shots", field="shotIds")
        unknown = sorted(set(shot_ids) - {t.shot_id for t in tasks if t.shot_id is not None})
        if unknown:
            raise errors.InvalidParameter(
                f"shotIds: no such shot in this generation: {', '.join(unknown)}", field="shotIds"
            )
        wanted = set(shot_ids)
        targets = [t for t in tasks if t.shot_id in wanted]
    canceled: list[store.TaskRecord] = []
    for task in targets:
        if task.status.is_terminal:
            continue
        before = _cancel_task(rt, generation_id, task.id)
        if before is not None:
            canceled.append(before)
            metrics.task_failed(before, "canceled")
    if not canceled:
        raise errors.AlreadyEnded(f"Generation {generation_id} has already ended: nothing left to cancel")
    for task in canceled:
        # The money is settled; now the work stops. A job running here stops at once; one in another
        # process is stopped by that process's watchdog. Either way its workflow then ends by itself,
        # as a queued one does when it is dequeued (its steps are conditional no-ops on an ended task).
        # Its DBOS workflow is not canceled: a workflow canceled while it runs (dequeued, its job not
        # yet started) makes DBOS log the cancellation as an error with a traceback.
        rt.running.stop(task.id)
    log.info("generation %s: %d task(s) canceled", generation_id, len(canceled))
    return _answer(rt, generation_id, canceled)


def _cancel_task(rt: Runtime, generation_id: str, task_id: str) -> store.TaskRecord | None:
    """One task's cancel and refund, in a transaction of its own: the task as it was, or None if it
    had ended. Run again when PostgreSQL rolled it back to resolve a conflict (a deadlock with the
    jobs' ends committing at that moment), rather than answering 503 for a race the client cannot see."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            with write_transaction(rt.db) as conn:
                before = store.cancel(conn, task_id)
                if before is not None:
                    webhook_events.generation_ended(rt, conn, generation_id)
                return before
        except sa.exc.DBAPIError as exc:
            if not conflict(exc) or attempt == CONFLICT_ATTEMPTS:
                raise
            log.warning("cancel of task %s rolled back by a conflict (%s); again", task_id, exc.orig)
    raise AssertionError("unreachable")


def _answer(rt: Runtime, generation_id: str, canceled: list[store.TaskRecord]) -> dict[str, Any]:
    with read_connection(rt.db) as conn:
        tasks = store.generation_tasks(conn, generation_id)
        generation = store.get_generation(conn, generation_id)
    product = tasks[0].product
    done: dict[str, Any] = {
        "generationId": generation_id,
        "product": product.value,
        "creditsRefunded": sum(t.credits for t in canceled),
        "canceledTaskIds": [t.id for t in canceled],
    }
    if product is Product.IMAGE:
        return done | {"status": image_status(tasks[0])["status"]}
    state = video_status(tasks, generation)
    return done | {"status": state["status"], "shots": without_none(state)["shots"]}
