"""Request dependencies: who is calling (Bearer API key), their rate budgets, and the JSON body."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from nanogen import errors, ledger
from nanogen.db import read_connection
from nanogen.server.services import Services

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer YOUR_API_KEY")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _authenticate(db: sa.Engine, key: str) -> ledger.Caller | None:
    with read_connection(db) as conn:
        return ledger.authenticate(conn, key)


async def caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ledger.Caller:
    """401 LOGIN_REQUIRED for a missing, malformed, unknown or revoked key."""
    if credentials is None or not credentials.credentials.startswith(ledger.KEY_PREFIX):
        raise errors.LoginRequired()
    found = await run_in_threadpool(_authenticate, services(request).runtime.db, credentials.credentials)
    if found is None:
        raise errors.LoginRequired()
    return found


async def generate_caller(request: Request, who: ledger.Caller = Depends(caller)) -> ledger.Caller:
    """Counts against the key's generate budget (the pages' 100 requests/hour)."""
    limiter = services(request).limiter
    limiter.hit(limiter.generate, who.key_id)
    return who


async def status_caller(request: Request, who: ledger.Caller = Depends(caller)) -> ledger.Caller:
    """Counts against the key's separate, generous polling budget."""
    limiter = services(request).limiter
    limiter.hit(limiter.status, who.key_id)
    return who


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read up to the size cap (400 REQUEST_TOO_LARGE past it)."""
    cap = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidJSON("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidJSON()
    return data
