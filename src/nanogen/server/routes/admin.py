"""The admin API: the powers of ``nanogen keys`` and ``nanogen credits`` over HTTP.

Guarded by ``Authorization: Bearer <NANOGEN_ADMIN_TOKEN>``; when no admin token is set these routes
answer 404, as if they did not exist.
"""

from __future__ import annotations

import hmac
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors, ledger
from nanogen.db import read_connection, write_transaction
from nanogen.products import MAX_GRANT, format_usd
from nanogen.schemas import Identifier, Text, has_control_characters, validate
from nanogen.server.deps import json_body, services
from nanogen.server.responses import FastJSONResponse
from nanogen.tasks import store

admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken")


async def require_admin(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(admin_bearer)
) -> None:
    token = services(request).settings.admin_token
    if token is None:
        raise errors.NotFound("Not found")
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise errors.AdminForbidden()


router = APIRouter(prefix="/admin", tags=["Admin"], dependencies=[Depends(require_admin)])


class NewAccount(BaseModel):
    name: Identifier = Field(min_length=1, max_length=200)
    credits: StrictInt = Field(default=0, ge=0, le=MAX_GRANT)
    keyName: Identifier = Field(default="", max_length=200)


class Grant(BaseModel):
    credits: StrictInt = Field(gt=0, le=MAX_GRANT)
    memo: Text = Field(default="", max_length=500)


def _account_view(
    conn: sa.Connection, account: ledger.Account, costs: dict[str, int] | None = None
) -> dict[str, Any]:
    t = ledger.totals(conn, account.id)
    costs = store.provider_costs(conn) if costs is None else costs
    return {
        "id": account.id,
        "name": account.name,
        "balance": account.balance,
        "granted": t.granted,
        "debited": t.debited,
        "refunded": t.refunded,
        # What the work cost at the providers (list prices, USD, a decimal string: exact).
        "providerCostUsd": format_usd(costs.get(account.id, 0)),
    }


def _run(request: Request, fn: Any, *args: Any) -> Any:
    return run_in_threadpool(fn, services(request).runtime.db, *args)


@router.post("/accounts", summary="Create an account with credits and a first API key")
async def create_account(request: Request) -> Response:
    body = validate(NewAccount, await json_body(request))

    def create(db: sa.Engine) -> dict[str, Any]:
        with write_transaction(db) as conn:
            if ledger.find_account(conn, body.name):
                raise errors.InvalidParameter(f"An account named {body.name!r} exists", field="name")
            account = ledger.create_account(conn, body.name, body.credits)
            key_id, key = ledger.create_key(conn, account.id, body.keyName)
            return {"account": _account_view(conn, account), "keyId": key_id, "apiKey": key}

    return FastJSONResponse(await _run(request, create), status_code=201)


@router.get("/accounts", summary="List accounts and balances")
async def list_accounts(request: Request) -> Response:
    def listing(db: sa.Engine) -> list[dict[str, Any]]:
        with read_connection(db) as conn:
            costs = store.provider_costs(conn)
            return [_account_view(conn, a, costs) for a in ledger.list_accounts(conn)]

    return FastJSONResponse({"accounts": await _run(request, listing)})


def _find(conn: sa.Connection, account: str) -> ledger.Account:
    found = ledger.find_account(conn, account)
    if found is None:
        raise errors.NotFound(f"Account {account!r} not found")
    return found


@router.get("/accounts/{account}", summary="One account's balance and ledger totals")
async def show_account(account: str, request: Request) -> Response:
    def show(db: sa.Engine) -> dict[str, Any]:
        with read_connection(db) as conn:
            return _account_view(conn, _find(conn, account))

    return FastJSONResponse(await _run(request, show))


@router.post("/accounts/{account}/credits", summary="Grant credits")
async def grant(account: str, request: Request) -> Response:
    body = validate(Grant, await json_body(request))

    def give(db: sa.Engine) -> dict[str, Any]:
        with write_transaction(db) as conn:
            found = _find(conn, account)
            try:
                new_balance = ledger.grant(conn, found.id, body.credits, body.memo)
            except ValueError as exc:
                raise errors.InvalidParameter(str(exc), field="credits") from None
            return _account_view(conn, ledger.Account(found.id, found.name, new_balance))

    return FastJSONResponse(await _run(request, give))


@router.post("/accounts/{account}/keys", summary="Create another API key (shown once)")
async def create_key(account: str, request: Request) -> Response:
    data = await json_body(request)
    name = data.get("name", "")
    if not isinstance(name, str) or len(name) > 200 or has_control_characters(name):
        raise errors.InvalidParameter(
            "name must be a string of at most 200 characters, without control characters", field="name"
        )

    def create(db: sa.Engine) -> dict[str, Any]:
        with write_transaction(db) as conn:
            key_id, key = ledger.create_key(conn, _find(conn, account).id, name)
            return {"keyId": key_id, "apiKey": key}

    return FastJSONResponse(await _run(request, create), status_code=201)


@router.get("/keys", summary="List API keys (never the keys themselves)")
async def list_keys(request: Request) -> Response:
    def listing(db: sa.Engine) -> list[dict[str, Any]]:
        with read_connection(db) as conn:
            return [
                {
                    "id": k.id,
                    "accountId": k.account_id,
                    "account": k.account_name,
                    "name": k.name,
                    "prefix": k.prefix,
                    "createdAt": k.created_at,
                    "revokedAt": k.revoked_at,
                }
                for k in ledger.list_keys(conn)
            ]

    return FastJSONResponse({"keys": await _run(request, listing)})


@router.post("/keys/{key_id}/revoke", summary="Revoke an API key")
async def revoke_key(key_id: str, request: Request) -> Response:
    def revoke(db: sa.Engine) -> bool:
        with write_transaction(db) as conn:
            return ledger.revoke_key(conn, key_id)

    if not await _run(request, revoke):
        raise errors.NotFound(f"No live key {key_id!r}")
    return FastJSONResponse({"id": key_id, "revoked": True})


@router.get("/tasks/{task_id}", summary="One task as operators see it: engine, provider operation and cost")
async def show_task(task_id: str, request: Request) -> Response:
    def show(db: sa.Engine) -> dict[str, Any]:
        with read_connection(db) as conn:
            task = store.get_task(conn, task_id)
        if task is None:
            raise errors.NotFound(f"Task {task_id!r} not found")
        cost = task.provider_cost_micros
        return {
            "id": task.id,
            "generationId": task.generation_id,
            "accountId": task.account_id,
            "product": task.product.value,
            "engine": task.engine,
            "status": task.status.value,
            "credits": task.credits,
            "attempts": task.attempts,
            "providerOperation": task.provider_operation,
            "providerCostUsd": None if cost is None else format_usd(cost),
            "error": task.error,
            "createdAt": task.created_at,
            "finishedAt": task.finished_at,
        }

    return FastJSONResponse(await _run(request, show))
