"""``GET /api/account``: the caller's account and balance (nanogen addition, used by the playground);
``GET /api/account/ledger``: its grants, debits and refunds, newest first."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from nanogen import errors, ledger, schemas
from nanogen.db import read_connection
from nanogen.server.deps import services, status_caller
from nanogen.server.direct import DirectRoute
from nanogen.server.responses import FastJSONResponse
from nanogen.server.routes._common import error_responses
from nanogen.server.routes.generations import iso, limit_param
from nanogen.server.services import Services
from nanogen.tasks import history

router = APIRouter(prefix="/api", tags=["Account"], route_class=DirectRoute)


def _account(svc: Services, account_id: str) -> ledger.Account | None:
    with read_connection(svc.runtime.db) as conn:
        return ledger.get_account(conn, account_id)


@router.get(
    "/account",
    summary="The caller's account and credit balance (nanogen)",
    response_model=schemas.AccountResponse,
    responses=error_responses(401, 429, 503),
)
async def account(request: Request) -> Response:
    who, _ = await status_caller(request)
    # Counted against the polling budget: a page refreshes the balance after every request.
    found = await run_in_threadpool(_account, services(request), who.account_id)
    if found is None:  # the key outlived its account: treat it like an unknown key
        raise errors.LoginRequired()
    return FastJSONResponse(
        {"success": True, "accountId": found.id, "name": found.name, "credits": found.balance}
    )


def _ledger_page(svc: Services, account_id: str, limit: int, before: int | None) -> dict[str, object]:
    with read_connection(svc.runtime.db) as conn:
        found, next_id = ledger.entries(conn, account_id, limit=limit, before=before)
    return {
        "data": [
            {
                "kind": e.kind,
                "amount": e.amount,
                "balanceAfter": e.balance_after,
                "generationId": e.generation_id,
                "createdAt": iso(e.created_at),
            }
            for e in found
        ],
        "nextCursor": None if next_id is None else history.encode_cursor(next_id),
    }


@router.get(
    "/account/ledger",
    summary="The account's grants, debits and refunds, newest first (nanogen)",
    response_model=schemas.LedgerPage,
    responses=error_responses(400, 401, 429, 503),
)
async def account_ledger(request: Request) -> Response:
    who, _ = await status_caller(request)
    limit = limit_param(request)
    before = None
    if (cursor := request.query_params.get("cursor")) is not None:
        parts = history.decode_cursor(cursor, 1)
        if parts is None or not parts[0].isdigit():
            raise errors.InvalidParameter("cursor is not one this server gave", field="cursor")
        before = int(parts[0])
    body = await run_in_threadpool(_ledger_page, services(request), who.account_id, limit, before)
    return FastJSONResponse(body)
