"""The one small interface every engine implements, and the jobs it is given.

An engine is constructed once per process from the settings and then called from worker threads
(DBOS steps), possibly several calls at once up to the queue's concurrency. Engines write their output
to ``dest`` (a path in a scratch directory) and report progress from 0 to 100 through ``progress``.
Errors the client should see are raised as :class:`nanogen.errors.EngineError`. Every wait an
engine makes goes through its job (``job.wait``), which ends at the task's deadline or when the
task ends elsewhere, so that no job holds a worker slot for longer than its task lives.

Capabilities are class attributes (like llm's ``can_stream``), checked before any credit moves.

Engines whose jobs are a provider's long-running operation (``long_running``) are driven in two
phases: ``submit_shot`` starts the paid work and returns the provider's operation name, which the
workflow records durably; ``await_shot`` then waits for that operation and fetches its output. A
re-run after a crash awaits the recorded operation again instead of paying for a second one.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from nanogen.errors import EngineError, NanogenError
from nanogen.products import (
    SHOT_FPS,
    SHOT_SECONDS,
    GenerationType,
    ImageAspectRatio,
    ImageMode,
    ImageQuality,
    Product,
    Resolution,
    VideoAspectRatio,
)

if TYPE_CHECKING:
    from nanogen.settings import Settings

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class InputImage:
    """An input image, already fetched and decoded once to prove it is an image."""

    data: bytes
    mime_type: str
    width: int
    height: int
    source_url: str = ""


# What a job stopped at its deadline tells the client (the watchdog fails late tasks with the same words).
DEADLINE_MESSAGE = "Generation timed out (deadline exceeded); credits refunded"


class JobStopped(EngineError):
    """The job may not go on: its deadline passed, or its task ended elsewhere (failed, canceled)."""


class StopSignal:
    """A job's stop flag, with :class:`threading.Event`'s ``set``, ``is_set`` and ``wait``, whose
    waiters can also be woken without stopping the job (:meth:`nudge`): a wait whose length depends
    on something learned meanwhile (the poll schedule's window) looks again, instead of waking
    every few seconds to check (each wake of a thread costs ~65 us of CPU; a thousand waiting shots
    woken every 2 s cost ~2 ms of CPU per shot)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Until set, nudged or ``timeout`` passed; True when set."""
        with self._cond:
            if not self._flag:
                self._cond.wait(timeout)
            return self._flag

    def nudge(self) -> None:
        """Wake the current waiters without setting the flag."""
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True, kw_only=True)
class Job:
    """When a job must stop. Engines wait with :meth:`wait` (never ``time.sleep``) and call
    :meth:`check` between stages, so that a stopped job frees its worker slot at once instead of
    holding it until its wait is over."""

    deadline: float = math.inf  # epoch seconds: the task fails at this time, so stop then
    stop: StopSignal = field(default_factory=StopSignal, compare=False, repr=False)

    def check(self) -> None:
        """Raise :class:`JobStopped` when the job is stopped or past its deadline."""
        if self.stop.is_set():
            raise JobStopped("Generation stopped: its task ended")
        if time.time() >= self.deadline:
            raise JobStopped(DEADLINE_MESSAGE)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short by a stop or the deadline (then :class:`JobStopped`), or by a
        nudge (then it returns early)."""
        self.check()
        self.stop.wait(max(0.0, min(seconds, self.deadline - time.time())))
        self.check()


@dataclass(frozen=True)
class ImageJob(Job):
    task_id: str
    prompt: str
    mode: ImageMode
    aspect_ratio: ImageAspectRatio
    quality: ImageQuality
    width: int
    height: int
    google_search: bool = False
    images: tuple[InputImage, ...] = ()


@dataclass(frozen=True)
class ShotJob(Job):
    task_id: str
    prompt: str
    generation_type: GenerationType
    aspect_ratio: VideoAspectRatio
    resolution: Resolution
    width: int
    height: int
    images: tuple[InputImage, ...] = ()
    seconds: int = SHOT_SECONDS
    fps: int = SHOT_FPS
    started_at: float | None = None  # epoch seconds the task started (a recovered job is older)


# Provider calls prepared for tasks being committed (``Engine.prepare_image_calls``), called once
# after the transaction with the task ids that committed: it sends their calls, gives up the others
# and returns how many went.
PreparedCalls = Callable[[Collection[str]], int]


@dataclass(frozen=True)
class Output:
    """What an engine made: the file it wrote and its media type."""

    path: Path
    content_type: str
    metadata: dict[str, object] = field(default_factory=dict)


class EngineConfigError(NanogenError):
    """The settings don't let this engine run (a missing key or project): raised when it is built."""


@dataclass(frozen=True)
class Check:
    """One line of ``nanogen doctor``: what was checked, whether it is fine, and what to do if not."""

    name: str
    ok: bool
    detail: str


class Engine(ABC):
    """Base class of engines. Subclasses set the capabilities and override what they support."""

    name: ClassVar[str]
    products: ClassVar[frozenset[Product]] = frozenset()
    generation_types: ClassVar[frozenset[GenerationType]] = frozenset()
    resolutions: ClassVar[frozenset[Resolution]] = frozenset()
    image_qualities: ClassVar[frozenset[ImageQuality]] = frozenset()
    supports_google_search: ClassVar[bool] = False
    # True for engines that spend money per call at a provider: they must record the provider's
    # operation before waiting on it, so that a re-run resumes instead of paying twice.
    spends_money: ClassVar[bool] = False
    # Products whose jobs run as a provider's long-running operation: submit_shot / await_shot.
    long_running: ClassVar[frozenset[Product]] = frozenset()
    # Whether ``prepare_image_calls`` may prepare calls (a hosted engine's image job is one call).
    begins_image_calls: ClassVar[bool] = False
    # How many jobs one worker process runs at once by default (a setting overrides it).
    default_concurrency: ClassVar[int] = 4
    # How often a worker polls each product's queue by default (a setting overrides it). Every poll
    # costs the worker a few milliseconds of CPU whether or not work waits, so only an engine whose
    # jobs take well under a second polls often.
    queue_polling_s: ClassVar[dict[Product, float]] = {Product.IMAGE: 0.5, Product.VIDEO: 0.5}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def start_working(self) -> None:
        """Called once when this process starts to run jobs (a worker launches): start what the jobs
        will need, off their path. The default: nothing."""
        return None

    def generate_image(self, job: ImageJob, dest: Path, progress: ProgressFn) -> Output:
        raise NotImplementedError(f"engine {self.name!r} does not make images")

    def prepare_image_calls(self, jobs: Sequence[ImageJob]) -> PreparedCalls | None:
        """Prepare the provider calls of image jobs whose tasks are about to be committed, to send
        once they are (calling what it returns), before a worker slot takes them; ``generate_image``
        of such a task then waits on its call instead of making one. Called only in the process
        that will run those tasks (tasks/early.py). None: nothing to send (the default: an engine
        whose job is its own work)."""
        return None

    def generate_shot(self, job: ShotJob, dest: Path, progress: ProgressFn) -> Output:
        raise NotImplementedError(f"engine {self.name!r} does not make videos")

    def submit_shot(self, job: ShotJob) -> str:
        """Start the job at the provider; returns the operation name to record before waiting."""
        raise NotImplementedError(f"engine {self.name!r} has no long-running operations")

    def await_shot(self, job: ShotJob, operation: str, dest: Path, progress: ProgressFn) -> Output:
        """Wait for a submitted (or recovered) operation and write its output to ``dest``."""
        raise NotImplementedError(f"engine {self.name!r} has no long-running operations")

    def cost_micros(self, job: ImageJob | ShotJob) -> int | None:
        """The provider's list price of one job in millionths of a USD; None when not known."""
        return None

    def diagnose(self, products: frozenset[Product]) -> list[Check]:
        """Checks for ``nanogen doctor``: settings, credentials, reachability. Never a paid call."""
        return [Check("ready", True, f"the {self.name} engine needs no provider")]

    def capabilities(self, product: Product) -> dict[str, frozenset[str]]:
        """The values each option may take; engines whose abilities depend on a model override it."""
        return {
            "generation_type": frozenset(self.generation_types),
            "resolution": frozenset(self.resolutions),
            "quality": frozenset(self.image_qualities),
        }

    def unsupported(self, product: Product, **options: str) -> str | None:
        """Why this engine cannot take a request with these options, or None when it can."""
        if product not in self.products:
            return f"the {self.name} engine does not make {product.value}s"
        checks = self.capabilities(product)
        for option, value in options.items():
            allowed = checks.get(option)
            if allowed is not None and value not in allowed:
                return f"the {self.name} engine does not support {option} {value}"
        return None
