"""The Gemini-compatible API under ``/v1beta`` (docs/api.md, "Gemini-compatible API (/v1beta)").

A thin translation (dialects/gemini.py maps the wire format): the same keys, rate budgets, catalogue
prices, submit path and tasks as the native routes. ``generateContent`` submits an image task and holds
the request until it ends; ``predictLongRunning`` submits a one-shot video and answers its operation,
polled with ``GET /v1beta/models/{model}/operations/{id}``. Inline images are proven and stored the way
uploads are before any credit moves. Keys come in ``x-goog-api-key`` or ``?key=``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import b64, errors, ledger, schemas
from nanogen.dialects import gemini as dialect
from nanogen.dialects.gemini import GoogleError
from nanogen.engines.base import InputImage
from nanogen.ledger import new_id
from nanogen.media.images import probe_image_async
from nanogen.products import (
    SHOT_IMAGE_COUNT,
    Product,
    VideoAspectRatio,
    image_price,
    image_size,
    video_price,
    video_size,
)
from nanogen.ratelimit import Budget
from nanogen.server.deps import services
from nanogen.server.errors import response_for
from nanogen.server.inputs import EXTENSIONS, discard_inputs, fetch_inputs
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import check_engine, image_task_when_ended, precheck_balance, submit
from nanogen.server.services import Services
from nanogen.storage import new_key
from nanogen.tasks import store
from nanogen.tasks.jobs import stored_input
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.submit import NewTask, Submission

# Documented in docs/api.md, not in /openapi.json: its operations answer nanogen's own error envelope.
router = APIRouter(prefix="/v1beta", tags=["Gemini-compatible"], include_in_schema=False)

# How long generateContent waits past its task's deadline for the watchdog to end it (the watchdog
# fails a late task within its interval); then 504 DEADLINE_EXCEEDED (the task goes on).

Endpoint = Callable[[Request], Awaitable[Response]]


def _render(exc: GoogleError) -> Response:
    return FastJSONResponse(exc.body(), status_code=exc.code, headers=exc.headers or None)


def google_errors(endpoint: Endpoint) -> Endpoint:
    """Every error of a /v1beta route in Google's shape: nanogen's errors translated, anything else
    mapped (and logged) as the app's handlers do, then said Google's way."""

    @wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GoogleError as exc:
            return _render(exc)
        except errors.APIError as exc:
            return _render(dialect.from_api_error(exc))
        except Exception as exc:
            native = response_for(exc, request.scope)
            try:
                message = str(orjson.loads(bytes(native.body)).get("error") or "Internal error")
            except (orjson.JSONDecodeError, AttributeError):
                message = "Internal error"
            retry = native.headers.get("retry-after")
            return _render(
                GoogleError(native.status_code, message, headers={"Retry-After": retry} if retry else None)
            )

    return run


# -- who is calling --------------------------------------------------------------------------------------
async def _caller(request: Request, budget: Callable[[Services], Budget]) -> ledger.Caller:
    """The nanogen key in ``x-goog-api-key`` or ``?key=``: none 403 PERMISSION_DENIED, an unknown or
    revoked one 400 INVALID_ARGUMENT (API_KEY_INVALID), as Google answers; then the rate budget."""
    svc = services(request)
    key = (request.headers.get("x-goog-api-key") or request.query_params.get("key") or "").strip()
    if not key:
        raise GoogleError(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    statement, params = ledger.authentication(ledger.hash_key(key))
    caller = ledger.caller(await svc.reads.rows(statement, params))
    if caller is None:
        raise GoogleError(
            400,
            "API key not valid. Please pass a valid API key.",
            [dialect.error_info("API_KEY_INVALID", domain="googleapis.com")],
        )
    await svc.limiter.count(budget(svc), caller.key_id)
    return caller


def _body_cap(svc: Services) -> int:
    """A native body's cap plus one upload's worth of base64 (inline images travel in the body)."""
    return svc.settings.max_body_bytes + svc.settings.upload_max_bytes * 4 // 3 + 4


async def _json_body(request: Request) -> dict[str, Any]:
    cap = _body_cap(services(request))
    too_large = dialect.invalid(f"Request payload size exceeds the limit: {cap} bytes.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_large
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise dialect.invalid("Invalid JSON payload received.") from None
    if not isinstance(data, dict):
        raise dialect.invalid("Invalid JSON payload received. The body must be a JSON object.")
    return data


# -- inputs: proven and stored like uploads, before any debit ----------------------------------------------
async def _store_inputs(
    svc: Services, inputs: list[dialect.Inline | str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The stored-input records in the request's order, and every record by source (for cleanup).
    ``fileData`` URIs are fetched as ``inputImageUrls`` are; inline images are proven images (bounded
    decoding) and stored."""
    urls = [item for item in inputs if isinstance(item, str)]
    stored = await fetch_inputs(svc, urls)
    try:
        records: list[dict[str, Any]] = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                records.append(stored[item])
                continue
            try:
                info = await probe_image_async(item.data, svc.settings.fetch_max_pixels)
            except ValueError as exc:
                raise dialect.invalid(f"Invalid value at '{item.where}': not a usable image: {exc}") from None
            image = InputImage(
                item.data, info.mime_type, info.width, info.height, source_url=f"inline:{index}"
            )
            key = new_key("in", f"input.{EXTENSIONS.get(info.mime_type, 'bin')}")
            await run_in_threadpool(svc.runtime.storage.put_bytes, key, item.data)
            stored[image.source_url] = records_item = stored_input(key, image)
            records.append(records_item)
    except BaseException:
        await discard_inputs(svc, stored)
        raise
    return records, stored


# -- generateContent --------------------------------------------------------------------------------------
def _model(request: Request, models: tuple[str, ...], method: str) -> str:
    model = str(request.path_params.get("model", ""))
    if model not in models:
        raise GoogleError(
            404,
            f"models/{model} is not found for API version v1beta, or is not supported for {method}. "
            f"nanogen serves {', '.join(models)}.",
        )
    return model


@router.post("/models/{model}:generateContent")
@google_errors
async def generate_content(request: Request) -> Response:
    who = await _caller(request, lambda svc: svc.limiter.generate)
    model = _model(request, dialect.IMAGE_MODELS, "generateContent")
    svc = services(request)
    ask = dialect.parse_generate_content(await _json_body(request))
    body = schemas.parse_image_request(ask.native)  # the native checks (prompt, length, NUL)
    check_engine(
        svc, Product.IMAGE, quality=body.imageQuality.value, mode="edit" if ask.inputs else "generate"
    )
    price = image_price(body.imageQuality)
    if ask.inputs:
        await precheck_balance(svc, who.account_id, price.total)
    records, stored = await _store_inputs(svc, ask.inputs)
    width, height = image_size(body.aspectRatio, body.imageQuality)
    generation_id, task_id = new_id("gen"), new_id("task")
    params = {
        "prompt": body.prompt,
        "mode": "edit" if records else "generate",
        "aspectRatio": body.aspectRatio.value,
        "imageQuality": body.imageQuality.value,
        "googleSearch": body.googleSearch,
        "width": width,
        "height": height,
        "inputs": records,
    }
    submission = Submission(
        account_id=who.account_id,
        generation_id=generation_id,
        product=Product.IMAGE,
        engine=svc.runtime.engine_names[Product.IMAGE],
        queue=svc.runtime.queue_for(Product.IMAGE),
        params={k: v for k, v in params.items() if k != "inputs"}
        | {"inputImageUrls": [r["url"] for r in records], "dialect": "gemini", "model": model},
        tasks=(NewTask(task_id, 0, price.total, params),),
        deadline_s=svc.settings.image_deadline_s,
    )
    await submit(svc, submission, stored)
    task = await _wait(svc, generation_id)
    if task.status is not TaskStatus.COMPLETED or task.output_key is None:
        return FastJSONResponse(
            dialect.unmade_response(task.error or "Generation failed", model, generation_id)
        )
    data = await run_in_threadpool(svc.runtime.storage.read_bytes, task.output_key)
    png_b64 = b64.encode(data)
    return FastJSONResponse(dialect.content_response(png_b64, model, body.imageQuality, generation_id))


async def _wait(svc: Services, generation_id: str) -> store.TaskRecord:
    """The image task once it ended: completed or failed (refunded) by its deadline at the latest."""
    task = await image_task_when_ended(svc, generation_id)
    if task is None:
        raise GoogleError(
            504, "The image did not finish in time; its task goes on (credits refunded if it fails)."
        )
    return task


# -- Veo: predictLongRunning and its operation -------------------------------------------------------------
@router.post("/models/{model}:predictLongRunning")
@google_errors
async def predict_long_running(request: Request) -> Response:
    who = await _caller(request, lambda svc: svc.limiter.generate)
    model = _model(request, dialect.VIDEO_MODELS, "predictLongRunning")
    svc = services(request)
    ask = dialect.parse_predict(await _json_body(request))
    shot = schemas.validate(schemas.Shot, ask.shot, prefix="instances[0].")
    low, high = SHOT_IMAGE_COUNT[shot.generationType]
    if not low <= len(ask.images) <= high:
        raise dialect.invalid(f"{shot.generationType.value} takes {low}-{high} images; got {len(ask.images)}")
    resolution = ask.resolution
    check_engine(svc, Product.VIDEO, resolution=resolution.value, generation_type=shot.generationType.value)
    price = video_price(resolution, 1)
    if ask.images:
        await precheck_balance(svc, who.account_id, price.total)
    records, stored = await _store_inputs(svc, list(ask.images))
    width, height = video_size(VideoAspectRatio(shot.aspectRatio), resolution)
    generation_id, task_id = new_id("gen"), new_id("task")
    params = {
        "prompt": shot.prompt,
        "generationType": shot.generationType.value,
        "aspectRatio": shot.aspectRatio.value,
        "resolution": resolution.value,
        "width": width,
        "height": height,
        "inputs": records,
    }
    submission = Submission(
        account_id=who.account_id,
        generation_id=generation_id,
        product=Product.VIDEO,
        engine=svc.runtime.engine_names[Product.VIDEO],
        queue=svc.runtime.queue_for(Product.VIDEO),
        params={
            "resolution": resolution.value,
            "shots": [shot.model_dump(mode="json") | {"imageUrls": [r["url"] for r in records]}],
            "dialect": "gemini",
            "model": model,
        },
        tasks=(NewTask(task_id, 0, price.per_unit, params, shot_id=shot.id),),
        deadline_s=svc.settings.video_deadline_s,
    )
    await submit(svc, submission, stored)
    return FastJSONResponse({"name": dialect.operation_name(model, generation_id)})


@router.get("/models/{model}/operations/{operation}")
@google_errors
async def get_operation(request: Request) -> Response:
    who = await _caller(request, lambda svc: svc.limiter.status)
    svc = services(request)
    model, generation_id = str(request.path_params["model"]), str(request.path_params["operation"])
    name = dialect.operation_name(model, generation_id)
    tasks = (
        await store.read_generation_tasks(svc.reads, generation_id)
        if generation_id.startswith("gen_")
        else []
    )
    if len(tasks) != 1 or tasks[0].account_id != who.account_id or tasks[0].product is not Product.VIDEO:
        raise GoogleError(404, f"Operation {name} not found.")
    task = tasks[0]
    completed = task.status is TaskStatus.COMPLETED
    return FastJSONResponse(
        dialect.operation_state(
            name, task.status.is_terminal, task.output_url if completed else None, task.error
        )
    )


@router.get("/models/{model}")
@google_errors
async def get_model(request: Request) -> Response:
    """The model's description (``nanogen doctor`` and the SDK's ``models.get`` ask for it)."""
    await _caller(request, lambda svc: svc.limiter.status)
    model = str(request.path_params.get("model", ""))
    if model in dialect.IMAGE_MODELS:
        methods = ["generateContent"]
    elif model in dialect.VIDEO_MODELS:
        methods = ["predictLongRunning"]
    else:
        raise GoogleError(404, f"models/{model} is not found for API version v1beta.")
    return FastJSONResponse(
        {
            "name": f"models/{model}",
            "displayName": f"{model} (nanogen)",
            "supportedGenerationMethods": methods,
        }
    )


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@google_errors
async def not_found(request: Request) -> Response:
    raise GoogleError(404, f"Method not found: {request.method} {request.url.path}")
