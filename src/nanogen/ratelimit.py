"""Per-key request limits (the ``limits`` library: in-process by default, Redis to share).

Two budgets per API key: generate requests (the pages' 100/hour) and check-status polling, which has
its own generous budget so a client polling every few seconds never runs into the generate limit.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from nanogen.errors import RateLimited


class RateLimiter:
    def __init__(self, generate: str, status: str, storage_uri: str = "memory://") -> None:
        self._strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self.generate = parse(generate)
        self.status = parse(status)

    def hit(self, item: RateLimitItem, key_id: str) -> None:
        """Count one request; raise RateLimited (with seconds until a slot frees) past the budget."""
        if self._strategy.hit(item, "nanogen", key_id):
            return
        reset_at, _remaining = self._strategy.get_window_stats(item, "nanogen", key_id)
        raise RateLimited(max(1, math.ceil(reset_at - time.time())))
