"""Every Prometheus metric nanogen exports, with its labels and help text: the names live here only.

Scraped at ``GET /metrics`` (``NANOGEN_METRICS_TOKEN``; server/routes/health.py), together with
prometheus-client's process and Python metrics. Each process counts what it did itself: sum the
counters over processes; the queue-depth gauge is read from the shared database at scrape time, so
every process reports the same value (take the max). docs/deploy.md lists them for operators.

The hot path (one HTTP request) costs a counter increment and a histogram observation on label
children cached per (route, method, status): no label dict, no ``labels()`` lookup per request.
Label values are bounded: routes are templates (never a raw path), engines and products are the
configured ones, call and error kinds are fixed sets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No ``*_created`` series beside every counter and histogram (a timestamp per series that doubles the
# scrape and that Prometheus does not need).
disable_created_metrics()  # type: ignore[no-untyped-call]

# -- HTTP -------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "nanogen_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "nanogen_http_request_duration_seconds",
    "Time from a request reaching the application to its response sent, by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
# The route label of a request no route matched (a 404): never the raw path.
UNMATCHED = "<unmatched>"

# -- tasks and credits (counted after the transaction that decided the transition committed) ------
TASKS_SUBMITTED = Counter(
    "nanogen_tasks_submitted", "Tasks created and debited (one per image or shot).", ["product", "engine"]
)
TASKS_COMPLETED = Counter("nanogen_tasks_completed", "Tasks completed.", ["product", "engine"])
TASKS_FAILED = Counter(
    "nanogen_tasks_failed",
    "Tasks failed, by cause: 'engine' (the engine or provider failed or refused the job) or 'deadline' "
    "(the watchdog failed it past its deadline).",
    ["product", "engine", "cause"],
)
TASKS_REFUNDED = Counter(
    "nanogen_tasks_refunded",
    "Tasks refunded (every failed task is refunded once, in the transaction that fails it).",
    ["product", "engine"],
)
CREDITS_DEBITED = Counter("nanogen_credits_debited", "Credits debited at submission.", ["product", "engine"])
CREDITS_REFUNDED = Counter(
    "nanogen_credits_refunded", "Credits refunded for failed tasks.", ["product", "engine"]
)

# -- workers and providers --------------------------------------------------------------------------
JOBS_RUNNING = Gauge(
    "nanogen_jobs_running",
    "Jobs this process's engines are running now (for a hosted engine: provider operations in flight).",
    ["product", "engine"],
)
QUEUE_DEPTH = Gauge(
    "nanogen_queue_depth",
    "Workflows waiting (DBOS ENQUEUED) in each queue, read from the database at scrape time; "
    "the same in every process of a deployment.",
    ["queue", "product", "engine"],
)
PROVIDER_DURATION = Histogram(
    "nanogen_provider_request_duration_seconds",
    "One call to a provider (each attempt, failed ones too), by engine and call.",
    ["engine", "call"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
PROVIDER_ERRORS = Counter(
    "nanogen_provider_errors",
    "Provider calls that failed, by engine, call and kind: 429, 5xx, 4xx (other refusals), "
    "connection (never answered), safety (a safety filter blocked the output), other.",
    ["engine", "call", "kind"],
)
PROVIDER_ERROR_KINDS = ("429", "5xx", "4xx", "connection", "safety", "other")
PROVIDER_QUOTA_WAITS = Counter(
    "nanogen_provider_quota_waits",
    "Calls that waited for the engine's own quota (a configured rate, or a pause after a 429) "
    "before going to the provider, by engine and call.",
    ["engine", "call"],
)
PROVIDER_CALLS_BEGUN = Counter(
    "nanogen_provider_calls_begun_at_acceptance",
    "Provider calls sent as their request was accepted, before a worker slot took the task (the "
    "task's job then waits on that call), by engine and call.",
    ["engine", "call"],
)
PROVIDER_POLLS = Counter(
    "nanogen_provider_polls",
    "Polls of long-running provider operations (Veo), by engine: compare with operations completed "
    "to see the polls each one took.",
    ["engine"],
)

# -- live progress (server/watch.py) ---------------------------------------------------------------
EVENT_STREAMS = Gauge("nanogen_event_streams", "Event streams (GET /api/generations/{id}/events) open now.")
STATUS_WAITS = Gauge("nanogen_status_waits", "Check-status requests waiting now (Prefer: wait=N).")
WATCH_TICKS = Counter(
    "nanogen_watch_ticks",
    "Ticks of the watcher that reads every followed generation at once (only while something is followed).",
)
WATCH_QUERIES = Counter(
    "nanogen_watch_queries",
    "Statements the watcher ran: one per tick (per 512 generations followed), two more when some moved; "
    "never one per stream.",
)

# -- webhooks (nanogen/webhooks) ---------------------------------------------------------------------
WEBHOOK_ATTEMPTS = Counter(
    "nanogen_webhook_attempts",
    "Webhook delivery attempts, by result: 2xx, http_error (another status), timeout, connection, "
    "refused (the URL's address is not allowed).",
    ["result"],
)
WEBHOOK_DELIVERIES = Counter(
    "nanogen_webhook_deliveries",
    "Webhook events settled, by outcome: delivered, or failed (every retry of the schedule failed).",
    ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "nanogen_webhook_delivery_seconds",
    "From a generation's end (its event recorded) to the receiver's 2xx answer.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0, 3600.0, 86400.0),
)

log = logging.getLogger("nanogen.tasks")


# -- HTTP ------------------------------------------------------------------------------------------
class HttpObserver:
    """Counts a request and observes its latency, on children cached per route, method and status."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def __call__(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                HTTP_REQUESTS.labels(route, method, str(status)),
                HTTP_DURATION.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)


# -- tasks -----------------------------------------------------------------------------------------
def _product(value: Any) -> str:
    return str(getattr(value, "value", value))


def tasks_submitted(product: Any, engine: str, count: int, credits: int) -> None:
    """``count`` tasks created and ``credits`` debited for them (their transaction committed)."""
    name = _product(product)
    TASKS_SUBMITTED.labels(name, engine).inc(count)
    CREDITS_DEBITED.labels(name, engine).inc(credits)


def task_completed(before: Any) -> None:
    """``before``: the task (a store.TaskRecord) as read in the transaction that completed it."""
    product = _product(before.product)
    TASKS_COMPLETED.labels(product, before.engine).inc()
    transition(
        before.id, before.generation_id, product, before.engine, _product(before.status), "completed", 0
    )


def task_failed(before: Any, cause: str) -> None:
    """``before``: the task as read in the transaction that failed and refunded it; ``cause``:
    'engine', 'deadline' or 'canceled'."""
    product = _product(before.product)
    TASKS_FAILED.labels(product, before.engine, cause).inc()
    TASKS_REFUNDED.labels(product, before.engine).inc()
    CREDITS_REFUNDED.labels(product, before.engine).inc(before.credits)
    transition(
        before.id,
        before.generation_id,
        product,
        before.engine,
        _product(before.status),
        "failed",
        before.credits,
        cause=cause,
    )


def transition(
    task_id: str,
    generation_id: str,
    product: str,
    engine: str,
    before: str | None,
    after: str,
    credits: int,
    **more: str,
) -> None:
    """One structured log line per task transition (``credits``: debited at submission, refunded at a
    failure, 0 otherwise)."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "task %s: %s -> %s",
            task_id,
            before or "new",
            after,
            extra={
                "task_id": task_id,
                "generation_id": generation_id,
                "product": product,
                "engine": engine,
                "from": before,
                "to": after,
                "credits": credits,
                **more,
            },
        )


def task_started(record: Any) -> None:
    """The start step committed: the task is generating."""
    transition(
        record.id, record.generation_id, _product(record.product), record.engine, "pending", "generating", 0
    )


# -- webhooks --------------------------------------------------------------------------------------
def webhook_attempt(result: str, state: str, delivered_after_s: float | None) -> None:
    """An attempt's ``result``; the event's new ``state`` (pending, delivered, failed)."""
    WEBHOOK_ATTEMPTS.labels(result).inc()
    if state != "pending":
        WEBHOOK_DELIVERIES.labels(state).inc()
    if delivered_after_s is not None:
        WEBHOOK_DELIVERY_SECONDS.observe(delivered_after_s)


# -- queues ----------------------------------------------------------------------------------------
_depth_seen: set[tuple[str, str, str]] = set()


def set_queue_depths(depths: Mapping[str, int]) -> None:
    """The depth of every queue, as read now; a queue seen before and empty now reads 0."""
    current: dict[tuple[str, str, str], int] = {}
    for queue, count in depths.items():
        parts = queue.split(".", 2)
        product, engine = (parts[1], parts[2]) if len(parts) == 3 else (parts[-1], "")
        current[(queue, product, engine)] = count
    for labels in _depth_seen - set(current):
        QUEUE_DEPTH.labels(*labels).set(0)
    for labels, count in current.items():
        QUEUE_DEPTH.labels(*labels).set(count)
    _depth_seen.update(current)
