"""``Idempotency-Key`` on the generate endpoints (docs/api.md, "Idempotent retries").

A request with a key first claims it (a row of ``nanogen_idempotency_keys`` without a response), before
its expensive pre-debit work (fetching input images). The claim is a write transaction, so concurrent
retries with one key are ordered by the database: one of them holds the claim, the others see it and
answer 409 (or, once the first has committed, its response again). The response is written on the
claim in the transaction of the debit and the generation (tasks/submit.py); a request refused before
that (any error) deletes its claim, so it is not remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import Request
from starlette.responses import Response

from nanogen import errors
from nanogen.db import conflict, write_transaction
from nanogen.server.responses import FastJSONResponse
from nanogen.server.services import Services
from nanogen.tasks import store

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_CLAIM_ATTEMPTS = 5

# The header as documented in the OpenAPI schema of both generate operations.
OPENAPI_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "nanogen: retry safely. The same key from the same account with the same body within 24 h answers "
        "the first response again (header Idempotent-Replayed: true) and debits nothing; another body: 422 "
        "IDEMPOTENCY_KEY_REUSED; while the first request is still being processed: 409 "
        "IDEMPOTENCY_KEY_IN_USE. A refused first request (4xx) is not remembered."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
}


def openapi_extra() -> dict[str, Any]:
    """The header, for a generate route's ``openapi_extra``."""
    return {"parameters": [OPENAPI_PARAMETER]}


def requested_key(request: Request) -> str | None:
    """The request's key, or None without the header; 400 INVALID_PARAMETER when it is not a
    printable string of 1 to 255 characters."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY_CHARS or not value.isprintable():
        raise errors.InvalidParameter(
            f"{HEADER} must be a printable string of 1 to {MAX_KEY_CHARS} characters", field=HEADER
        )
    return value


def request_hash(path: str, body: dict[str, Any]) -> str:
    """The canonical hash of a request: its endpoint and its parsed JSON body, keys sorted (so that
    spacing and key order do not make two equal bodies different)."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(path.encode() + b"\n" + canonical).hexdigest()


@dataclass
class Claim:
    """``replay``: the first request's response to answer again (nothing else to do); else this
    request holds the key (or had none) and goes on."""

    key: str | None
    replay: Response | None = None


def _claim(
    engine: sa.Engine, account_id: str, key: str, digest: str, generation_id: str
) -> store.IdempotencyClaim:
    for attempt in range(_CLAIM_ATTEMPTS):
        try:
            with write_transaction(engine) as conn:
                return store.claim_idempotency_key(conn, account_id, key, digest, generation_id, time.time())
        except Exception as exc:
            if attempt + 1 < _CLAIM_ATTEMPTS and (store.claim_again(exc) or conflict(exc)):
                continue  # another claim won a race: its row is there now
            raise
    raise AssertionError("unreachable")


def _release(engine: sa.Engine, account_id: str, key: str, generation_id: str) -> None:
    with write_transaction(engine) as conn:
        store.release_idempotency_key(conn, account_id, key, generation_id)


@asynccontextmanager
async def claimed(
    svc: Services,
    request: Request,
    account_id: str,
    key: str | None,
    body: dict[str, Any],
    generation_id: str,
) -> AsyncIterator[Claim]:
    """Claim ``key`` (when given) for the request that will create ``generation_id``; 422 or 409 as
    documented. If the block raises (the request refused), the claim is released."""
    if key is None:
        yield Claim(None)
        return
    engine = svc.runtime.db
    digest = request_hash(request.url.path, body)
    found = await asyncio.to_thread(_claim, engine, account_id, key, digest, generation_id)
    if found.outcome == "reused":
        raise errors.IdempotencyKeyReused()
    if found.outcome == "in_use":
        raise errors.IdempotencyKeyInUse()
    if found.outcome == "replay":
        yield Claim(key, FastJSONResponse(found.response, headers={REPLAYED_HEADER: "true"}))
        return
    try:
        yield Claim(key)
    except BaseException:
        # Conditional on the claim being still ours and unanswered: a request whose debit committed
        # (its response stored) keeps it.
        await asyncio.shield(asyncio.to_thread(_release, engine, account_id, key, generation_id))
        raise
