"""``GET /api/account``: the caller's account and balance (nanogen addition, used by the playground)."""

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
from nanogen.server.services import Services

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
