"""Request dependencies: who is calling (Bearer API key), their rate budgets, and the JSON body."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse
from starlette.concurrency import run_in_threadpool

from nanogen import errors, ledger
from nanogen.db import read_connection
from nanogen.server.services import Services

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer YOUR_API_KEY")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _authenticate(svc: Services, key: str, budget: RateLimitItem, scope: str = "") -> ledger.Caller:
    """Look the key up and count the request against its budget, in one worker-thread hop (the
    limiter may start a timer thread, which must not stall the event loop). ``scope`` keeps a
    budget's counter apart from another budget configured with the same rate."""
    with read_connection(svc.runtime.db) as conn:
        found = ledger.authenticate(conn, key)
    if found is None:
        raise errors.LoginRequired()
    svc.limiter.hit(budget, scope + found.key_id)
    return found


def _bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """401 LOGIN_REQUIRED for a missing or malformed key (unknown and revoked ones fail the lookup)."""
    if credentials is None or not credentials.credentials.startswith(ledger.KEY_PREFIX):
        raise errors.LoginRequired()
    return credentials.credentials


async def generate_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ledger.Caller:
    """Authenticates and counts against the key's generate budget (the pages' 100 requests/hour)."""
    svc = services(request)
    return await run_in_threadpool(_authenticate, svc, _bearer_key(credentials), svc.limiter.generate)


async def status_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ledger.Caller:
    """Authenticates and counts against the key's separate, generous polling budget."""
    svc = services(request)
    return await run_in_threadpool(_authenticate, svc, _bearer_key(credentials), svc.limiter.status)


@lru_cache(maxsize=8)
def _budget(rate: str) -> RateLimitItem:
    return parse(rate)


async def upload_caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> ledger.Caller:
    """Authenticates and counts against the key's upload budget (``NANOGEN_RATE_LIMIT_UPLOAD``)."""
    svc = services(request)
    budget = _budget(svc.settings.rate_limit_upload)
    return await run_in_threadpool(_authenticate, svc, _bearer_key(credentials), budget, "upload:")


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
