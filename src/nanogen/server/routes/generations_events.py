"""``GET /api/generations/{generationId}/events`` (nanogen): a generation's progress as server-sent events.

One ``status`` event whenever the generation's status or progress changes, its data the check-status
answer (an image: as ``/api/nano-banana-2/check-status``; a video: as ``/api/veo-3/check-status`` by
``generationId``) plus ``generationStatus``, the generation's status as the history words it (where a
canceled task makes ``canceled``, while check-status reads it ``failed`` with ``error: "Canceled"``).
The stream closes after the event whose ``status`` is terminal (``completed`` or ``failed``).

Every event's ``id`` is the generation's state number (tasks/progress.py): it grows with every change,
so a client that reconnects with ``Last-Event-ID`` gets the first state newer than the one it saw,
never an older one, and always the terminal one. Reconnecting once the terminal event was seen
answers 204 (which also tells a browser's EventSource to stop reconnecting). Changes are seen at the
watcher's tick (server/watch.py); several changes within one tick make one event, of the latest state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from nanogen import errors, metrics
from nanogen.products import Product
from nanogen.server.deps import services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.responses import without_none
from nanogen.server.routes._common import error_responses
from nanogen.server.routes.images import image_status
from nanogen.server.routes.videos import video_status
from nanogen.server.waiting import watcher
from nanogen.server.watch import Snapshot, Subscription, Watcher, read_snapshot
from nanogen.tasks import history, store

router = APIRouter(prefix="/api/generations", tags=["Generations"], route_class=DirectRoute)

EVENT = "status"
PING_S = 15  # a comment line this often: proxies keep the connection, a vanished client is noticed
_MEMO = "event"  # the snapshot's encoded event data, made once however many streams send it

_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "generationId", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "The id of the last event received: the stream resumes after it.",
        },
    ],
}
_STREAM_DOC = (
    "`text/event-stream`: `event: status`, `id: <state number>`, `data: <the check-status answer "
    "plus generationStatus>`; closes after the terminal event (docs/api.md)."
)


@router.get(
    "/{generationId}/events",
    summary="Follow a generation's progress: server-sent events (nanogen)",
    responses={
        200: {"description": _STREAM_DOC, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        204: {"description": "Last-Event-ID names the terminal event: nothing more will come"},
        **error_responses(401, 404, 429, 503),
    },
    response_class=EventSourceResponse,
    openapi_extra=_OPENAPI,
)
async def events(request: Request) -> Response:
    # The polling budget, once per connection: following costs no more than one check-status.
    who, _ = await status_caller(request)
    generation_id = str(request.path_params["generationId"])
    first = await read_snapshot(services(request).reads, generation_id)
    if first is None or first.generation.account_id != who.account_id:
        raise errors.NotFound(f"Generation not found or not owned by user: {generation_id}")
    seen = last_event_id(request)
    if seen is not None and first.ended and first.number <= seen:
        return Response(status_code=204)
    return EventSourceResponse(_stream(watcher(request), first, seen or 0), ping=PING_S)


def last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` a reconnecting client sends; one this server did not make is ignored."""
    raw = request.headers.get("last-event-id", "").strip()
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


async def _stream(watch: Watcher, first: Snapshot, seen: int) -> AsyncIterator[ServerSentEvent]:
    metrics.EVENT_STREAMS.inc()
    try:
        with watch.subscribe((first.generation.id,)) as subscription:
            subscription.offer(first)  # what this request read: the watcher need not read it again
            async for event in _events(subscription, first.generation.id, seen):
                yield event
    finally:
        metrics.EVENT_STREAMS.dec()


async def _events(
    subscription: Subscription, generation_id: str, seen: int
) -> AsyncIterator[ServerSentEvent]:
    while True:
        snapshot = subscription.latest(generation_id)
        if snapshot is not None and snapshot.number > seen:
            seen = snapshot.number
            yield ServerSentEvent(data=event_data(snapshot), event=EVENT, id=str(seen))
        if snapshot is not None and snapshot.ended:  # sent, or (a Last-Event-ID past its end) seen
            return
        if not await subscription.wait():  # the server is shutting down: the client reconnects
            return


def event_data(snapshot: Snapshot) -> str:
    data: str | None = snapshot.memo.get(_MEMO)
    if data is None:
        data = snapshot.memo[_MEMO] = orjson.dumps(answer(snapshot)).decode()
    return data


def answer(snapshot: Snapshot) -> dict[str, Any]:
    """The check-status answer of the snapshot's generation, plus ``generationStatus``."""
    tasks, generation = snapshot.tasks, snapshot.generation
    if generation.product is Product.IMAGE:
        status = image_status(tasks[0])
    else:
        status = video_status(tasks, generation)
    return without_none(status) | {"generationStatus": generation_status(tasks, generation.concat_status)}


def generation_status(tasks: list[store.TaskRecord], concat_status: str | None) -> str:
    """The generation's status as the history reads it (tasks/history.py's rules, on the records)."""
    words = [history.task_status(t.status.value, t.error) for t in tasks]
    if all(w == "pending" for w in words):
        return "pending"
    if any(w in ("pending", "generating") for w in words) or concat_status == store.CONCAT_PENDING:
        return "generating"
    if all(w == "completed" for w in words):
        return "completed"
    return "failed" if "failed" in words else history.CANCELED
