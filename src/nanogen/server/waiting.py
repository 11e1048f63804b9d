"""``Prefer: wait=N`` on check-status (RFC 7240; docs/api.md): answer as soon as the generation ends,
or after N seconds with its state then.

Only a request that asks is changed: it is answered with ``Preference-Applied: wait=N``. N above
``MAX_WAIT_S`` is clamped to it (and the header says so); a ``wait`` that is not a whole number of
seconds is ignored, as RFC 7240 lets a server ignore any preference. The request waits on the
process-wide watcher (server/watch.py), never by reading the database itself: it reads once when
it starts (the usual check-status read) and once more if its time runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nanogen import metrics
from nanogen.server.responses import FastJSONResponse
from nanogen.server.watch import Snapshot, Watcher

MAX_WAIT_S = 60
TERMINAL = ("completed", "failed")
_PREFER = b"prefer"

Answer = dict[str, Any]


OPENAPI_PARAMETER: dict[str, Any] = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": f"nanogen: `wait=N` (seconds, at most {MAX_WAIT_S}; more is clamped): answer as soon "
    "as the generation ends, or after N seconds with its state then. Answered with "
    "`Preference-Applied: wait=N`.",
}


def openapi_extra() -> dict[str, Any]:
    """The header, for a check-status route's ``openapi_extra``."""
    return {"parameters": [OPENAPI_PARAMETER]}


def preferred_wait(request: Request) -> int | None:
    """The seconds a ``Prefer: wait=N`` asks for (clamped to MAX_WAIT_S), or None when not asked (then
    the check-status answers as it always did)."""
    found: int | None = None
    for name, value in request.scope["headers"]:  # raw: no Headers object on every poll
        if name != _PREFER:
            continue
        for preference in value.decode("latin-1").split(","):
            token, _, argument = preference.split(";", 1)[0].strip().partition("=")
            if token.strip().lower() != "wait":
                continue
            argument = argument.strip().strip('"')
            if argument.isascii() and argument.isdigit():
                found = min(int(argument), MAX_WAIT_S)
    return found


def watcher(request: Request) -> Watcher:
    found: Watcher = request.scope["state"]["watcher"]  # the lifespan's state (server/app.py)
    return found


async def respond(
    request: Request,
    seconds: int,
    answer: Answer,
    generation_ids: Iterable[str],
    rebuild: Callable[[Mapping[str, Snapshot]], Answer],
    current: Callable[[], Awaitable[Answer]],
) -> Response:
    """The answer of a check-status that prefers to wait ``seconds`` (``preferred_wait``): ``answer`` at
    once when it is terminal; else ``rebuild(snapshots)`` (the same answer built from the watcher's
    snapshots of ``generation_ids``) as soon as that is terminal, or ``current()`` (read again) after
    ``seconds``."""
    if answer.get("status") not in TERMINAL and seconds > 0:
        answer = await _wait(watcher(request), tuple(generation_ids), rebuild, current, seconds)
    return FastJSONResponse(answer, headers={"Preference-Applied": f"wait={seconds}"})


async def _wait(
    watch: Watcher,
    generation_ids: tuple[str, ...],
    rebuild: Callable[[Mapping[str, Snapshot]], Answer],
    current: Callable[[], Awaitable[Answer]],
    seconds: int,
) -> Answer:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    metrics.STATUS_WAITS.inc()
    try:
        with watch.subscribe(generation_ids) as subscription:
            while True:  # the snapshots first: one may have ended since this request read
                snapshots = {g: subscription.latest(g) for g in generation_ids}
                if all(s is not None for s in snapshots.values()):
                    final = rebuild({g: s for g, s in snapshots.items() if s is not None})
                    if final.get("status") in TERMINAL:
                        return final
                remaining = deadline - loop.time()
                if remaining <= 0 or not await subscription.wait(remaining):
                    break
    finally:
        metrics.STATUS_WAITS.dec()
    return await current()
