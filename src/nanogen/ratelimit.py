"""Per-key request limits: moving windows in process memory by default, in Redis (the ``limits``
library) to share them between processes.

Budgets per API key: generate requests (the pages' 100/hour), check-status polling, which has its own
generous budget so a client polling every few seconds never runs into the generate limit, and
uploads. Each budget counts only its own requests, even when two are set to the same rate: its name is
part of every counter's key.

The in-process windows answer in microseconds, so they are counted on the event loop itself (a thread
hop per request cost more than the count); Redis is counted in a worker thread.

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
from collections import deque
from typing import NamedTuple

from anyio import to_thread
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from nanogen.errors import RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_SHARED_AFTER_S = 2.0  # while shared storage is down, how often a request tries it again
SWEEP_EVERY_S = 60.0  # how often the in-process windows drop the keys that went quiet
_REDIS_OPTIONS: dict[str, float | str | bool] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


class Budget(NamedTuple):
    """A named rate: the name keeps its counters apart from another budget of the same rate."""

    name: str
    item: RateLimitItem
    label: str = ""  # what the 429 message calls the requests counted ("" for the pages' own)

    @classmethod
    def parse(cls, name: str, rate: str, label: str = "") -> Budget:
        return cls(name, parse(rate), label)

    def exceeded(self, retry_after: int) -> RateLimited:
        """The 429 stating this budget, in the pages' words for the default ("100 req/hour")."""
        item = self.item
        unit = item.GRANULARITY.name
        per = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
        what = f" of {self.label}" if self.label else ""
        return RateLimited(retry_after, f"Rate limit exceeded ({item.amount} req/{per}{what})")


class LocalWindows:
    """Moving windows in this process's memory: per key and budget, the times of the requests in it.

    Not limits' MemoryStorage: that one expires entries from a timer thread it starts again every
    10 ms while requests come in, and on the request path those thread starts (and the GIL hand-offs
    they cause) cost more than the counting (py-spy: about a tenth of a check-status). Here a window
    is trimmed when it is counted, and quiet keys are swept once a minute.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int, str], deque[float]] = {}
        self._lock = threading.Lock()  # the event loop counts, and so do worker threads (fallback)
        self._swept_at = time.monotonic()

    def hit(self, budget: Budget, key_id: str) -> float | None:
        """Count one request: None when it fits, else the seconds until a slot frees."""
        now = time.monotonic()
        item = budget.item
        period = item.get_expiry()
        key = (budget.name, period, key_id)
        with self._lock:
            if now - self._swept_at > SWEEP_EVERY_S:
                self._sweep(now)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = deque()
            while window and window[0] <= now - period:
                window.popleft()
            if len(window) >= item.amount:
                return window[0] + period - now
            window.append(now)
            return None

    def _sweep(self, now: float) -> None:
        self._swept_at = now
        for key in [k for k, w in self._windows.items() if not w or w[-1] <= now - k[1]]:
            del self._windows[key]


class RateLimiter:
    def __init__(
        self,
        generate: str,
        status: str,
        storage_uri: str = "memory://",
        *,
        upload: str = "300/hour",
        key_prefix: str = "nanogen",
        fail_closed: bool = False,
    ) -> None:
        self.generate = Budget.parse("generate", generate)
        self.status = Budget.parse("status", status, "check-status requests")
        self.upload = Budget.parse("upload", upload, "uploads")
        self.shared = not storage_uri.startswith("memory://")
        self._fail_closed = fail_closed
        self._local = LocalWindows()  # the budgets, or the fallback while shared storage is down
        self._shared: MovingWindowRateLimiter | None = None
        if self.shared:
            # wrap_exceptions turns Redis errors into StorageError.
            storage = storage_from_string(
                storage_uri, key_prefix=key_prefix, wrap_exceptions=True, **_REDIS_OPTIONS
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._lock = threading.Lock()
        self._down_until = 0.0  # monotonic; > now while shared storage is considered down

    async def count(self, budget: Budget, key_id: str) -> None:
        """``hit`` for request handlers: in-process windows are counted on the event loop itself."""
        if not self.shared:
            self.hit(budget, key_id)
        else:
            await to_thread.run_sync(self.hit, budget, key_id)

    def hit(self, budget: Budget, key_id: str) -> None:
        """Count one request; raise RateLimited (with seconds until a slot frees) past the budget."""
        wait = self._local.hit(budget, key_id) if self._shared is None else self._shared_hit(budget, key_id)
        if wait is not None:
            raise budget.exceeded(max(1, math.ceil(wait)))

    def _shared_hit(self, budget: Budget, key_id: str) -> float | None:
        assert self._shared is not None
        if time.monotonic() < self._down_until:
            return self._unavailable(budget, key_id)
        try:
            wait = None
            if not self._shared.hit(budget.item, budget.name, key_id):
                stats = self._shared.get_window_stats(budget.item, budget.name, key_id)
                wait = stats.reset_time - time.time()
        except StorageError as exc:
            self._went_down(exc)
            return self._unavailable(budget, key_id)
        self._came_back()
        return wait

    def _unavailable(self, budget: Budget, key_id: str) -> float | None:
        if self._fail_closed:
            raise ServiceUnavailable("Rate limit storage unreachable, retry shortly")
        return self._local.hit(budget, key_id)

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
        return self._shared is None or bool(self._shared.storage.check())
