"""Per-key request limits (the ``limits`` library: in-process by default, Redis to share).

Two budgets per API key: generate requests (the pages' 100/hour) and check-status polling, which has
its own generous budget so a client polling every few seconds never runs into the generate limit.

The in-process storage answers in microseconds, so it is counted on the event loop itself (a thread
hop per request cost more than the count); a networked storage is counted in a worker thread.

With ``NANOGEN_RATE_LIMIT_STORAGE=redis://...`` every API process counts in the same moving windows
(atomic Lua scripts in Redis), so two processes behind one key allow 100 requests an hour between
them, not 200. When that storage cannot be reached the choice is ``NANOGEN_RATE_LIMIT_FAIL``:

* ``open`` (default): count in this process's memory instead (each process then allows up to the
  budget on its own) and log a warning; the ledger still refuses any request that cannot be paid;
* ``closed``: answer 503 SERVICE_UNAVAILABLE.

Either way the outage is logged once, shared storage is tried again every few seconds, and recovery
is logged; a request never gets a 500 because of it.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from anyio import to_thread
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from nanogen.errors import RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_SHARED_AFTER_S = 2.0  # while shared storage is down, how often a request tries it again
_REDIS_OPTIONS: dict[str, float | str | bool] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


class RateLimiter:
    def __init__(
        self,
        generate: str,
        status: str,
        storage_uri: str = "memory://",
        *,
        key_prefix: str = "nanogen",
        fail_closed: bool = False,
    ) -> None:
        self.generate = parse(generate)
        self.status = parse(status)
        self.shared = not storage_uri.startswith("memory://")
        self._fail_closed = fail_closed
        # Options that memory storage ignores; wrap_exceptions turns Redis errors into StorageError.
        self._storage = storage_from_string(
            storage_uri, key_prefix=key_prefix, wrap_exceptions=True, **_REDIS_OPTIONS
        )
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._fallback = MovingWindowRateLimiter(MemoryStorage()) if self.shared else self._strategy
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic; > now while shared storage is considered down

    async def count(self, item: RateLimitItem, key_id: str) -> None:
        """``hit`` for request handlers."""
        if not self.shared:
            self.hit(item, key_id)
        else:
            await to_thread.run_sync(self.hit, item, key_id)

    def hit(self, item: RateLimitItem, key_id: str) -> None:
        """Count one request; raise RateLimited (with seconds until a slot frees) past the budget."""
        strategy = self._strategy
        if self.shared and time.monotonic() < self._down_until:
            strategy = self._unavailable()
        try:
            allowed = strategy.hit(item, key_id)
            reset_at = 0.0 if allowed else strategy.get_window_stats(item, key_id).reset_time
        except StorageError as exc:
            self._went_down(exc)
            strategy = self._unavailable()
            allowed = strategy.hit(item, key_id)
            reset_at = 0.0 if allowed else strategy.get_window_stats(item, key_id).reset_time
        else:
            if strategy is self._strategy:
                self._came_back()
        if not allowed:
            raise RateLimited(max(1, math.ceil(reset_at - time.time())))

    def _unavailable(self) -> MovingWindowRateLimiter:
        if self._fail_closed:
            raise ServiceUnavailable("Rate limit storage unreachable, retry shortly")
        return self._fallback

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + RETRY_SHARED_AFTER_S
        if first:
            mode = "answering 503" if self._fail_closed else "counting in process memory"
            log.warning("rate-limit storage unreachable (%s): %s until it is back", exc, mode)

    def _came_back(self) -> None:
        if self._down_until == 0.0:
            return
        with self._lock:
            recovered, self._down_until = self._down_until != 0.0, 0.0
        if recovered:
            log.warning("rate-limit storage reachable again: shared counting resumed")

    def ping(self) -> bool:
        """Whether the shared storage answers (readiness); True when budgets are in memory."""
        return not self.shared or bool(self._storage.check())
