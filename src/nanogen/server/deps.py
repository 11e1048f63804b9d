"""Request dependencies: who is calling (Bearer API key), their rate budgets, and the JSON body."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import orjson
from fastapi import Request
from limits import RateLimitItem, parse
from starlette.requests import ClientDisconnect

from nanogen import errors, ledger
from nanogen.db import Query
from nanogen.server.services import Services

T = TypeVar("T")

BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer YOUR_API_KEY"}


def services(request: Request) -> Services:
    svc: Services = request.scope["state"]["services"]  # the lifespan's state (server/services.py)
    return svc


Rows = list[tuple[Any, ...]]
Poll = Callable[[str], Query]  # a poll's read given the caller's key hash: ledger.with_caller's rows


async def _authenticate(
    svc: Services, key: str, budget: RateLimitItem, scope: str = "", poll: Poll | None = None
) -> tuple[ledger.Caller, Rows]:
    """Look the key up and count the request against its budget (both without a thread hop on the
    embedded default: see db.Reads and ratelimit). ``poll``, when given, is the key lookup joined to
    what the request reads, one statement; its rows come back. ``scope`` keeps a budget's counter
    apart from another budget configured with the same rate."""
    key_hash = ledger.hash_key(key)
    statement, params = poll(key_hash) if poll is not None else ledger.authentication(key_hash)
    rows = await svc.reads.rows(statement, params)
    caller = ledger.caller(rows)
    if caller is None:
        raise errors.LoginRequired()
    await svc.limiter.count(budget, scope + caller.key_id)
    return caller, rows


def _bearer_key(request: Request) -> str:
    """401 LOGIN_REQUIRED for a missing or malformed key (unknown and revoked ones fail the lookup).

    Read straight from the header: a FastAPI security dependency per request cost more than the
    lookup. The OpenAPI schema documents the scheme for every /api route (server/app.py)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key.startswith(ledger.KEY_PREFIX):
        raise errors.LoginRequired()
    return key


async def generate_caller(request: Request) -> ledger.Caller:
    """Authenticates and counts against the key's generate budget (the pages' 100 requests/hour)."""
    svc = services(request)
    who, _ = await _authenticate(svc, _bearer_key(request), svc.limiter.generate)
    return who


async def status_caller(request: Request, poll: Poll | None = None) -> tuple[ledger.Caller, Rows]:
    """Authenticates and counts against the key's separate, generous polling budget; ``poll``'s rows
    (the key lookup joined to the poll's read) come back."""
    svc = services(request)
    return await _authenticate(svc, _bearer_key(request), svc.limiter.status, poll=poll)


@lru_cache(maxsize=8)
def _budget(rate: str) -> RateLimitItem:
    return parse(rate)


async def upload_caller(request: Request) -> ledger.Caller:
    """Authenticates and counts against the key's upload budget (``NANOGEN_RATE_LIMIT_UPLOAD``)."""
    svc = services(request)
    budget = _budget(svc.settings.rate_limit_upload)
    who, _ = await _authenticate(svc, _bearer_key(request), budget, "upload:")
    return who


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read up to the size cap (400 REQUEST_TOO_LARGE past it)."""
    cap = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    body = b""
    more = True
    while more:  # ASGI messages read directly: Request.stream()'s async generator cost a tenth of a poll
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > cap:
            raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidJSON("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidJSON()
    return data


async def body_or_error(request: Request, parse: Callable[[dict[str, Any]], T]) -> T | errors.APIError:
    """The body parsed by ``parse``, or the error it would get: a poll authenticates first (401 comes
    before 400) and reads its task with the key lookup, so the caller raises it after authenticating."""
    try:
        return parse(await json_body(request))
    except errors.APIError as exc:
        return exc
