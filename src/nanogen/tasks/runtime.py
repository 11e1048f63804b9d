"""What a running process works with: settings, database, storage, engines, the DBOS client.

DBOS is a process-wide singleton and its workflow functions are module-level, so they reach the
runtime the process was started with through :func:`current`. It is installed once by the entry
point (``nanogen serve`` / ``nanogen worker``), never at import.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from nanogen.engines.base import StopSignal
from nanogen.media.processes import MediaProcesses
from nanogen.products import Product
from nanogen.tasks.progress_writer import ProgressWriter
from nanogen.tasks.task_writer import TaskWriter

if TYPE_CHECKING:
    from dbos import DBOSClient

    from nanogen.engines.base import Engine
    from nanogen.settings import Settings
    from nanogen.storage import Storage


class RunningJobs:
    """The jobs this process's engines are running, each with the signal that stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, StopSignal] = {}

    @contextmanager
    def track(self, task_id: str) -> Iterator[StopSignal]:
        stop = StopSignal()
        with self._lock:
            self._jobs[task_id] = stop
        try:
            yield stop
        finally:
            with self._lock:
                if self._jobs.get(task_id) is stop:
                    del self._jobs[task_id]

    def task_ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def stop(self, task_id: str) -> bool:
        """Stop the job of ``task_id`` if it runs here; True when it did."""
        with self._lock:
            stop = self._jobs.get(task_id)
        if stop is None:
            return False
        stop.set()
        return True


class OncePerKey:
    """Runs an idempotent action once per key in this process, remembering the last ``remember``
    keys. Callers for a key take turns: the first runs it, the others find it done; if it raised, the
    next one runs it again. Across processes the action's own idempotency is what holds."""

    def __init__(self, remember: int = 4096) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def run(self, key: str, action: Callable[[], object]) -> bool:
        """Run ``action`` unless it ran for ``key`` here; True when it ran now."""
        with self._lock:  # a short action (an insert): one lock for all keys is simplest
            if key in self._done:
                return False
            action()
            self._done[key] = None
            if len(self._done) > self._remember:
                self._done.popitem(last=False)
            return True


JOINS_AT_ONCE = 2


@dataclass
class Runtime:
    settings: Settings
    db: sa.Engine
    storage: Storage
    engines: dict[Product, Engine]
    dbos_client: DBOSClient
    engine_names: dict[Product, str] = field(default_factory=dict)
    system_db: sa.Engine | None = None  # DBOS's engine, made here on SQLite (db.make_system_engine)
    running: RunningJobs = field(default_factory=RunningJobs)
    # Concatenations this process enqueued: a generation's shots often end in one group commit, and
    # each asks; one enqueue (a write) per generation, not one per shot.
    concat_requests: OncePerKey = field(default_factory=OncePerKey)
    # Joins run in child processes, this many at once: CPU work, so more at once does not finish a
    # burst sooner on a small machine (the queue's slots, lifecycle.MEDIA_CONCURRENCY, only set
    # how fast they are taken); fewer would leave a core idle while joins wait.
    media: MediaProcesses = field(default_factory=lambda: MediaProcesses(JOINS_AT_ONCE))
    progress: ProgressWriter = field(init=False)  # the jobs' progress reports, written in batches
    task_writes: TaskWriter = field(init=False)  # the jobs' task transitions, committed in groups
    # Resolved once: Settings.scratch_dir resolves the home on each call, an lstat per part of the
    # path, and every job asks (at 2,000 jobs starting at once, a tenth of their start's samples).
    scratch_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.progress = ProgressWriter(self.db)
        self.task_writes = TaskWriter(self.db)
        self.scratch_dir = self.settings.scratch_dir

    def queue_for(self, product: Product) -> str:
        return queue_name(product, self.engine_names[product])


MEDIA_QUEUE = "nanogen.media"
# Workflow names (tasks/workflows.py): what enqueuers refer to without importing the workflows.
RUN_TASK = "nanogen.run_task"
CONCATENATE = "nanogen.concatenate"


def queue_name(product: Product, engine_name: str) -> str:
    return f"nanogen.{product.value}.{engine_name}"


_current: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("nanogen runtime not started in this process")
    return _current
