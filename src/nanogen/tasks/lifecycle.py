"""Starting and stopping a process's runtime: database, storage, engines, DBOS, the deadline watchdog.

The four DBOS settings that decide whether paid work is lost or done twice
are set here: a pinned ``application_version``, one stable
``executor_id`` per process (``<role>-<hostname>`` unless set), steps that re-run after a crash
(the workflows are written for it), and cancellation that the watchdog follows with its own refund.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dbos import DBOS, DBOSClient
from dbos._sys_db import SystemDatabase

from nanogen import metrics
from nanogen.db import CLIENT_POOL_SIZE, make_engine, make_system_engine, read_connection, write_transaction
from nanogen.engines.base import DEADLINE_MESSAGE, Engine
from nanogen.engines.registry import default_registry
from nanogen.products import MAX_SHOTS, Product
from nanogen.settings import Settings
from nanogen.storage import make_storage
from nanogen.tasks import futex_hash, open_files, outcomes, pg_wakeups, store, version_read, wakeups
from nanogen.tasks import runtime as runtime_module
from nanogen.tasks.periodic import Periodic
from nanogen.tasks.retention import RetentionSweeper, UploadSweeper
from nanogen.tasks.runtime import MEDIA_QUEUE, Runtime
from nanogen.webhooks import events as webhook_events

log = logging.getLogger(__name__)

DEADLINE_ERROR = DEADLINE_MESSAGE


def build_runtime(settings: Settings) -> Runtime:
    registry = default_registry()
    names = {Product.IMAGE: settings.engine_images, Product.VIDEO: settings.engine_videos}
    instances: dict[str, Engine] = {}
    engines: dict[Product, Engine] = {}
    for product, name in names.items():
        if name not in instances:
            instances[name] = registry.create(name, settings)
        engines[product] = instances[name]
    url = settings.resolved_database_url
    postgres = not url.startswith("sqlite")  # the connection budget (docs/deploy.md); SQLite keeps its own
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    system_db = make_system_engine(url)  # SQLite: DBOS's writers take turns with nanogen's
    return Runtime(
        settings=settings,
        db=make_engine(url, pool_size=settings.db_pool_size) if postgres else make_engine(url),
        storage=make_storage(settings),
        engines=engines,
        dbos_client=DBOSClient(
            system_database_url=url,
            lazy=True,
            system_database_pool_size=CLIENT_POOL_SIZE if postgres else None,
            system_database_engine=system_db,
        ),
        engine_names=names,
        system_db=system_db,
    )


@dataclass
class Process:
    """A launched runtime; ``stop()`` undoes ``launch()``."""

    runtime: Runtime
    watchdog: Watchdog | None = None
    queues: list[str] = field(default_factory=list)
    retention: RetentionSweeper | None = None
    uploads: UploadSweeper | None = None
    listener: pg_wakeups.Listener | None = None

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        for sweeper in (self.watchdog, self.retention, self.uploads):
            if sweeper is not None:
                sweeper.stop()
        # Stops the queue pollers, then gives running workflows the grace period; what is left
        # stays with this executor id (recovered on restart) or goes to the deadline watchdog.
        stop_dbos(self.runtime.settings.shutdown_grace_s)
        self.runtime.progress.stop()
        self.runtime.task_writes.stop()
        self.runtime.media.stop()
        self.runtime.dbos_client.destroy()
        if self.runtime.system_db is not None:  # given to DBOS, which leaves it to its maker
            self.runtime.system_db.dispose()
        self.runtime.db.dispose()
        runtime_module.install(None)


def concurrency(rt: Runtime, product: Product) -> int:
    configured = {
        Product.IMAGE: rt.settings.image_concurrency,
        Product.VIDEO: rt.settings.video_concurrency,
    }[product]
    return configured or rt.engines[product].default_concurrency


def account_concurrency(rt: Runtime, product: Product) -> int | None:
    """The per-account cap of a product's queue (None: no cap, the setting's default). A video
    request's shots (up to 21) always fit in it, so the cap never splits one request into waves;
    what it holds back is an account's other requests.

    A capped queue is partitioned by account, and DBOS dequeues it one partition at a time: every
    poll runs a few queries per account with queued work (at 48 accounts, most of a waiting
    worker's CPU), where an uncapped queue runs one for all. Without the setting, one account may
    use every slot, as it may anyway with one worker whose slots match the cap."""
    cap = rt.settings.account_concurrency
    if cap is None:
        return None
    return max(cap, MAX_SHOTS) if product is Product.VIDEO else cap


# Concatenations a worker takes from the queue at once. The queue is polled every 0.5 s and fills only
# its free slots per poll, so with 2 slots a burst of 48 joins of 0.1 s each took 18-25 s (4 a second);
# with 16 a poll takes the burst in a few rounds. The CPU they share is bounded apart, by the child
# processes that run them (runtime.JOINS_AT_ONCE): the other slots wait there, each holding a
# blocked thread.
MEDIA_CONCURRENCY = 16


# Threads beyond the queues' slots: DBOS's own housekeeping, and the recovery of workflows that
# were running when the process stopped, which start before the queues are polled.
SPARE_EXECUTOR_THREADS = 16


def executor_threads(settings: Settings, queues: dict[str, QueueSettings]) -> int:
    """DBOS's thread bound: every queue slot of this process gets a thread (a job waiting on a
    provider holds one, blocked, for the minutes its operation runs), plus spares."""
    if settings.max_executor_threads is not None:
        return settings.max_executor_threads
    return sum(q.concurrency for q in queues.values()) + SPARE_EXECUTOR_THREADS


# How often a stopping process looks whether its running workflows have finished.
SHUTDOWN_POLL_S = 0.05
# How often DBOS's notification listener wakes (SQLite): its sleep is what a stop waits for at most.
NOTIFICATION_POLL_S = 0.25


def stop_dbos(grace_s: float) -> None:
    """``DBOS.destroy`` with ``grace_s`` for the running workflows, without its fixed first second:
    DBOS sleeps a whole second before it first looks at them, so an idle process took over a second
    to stop (every restart of a deployment, every test server). As destroy does, the queue pollers
    stop first, so no workflow starts meanwhile; the running ones are then looked at every
    ``SHUTDOWN_POLL_S`` until none is left or the grace period is over, and DBOS is destroyed
    without a wait of its own."""
    dbos = _dbos()
    for stop in dbos.background_thread_stop_events:
        stop.set()
    wakeups.uninstall()  # pollers waiting for work see the stop now
    deadline = time.monotonic() + grace_s
    while dbos._active_workflows_set.activeList() and time.monotonic() < deadline:
        time.sleep(SHUTDOWN_POLL_S)
    DBOS.destroy(workflow_completion_timeout_sec=0)


def _dbos() -> DBOS:
    """The launched DBOS instance. DBOS has no public handle on its queue pollers, its running
    workflows, its thread pool or its system database, which nanogen reaches through this one."""
    from dbos._dbos import _get_dbos_instance

    return _get_dbos_instance()


def _dbos_executor() -> ThreadPoolExecutor:
    return _dbos()._executor


def _dbos_system_database() -> SystemDatabase:
    return _dbos()._sys_db


def start_threads_ahead(executor: ThreadPoolExecutor, count: int) -> threading.Thread:
    """Start ``count`` threads of ``executor`` now, from a thread of their own, instead of one at a
    time as a burst of work arrives. A ThreadPoolExecutor starts a thread when a job finds none
    idle, and ``Thread.start`` waits until the new thread has run, which under load means waiting
    for the interpreter lock: DBOS starts every dequeued workflow from one queue thread, so with
    2,000 image calls dequeued at once that wait, once per workflow, held starts to ~450 a second
    (py-spy dumps: the queue thread in ``Thread.start`` in 10 of 11). Idle, the threads cost memory
    only (4,000 threads: ~75 MB, about a second to start, no CPU).

    The threads are started the way the executor starts one for a job (``_adjust_thread_count``,
    under its lock), so each goes straight to waiting for work: no job holds them, and work that
    arrives meanwhile runs at once. (Holding each new thread in a job until all had started, the
    way this began, woke them all together at the end: 4,000 threads took 2.5-7 s of CPU to start,
    mostly the kernel's, against ~1.3 s started this way.)"""

    def warm() -> None:
        # Bounded: a call that finds an idle thread (a recovered workflow just ended) starts none.
        for _ in range(2 * count):
            with executor._shutdown_lock:
                if executor._shutdown or len(executor._threads) >= min(count, executor._max_workers):
                    return
                try:
                    executor._adjust_thread_count()
                except RuntimeError:  # the interpreter is exiting: no new threads
                    return

    thread = threading.Thread(target=warm, name="nanogen-threads-ahead", daemon=True)
    thread.start()
    return thread


# Young collections every 10,000 net allocations instead of CPython's 700 (3.13 raised it to 2,000).
GC_THRESHOLD = (10_000, 10, 10)


def freeze_the_startup_heap() -> None:
    """Move what startup made (modules, the app, the engines: ~230,000 objects) out of the cyclic
    collector's sight, and collect young objects less often. A burst of 2,000 image calls makes
    ~200,000 more that live for the call, and every full collection walked both with the
    interpreter lock held: in the image benchmark, ten of them took 1.8 s of a 20 s run (120-316 ms
    each, timed with gc.callbacks), half of it while the 2,000 answers came back. Frozen, and with
    the higher threshold, no full collection runs during that burst. Memory is unchanged: what
    startup made lives as long as the process anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


@dataclass(frozen=True)
class QueueSettings:
    concurrency: int  # per worker process
    polling_interval_s: float
    account_concurrency: int | None = None  # per account, across workers (a partitioned queue)


def worker_queues(rt: Runtime) -> dict[str, QueueSettings]:
    """The queues a worker takes: those of the products whose engine it runs (``worker_engines``,
    default all), and the concatenation queue. Every poll costs a few queries whether or not work
    waits, so only the queues whose latency a client sees are polled often."""
    settings = rt.settings
    wanted = set(settings.worker_engines) or set(rt.engine_names.values())
    configured = {
        Product.IMAGE: settings.image_queue_polling_interval_s,
        Product.VIDEO: settings.video_queue_polling_interval_s,
    }
    polling = {
        product: configured[product] or rt.engines[product].queue_polling_s[product] for product in Product
    }
    queues = {
        rt.queue_for(product): QueueSettings(
            concurrency(rt, product), polling[product], account_concurrency(rt, product)
        )
        for product, engine in rt.engine_names.items()
        if engine in wanted
    }
    queues[MEDIA_QUEUE] = QueueSettings(MEDIA_CONCURRENCY, settings.media_queue_polling_interval_s)
    return queues


def launch(settings: Settings, role: str, *, work: bool) -> Process:
    """Launch DBOS for this process. ``work``: also run workflows (listen to the queues)."""
    from nanogen.tasks import workflows  # noqa: F401  (registers the workflows before launch)
    from nanogen.webhooks import delivery  # noqa: F401  (and the webhook deliveries' workflow)

    rt = build_runtime(settings)
    runtime_module.install(rt)
    queues = worker_queues(rt) if work else {}
    threads = executor_threads(settings, queues)
    DBOS(
        config={
            "name": "nanogen",
            "system_database_url": settings.resolved_database_url,
            **({"system_database_engine": rt.system_db} if rt.system_db is not None else {}),
            "application_version": settings.application_version,
            "executor_id": settings.executor_id_for(role),
            "max_executor_threads": threads,
            **(
                {"sys_db_pool_size": settings.db_system_pool_size}
                if not settings.resolved_database_url.startswith("sqlite")
                else {}
            ),
            # nanogen sends no DBOS notifications, so on SQLite each poll only sleeps and reads an
            # empty map (microseconds); the interval is how long a stopping process waits for that
            # thread to notice (DBOS joins it): 1 s made every idle stop take up to a second more.
            "notification_listener_polling_interval_sec": NOTIFICATION_POLL_S,
            "console_log_level": "WARNING",
            "log_level": "WARNING",
        }
    )
    # Webhook deliveries are async workflows (a waiting retry holds no thread): not among the queues
    # whose slots are counted in threads above.
    DBOS.listen_queues([*queues, *([webhook_events.WEBHOOK_QUEUE] if work else [])])
    if work:  # before launch: the pollers start there, and recovered workflows are recorded
        wakeups.install(_dbos(), settings.queue_idle_polling_interval_s)
    futex_hash.size_for_threads(threads)  # before DBOS starts them (tasks/futex_hash.py)
    if work:
        open_files.allow(threads)  # a slot waiting on a provider holds a connection (tasks/open_files.py)
    DBOS.launch()
    # Every queue poll reads the newest application version: its statement built once (version_read.py).
    version_read.install(_dbos_system_database())
    if work:
        # SQLite: the workflows' outcomes commit in groups with the task writes (tasks/outcomes.py).
        outcomes.install(_dbos_system_database(), rt.task_writes)
        start_threads_ahead(_dbos_executor(), threads)
        for engine in {id(e): e for e in rt.engines.values()}.values():  # one instance may serve both
            engine.start_working()
    # Queue settings live in the database, shared by every worker of the queue: only workers set
    # them (an API process enqueues by name), and the last worker to start wins.
    for name, queue in queues.items():
        DBOS.register_queue(
            name,
            worker_concurrency=queue.concurrency,
            partition_concurrency=queue.account_concurrency,
            polling_interval_sec=queue.polling_interval_s,
            on_conflict="always_update",
        )
    if work:
        DBOS.register_queue(
            webhook_events.WEBHOOK_QUEUE,
            worker_concurrency=settings.webhook_concurrency,
            polling_interval_sec=settings.webhook_queue_polling_interval_s,
            on_conflict="always_update",
        )
    process = Process(rt, queues=list(queues))
    freeze_the_startup_heap()
    if work:
        process.watchdog = Watchdog(rt)
        process.watchdog.start()
        if settings.retention_days is not None:  # off by default: keep every file
            process.retention = RetentionSweeper(rt, settings.retention_days)
            process.retention.start()
        process.uploads = UploadSweeper(rt)  # on by default: uploads always expire
        process.uploads.start()
        if not settings.resolved_database_url.startswith("sqlite"):  # other processes enqueue too
            process.listener = pg_wakeups.Listener(
                settings.resolved_database_url, wakeups.wake, wakeups.wake_all
            )
            process.listener.start()
    return process


class Watchdog(Periodic):
    """Fails and refunds every task past its deadline, then cancels its workflow; and stops the jobs
    running here whose task has ended, whichever process ended it, so their slots are freed.

    Idempotent (a conditional transition), so any number of processes may run one.
    """

    def __init__(self, rt: Runtime) -> None:
        super().__init__("nanogen-watchdog", rt.settings.watchdog_interval_s)
        self._rt = rt

    def sweep(self) -> int:
        with read_connection(self._rt.db) as conn:
            overdue = store.overdue_task_ids(conn, time.time())
        failed = 0
        for task_id in overdue:
            with write_transaction(self._rt.db) as conn:
                before = store.get_task(conn, task_id)
                if not store.fail_and_refund(conn, task_id, DEADLINE_ERROR):
                    continue
                if before is not None:
                    webhook_events.generation_ended(self._rt, conn, before.generation_id)
            if before is not None:
                metrics.task_failed(before, "deadline")
            failed += 1
            log.warning("task %s passed its deadline: failed and refunded", task_id)
            self._rt.running.stop(task_id)
            try:
                DBOS.cancel_workflow(task_id)
            except Exception:
                log.exception("could not cancel workflow %s", task_id)
        self._stop_ended_jobs()
        return failed

    def _stop_ended_jobs(self) -> None:
        """Engines check their own deadline; this catches tasks ended by another process."""
        running = self._rt.running.task_ids()
        if not running:
            return
        with read_connection(self._rt.db) as conn:
            ended = store.ended_task_ids(conn, running)
        for task_id in ended:
            if self._rt.running.stop(task_id):
                log.info("task %s ended while its job ran here: job stopped", task_id)
