"""Request dependencies: who is calling (Bearer API key), their rate budgets, and the JSON body."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from nanogen import errors, ledger
from nanogen.db import Query
from nanogen.ratelimit import Budget
from nanogen.server.direct import ACCOUNT_KEY
from nanogen.server.services import Services

T = TypeVar("T")

BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer YOUR_API_KEY"}


def services(request: Request) -> Services:
    svc: Services = request.scope["state"]["services"]  # the lifespan's state (server/services.py)
    return svc


Rows = list[tuple[Any, ...]]
Poll = Callable[[str], Query]  # a poll's read given the caller's key hash: ledger.with_caller's rows


async def _authenticate(
    svc: Services, key: str, budget: Budget, poll: Poll | None = None
) -> tuple[ledger.Caller, Rows]:
    """Look the key up and count the request against its budget (both without a thread hop on the
    embedded default: see db.Reads and ratelimit). ``poll``, when given, is the key lookup joined to
    what the request reads, one statement; its rows come back."""
    key_hash = ledger.hash_key(key)
    statement, params = poll(key_hash) if poll is not None else ledger.authentication(key_hash)
    rows = await svc.reads.rows(statement, params)
    caller = ledger.caller(rows)
    if caller is None:
        raise errors.LoginRequired()
    await svc.limiter.count(budget, caller.key_id)
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
    request.scope[ACCOUNT_KEY] = who.account_id  # for the request's access log line
    return who


async def status_caller(request: Request, poll: Poll | None = None) -> tuple[ledger.Caller, Rows]:
    """Authenticates and counts against the key's separate, generous polling budget; ``poll``'s rows
    (the key lookup joined to the poll's read) come back."""
    svc = services(request)
    who, rows = await _authenticate(svc, _bearer_key(request), svc.limiter.status, poll=poll)
    request.scope[ACCOUNT_KEY] = who.account_id
    return who, rows


# Check-status authenticates before it reads the body (an unauthenticated client must not make the
# server wait for, or buffer, a body), yet reads its tasks with the key lookup joined in, one
# statement. So the key is looked up first, and a live key is remembered for KEY_CACHE_TTL_S: a
# client polling every few seconds costs one lookup per poll at most, one that polls faster costs
# none. The joined read re-checks the key, so a revoked key's polls fail at once; only a poll with an
# invalid body may get its 400 instead of 401 for up to KEY_CACHE_TTL_S after the revocation.
KEY_CACHE_TTL_S = 2.0
_KEY_CACHE_MAX = 10_000
_live_keys: dict[str, tuple[ledger.Caller, float]] = {}  # key hash -> (caller, until: monotonic)


async def _live_key(svc: Services, key_hash: str) -> ledger.Caller:
    now = time.monotonic()
    known = _live_keys.get(key_hash)
    if known is not None and known[1] > now:
        return known[0]
    statement, params = ledger.authentication(key_hash)
    caller = ledger.caller(await svc.reads.rows(statement, params))
    if caller is None:
        _live_keys.pop(key_hash, None)
        raise errors.LoginRequired()
    if len(_live_keys) >= _KEY_CACHE_MAX:
        _live_keys.clear()
    _live_keys[key_hash] = (caller, now + KEY_CACHE_TTL_S)
    return caller


async def status_body(request: Request, parse: Callable[[dict[str, Any]], T]) -> tuple[str, T]:
    """Check-status, first half: the key (401) and the polling budget (429), then the body read and
    parsed by ``parse`` (400). Returns the key's hash for ``status_rows``."""
    svc = services(request)
    key_hash = ledger.hash_key(_bearer_key(request))
    caller = await _live_key(svc, key_hash)
    request.scope[ACCOUNT_KEY] = caller.account_id
    await svc.limiter.count(svc.limiter.status, caller.key_id)
    return key_hash, parse(await json_body(request))


async def status_rows(request: Request, key_hash: str, poll: Poll | None) -> tuple[ledger.Caller, Rows]:
    """Check-status, second half: ``poll`` (the key lookup joined to the poll's read; the key lookup
    alone when None), so the key is checked again in the statement that reads the tasks."""
    statement, params = poll(key_hash) if poll is not None else ledger.authentication(key_hash)
    rows = await services(request).reads.rows(statement, params)
    caller = ledger.caller(rows)
    if caller is None:  # revoked since it was remembered
        _live_keys.pop(key_hash, None)
        raise errors.LoginRequired()
    return caller, rows


async def upload_caller(request: Request) -> ledger.Caller:
    """Authenticates and counts against the key's upload budget (``NANOGEN_RATE_LIMIT_UPLOAD``)."""
    svc = services(request)
    who, _ = await _authenticate(svc, _bearer_key(request), svc.limiter.upload)
    request.scope[ACCOUNT_KEY] = who.account_id
    return who


async def _message(request: Request) -> tuple[bytes, bool]:
    message = await request.receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read up to the size cap (400 REQUEST_TOO_LARGE past it)."""
    cap = services(request).settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    # ASGI messages read directly (Request.stream()'s async generator cost a tenth of a poll). A body
    # in one message, the usual case, is used as it is; pieces are joined once at the end (appending
    # each to the bytes so far copied them all again: quadratic in the number of pieces).
    body, more = await _message(request)
    if more:
        pieces, size = [body], len(body)
        while more and size <= cap:
            body, more = await _message(request)
            pieces.append(body)
            size += len(body)
        if size > cap:
            raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
        body = b"".join(pieces)
    elif len(body) > cap:
        raise errors.RequestTooLarge(f"Request body larger than {cap} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidJSON("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.InvalidJSON()
    return data
