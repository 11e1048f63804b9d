"""Nano Banana 2: ``POST /api/nano-banana-2/generate`` and ``/check-status``."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from starlette.responses import Response

from nanogen import errors, schemas
from nanogen.ledger import new_id
from nanogen.products import Product, image_price, image_size
from nanogen.server import idempotency, waiting
from nanogen.server.deps import generate_caller, json_body, services, status_body, status_rows
from nanogen.server.direct import DirectRoute
from nanogen.server.inputs import fetch_inputs
from nanogen.server.responses import FastJSONResponse, without_none
from nanogen.server.routes._common import body_schema, check_engine, error_responses, precheck_balance, submit
from nanogen.server.services import Services
from nanogen.tasks import store
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.submit import NewTask, Submission
from nanogen.webhooks.targets import checked_url

router = APIRouter(prefix="/api/nano-banana-2", tags=["Nano Banana 2"], route_class=DirectRoute)


@router.post(
    "/generate",
    summary="Create an image generation task",
    response_model=schemas.ImageGenerateResponse,
    responses=error_responses(400, 401, 402, 409, 422, 429, 500, 503),
    openapi_extra=body_schema(schemas.ImageGenerateRequest) | idempotency.openapi_extra(),
)
async def generate(request: Request) -> Response:
    who = await generate_caller(request)
    svc = services(request)
    key = idempotency.requested_key(request)
    data = await json_body(request)
    body = schemas.parse_image_request(data)
    generation_id, task_id = new_id("gen"), new_id("task")
    async with idempotency.claimed(svc, request, who.account_id, key, data, generation_id) as claim:
        if claim.replay is not None:
            return claim.replay
        return await _generate(svc, who.account_id, body, generation_id, task_id, key)


async def _generate(
    svc: Services,
    account_id: str,
    body: schemas.ImageGenerateRequest,
    generation_id: str,
    task_id: str,
    idempotency_key: str | None,
) -> Response:
    check_engine(svc, Product.IMAGE, quality=body.imageQuality.value, mode=body.effective_mode.value)
    webhook_url = await checked_url(svc.fetcher.policy, body.webhookUrl, "webhookUrl")  # before any debit
    price = image_price(body.imageQuality)
    if body.inputImageUrls:
        await precheck_balance(svc, account_id, price.total)
    stored = await fetch_inputs(svc, body.inputImageUrls)
    width, height = image_size(body.aspectRatio, body.imageQuality)
    params = {
        "prompt": body.prompt,
        "mode": body.effective_mode.value,
        "aspectRatio": body.aspectRatio.value,
        "imageQuality": body.imageQuality.value,
        "googleSearch": body.googleSearch,
        "width": width,
        "height": height,
        "inputs": [stored[url] for url in body.inputImageUrls],
    }
    response = {
        "success": True,
        "generationId": generation_id,
        "taskId": task_id,
        "status": "pending",
        "creditsUsed": price.total,
    }
    submission = Submission(
        account_id=account_id,
        generation_id=generation_id,
        product=Product.IMAGE,
        engine=svc.runtime.engine_names[Product.IMAGE],
        queue=svc.runtime.queue_for(Product.IMAGE),
        params={k: v for k, v in params.items() if k != "inputs"} | {"inputImageUrls": body.inputImageUrls},
        tasks=(NewTask(task_id, 0, price.total, params),),
        deadline_s=svc.settings.image_deadline_s,
        idempotency_key=idempotency_key,
        response=response,
        webhook_url=webhook_url,
    )
    await submit(svc, submission, stored)
    return FastJSONResponse(response)


@router.post(
    "/check-status",
    summary="Check task status and retrieve result",
    response_model=schemas.ImageStatusResponse,
    responses=error_responses(400, 401, 403, 404, 429, 503),
    openapi_extra=body_schema(schemas.ImageStatusRequest) | waiting.openapi_extra(),
)
async def check_status(request: Request) -> Response:
    # The key before the body (deps.status_body); the tasks read with the key checked again, one statement.
    key_hash, body = await status_body(request, schemas.parse_image_status_request)
    generation_id = body.generationId
    answer = await _status_answer(request, key_hash, generation_id)
    seconds = waiting.preferred_wait(request)
    if seconds is None:
        return FastJSONResponse(answer)
    # nanogen: Prefer: wait=N (server/waiting.py)
    return await waiting.respond(
        request,
        seconds,
        answer,
        (generation_id,),
        lambda snapshots: without_none(image_status(snapshots[generation_id].tasks[0])),
        partial(_status_answer, request, key_hash, generation_id),
    )


async def _status_answer(request: Request, key_hash: str, generation_id: str) -> dict[str, object]:
    poll = partial(store.poll_generation, generation_id=generation_id)
    who, rows = await status_rows(request, key_hash, poll)
    task = next((t for t in store.polled(rows) if t.product is Product.IMAGE), None)
    if task is None:
        raise errors.NotFound()
    if task.account_id != who.account_id:
        raise errors.Forbidden()
    return without_none(image_status(task))


def image_status(task: store.TaskRecord) -> dict[str, object]:
    failed = task.status is TaskStatus.FAILED
    return {
        "success": not failed,
        "status": task.status.value,
        "generationId": task.generation_id,
        "progress": task.progress,
        "imageUrl": task.output_url if task.status is TaskStatus.COMPLETED else None,
        "error": (task.error or "Generation failed") if failed else None,
    }
