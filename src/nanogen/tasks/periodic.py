"""A background thread that runs a sweep every few seconds until stopped (the deadline watchdog,
the retention sweeper). A failed sweep is logged and tried again at the next interval."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

log = logging.getLogger(__name__)


class Periodic(ABC):
    def __init__(self, name: str, interval_s: float, *, run_at_start: bool = False) -> None:
        self._interval_s = interval_s
        self._run_at_start = run_at_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abstractmethod
    def sweep(self) -> int:
        """One pass; returns how many things it handled."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self._run_at_start:
            self._sweep_once()
        while not self._stop.wait(self._interval_s):
            self._sweep_once()

    def _sweep_once(self) -> None:
        try:
            self.sweep()
        except Exception:
            log.exception("%s: sweep failed; will retry", self._thread.name)
