"""When to poll a Veo operation.

Google's guidance is to poll a video operation about every 10 seconds; a shot takes from about half
a minute to several minutes, so polling a young operation mostly asks a question whose answer is
known, and polling every 10 s sees a finished shot up to 10 s late. The schedule learns from the
operations this process saw finish (their ages when seen done, the last ``HISTORY``): it polls every
``NANOGEN_GOOGLE_POLL_INTERVAL_S`` (10 s) except in the window where most of them finished (from
just before the 10th percentile to just after the 90th), where it polls up to ten times across the
window, never more often than every fifth of an interval (2 s). Before the window it waits for the
window, three intervals at most at a time.

Until anything has finished here, the operations awaited together poll about once a second between
them: each every interval when there are few, up to three intervals apart (each delay drawn from half to
one and a half times that spacing) when there are many, the first after two intervals at least.
When the first window is learned, the operations waiting meanwhile are woken (their jobs' stop
signals are nudged) and poll as if just recovered (when in or past the window: within one of its
spacings, each at a random point of it, so that a woken wave does not poll in step): the first
operation of a burst seen done says where the rest of its wave will finish, so a thousand shots cost
about two polls each before it, and none is seen up to an interval late. Other delays are jittered by
a tenth, so that a burst of shots submitted together does not poll in step.

So where recent shots took about the same time, one of that length is seen done within about 2 s,
for a few more polls than every 10 s would make; where they varied widely, or a shot takes much
longer, within 10 s; one much quicker than the recent ones, within 30 s.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nanogen.engines.base import Job, StopSignal

# How many recent operations the window is learned from.
HISTORY = 100
EARLY = 0.9  # the window opens at this share of the 10th percentile
DENSE = 5  # polls per interval inside the window
WINDOW_POLLS = 10  # at most this many polls across the window
MAX_WAIT = 3  # intervals: a shot much quicker than the recent ones is seen at most this late
JITTER = 0.1
# Before any window: the awaited operations' polls between them, about one per this many seconds.
WAVE_POLL_GAP_S = 1.0


class PollSchedule:
    def __init__(self, interval_s: float, history: int = HISTORY) -> None:
        self.interval_s = interval_s
        self._ages: deque[float] = deque(maxlen=history)
        self._window: tuple[float, float, float] | None = None  # opens, closes, the polls' spacing
        self._awaited = 0  # operations being awaited in this process
        self._learning: set[StopSignal] = set()  # jobs waiting while no window is known
        self._lock = threading.Lock()

    @contextmanager
    def awaiting(self) -> Iterator[None]:
        """Count an operation as awaited while the block runs (the spacing before any window)."""
        with self._lock:
            self._awaited += 1
        try:
            yield
        finally:
            with self._lock:
                self._awaited -= 1

    def delay(self, age_s: float, *, first: bool = False) -> float:
        """Seconds to wait before polling an operation ``age_s`` old (0: just submitted). ``first``:
        this process has not polled it yet (a recovered operation in or past the window is polled
        within one of its spacings, at a random point of it)."""
        with self._lock:
            window, awaited = self._window, self._awaited
        if window is None:
            return self._before_window(age_s, first=first, awaited=awaited)
        opens, closes, dense = window
        if age_s < opens:  # young: wait for the window, but never more than MAX_WAIT intervals at once
            wait = min(opens - age_s, MAX_WAIT * self.interval_s)
        elif first:  # in or past it, not polled here yet: within one spacing, a woken wave not in step
            return random.uniform(0.0, dense)
        elif age_s < closes:
            wait = dense
        else:
            wait = self.interval_s
        return _jittered(wait)

    def _before_window(self, age_s: float, *, first: bool, awaited: int) -> float:
        """Nothing finished here yet: poll every interval, or spread wider when many are awaited
        (a wave of N polls about N times in its spacing)."""
        spacing = min(MAX_WAIT * self.interval_s, max(self.interval_s, awaited * WAVE_POLL_GAP_S))
        start = max(2 * self.interval_s, spacing)  # the first poll of a fresh operation
        if first and age_s >= start:  # a recovered one, due: now
            return 0.0
        wait = start - age_s if first else spacing
        if spacing > self.interval_s:  # spread: a burst submitted together polls all through its spacing
            return wait * random.uniform(0.5, 1.5)
        return _jittered(wait)

    def wait(self, job: Job, delay_s: float, age_s: Callable[[], float]) -> None:
        """Wait ``delay_s`` (from :meth:`delay`) with ``job.wait``, cut short by a stop or the
        deadline. A wait that began before any window was learned is woken when the first one is
        (:meth:`finished`), and then lasts as long as the window says, if that is shorter."""
        until = time.monotonic() + delay_s
        with self._lock:
            learning = self._window is None
            if learning:
                self._learning.add(job.stop)
        if learning:
            try:
                job.wait(delay_s)  # returns early when nudged
            finally:
                with self._lock:
                    self._learning.discard(job.stop)
            if self._window is not None:  # learned meanwhile (else: a spurious wake-up, wait the rest)
                until = min(until, time.monotonic() + self.delay(age_s(), first=True))
        while (left := until - time.monotonic()) > 0:
            job.wait(left)

    def finished(self, age_s: float) -> None:
        """An operation was seen done ``age_s`` after it was submitted."""
        with self._lock:
            self._ages.append(age_s)
            if len(self._ages) >= 2:
                deciles = statistics.quantiles(self._ages, n=10, method="inclusive")
                low, high = deciles[0], deciles[-1]
            else:
                low = high = self._ages[0]
            # At most WINDOW_POLLS polls across the window, never closer than a fifth of the interval:
            # where durations vary widely, every interval (Google's guidance) is as good as it gets.
            dense = min(self.interval_s, max(self.interval_s / DENSE, (high - low) / WINDOW_POLLS))
            self._window = (EARLY * low, high + dense, dense)
            learning, self._learning = self._learning, set()
        for stop in learning:  # the first window: the waits begun without one look again
            stop.nudge()


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)
