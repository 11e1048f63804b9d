"""CPU-bound media work in child processes, off the server's interpreter.

Joining 21 shots is a Python loop over about 12,000 packets (PyAV). In the server's own process it holds
the interpreter lock that the API and every job waiting on a provider share, so a burst of joins slows
all of them on one core while the others idle; in a child it runs on a core of its own. The children
start on first use, from a fresh interpreter (``spawn``: never a fork of a process running a thousand
threads), and end with the process, also when it is killed (``kill -9`` runs no shutdown code: each
child watches its parent and exits when it is gone). A child that dies (a decoder fault) fails the
call it ran, not the server; the next call starts new children.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class MediaProcesses:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` in a child (both picklable); waits while ``workers`` calls run."""
        with self._lock:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
                )
            pool = self._pool
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _exit_with_parent(parent: int) -> None:
    """In a child: exit once ``parent`` is gone (it is then re-parented), instead of waiting forever
    for work that will never come."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="nanogen-parent-watch", daemon=True).start()
