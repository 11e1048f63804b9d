"""Delivering an event: one DBOS workflow per event, whose id is the event's (``webhook-id``).

The workflow is async: between attempts it waits in a durable sleep (``DBOS.sleep_async``: the wake-up
time is recorded, so a restart neither resets the schedule nor forgets the delivery) without holding
one of the executor's threads. Each attempt is a step that signs the stored body afresh (a new
``webhook-timestamp``, the same ``webhook-id``), checks the URL's addresses again (SSRF rules, against
DNS rebinding), POSTs without following redirects, and records the outcome. A 2xx answer within
``NANOGEN_WEBHOOK_TIMEOUT_S`` delivers it; anything else (an error status, a redirect, no answer in
time, no connection, a refused address) is retried after the next delay of
``NANOGEN_WEBHOOK_RETRY_SCHEDULE``, and once the schedule is spent the delivery is marked failed.
An attempt interrupted by a crash is made again on recovery: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from dbos import DBOS

from nanogen import __version__, metrics
from nanogen.db import (
    RETRY_ATTEMPTS,
    RETRY_BACKOFF,
    RETRY_INTERVAL_S,
    read_connection,
    transient,
    write_transaction,
)
from nanogen.errors import FetchError
from nanogen.media.fetch import CheckedTarget, FetchPolicy, check_target
from nanogen.tasks.runtime import Runtime, current
from nanogen.tls import ssl_context
from nanogen.webhooks import secrets, store
from nanogen.webhooks.events import DELIVER_WEBHOOK

log = logging.getLogger(__name__)


@DBOS.workflow(name=DELIVER_WEBHOOK)
async def deliver(delivery_id: str) -> str:
    """Attempt, wait, attempt again... until delivered or the schedule is spent. The step decides
    each wait (recorded with its result), so a replay after a restart follows the same schedule."""
    number = 1
    while True:
        outcome = await attempt_step(delivery_id, number)
        if outcome["state"] != store.PENDING:
            return str(outcome["state"])
        await DBOS.sleep_async(float(outcome["retry_in"]))
        number += 1


@DBOS.step(
    name="nanogen.webhook_attempt",
    retries_allowed=True,
    interval_seconds=RETRY_INTERVAL_S,
    max_attempts=RETRY_ATTEMPTS,
    backoff_rate=RETRY_BACKOFF,
    should_retry=transient,  # the database briefly unreachable: the attempt again, later
)
async def attempt_step(delivery_id: str, number: int) -> dict[str, Any]:
    """Attempt ``number``: ``{"state"}`` (delivered or failed), or ``{"state": "pending", "retry_in"}``."""
    rt = current()
    loaded = await asyncio.to_thread(_load, rt, delivery_id)
    if loaded is None:
        return {"state": store.FAILED}
    delivery, signing = loaded
    if delivery.state != store.PENDING or delivery.attempts >= number:
        # Recorded before a crash lost this step's result: carry on from what was recorded.
        wait = max(0.0, (delivery.next_attempt_at or 0.0) - time.time())
        return {"state": delivery.state, "retry_in": wait}
    started = time.time()
    status, error = await _post(rt, delivery, signing, started)
    now = time.time()
    schedule = rt.settings.webhook_retry_schedule
    delivered = status is not None and 200 <= status < 300
    if delivered:
        state, retry_in = store.DELIVERED, None
    elif number > len(schedule):
        state, retry_in = store.FAILED, None
    else:
        state, retry_in = store.PENDING, schedule[number - 1]
    await asyncio.to_thread(
        _record,
        rt,
        delivery_id,
        number=number,
        status_code=status,
        error=error,
        state=state,
        now=now,
        next_attempt_at=None if retry_in is None else now + retry_in,
    )
    metrics.webhook_attempt(_result(status, error), state, now - delivery.created_at if delivered else None)
    log.info(
        "webhook %s (%s) attempt %d to %s: %s in %.3fs; %s%s",
        delivery.id,
        delivery.event_type,
        number,
        delivery.url,
        status if status is not None else error,
        now - started,
        state,
        f" {now - delivery.created_at:.3f}s after the event" if delivered else "",
        extra={"webhook_id": delivery.id, "generation_id": delivery.generation_id, "attempt": number},
    )
    return {"state": state, "retry_in": retry_in}


def _load(rt: Runtime, delivery_id: str) -> tuple[store.Delivery, list[str]] | None:
    """The delivery and the secrets that sign it now (the master key read off the event loop)."""
    with read_connection(rt.db) as conn:
        delivery = store.get_delivery(conn, delivery_id)
        if delivery is None:
            return None
        account = store.get_account(conn, delivery.account_id)
    version, rotated_at = (1, None) if account is None else (account.secret_version, account.rotated_at)
    versions = secrets.signing_versions(version, rotated_at, time.time())
    return delivery, [secrets.secret(rt.settings, delivery.account_id, v) for v in versions]


def _record(rt: Runtime, delivery_id: str, **attempt: Any) -> None:
    with write_transaction(rt.db) as conn:
        store.record_attempt(conn, delivery_id, **attempt)


def _result(status: int | None, error: str | None) -> str:
    """An attempt's result as the metrics count it."""
    if status is not None:
        return "2xx" if 200 <= status < 300 else "http_error"
    if error and error.startswith("timed out"):
        return "timeout"
    return "refused" if error and error.startswith("refused") else "connection"


async def _post(
    rt: Runtime, delivery: store.Delivery, signing: list[str], now: float
) -> tuple[int | None, str | None]:
    """One POST of the event; its status code, or why there was none."""
    timestamp = int(now)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"nanogen/{__version__}",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": secrets.signature(
            signing, delivery.id, datetime.fromtimestamp(timestamp, UTC), delivery.payload
        ),
    }
    timeout = rt.settings.webhook_timeout_s
    try:
        async with asyncio.timeout(timeout):
            target = await check_target(delivery.url, FetchPolicy.from_settings(rt.settings))
            status, error = await _send(target, headers, delivery.payload.encode(), timeout)
    except TimeoutError:
        return None, f"timed out after {timeout:g} s"
    except FetchError as exc:
        return None, f"refused: {exc.reason}"
    if status is None:
        return None, error
    return status, None if 200 <= status < 300 else f"HTTP {status}"


async def _send(
    target: CheckedTarget, headers: dict[str, str], body: bytes, timeout: float
) -> tuple[int | None, str | None]:
    """POST to each checked address in turn until one connects; redirects are not followed."""
    transport = httpx.AsyncHTTPTransport(
        verify=ssl_context(), retries=0, limits=httpx.Limits(max_keepalive_connections=0)
    )
    async with transport:
        failure = "connection failed"
        for request in target.requests("POST", headers, body, timeout):
            try:
                response = await transport.handle_async_request(request)
            except httpx.ConnectError:
                continue
            except httpx.TransportError as exc:
                failure = f"connection failed: {type(exc).__name__}"
                break
            await response.aclose()
            return response.status_code, None
        return None, failure
