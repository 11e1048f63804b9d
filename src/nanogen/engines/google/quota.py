"""Google's quotas seen from a worker: a submit rate that queued work waits for, and a pause that
every call of a kind honours after Google answers 429.

Google limits a project's requests per minute per model (docs/engines.md lists the published
figures); past them it answers 429 RESOURCE_EXHAUSTED, usually with a RetryInfo delay. Two things
keep a burst of a thousand submissions from becoming a thousand failures or a retry storm:

* :class:`CallGate` ``rate`` (``NANOGEN_GOOGLE_VIDEO_SUBMIT_RATE``, ``NANOGEN_GOOGLE_IMAGE_RATE``,
  e.g. ``"50/minute"``): a moving window counted in the rate-limit storage, so with
  ``NANOGEN_RATE_LIMIT_STORAGE=redis://...`` every worker of a deployment shares one window. A job
  over the rate waits its turn (``job.wait``, so a stopped task or its deadline ends the wait) and
  is never failed for it before its deadline.
* The pause: the first 429 of a kind makes every call of that kind in this process wait out
  Google's delay (or the backoff) instead of each call discovering the quota on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from nanogen import metrics
from nanogen.engines.base import Job

log = logging.getLogger(__name__)

# While shared storage is unreachable a job waits this long and tries again (it never fails for it).
STORAGE_RETRY_S = 2.0
_REDIS_OPTIONS: dict[str, float] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


class CallGate:
    """When a call of one kind (``video submission``, ``image generation``...) may go to Google."""

    def __init__(
        self,
        kind: str,
        rate: str | None = None,
        storage_uri: str = "memory://",
        key_prefix: str = "nanogen",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kind = kind
        self._item: RateLimitItem | None = parse(rate) if rate else None
        self._limiter: MovingWindowRateLimiter | None = None
        if self._item is not None:
            options = {} if storage_uri.startswith("memory://") else _REDIS_OPTIONS
            storage = storage_from_string(
                storage_uri, key_prefix=f"{key_prefix}-quota", wrap_exceptions=True, **options
            )
            self._limiter = MovingWindowRateLimiter(storage)
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_until = 0.0  # epoch seconds
        self._waiting = metrics.PROVIDER_QUOTA_WAITS.labels("google", kind)

    @property
    def rate(self) -> str | None:
        return str(self._item) if self._item is not None else None

    def admit(self, job: Job) -> None:
        """Wait until a call may go: past any 429 pause and within the rate. Raises JobStopped
        (from ``job.wait``) when the task ends or its deadline comes first."""
        waited = False
        while True:
            wait = self._paused_for() or self._over_rate_for()
            if wait <= 0:
                break
            if not waited:
                self._waiting.inc()
                waited = True
            job.wait(wait)

    def open_now(self) -> bool:
        """A call may go this instant with nothing to count: no rate is configured and no 429 pause
        is in force (a call under a rate takes its turn through ``admit``)."""
        return self._item is None and self._paused_for() <= 0

    def pause(self, seconds: float) -> None:
        """Google said 429: hold every call of this kind here for ``seconds``."""
        until = self._clock() + seconds
        with self._lock:
            if until <= self._paused_until:
                return
            first = self._paused_until < self._clock()
            self._paused_until = until
        if first:
            log.warning("Google's quota for %s is exhausted: calls paused for %.1fs", self.kind, seconds)

    def _paused_for(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - self._clock())

    def _over_rate_for(self) -> float:
        if self._limiter is None or self._item is None:
            return 0.0
        try:
            if self._limiter.hit(self._item, self.kind):
                return 0.0
            stats = self._limiter.get_window_stats(self._item, self.kind)
        except StorageError as exc:
            log.warning("quota storage unreachable (%s): %s waits %.0fs", exc, self.kind, STORAGE_RETRY_S)
            return STORAGE_RETRY_S
        # Spread the waiters over the next slot or so: they would all retry at the same instant.
        return max(0.05, stats.reset_time - self._clock())
