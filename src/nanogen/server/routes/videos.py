"""Veo 3.1: ``POST /api/veo-3/generate`` and ``/check-status``.

Overall status of a check (documented in docs/api.md): ``processing`` while any shot runs (and, for a
multi-shot request whose shots all completed, until the concatenated video is ready); then
``completed`` when every shot completed, else ``failed`` (failed shots are refunded; completed shots
keep their ``videoUrl``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from nanogen import errors, ledger, schemas
from nanogen.ledger import new_id
from nanogen.products import Product, Resolution, VideoAspectRatio, video_price, video_size
from nanogen.server import idempotency, waiting
from nanogen.server.deps import generate_caller, json_body, services, status_body, status_rows
from nanogen.server.direct import DirectRoute
from nanogen.server.inputs import fetch_inputs
from nanogen.server.responses import FastJSONResponse, without_none
from nanogen.server.routes._common import body_schema, check_engine, error_responses, precheck_balance, submit
from nanogen.server.services import Services
from nanogen.server.watch import Snapshot
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.submit import NewTask, Submission
from nanogen.webhooks.targets import checked_url

router = APIRouter(prefix="/api/veo-3", tags=["Veo 3.1"], route_class=DirectRoute)


@router.post(
    "/generate",
    summary="Generate a video (1-21 shots of 8 s, concatenated automatically)",
    response_model=schemas.VideoGenerateResponse,
    responses=error_responses(400, 401, 402, 409, 422, 429, 500, 503),
    openapi_extra=body_schema(schemas.VideoGenerateRequest) | idempotency.openapi_extra(),
)
async def generate(request: Request) -> Response:
    who = await generate_caller(request)
    svc = services(request)
    key = idempotency.requested_key(request)
    data = await json_body(request)
    body = schemas.parse_video_request(data)
    generation_id = new_id("gen")
    async with idempotency.claimed(svc, request, who.account_id, key, data, generation_id) as claim:
        if claim.replay is not None:
            return claim.replay
        return await _generate(svc, who.account_id, body, generation_id, key)


async def _generate(
    svc: Services,
    account_id: str,
    body: schemas.VideoGenerateRequest,
    generation_id: str,
    idempotency_key: str | None,
) -> Response:
    resolution = body.parsed_resolution
    for shot in body.shots:
        check_engine(
            svc, Product.VIDEO, resolution=resolution.value, generation_type=shot.generationType.value
        )
    webhook_url = await checked_url(svc.fetcher.policy, body.webhookUrl, "webhookUrl")  # before any debit
    price = video_price(resolution, len(body.shots))
    urls = [url for shot in body.shots for url in shot.imageUrls]
    if urls:
        await precheck_balance(svc, account_id, price.total)
    stored = await fetch_inputs(svc, urls)
    tasks = tuple(
        NewTask(
            id=new_id("task"),
            position=index,
            credits=price.per_unit,
            shot_id=shot.id,
            params=_shot_params(shot, resolution.value, stored),
        )
        for index, shot in enumerate(body.shots)
    )
    response = {
        "status": "processing",
        "shots": [{"shotId": t.shot_id, "taskId": t.id, "status": "processing"} for t in tasks],
        "creditsUsed": price.total,
        "generationId": generation_id,
    }
    submission = Submission(
        account_id=account_id,
        generation_id=generation_id,
        product=Product.VIDEO,
        engine=svc.runtime.engine_names[Product.VIDEO],
        queue=svc.runtime.queue_for(Product.VIDEO),
        params={"resolution": resolution.value, "shots": [s.model_dump(mode="json") for s in body.shots]},
        tasks=tasks,
        deadline_s=svc.settings.video_deadline_s,
        concatenate=len(tasks) > 1,
        idempotency_key=idempotency_key,
        response=response,
        webhook_url=webhook_url,
    )
    await submit(svc, submission, stored)
    return FastJSONResponse(response)


def _shot_params(shot: schemas.Shot, resolution: str, stored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    width, height = video_size(VideoAspectRatio(shot.aspectRatio), Resolution(resolution))
    return {
        "prompt": shot.prompt,
        "generationType": shot.generationType.value,
        "aspectRatio": shot.aspectRatio.value,
        "resolution": resolution,
        "width": width,
        "height": height,
        "inputs": [stored[url] for url in shot.imageUrls],
    }


async def _generation_of(svc: Services, found: dict[str, store.TaskRecord]) -> store.GenerationRecord | None:
    generation_ids = {t.generation_id for t in found.values()}
    return await store.read_generation(svc.reads, generation_ids.pop()) if len(generation_ids) == 1 else None


@router.post(
    "/check-status",
    summary="Check task status",
    response_model=schemas.VideoStatusResponse,
    responses=error_responses(400, 401, 404, 429, 503),
    openapi_extra=body_schema(schemas.VideoStatusRequest) | waiting.openapi_extra(),
)
async def check_status(request: Request) -> Response:
    # The key before the body (deps.status_body); the tasks read with the key checked again, one statement.
    key_hash, body = await status_body(request, schemas.parse_video_status_request)
    answer, generation_ids = await _status_answer(request, key_hash, body)
    seconds = waiting.preferred_wait(request)
    if seconds is None:
        return FastJSONResponse(answer)

    async def current() -> dict[str, Any]:
        return (await _status_answer(request, key_hash, body))[0]

    # nanogen: Prefer: wait=N (server/waiting.py)
    return await waiting.respond(request, seconds, answer, generation_ids, partial(_rebuilt, body), current)


async def _status_answer(
    request: Request, key_hash: str, body: schemas.VideoStatusRequest
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The answer, and the generations of the tasks it is about."""
    svc = services(request)
    ids = [ref.taskId for ref in body.taskIds]
    unique = list(dict.fromkeys(ids))
    poll = partial(store.poll_tasks, task_ids=unique) if unique else None
    who, rows = await status_rows(request, key_hash, poll)
    if not body.taskIds and body.generationId:
        answer = await _status_of_generation(svc, who, body.generationId)
        return without_none(answer), (body.generationId,)
    found = {t.id: t for t in store.polled(rows)}
    generation = await _generation_of(svc, found)
    for ref in body.taskIds:
        task = found.get(ref.taskId)
        if task is None or task.account_id != who.account_id or task.product is not Product.VIDEO:
            raise errors.TaskNotFound(f"Task not found or not owned by user: {ref.taskId}")
    shots = [found[i] for i in ids]
    generation_ids = tuple(dict.fromkeys(t.generation_id for t in shots))
    return without_none(video_status(shots, generation)), generation_ids


def _rebuilt(body: schemas.VideoStatusRequest, snapshots: Mapping[str, Snapshot]) -> dict[str, Any]:
    """The answer of ``_status_answer`` from the watcher's snapshots of its generations."""
    if not body.taskIds and body.generationId:
        whole = snapshots[body.generationId]
        return without_none(video_status(whole.tasks, whole.generation))
    found = {t.id: t for snapshot in snapshots.values() for t in snapshot.tasks}
    generation = next(iter(snapshots.values())).generation if len(snapshots) == 1 else None
    return without_none(video_status([found[ref.taskId] for ref in body.taskIds], generation))


async def _status_of_generation(svc: Services, who: ledger.Caller, generation_id: str) -> dict[str, Any]:
    """nanogen: look a request up by the generationId its generate response carried (same answer)."""
    shots = await store.read_generation_tasks(svc.reads, generation_id)
    generation = await store.read_generation(svc.reads, generation_id)
    if not shots or any(t.account_id != who.account_id or t.product is not Product.VIDEO for t in shots):
        raise errors.TaskNotFound(f"Video generation not found or not owned by user: {generation_id}")
    return video_status(shots, generation)


def video_status(shots: list[store.TaskRecord], generation: store.GenerationRecord | None) -> dict[str, Any]:
    per_shot = [without_none(_shot_status(t)) for t in shots]
    whole = _whole_generation(shots, generation)
    concat_status = whole.concat_status if whole else None
    all_completed = all(t.status is TaskStatus.COMPLETED for t in shots)
    if any(not t.status.is_terminal for t in shots) or (all_completed and concat_status == "pending"):
        overall = "processing"
    else:
        overall = "completed" if all_completed else "failed"
    return {
        "status": overall,
        "shots": per_shot,
        "concatenatedVideoUrl": whole.concat_url if whole and concat_status == "completed" else None,
        "concatenationError": whole.concat_error if whole and concat_status == "failed" else None,
        "generationId": whole.id if whole else None,
    }


def _whole_generation(
    shots: list[store.TaskRecord], generation: store.GenerationRecord | None
) -> store.GenerationRecord | None:
    """The generation, when the request names exactly its shots (the concatenation belongs to them)."""
    if generation is None or any(t.generation_id != generation.id for t in shots):
        return None
    return generation if len({t.id for t in shots}) == generation.task_count else None


def _shot_status(task: store.TaskRecord) -> dict[str, Any]:
    completed = task.status is TaskStatus.COMPLETED
    return {
        "shotId": task.shot_id,
        "taskId": task.id,
        "status": task.status.video_status,
        "videoUrl": task.output_url if completed else None,
        "generationTime": task.generation_seconds,
        "error": (task.error or "Video generation failed") if task.status is TaskStatus.FAILED else None,
        "progress": task.progress,
        "resolution": task.params.get("resolution"),
    }
