"""One budget for the memory that decoding images takes, shared by every thread of the process.

A decode first reserves what it will hold at most (decoder buffers and decoded pixels, estimated from
the header before any pixel is decoded) and waits, first come first served, until that fits under the
limit; a decode that alone is over the limit waits until nothing else holds any and then runs alone.
So however many uploads, fetches and engine jobs decode at once, their pixels stay under
``max(limit, the largest single decode)``.

Freed image memory goes back to the system rather than staying in malloc's arenas (glibc; elsewhere
nothing changes): on the first decode, :func:`tune_allocator` makes every allocation of 4 MiB or more
its own mapping (``M_MMAP_THRESHOLD``; glibc otherwise raises that threshold to 32 MiB as large blocks
are freed, so Pillow's 16 MiB blocks land in per-thread arenas that each keep their high-water mark),
and when the last holder leaves after large decodes the arenas are trimmed (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["DecodeBudget", "release_freed_memory", "tune_allocator"]

MIB = 1024 * 1024
TRIM_AFTER = 16 * MIB  # hand memory back once at least this much was held since the last time


MMAP_THRESHOLD = 4 * MIB
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _glibc(name: str) -> Callable[..., int] | None:
    """A glibc malloc function, or None (musl, macOS: they do without)."""
    libc = ctypes.util.find_library("c")
    if not libc:
        return None
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(libc), name)
    except (OSError, AttributeError):
        return None
    return function


_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")
_tuned = threading.Event()


def tune_allocator() -> None:
    """Once per process: allocations of :data:`MMAP_THRESHOLD` or more are mapped, and unmapped when freed."""
    if not _tuned.is_set():
        _tuned.set()
        if _MALLOPT is not None:
            _MALLOPT(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD))


def release_freed_memory() -> None:
    """Return malloc's free pages to the system (glibc; a no-op elsewhere)."""
    if _TRIM is not None:
        _TRIM(ctypes.c_size_t(0))


class DecodeBudget:
    """At most ``limit`` bytes held by decodes at once; waiters are served in arrival order."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the decode budget must be at least one byte")
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0
        self._waiting: deque[tuple[int, threading.Event]] = deque()
        self._since_trim = 0
        self.peak = 0  # the most ever held at once (clamped reservations)
        self.holds = 0  # reservations granted: decodes done

    @property
    def used(self) -> int:
        return self._used

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Reserve ``nbytes`` (clamped to the limit: an oversized decode runs alone) for the block."""
        tune_allocator()
        amount = max(0, min(nbytes, self.limit))
        ticket = threading.Event()
        with self._lock:
            self._waiting.append((amount, ticket))
            self._grant()
        ticket.wait()
        try:
            yield
        finally:
            with self._lock:
                self._used -= amount
                self._since_trim += nbytes
                trim = self._used == 0 and self._since_trim >= TRIM_AFTER
                if trim:
                    self._since_trim = 0
                self._grant()
            if trim:
                release_freed_memory()

    def _grant(self) -> None:
        """Admit waiters from the head of the line while they fit (called with the lock held)."""
        while self._waiting and self._used + self._waiting[0][0] <= self.limit:
            amount, ticket = self._waiting.popleft()
            self._used += amount
            self.peak = max(self.peak, self._used)
            self.holds += 1
            ticket.set()
