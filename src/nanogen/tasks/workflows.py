"""DBOS workflows that drive engines. A task's workflow id is the task id.

Each workflow is a few steps whose effects are idempotent: ``start`` and the terminal transitions
are conditional on the task's current status (store.py), and a failure refunds in the transaction
that fails the task. A step interrupted by a crash runs again on recovery (DBOS steps are at-least-once):
for the sandbox that means rendering again. Engines whose jobs are a provider's long-running
operation (video on Google) get a ``submit`` step between start and render: it starts the paid work
and records the operation on the task row, and DBOS records the step's result, so a recovered
workflow replays that operation name and the render step polls it instead of paying twice.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from dbos import DBOS

from nanogen import metrics
from nanogen.db import read_connection, transient, write_transaction
from nanogen.engines.base import Engine, ImageJob, Output, ProgressFn, ShotJob
from nanogen.errors import EngineError
from nanogen.media.video import concat_videos
from nanogen.products import Product
from nanogen.storage import new_key
from nanogen.tasks import jobs, store
from nanogen.tasks.runtime import CONCATENATE, MEDIA_QUEUE, RUN_TASK, Runtime, current
from nanogen.tasks.status import TaskStatus
from nanogen.webhooks import events as webhook_events

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

FAILED_MESSAGE = {Product.IMAGE: "Image generation failed", Product.VIDEO: "Video generation failed"}


def database_step(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A step whose effects are idempotent, retried with backoff (about a minute in all) after a
    conflict or while the database is unreachable (a restart, a failover) instead of failing the
    task. The provider submit step is not one: re-running it after an unrecorded submission could
    pay twice."""
    return DBOS.step(
        name=name,
        retries_allowed=True,
        interval_seconds=1.0,
        max_attempts=10,
        backoff_rate=1.5,
        should_retry=transient,
    )


@DBOS.workflow(name=RUN_TASK)
def run_task(task_id: str) -> str:
    started = start_step(task_id)
    if started is None:
        return "ended"
    operation: str | None = None
    if started.get("submit"):
        submitted = submit_step(task_id)
        if "error" in submitted:
            fail_step(task_id, submitted["error"])
            return TaskStatus.FAILED.value
        operation = submitted["operation"]
    outcome = render_step(task_id, operation)
    if "error" in outcome:
        fail_step(task_id, outcome["error"])
        return TaskStatus.FAILED.value
    if not complete_step(task_id, outcome["url"], outcome["key"]):
        return "ended"
    if started["concatenate"]:
        request_concat_step(started["generation_id"])
    return TaskStatus.COMPLETED.value


@database_step("nanogen.start")
def start_step(task_id: str) -> dict[str, Any] | None:
    rt = current()
    with write_transaction(rt.db) as conn:
        record = store.start(conn, task_id)
        if record is None:
            return None
        generation = store.get_generation(conn, record.generation_id)
    metrics.task_started(record)
    return {
        "generation_id": record.generation_id,
        "concatenate": generation is not None and generation.concat_status is not None,
        "submit": record.product in rt.engines[record.product].long_running,
    }


@DBOS.step(name="nanogen.submit")
def submit_step(task_id: str) -> dict[str, str]:
    """Start the job at the provider and record its operation. Returns {"operation"} or {"error"}.

    The operation is written to the task row as soon as the provider answers, and DBOS records this
    step's result; a re-run (a crash before DBOS recorded it) finds the row's operation and returns it
    instead of submitting again. Only a crash between the provider's answer and that row's commit
    (milliseconds) can leave an operation nanogen does not know about."""
    rt = current()
    with read_connection(rt.db) as conn:
        record = store.get_task(conn, task_id)
    if record is None or record.status.is_terminal:
        return {"error": "Task ended before it ran"}
    if record.provider_operation:
        return {"operation": record.provider_operation}
    engine = rt.engines[record.product]
    try:
        job = _shot_job(rt, record)
        operation = engine.submit_shot(job)
    except EngineError as exc:
        log.info("task %s: %s refused the job: %s", task_id, record.engine, exc.message)
        return {"error": exc.message}
    except Exception:
        log.exception("task %s: engine %s raised while submitting", task_id, record.engine)
        return {"error": FAILED_MESSAGE[record.product]}
    with write_transaction(rt.db) as conn:
        return {"operation": store.record_operation(conn, task_id, operation, engine.cost_micros(job))}


@database_step("nanogen.render")
def render_step(task_id: str, operation: str | None = None) -> dict[str, str]:
    """Run the engine (or await the submitted ``operation``) and store its output. Returns
    {"key", "url"} or {"error"}; never raises, so the outcome is recorded as this step's result and a
    replay sees the same one."""
    rt = current()
    with write_transaction(rt.db) as conn:
        record = store.count_attempt(conn, task_id)
    if record is None:
        return {"error": "Task ended before it ran"}
    scratch = rt.settings.scratch_dir / task_id
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        output = _generate(rt, record, scratch, operation)
        if isinstance(seed := output.metadata.get("seed"), int):  # a local engine's: to make it again
            with write_transaction(rt.db) as conn:
                store.record_seed(conn, task_id, seed)
        key = new_key("out", f"{task_id}{Path(output.path).suffix}")
        rt.storage.put_file(key, output.path)
        return {"key": key, "url": rt.storage.url_for(key)}
    except EngineError as exc:
        log.info("task %s failed in engine %s: %s", task_id, record.engine, exc.message)
        return {"error": exc.message}
    except Exception as exc:
        if transient(exc):  # not the engine's fault: the step runs again once the database is back
            raise
        log.exception("task %s: engine %s raised", task_id, record.engine)
        return {"error": FAILED_MESSAGE[record.product]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _shot_job(rt: Runtime, record: store.TaskRecord, stop: threading.Event | None = None) -> ShotJob:
    images = jobs.load_inputs(rt.storage, record.params)
    job = jobs.shot_job(record.id, record.params, images)
    return dataclasses.replace(
        job, deadline=record.deadline_at, stop=stop or threading.Event(), started_at=record.started_at
    )


def _generate(rt: Runtime, record: store.TaskRecord, scratch: Path, operation: str | None) -> Output:
    engine = rt.engines[record.product]
    progress = _progress_reporter(rt, record.id)
    # The job's stop signal is this process's handle on it: the watchdog sets it when the task ends
    # (its deadline, or failed or canceled by any process), and the engine's waits end at once.
    running = metrics.JOBS_RUNNING.labels(record.product.value, record.engine)
    with rt.running.track(record.id) as stop, running.track_inprogress():
        if record.product is Product.IMAGE:
            images = jobs.load_inputs(rt.storage, record.params)
            job = dataclasses.replace(
                jobs.image_job(record.id, record.params, images), deadline=record.deadline_at, stop=stop
            )
            output = engine.generate_image(job, scratch / "image.png", progress)
            _record_cost(rt, engine, job, record)
            return output
        shot = _shot_job(rt, record, stop)
        if operation is not None:
            return engine.await_shot(shot, operation, scratch / "shot.mp4", progress)
        output = engine.generate_shot(shot, scratch / "shot.mp4", progress)
        _record_cost(rt, engine, shot, record)
        return output


def _record_cost(rt: Runtime, engine: Engine, job: ImageJob | ShotJob, record: store.TaskRecord) -> None:
    """A synchronous provider call is paid once per attempt (a re-run after a crash calls again)."""
    cost = engine.cost_micros(job)
    if cost is not None:
        with write_transaction(rt.db) as conn:
            store.set_provider_cost(conn, record.id, cost * max(1, record.attempts))


# After its first report (written at once: "the request is in flight"), a task's progress is written
# at most this often: clients poll every few seconds, and each write is a transaction in the one
# database (a sandbox image reported five steps in its 50 ms, five write transactions).
PROGRESS_EVERY_S = 0.25


def _progress_reporter(rt: Runtime, task_id: str) -> ProgressFn:
    last = 0
    due = 0.0

    def report(value: int) -> None:
        nonlocal last, due
        value = max(0, min(99, int(value)))  # 100 means completed, which only complete() says
        now = time.monotonic()
        if value <= last or now < due:
            return
        last, due = value, now + PROGRESS_EVERY_S
        try:
            with write_transaction(rt.db) as conn:
                store.set_progress(conn, task_id, value)
        except Exception as exc:  # progress is advisory: a write lost to an outage is skipped
            if not transient(exc):
                raise
            log.debug("progress of %s not recorded: %s", task_id, exc)

    return report


@database_step("nanogen.complete")
def complete_step(task_id: str, url: str, key: str) -> bool:
    rt = current()
    with write_transaction(rt.db) as conn:
        before = store.get_task(conn, task_id)
        done = store.complete(conn, task_id, url, key)
        if done and before is not None:
            webhook_events.generation_ended(rt, conn, before.generation_id)
    if done and before is not None:
        metrics.task_completed(before)
    if not done:  # failed meanwhile (deadline): the late output is nobody's
        rt.storage.delete(key)
    return done


@database_step("nanogen.fail")
def fail_step(task_id: str, error: str) -> bool:
    rt = current()
    with write_transaction(rt.db) as conn:
        before = store.get_task(conn, task_id)
        failed = store.fail_and_refund(conn, task_id, error)
        if failed and before is not None:
            webhook_events.generation_ended(rt, conn, before.generation_id)
    if failed and before is not None:
        metrics.task_failed(before, "engine")
    return failed


@database_step("nanogen.request_concat")
def request_concat_step(generation_id: str) -> bool:
    """Start the concatenation once every shot completed and it is still pending. Every shot asks
    after completing; the fixed workflow id makes the concatenation run once however many ask."""
    rt = current()
    with read_connection(rt.db) as conn:
        generation = store.get_generation(conn, generation_id)
        shots = store.generation_tasks(conn, generation_id)
    if generation is None or generation.concat_status != store.CONCAT_PENDING:
        return False
    if not all(s.status is TaskStatus.COMPLETED for s in shots):
        return False
    rt.dbos_client.enqueue(
        {
            "workflow_name": CONCATENATE,
            "queue_name": MEDIA_QUEUE,
            "workflow_id": f"concat_{generation_id}",
            "app_version": rt.settings.application_version,
        },
        generation_id,
    )
    return True


@DBOS.workflow(name=CONCATENATE)
def concatenate(generation_id: str) -> str:
    return concat_step(generation_id)


@database_step("nanogen.concat")
def concat_step(generation_id: str) -> str:
    """Join the shots and settle the concatenation. Runs only while it is pending, and settling is
    conditional (store.set_concat): a concatenation settled meanwhile (a shot failed, another run
    finished) is never overwritten, and the file this run stored is then deleted."""
    rt = current()
    with read_connection(rt.db) as conn:
        generation = store.get_generation(conn, generation_id)
        shots = store.generation_tasks(conn, generation_id)
    if generation is None or generation.concat_status != store.CONCAT_PENDING:
        return "ended"
    scratch = rt.settings.scratch_dir / f"concat_{generation_id}"
    scratch.mkdir(parents=True, exist_ok=True)
    key: str | None = None
    try:
        inputs = [_local_copy(rt, s.output_key, scratch / f"{i:02d}.mp4") for i, s in enumerate(shots)]
        dest = scratch / "concatenated.mp4"
        started = time.monotonic()
        result = concat_videos(inputs, dest)
        key = new_key("out", f"{generation_id}.mp4")
        rt.storage.put_file(key, dest)
        with write_transaction(rt.db) as conn:
            settled = store.set_concat(
                conn, generation_id, store.CONCAT_COMPLETED, url=rt.storage.url_for(key), key=key
            )
            if settled:
                webhook_events.generation_ended(rt, conn, generation_id)
        if not settled:
            _discard(rt, key)
            return "ended"
        log.info("concatenated %s (%s) in %.2fs", generation_id, result, time.monotonic() - started)
        return "completed"
    except Exception as exc:
        # The database, not the shots: the step runs again once it is back. A file stored by this
        # run is kept: the commit that recorded it may have succeeded before the connection broke.
        if transient(exc):
            raise
        if key is not None:  # not recorded (the write failed outright): nobody's
            _discard(rt, key)
        log.exception("concatenation of %s failed", generation_id)
        with write_transaction(rt.db) as conn:
            settled = store.set_concat(
                conn, generation_id, store.CONCAT_FAILED, error=f"Concatenation failed: {exc}"
            )
            if settled:
                webhook_events.generation_ended(rt, conn, generation_id)
        return "failed" if settled else "ended"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _discard(rt: Runtime, key: str) -> None:
    """Delete a stored output nothing will record (best effort: it is nobody's either way)."""
    try:
        rt.storage.delete(key)
    except Exception:
        log.warning("could not delete the unrecorded output %s", key, exc_info=True)


def _local_copy(rt: Runtime, key: str | None, dest: Path) -> Path:
    if key is None:
        raise ValueError("a completed shot has no output")
    local = rt.storage.local_path(key)
    if local is not None:
        return local
    dest.write_bytes(rt.storage.read_bytes(key))
    return dest
