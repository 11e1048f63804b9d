"""The kernel's futex hash for a process of thousands of threads.

Every lock a thread sleeps on (the interpreter lock, ``threading`` locks, a pool's queue) is a
futex, and the kernel finds a futex's waiters in a hash table, walking the chain of its bucket under
the bucket's spinlock. Since Linux 6.16 a process that starts threads gets a private table sized
from the CPUs it may run on, not from its threads: 16 buckets on a 2-core machine (read with
``prctl(PR_FUTEX_HASH)``), for a worker whose ~4,000 DBOS threads mostly sleep. Each bucket then
chains hundreds of sleeping threads, and a busy futex that lands in a crowded one (the idle pool's
threads all sleep on one) pays a walk of thousands on every wait and wake.

Measured on the 2-core bench machine (2,000 Gemini image calls, ``bench/bench_google.py --only c``):
of 28 runs with the default table, 17 read 20.9-23.1 s, 9 were slow (24.2-30.3 s, up to 15.6 ms of
CPU per image) and 2 collapsed (38.1 s and 76.5 s, 83-92% of the server's CPU in the kernel). With
the table sized here, 12 runs of 12 read 21.3-21.9 s at 6.3-7.0 ms per image.

So a worker asks for a table of four buckets per thread it may run (the kernel's own ratio), a power
of two, before it starts them. It never shrinks a table. On a kernel without private futex hashes
(before 6.16) nothing changes: every process shares the global table, sized from the CPUs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# include/uapi/linux/prctl.h
PR_FUTEX_HASH = 78
PR_FUTEX_HASH_SET_SLOTS = 1
PR_FUTEX_HASH_GET_SLOTS = 2
MIN_SLOTS = 16
SLOTS_PER_THREAD = 4


def slots_for(threads: int) -> int:
    """Four buckets per thread, as a power of two, at least the kernel's minimum."""
    return max(MIN_SLOTS, 1 << (SLOTS_PER_THREAD * max(1, threads) - 1).bit_length())


def current_slots() -> int | None:
    """This process's private futex hash size (0: none yet, a process starts on the global one), or
    None when the kernel has no private hash (before Linux 6.16, or not Linux)."""
    return _slots(_prctl())


def size_for_threads(threads: int) -> int | None:
    """Grow this process's private futex hash to hold ``threads`` sleeping threads. Returns the size
    in force afterwards (None: the kernel has no private hash to size)."""
    prctl = _prctl()
    now = _slots(prctl)
    if prctl is None or now is None:
        return now
    wanted = slots_for(threads)
    if now >= wanted:
        return now
    if prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, wanted, 0, 0) != 0:
        log.warning(
            "could not grow the futex hash to %d slots for %d threads: %s",
            wanted,
            threads,
            os.strerror(ctypes.get_errno()),
        )
        return now
    log.info("futex hash: %d slots for %d threads (was %d)", wanted, threads, now)
    return wanted


def _slots(prctl: Callable[..., int] | None) -> int | None:
    if prctl is None:
        return None
    slots = int(prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0))
    return None if slots < 0 else slots


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl
