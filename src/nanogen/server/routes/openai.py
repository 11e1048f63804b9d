"""The OpenAI-compatible dialect under ``/v1`` (docs/api.md, "OpenAI-compatible API (/v1)").

A thin translation: the same key, rate-limit budgets, catalogue prices, submit path and tasks as the
native routes (images.py, videos.py), so a generation made here shows in the native check-status and
the reverse. A /v1 video is a video generation and its ``id`` is the generationId; an image answers
with its generationId in the ``x-nanogen-generation-id`` header. Errors leave in OpenAI's shape
(dialects/openai.py rewrites the native envelope). Not in the OpenAPI schema: /openapi.json
documents the native API.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import av
import orjson
from fastapi import APIRouter, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.types import Message

from nanogen import b64, errors
from nanogen.db import read_connection, write_transaction
from nanogen.dialects import openai as dialect
from nanogen.engines.base import InputImage
from nanogen.ledger import new_id
from nanogen.media.images import probe_image_async
from nanogen.products import (
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    GenerationType,
    ImageMode,
    Product,
    image_price,
    image_size,
    video_price,
    video_size,
)
from nanogen.server.deps import generate_caller, json_body, services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.errors import response_for
from nanogen.server.inputs import EXTENSIONS, fetch_inputs
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import check_engine, image_task_when_ended, precheck_balance, submit
from nanogen.server.services import Services
from nanogen.storage import LocalFile, Redirect, Stream, new_key
from nanogen.tasks import store
from nanogen.tasks.jobs import stored_input
from nanogen.tasks.retention import mark_expired
from nanogen.tasks.status import TaskStatus
from nanogen.tasks.submit import NewTask, Submission

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], route_class=DirectRoute, include_in_schema=False)

GENERATION_HEADER = "x-nanogen-generation-id"
_FORM_SLACK = 1 << 20  # room for a form's text fields and part headers beside its files
_MAX_LIST = 100

Endpoint = Callable[[Request], Awaitable[Response]]


def _openai_errors(endpoint: Endpoint) -> Endpoint:
    """Every error the endpoint raises leaves in OpenAI's shape (the native mapping, then rewritten)."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return openai_error(response_for(exc, request.scope))

    return wrapped


def openai_error(native: Response) -> Response:
    body = orjson.loads(bytes(native.body))
    status, content, extra = dialect.error_response(native.status_code, body)
    keep = {k: v for k, v in native.headers.items() if k.lower() not in ("content-length", "content-type")}
    return FastJSONResponse(content, status_code=status, headers=keep | extra)


# -- request bodies ------------------------------------------------------------------------------------
def _text(data: FormData | dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise errors.InvalidParameter(f"{name} is required", field=name)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise errors.InvalidParameter(f"{name} must be a string", field=name)
    text = str(value)
    if "\x00" in text:
        raise errors.InvalidParameter(f"{name} must not contain NUL", field=name)
    return text


def _prompt(data: FormData | dict[str, Any]) -> str:
    prompt = (_text(data, "prompt", required=True) or "").strip()
    if not prompt:
        raise errors.InvalidParameter("prompt is required", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise errors.InvalidParameter(f"prompt is longer than {MAX_PROMPT_CHARS} characters", field="prompt")
    return prompt


def _model(data: FormData | dict[str, Any], expected: str) -> str:
    model = _text(data, "model") or expected
    if model != expected:
        raise errors.InvalidParameter(
            f"model {model[:60]!r} is not served here: use {expected!r}", field="model"
        )
    return model


def _capped(request: Request, cap: int) -> Request:
    """The request with its body refused past ``cap`` bytes while it streams in (413)."""
    too_large = errors.UploadTooLarge(f"Request body larger than {cap} bytes", maxBytes=cap)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > cap:
            raise too_large
        return message

    return Request(request.scope, receive)


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return kind in ("multipart/form-data", "application/x-www-form-urlencoded")


async def _form(request: Request, files: int) -> FormData:
    cap = services(request).settings.upload_max_bytes * files + _FORM_SLACK
    try:
        return await _capped(request, cap).form(max_files=files, max_fields=64)
    except errors.APIError:
        raise
    except Exception as exc:  # starlette's HTTPException(400) for a malformed form or too many parts
        raise errors.InvalidParameter(f"Not a usable multipart form: {getattr(exc, 'detail', exc)}") from None


async def _proven(svc: Services, files: Sequence[UploadFile], param: str) -> list[InputImage]:
    """Each uploaded file read (each at most NANOGEN_UPLOAD_MAX_BYTES) and proven an image on the
    decode threads, within the decode budget (as ``POST /api/uploads`` does)."""
    cap = svc.settings.upload_max_bytes
    images = []
    for index, upload in enumerate(files):
        data = await upload.read(cap + 1)
        if len(data) > cap:
            raise errors.UploadTooLarge(f"{param} file larger than {cap} bytes", maxBytes=cap)
        try:
            info = await probe_image_async(data, svc.settings.fetch_max_pixels)
        except ValueError as exc:
            raise errors.InvalidImage(f"{param}[{index}] is not a usable image: {exc}", field=param) from None
        images.append(InputImage(data, info.mime_type, info.width, info.height))
    return images


def _store_inputs(svc: Services, images: Sequence[InputImage]) -> dict[str, dict[str, Any]]:
    """Stored as fetch_inputs stores fetched images: ``in/...`` keys the task's worker reads."""
    stored = {}
    for index, image in enumerate(images):
        key = new_key("in", f"input.{EXTENSIONS.get(image.mime_type, 'bin')}")
        svc.runtime.storage.put_bytes(key, image.data)
        stored[f"upload:{index}"] = stored_input(key, image)
    return stored


# -- images ----------------------------------------------------------------------------------------------
@router.post("/images/generations")
@_openai_errors
async def images_generations(request: Request) -> Response:
    who = await generate_caller(request)
    return await _image(request, who.account_id, await json_body(request), [])


@router.post("/images/edits")
@_openai_errors
async def images_edits(request: Request) -> Response:
    who = await generate_caller(request)
    if not _is_form(request):
        raise errors.InvalidParameter("images/edits takes a multipart form with image parts", field="image")
    form = await _form(request, MAX_INPUT_IMAGES + 1)
    try:
        files = [f for name in ("image", "image[]") for f in form.getlist(name) if isinstance(f, UploadFile)]
        if not files:
            raise errors.InvalidParameter("image is required (1-14 image files)", field="image")
        if len(files) > MAX_INPUT_IMAGES:
            raise errors.InvalidParameter(f"At most {MAX_INPUT_IMAGES} images", field="image")
        if form.get("mask") is not None:
            raise errors.InvalidParameter("mask is not supported", field="mask")
        fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
        return await _image(request, who.account_id, fields, files)
    finally:
        await form.close()


async def _image(
    request: Request, account_id: str, data: dict[str, Any], files: Sequence[UploadFile]
) -> Response:
    svc = services(request)
    prompt = _prompt(data)
    model = _model(data, dialect.IMAGE_MODEL)
    n = _text(data, "n")
    if n is not None and n != "1":
        raise errors.InvalidParameter("n must be 1 (one image per request)", field="n")
    response_format = _text(data, "response_format") or "b64_json"
    if response_format not in dialect.RESPONSE_FORMATS:
        raise errors.InvalidParameter("response_format must be b64_json or url", field="response_format")
    if (_text(data, "output_format") or "png") != "png":
        raise errors.InvalidParameter("output_format must be png", field="output_format")
    aspect_ratio, quality = dialect.image_options(_text(data, "size"), _text(data, "quality"))
    check_engine(svc, Product.IMAGE, quality=quality.value, mode="edit" if files else "generate")
    price = image_price(quality)
    if files:
        await precheck_balance(svc, account_id, price.total)
    stored = await run_in_threadpool(_store_inputs, svc, await _proven(svc, files, "image"))
    width, height = image_size(aspect_ratio, quality)
    generation_id, task_id = new_id("gen"), new_id("task")
    mode = ImageMode.EDIT if files else ImageMode.GENERATE
    params = {
        "prompt": prompt,
        "mode": mode.value,
        "aspectRatio": aspect_ratio.value,
        "imageQuality": quality.value,
        "googleSearch": False,
        "width": width,
        "height": height,
        "inputs": list(stored.values()),
    }
    submission = Submission(
        account_id=account_id,
        generation_id=generation_id,
        product=Product.IMAGE,
        engine=svc.runtime.engine_names[Product.IMAGE],
        queue=svc.runtime.queue_for(Product.IMAGE),
        params={k: v for k, v in params.items() if k != "inputs"}
        | {"inputImageUrls": [], "dialect": "openai", "model": model},
        tasks=(NewTask(task_id, 0, price.total, params),),
        deadline_s=svc.settings.image_deadline_s,
    )
    await submit(svc, submission, stored)
    task = await _until_ended(request, svc, generation_id)
    headers = {GENERATION_HEADER: generation_id}
    if task.status is not TaskStatus.COMPLETED or not task.output_key:
        failed = errors.GenerationFailed(task.error or "Image generation failed")
        response = openai_error(response_for(failed))
        response.headers.update(headers | {"x-should-retry": "false"})  # refunded; a retry is a new charge
        return response
    if response_format == "url":
        item = {"url": task.output_url}
    else:
        data_bytes = await run_in_threadpool(svc.runtime.storage.read_bytes, task.output_key)
        item = {"b64_json": b64.encode(data_bytes)}
    body = {
        "created": int(task.created_at),
        "data": [item | {"revised_prompt": None}],
        "size": f"{width}x{height}",
        "quality": quality.value,
        "output_format": task.output_key.rpartition(".")[2].replace("jpg", "jpeg"),
        "background": "opaque",
    }
    return FastJSONResponse(body, headers=headers)


async def _until_ended(request: Request, svc: Services, generation_id: str) -> store.TaskRecord:
    """The image task once it has ended; bounded by its deadline (the watchdog fails it there)."""
    task = await image_task_when_ended(svc, generation_id)
    if task is None:
        raise errors.InternalError("The image did not finish within its deadline")
    return task


# -- videos ----------------------------------------------------------------------------------------------
@router.post("/videos")
@_openai_errors
async def videos_create(request: Request) -> Response:
    who = await generate_caller(request)
    if _is_form(request):
        form = await _form(request, 1)
        try:
            refs = [f for f in form.getlist("input_reference") if isinstance(f, UploadFile)]
            fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            return await _video(request, who.account_id, fields, refs, None)
        finally:
            await form.close()
    data = await json_body(request)
    reference = data.get("input_reference")
    url = reference.get("image_url") if isinstance(reference, dict) else None
    if reference is not None and not isinstance(url, str):
        raise errors.InvalidParameter(
            'input_reference in JSON must be {"image_url": "https://..."}', field="input_reference"
        )
    return await _video(request, who.account_id, data, [], url)


async def _video(
    request: Request, account_id: str, data: dict[str, Any], refs: Sequence[UploadFile], url: str | None
) -> Response:
    svc = services(request)
    prompt = _prompt(data)
    model = _model(data, dialect.VIDEO_MODEL)
    aspect_ratio, resolution = dialect.video_options(_text(data, "size"), _text(data, "seconds"))
    has_image = bool(refs) or url is not None
    kind = GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO if has_image else GenerationType.TEXT_2_VIDEO
    check_engine(svc, Product.VIDEO, resolution=resolution.value, generation_type=kind.value)
    price = video_price(resolution, 1)
    if has_image:
        await precheck_balance(svc, account_id, price.total)
    if url is not None:
        stored = await fetch_inputs(svc, [url])
    else:
        stored = await run_in_threadpool(_store_inputs, svc, await _proven(svc, refs, "input_reference"))
    width, height = video_size(aspect_ratio, resolution)
    generation_id = new_id("gen")
    shot = {"id": "shot-1", "prompt": prompt, "generationType": kind.value, "aspectRatio": aspect_ratio.value}
    task = NewTask(
        id=new_id("task"),
        position=0,
        credits=price.per_unit,
        shot_id="shot-1",
        params=shot
        | {"resolution": resolution.value, "width": width, "height": height, "inputs": list(stored.values())},
    )
    submission = Submission(
        account_id=account_id,
        generation_id=generation_id,
        product=Product.VIDEO,
        engine=svc.runtime.engine_names[Product.VIDEO],
        queue=svc.runtime.queue_for(Product.VIDEO),
        params={
            "resolution": resolution.value,
            "shots": [shot | {"imageUrls": [url] if url else []}],
            "dialect": "openai",
            "model": model,
        },
        tasks=(task,),
        deadline_s=svc.settings.video_deadline_s,
    )
    await submit(svc, submission, stored)
    found = await run_in_threadpool(_read_videos, svc, account_id, generation_id, None, 1, "desc")
    return FastJSONResponse(found[0][0])


def _read_videos(
    svc: Services, account_id: str, generation_id: str | None, after: str | None, limit: int, order: str
) -> list[tuple[dict[str, Any], list[store.TaskRecord], str | None]]:
    """The caller's video generations whose files are not deleted: one by id, or a page after
    ``after``. Each with its Video object, tasks and concat key."""
    with read_connection(svc.runtime.db) as conn:
        found = store.video_generations(
            conn,
            account_id,
            generation_id=generation_id,
            after=after,
            limit=limit,
            descending=order == "desc",
        )
    if found is None:
        raise errors.InvalidParameter(f"after: no such video: {(after or '')[:60]}", field="after")
    return [
        (
            dialect.video_object(g.id, g.created_at, g.params, g.concat_status, g.concat_error, g.shots),
            g.shots,
            g.concat_key,
        )
        for g in found
    ]


async def _one_video(
    request: Request,
) -> tuple[Services, str, tuple[dict[str, Any], list[store.TaskRecord], str | None]]:
    who, _ = await status_caller(request)
    svc = services(request)
    video_id = str(request.path_params["video_id"])
    found = await run_in_threadpool(_read_videos, svc, who.account_id, video_id, None, 1, "desc")
    if not found:
        raise errors.NotFound(f"No video found with id {video_id[:60]!r}", field="video_id")
    return svc, who.account_id, found[0]


@router.get("/videos/{video_id}")
@_openai_errors
async def videos_retrieve(request: Request) -> Response:
    _, _, (video, _, _) = await _one_video(request)
    return FastJSONResponse(video)


@router.get("/videos")
@_openai_errors
async def videos_list(request: Request) -> Response:
    who, _ = await status_caller(request)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.InvalidParameter("order must be asc or desc", field="order")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIST:
        raise errors.InvalidParameter(f"limit must be 1-{_MAX_LIST}", field="limit")
    after = query.get("after") or None
    svc = services(request)
    found = await run_in_threadpool(
        _read_videos, svc, who.account_id, None, after, int(limit_text) + 1, order
    )
    page = [video for video, _, _ in found[: int(limit_text)]]
    return FastJSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(found) > len(page),
        }
    )


@router.delete("/videos/{video_id}")
@_openai_errors
async def videos_delete(request: Request) -> Response:
    svc, _, (video, shots, concat_key) = await _one_video(request)
    if video["status"] not in ("completed", "failed"):
        raise errors.InvalidParameter("Only a completed or failed video can be deleted", field="video_id")
    keys = [concat_key] if concat_key else []
    for task in shots:
        keys += [task.output_key] if task.output_key else []
        keys += [
            item["key"] for item in task.params.get("inputs", []) if isinstance(item, dict) and "key" in item
        ]
    await run_in_threadpool(_delete_files, svc, video["id"], list(dict.fromkeys(keys)))
    return FastJSONResponse({"id": video["id"], "object": "video.deleted", "deleted": True})


def _delete_files(svc: Services, generation_id: str, keys: list[str]) -> None:
    """As retention deletes a generation's files: objects first, then the generation marked (its
    file URLs answer 410 GONE; its tasks and ledger entries stay)."""
    svc.runtime.storage.delete_many(keys)
    with write_transaction(svc.runtime.db) as conn:
        mark_expired(conn, generation_id, keys, time.time())


@router.get("/videos/{video_id}/content")
@_openai_errors
async def videos_content(request: Request) -> Response:
    svc, _, (video, shots, concat_key) = await _one_video(request)
    variant = request.query_params.get("variant", "video")
    if variant not in ("video", "thumbnail"):
        raise errors.InvalidParameter("variant must be video or thumbnail", field="variant")
    key = concat_key if len(shots) > 1 else shots[0].output_key
    if video["status"] != "completed" or not key:
        raise errors.NotFound(f"Video {video['id']} is {video['status']}: no content yet", field="video_id")
    if variant == "thumbnail":
        jpeg = await run_in_threadpool(_thumbnail, svc, key)
        return Response(jpeg, media_type="image/jpeg")
    found = await run_in_threadpool(svc.runtime.storage.open, key, None)
    if isinstance(found, LocalFile):
        return FileResponse(found.path, media_type="video/mp4")
    if isinstance(found, Redirect):
        return RedirectResponse(found.url, status_code=307)
    assert isinstance(found, Stream)
    return StreamingResponse(found.chunks, status_code=found.status, headers=found.headers)


def _thumbnail(svc: Services, key: str) -> bytes:
    """The video's first frame as a JPEG."""
    with av.open(io.BytesIO(svc.runtime.storage.read_bytes(key)), mode="r") as container:
        frame = next(container.decode(video=0))
        picture = Image.fromarray(frame.to_ndarray(format="rgb24"))
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


# -- anything else under /v1: OpenAI's answer to an unknown URL ------------------------------------------
@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@_openai_errors
async def unknown(request: Request) -> Response:
    raise errors.NotFound(f"Invalid URL ({request.method} {request.url.path})")
