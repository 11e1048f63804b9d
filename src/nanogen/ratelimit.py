"""Per-key request limits (the ``limits`` library: in-process by default, Redis to share).

Two budgets per API key: generate requests (the pages' 100/hour) and check-status polling, which has
its own generous budget so a client polling every few seconds never runs into the generate limit.

The in-process storage answers in microseconds, so it is counted on the event loop itself (a thread
hop per request cost more than the count); a networked storage is counted in a worker thread.
"""

from __future__ import annotations

import math
import time

from anyio import to_thread
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from nanogen.errors import RateLimited


class RateLimiter:
    def __init__(self, generate: str, status: str, storage_uri: str = "memory://") -> None:
        self._strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self._inline = storage_uri.startswith("memory://")
        self.generate = parse(generate)
        self.status = parse(status)

    async def count(self, item: RateLimitItem, key_id: str) -> None:
        """``hit`` for request handlers."""
        if self._inline:
            self.hit(item, key_id)
        else:
            await to_thread.run_sync(self.hit, item, key_id)

    def hit(self, item: RateLimitItem, key_id: str) -> None:
        """Count one request; raise RateLimited (with seconds until a slot frees) past the budget."""
        if self._strategy.hit(item, "nanogen", key_id):
            return
        reset_at, _remaining = self._strategy.get_window_stats(item, "nanogen", key_id)
        raise RateLimited(max(1, math.ceil(reset_at - time.time())))
