"""Webhooks (nanogen additions; docs/api.md, "Webhooks"): the account's default URL
(``GET``/``PUT``/``DELETE /api/account/webhook``), its signing secret (``GET /api/account/webhook-secret``,
``POST /api/account/webhook-secret/rotate``) and its recent deliveries
(``GET /api/account/webhook-deliveries``). Counted against the key's polling budget, as the ledger is."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors, schemas
from nanogen.db import read_connection, write_transaction
from nanogen.server.deps import json_body, services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import body_schema, error_responses
from nanogen.server.routes.generations import iso, limit_param
from nanogen.server.services import Services
from nanogen.tasks import history
from nanogen.webhooks import secrets, store
from nanogen.webhooks.targets import checked_url

router = APIRouter(prefix="/api/account", tags=["Webhooks"], route_class=DirectRoute)


def _url(svc: Services, account_id: str) -> str | None:
    with read_connection(svc.runtime.db) as conn:
        found = store.get_account(conn, account_id)
    return None if found is None else found.url


def _set_url(svc: Services, account_id: str, url: str | None) -> None:
    with write_transaction(svc.runtime.db) as conn:
        store.set_url(conn, account_id, url)


@router.get(
    "/webhook",
    summary="The account's default webhook URL (nanogen)",
    response_model=schemas.WebhookUrlResponse,
    responses=error_responses(401, 429, 503),
)
async def get_webhook(request: Request) -> Response:
    who, _ = await status_caller(request)
    url = await run_in_threadpool(_url, services(request), who.account_id)
    return FastJSONResponse({"success": True, "url": url})


@router.put(
    "/webhook",
    summary="Set the account's default webhook URL, used when a request names none (nanogen)",
    response_model=schemas.WebhookUrlResponse,
    responses=error_responses(400, 401, 429, 503),
    openapi_extra=body_schema(schemas.WebhookUrlRequest),
)
async def put_webhook(request: Request) -> Response:
    who, _ = await status_caller(request)
    svc = services(request)
    body = schemas.validate(schemas.WebhookUrlRequest, await json_body(request))
    url = await checked_url(svc.fetcher.policy, body.url, "url")
    await run_in_threadpool(_set_url, svc, who.account_id, url)
    return FastJSONResponse({"success": True, "url": url})


@router.delete(
    "/webhook",
    summary="Remove the account's default webhook URL (nanogen)",
    response_model=schemas.WebhookUrlResponse,
    responses=error_responses(401, 429, 503),
)
async def delete_webhook(request: Request) -> Response:
    who, _ = await status_caller(request)
    await run_in_threadpool(_set_url, services(request), who.account_id, None)
    return FastJSONResponse({"success": True, "url": None})


def _secret(svc: Services, account_id: str, rotate: bool) -> dict[str, Any]:
    with write_transaction(svc.runtime.db) as conn:
        account = store.rotate(conn, account_id) if rotate else store.ensure_account(conn, account_id)
    versions = secrets.signing_versions(account.secret_version, account.rotated_at, time.time())
    previous_until = None
    if len(versions) > 1 and account.rotated_at is not None:
        previous_until = iso(account.rotated_at + secrets.ROTATION_OVERLAP_S)
    return {
        "secret": secrets.secret(svc.settings, account_id, account.secret_version),
        "previousSecretValidUntil": previous_until,
    }


@router.get(
    "/webhook-secret",
    summary="The account's webhook signing secret, made on first use (nanogen)",
    response_model=schemas.WebhookSecretResponse,
    responses=error_responses(401, 429, 503),
)
async def webhook_secret(request: Request) -> Response:
    who, _ = await status_caller(request)
    return FastJSONResponse(await run_in_threadpool(_secret, services(request), who.account_id, False))


@router.post(
    "/webhook-secret/rotate",
    summary="A new webhook signing secret; the previous one also signs for 24 h (nanogen)",
    response_model=schemas.WebhookSecretResponse,
    responses=error_responses(401, 429, 503),
)
async def rotate_webhook_secret(request: Request) -> Response:
    who, _ = await status_caller(request)
    return FastJSONResponse(await run_in_threadpool(_secret, services(request), who.account_id, True))


def _deliveries(
    svc: Services, account_id: str, limit: int, after: tuple[float, str] | None
) -> dict[str, Any]:
    with read_connection(svc.runtime.db) as conn:
        found, next_key = store.list_deliveries(conn, account_id, limit=limit, after=after)
    return {
        "data": [
            {
                "id": d.id,
                "type": d.event_type,
                "generationId": d.generation_id,
                "url": d.url,
                "state": d.state,
                "attempts": d.attempts,
                "lastStatusCode": d.last_status_code,
                "lastError": d.last_error,
                "createdAt": iso(d.created_at),
                "lastAttemptAt": iso(d.last_attempt_at),
                "nextAttemptAt": iso(d.next_attempt_at) if d.state == store.PENDING else None,
                "endedAt": iso(d.ended_at),
            }
            for d in found
        ],
        "nextCursor": None if next_key is None else history.encode_cursor(*next_key),
    }


@router.get(
    "/webhook-deliveries",
    summary="The account's recent webhook deliveries, newest first (nanogen)",
    response_model=schemas.WebhookDeliveryPage,
    responses=error_responses(400, 401, 429, 503),
)
async def webhook_deliveries(request: Request) -> Response:
    who, _ = await status_caller(request)
    limit = limit_param(request)
    after = None
    if (cursor := request.query_params.get("cursor")) is not None:
        after = history.generation_cursor(cursor)  # the same (created_at, id) key
        if after is None:
            raise errors.InvalidParameter("cursor is not one this server gave", field="cursor")
    body = await run_in_threadpool(_deliveries, services(request), who.account_id, limit, after)
    return FastJSONResponse(body)
