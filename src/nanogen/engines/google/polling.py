"""When to poll a Veo operation.

Google's guidance is to poll a video operation about every 10 seconds; a shot takes from about half
a minute to several minutes, so polling a young operation mostly asks a question whose answer is
known. The schedule waits before the first poll for most of the time operations have recently taken
here (4/5 of the median of the last ones seen finishing; twice the interval until there are any),
then polls every ``NANOGEN_GOOGLE_POLL_INTERVAL_S``. Each delay is jittered by a tenth, so that a
burst of shots submitted together does not poll in step. A shot is seen done at most one interval
(and its jitter) after Veo finishes it.
"""

from __future__ import annotations

import random
import statistics
import threading
from collections import deque

# How many recent operations the median is taken over.
HISTORY = 100
FIRST_POLL_SHARE = 0.8  # of the median: the first poll comes shortly before most operations finish
JITTER = 0.1


class PollSchedule:
    def __init__(self, interval_s: float, history: int = HISTORY) -> None:
        self.interval_s = interval_s
        self._durations: deque[float] = deque(maxlen=history)
        self._lock = threading.Lock()

    def first_delay(self) -> float:
        """Seconds from submission (or recovery) to the first poll."""
        with self._lock:
            typical = statistics.median(self._durations) if self._durations else None
        if typical is None:
            return _jittered(2 * self.interval_s)
        return _jittered(max(self.interval_s, FIRST_POLL_SHARE * typical))

    def next_delay(self) -> float:
        """Seconds between later polls."""
        return _jittered(self.interval_s)

    def finished(self, waited_s: float) -> None:
        """An operation was seen done ``waited_s`` after its wait began."""
        with self._lock:
            self._durations.append(waited_s)


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)
