"""The event of a generation's end, recorded in the transaction that ended it.

Every terminal transition calls :func:`generation_ended` inside its own transaction, after the
transition succeeded: a task completed or failed (tasks/workflows.py), failed past its deadline
(the watchdog), canceled (routes/generations_cancel.py), or a video's concatenation settled. When
that transition ended the generation (check-status no longer answers pending, generating or
processing) and a webhook URL applies, the event's row (with the exact body every attempt sends)
and its delivery workflow commit with the transition, or neither does.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from dbos import DBOSClient

from nanogen.ledger import new_id
from nanogen.products import Product
from nanogen.tasks import store as tasks_store
from nanogen.tasks.enqueue import PreparedEnqueue
from nanogen.tasks.runtime import Runtime
from nanogen.webhooks import store

DELIVER_WEBHOOK = "nanogen.deliver_webhook"  # the workflow (webhooks/delivery.py)
WEBHOOK_QUEUE = "nanogen.webhooks"
_ENDED = {"completed", "failed"}


@functools.cache
def _prepared(client: DBOSClient) -> PreparedEnqueue:
    return PreparedEnqueue(client)


def status_answer(conn: sa.Connection, generation_id: str, product: Product) -> dict[str, Any] | None:
    """The generation's check-status answer as its client would read it now (a video's as by
    ``generationId``), or None when it has no tasks."""
    # Imported here: the routes import the task machinery this module is part of.
    from nanogen.server.responses import without_none
    from nanogen.server.routes.images import image_status
    from nanogen.server.routes.videos import video_status

    tasks = tasks_store.generation_tasks(conn, generation_id)
    if not tasks:
        return None
    if product is Product.IMAGE:
        return without_none(image_status(tasks[0]))
    return without_none(video_status(tasks, tasks_store.get_generation(conn, generation_id)))


def iso_now() -> tuple[float, str]:
    now = datetime.now(UTC)
    return now.timestamp(), now.isoformat().replace("+00:00", "Z")


def generations_ended(rt: Runtime, conn: sa.Connection, generation_ids: Collection[str]) -> None:
    """``generation_ended`` once for each of these, after a batch of task ends (every transition of
    the batch made): one statement finds those a webhook URL applies to, and only they are locked
    and read (the others have no event to record), in the order of their ids, so that two batches
    ending shots of the same generations lock them in the same order."""
    for generation_id in sorted(store.generations_with_webhook(conn, set(generation_ids))):
        generation_ended(rt, conn, generation_id)


def generation_ended(rt: Runtime, conn: sa.Connection, generation_id: str) -> str | None:
    """Record and enqueue the generation's event if it has just ended and has a webhook URL, in the
    caller's transaction (after its terminal transition). The event's id, or None."""
    target = store.lock_generation_target(conn, generation_id)
    if target is None or target.url is None or store.has_delivery(conn, generation_id):
        return None
    product = Product(target.product)
    data = status_answer(conn, generation_id, product)
    if data is None or data["status"] not in _ENDED:
        return None
    now, timestamp = iso_now()
    event_type = f"{product.value}.{data['status']}"
    payload = orjson.dumps({"type": event_type, "timestamp": timestamp, "data": data}).decode()
    delivery_id = new_id("msg")
    store.insert_delivery(
        conn,
        delivery_id=delivery_id,
        account_id=target.account_id,
        generation_id=generation_id,
        event_type=event_type,
        url=target.url,
        payload=payload,
        now=now,
    )
    _prepared(rt.dbos_client)(
        conn,
        [
            (
                {
                    "workflow_name": DELIVER_WEBHOOK,
                    "queue_name": WEBHOOK_QUEUE,
                    "workflow_id": delivery_id,
                    "app_version": rt.settings.application_version,
                },
                (delivery_id,),
            )
        ],
    )
    return delivery_id
