"""DBOS workflows that drive engines. A task's workflow id is the task id.

A task's workflow runs the task in its own body, not in a DBOS step: start the task, run the engine,
store the output, end the task. Every DBOS step costs a checkpoint read and a checkpoint write in
DBOS's tables (at 2,000 image calls in flight, the read alone was a sixth of the worker's interpreter
lock while jobs started), and the task's row already is the record a re-run needs. For engines whose
jobs are a provider's long-running operation (video on Google), the engine's job is submitted first
and the operation written to the task row the moment the provider answers, before anything waits on
it: that row is what a re-run (after a crash or a database outage) finds, so it polls the same
operation again and never pays twice.

Every effect is idempotent: starting and the terminal transitions are conditional on the task's
status (store.py), a failure refunds in the transaction that fails the task, and a run interrupted
by a crash runs again when DBOS recovers the workflow: for the sandbox that means rendering again.
A database outage during a run makes it run again in place, with backoff (``_retried``, about a
minute in all, as a database step would); the end of a task is written with its own retries
(``_settle``), so an outage at that moment does not run the engine again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from dbos import DBOS

from nanogen import metrics
from nanogen.db import (
    RETRY_ATTEMPTS,
    RETRY_BACKOFF,
    RETRY_INTERVAL_S,
    read_connection,
    transient,
    write_transaction,
)
from nanogen.engines.base import Engine, ImageJob, Output, ProgressFn, ShotJob, StopSignal
from nanogen.errors import EngineError
from nanogen.media.video import concat_videos
from nanogen.products import Product
from nanogen.storage import new_key
from nanogen.tasks import jobs, store, wakeups
from nanogen.tasks.runtime import CONCATENATE, MEDIA_QUEUE, RUN_TASK, Runtime, current
from nanogen.tasks.status import TaskStatus
from nanogen.webhooks import events as webhook_events

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

FAILED_MESSAGE = {Product.IMAGE: "Image generation failed", Product.VIDEO: "Video generation failed"}


def database_step(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A step whose effects are idempotent, retried with backoff (about a minute in all) after a
    conflict or while the database is unreachable (a restart, a failover) instead of failing."""
    return DBOS.step(
        name=name,
        retries_allowed=True,
        interval_seconds=RETRY_INTERVAL_S,
        max_attempts=RETRY_ATTEMPTS,
        backoff_rate=RETRY_BACKOFF,
        should_retry=transient,
    )


@DBOS.workflow(name=RUN_TASK)
def run_task(task_id: str) -> str:
    ended = _retried(lambda: execute(task_id))
    # Only a shot that saw its generation's shots all completed asks (a step: a checkpoint write each).
    if ended["status"] == COMPLETED and ended.get("concatenate") and ended.get("shots_done"):
        request_concat_step(ended["generation_id"])
    return str(ended["status"])


COMPLETED = TaskStatus.COMPLETED.value
FAILED = TaskStatus.FAILED.value
ENDED = "ended"  # ended elsewhere meanwhile (canceled, its deadline): nothing more to do


def execute(task_id: str) -> dict[str, Any]:
    """Start the task, run the engine, store the output and end the task: {"status", ...}.

    For a provider's long-running operation the engine's job is submitted first and the operation
    recorded on the task row before anything waits on it; a re-run (after a crash, or a database
    outage) finds it there and awaits it again instead of paying twice."""
    rt = current()
    started, generation = rt.task_writes.write_in(_start_tasks, task_id)
    if started is None:
        return _ended_before(rt, task_id)
    metrics.task_started(started)
    shape = {
        "generation_id": started.generation_id,
        "concatenate": generation is not None and generation.concat_status is not None,
    }
    operation = None
    if started.product in rt.engines[started.product].long_running:
        submitted = _submit(rt, started)
        if "operation" not in submitted:
            return shape | submitted
        operation = submitted["operation"]
    return _with_shots_done(rt, shape | _run(rt, started, operation))


def _start_tasks(
    conn: sa.Connection, task_ids: Sequence[str]
) -> list[tuple[store.TaskRecord | None, store.GenerationRecord | None]]:
    """Start the tasks of a batch of the task writer (one UPDATE): each as started (None once
    terminal), with its generation for a video's shot (one SELECT for all of them). Only a video's
    shots are joined: an image's start reads no generation."""
    started = store.start_many(conn, task_ids)
    joined = store.get_generations(
        conn, (t.generation_id for t in started.values() if t.product is Product.VIDEO)
    )
    results: list[tuple[store.TaskRecord | None, store.GenerationRecord | None]] = []
    for task_id in task_ids:
        record = started.get(task_id)
        video = record is not None and record.product is Product.VIDEO
        results.append((record, joined.get(record.generation_id) if record is not None and video else None))
    return results


def _ended_before(rt: Runtime, task_id: str) -> dict[str, Any]:
    """A task that could not start: ended elsewhere (failed, canceled), or completed by an earlier
    run whose end committed just before a crash, before its workflow finished. That one still asks
    for its generation's concatenation, if it was the last shot."""
    with read_connection(rt.db) as conn:
        record = store.get_task(conn, task_id)
        generation = record and store.get_generation(conn, record.generation_id)
    if record is None or record.status is not TaskStatus.COMPLETED or generation is None:
        return {"status": ENDED}
    ended = {
        "status": COMPLETED,
        "generation_id": record.generation_id,
        "concatenate": generation.concat_status is not None,
    }
    return _with_shots_done(rt, ended)


def _with_shots_done(rt: Runtime, ended: dict[str, Any]) -> dict[str, Any]:
    """A completed shot of a multi-shot generation: whether every shot has completed, read after
    this one's end committed, so that of shots ending together at least the last to commit sees
    them all (the others may too: the concatenation's fixed id makes extra asks harmless)."""
    if ended["status"] == COMPLETED and ended.get("concatenate"):
        ended["shots_done"] = _settle(lambda: _concat_due(rt, ended["generation_id"]))
    return ended


def _concat_due(rt: Runtime, generation_id: str) -> bool:
    """Every shot of the generation completed and its concatenation is still pending."""
    with read_connection(rt.db) as conn:
        return store.concat_due(conn, generation_id)


def _submit(rt: Runtime, record: store.TaskRecord) -> dict[str, str]:
    """Start the job at the provider and record its operation: {"operation"}, or the task's end.
    Only a crash between the provider's answer and the commit that records it (milliseconds) can
    leave an operation nanogen does not know about."""
    if record.provider_operation:  # a re-run: submitted before
        return {"operation": record.provider_operation}
    engine = rt.engines[record.product]
    try:
        job = _shot_job(rt, record)
        operation = engine.submit_shot(job)
    except EngineError as exc:
        log.info("task %s: %s refused the job: %s", record.id, record.engine, exc.message)
        return _fail(rt, record.id, exc.message)
    except Exception:
        log.exception("task %s: engine %s raised while submitting", record.id, record.engine)
        return _fail(rt, record.id, FAILED_MESSAGE[record.product])

    def write() -> str:
        cost = engine.cost_micros(job)
        return rt.task_writes.write(lambda conn: store.record_operation(conn, record.id, operation, cost))

    try:
        return {"operation": _settle(write)}
    except Exception as exc:
        # Paid for, not recorded: never submit again (a re-run would). The task is
        # failed and refunded at its deadline; the operation is in the log for the operator.
        log.error("task %s: Veo operation %s could not be recorded: %s", record.id, operation, exc)
        raise UnrecordedOperation(f"operation {operation} of task {record.id} not recorded") from exc


class UnrecordedOperation(RuntimeError):
    """Not a database outage: the run that raises it must not run again."""


def _run(rt: Runtime, record: store.TaskRecord, operation: str | None) -> dict[str, str]:
    """Run the engine (or await the submitted ``operation``), store its output and end the task."""
    scratch = rt.scratch_dir / record.id
    scratch.mkdir(parents=True, exist_ok=True)
    output: Output | None = None
    try:
        output, cost = _generate(rt, record, scratch, operation)
        key = new_key("out", f"{record.id}{Path(output.path).suffix}")
        rt.storage.put_file(key, output.path)
    except EngineError as exc:
        log.info("task %s failed in engine %s: %s", record.id, record.engine, exc.message)
        return _fail(rt, record.id, exc.message)
    except Exception as exc:
        if transient(exc):  # not the engine's fault: the run starts again once the database is back
            raise
        log.exception("task %s: engine %s raised", record.id, record.engine)
        return _fail(rt, record.id, FAILED_MESSAGE[record.product])
    finally:
        _remove_scratch(scratch, None if output is None else Path(output.path))
    seed = output.metadata.get("seed")
    return _complete(rt, record, key, cost, seed if isinstance(seed, int) else None)


def _remove_scratch(scratch: Path, output: Path | None) -> None:
    """Delete a job's scratch folder. Where the engine left only its output there (a provider's
    image or video, stored by now), two system calls instead of rmtree's nine: each gives the
    interpreter lock away, and 2,000 jobs end within seconds of each other."""
    if output is not None and output.parent == scratch:
        try:
            os.unlink(output)
            os.rmdir(scratch)
            return
        except OSError:  # something else in it (an engine's own files), or gone already
            pass
    shutil.rmtree(scratch, ignore_errors=True)


def _shot_job(rt: Runtime, record: store.TaskRecord, stop: StopSignal | None = None) -> ShotJob:
    images = jobs.load_inputs(rt.storage, record.params)
    job = jobs.shot_job(record.id, record.params, images)
    return dataclasses.replace(
        job, deadline=record.deadline_at, stop=stop or StopSignal(), started_at=record.started_at
    )


def _generate(
    rt: Runtime, record: store.TaskRecord, scratch: Path, operation: str | None
) -> tuple[Output, int | None]:
    """The engine's output, and what the provider charged for a synchronous call (None: nothing
    known, or paid at submission)."""
    engine = rt.engines[record.product]
    every_s = PROGRESS_EVERY_S if operation is None else OPERATION_PROGRESS_EVERY_S
    progress = _progress_reporter(rt, record.id, every_s)
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
            return output, _paid(engine, job, record)
        shot = _shot_job(rt, record, stop)
        if operation is not None:
            return engine.await_shot(shot, operation, scratch / "shot.mp4", progress), None
        output = engine.generate_shot(shot, scratch / "shot.mp4", progress)
        return output, _paid(engine, shot, record)


def _paid(engine: Engine, job: ImageJob | ShotJob, record: store.TaskRecord) -> int | None:
    """A synchronous provider call is paid once per attempt (a re-run after a crash calls again)."""
    cost = engine.cost_micros(job)
    return None if cost is None else cost * max(1, record.attempts)


@dataclasses.dataclass(frozen=True)
class _Ending:
    """A task's end with its output, as the task writer's batch completes it with the others."""

    completion: store.Completion
    generation_id: str
    seed: int | None


def _end_tasks(conn: sa.Connection, endings: Sequence[_Ending]) -> list[tuple[bool, str | None]]:
    """Complete every task of ``endings`` (a batch's: one UPDATE, and one statement that finds the
    generations a webhook applies to) and record what goes with it: for each, whether it completed
    the task and the output the task holds. The writer's transaction holds the database's write
    lock, and on SQLite each statement gives the interpreter lock away: these are a few statements
    for a batch where they were two or three a task."""
    rt = current()
    done = store.complete_many(conn, [e.completion for e in endings])
    for ending, completed in zip(endings, done, strict=True):
        task_id, cost = ending.completion.task_id, ending.completion.cost_micros
        if not completed and cost is not None:  # ended meanwhile: the provider was paid all the same
            store.set_provider_cost(conn, task_id, cost)
        if ending.seed is not None:  # a local engine's: to make it again
            store.record_seed(conn, task_id, ending.seed)
    webhook_events.generations_ended(
        rt, conn, [e.generation_id for e, completed in zip(endings, done, strict=True) if completed]
    )
    held: list[tuple[bool, str | None]] = []
    for ending, completed in zip(endings, done, strict=True):
        if completed:
            held.append((True, ending.completion.output_key))
        else:
            now = store.get_task(conn, ending.completion.task_id)
            held.append((False, now and now.output_key))
    return held


def _complete(
    rt: Runtime, record: store.TaskRecord, key: str, cost: int | None, seed: int | None
) -> dict[str, str]:
    """``record``: the task as its start wrote it. Written with the other ends of the task writer's
    batch (``_end_tasks``)."""
    ending = _Ending(
        store.Completion(record.id, rt.storage.url_for(key), key, cost), record.generation_id, seed
    )
    done, recorded = _settle(lambda: rt.task_writes.write_in(_end_tasks, ending))
    rt.progress.forget(record.id)
    if done:
        metrics.task_completed(record)
    elif recorded == key:
        # An earlier try of this write committed although its connection broke (PostgreSQL can
        # lose the answer to a COMMIT): the output is recorded, so it is kept.
        done = True
    else:  # failed meanwhile (deadline, cancel): the late output is nobody's
        _discard(rt, key)
    return {"status": COMPLETED if done else ENDED}


def _fail(rt: Runtime, task_id: str, error: str) -> dict[str, str]:
    def write(conn: sa.Connection) -> tuple[bool, store.TaskRecord | None]:
        before = store.get_task(conn, task_id)
        failed = store.fail_and_refund(conn, task_id, error)
        if failed and before is not None:
            webhook_events.generation_ended(rt, conn, before.generation_id)
        return failed, before

    failed, before = _settle(lambda: rt.task_writes.write(write))
    rt.progress.forget(task_id)
    if failed and before is not None:
        metrics.task_failed(before, "engine")
    return {"status": FAILED if failed else ENDED}


def _settle(write: Callable[[], R]) -> R:
    """``write()``, retried as a whole run is (about a minute in all), but without running the
    engine again: a write that finds the database briefly gone retries alone. Past that the run
    fails and starts again."""
    return _retried(write, "a task's write")


def _retried(call: Callable[[], R], what: str = "a task's run") -> R:
    """``call()``, again with backoff (about a minute in all) while it fails on a conflict or an
    unreachable database (a restart, a failover), instead of failing the task."""
    delay = RETRY_INTERVAL_S
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or attempt == RETRY_ATTEMPTS:
                raise
            log.warning("%s failed (%s); again in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay *= RETRY_BACKOFF
    raise AssertionError("unreachable")


# A task's progress is reported at most this often (its first report at once: "the request is in
# flight"): clients poll every few seconds, and a sandbox image reports five steps in its 50 ms. A
# provider's long-running operation reports an estimate at each poll: every 5 s at most. The reports
# of every job are written together (progress_writer.py).
PROGRESS_EVERY_S = 0.25
OPERATION_PROGRESS_EVERY_S = 5.0


def _progress_reporter(rt: Runtime, task_id: str, every_s: float = PROGRESS_EVERY_S) -> ProgressFn:
    last = 0
    due = 0.0

    def report(value: int) -> None:
        nonlocal last, due
        value = max(0, min(99, int(value)))  # 100 means completed, which only complete() says
        now = time.monotonic()
        if value <= last or now < due:
            return
        last, due = value, now + every_s
        rt.progress.report(task_id, value)

    return report


@database_step("nanogen.request_concat")
def request_concat_step(generation_id: str) -> bool:
    """Start the concatenation once every shot completed and it is still pending. A shot asks when
    it read, after its end committed, that every shot had completed (several of a burst may); the
    fixed workflow id makes the concatenation run once however many ask, and this process enqueues
    it once (the others find it done, or retry it if that enqueue failed). The check is read again
    here, in the step: a recovered workflow replays a recorded step instead."""
    rt = current()
    if not _concat_due(rt, generation_id):
        return False
    if rt.concat_requests.run(
        generation_id,
        lambda: rt.dbos_client.enqueue(
            {
                "workflow_name": CONCATENATE,
                "queue_name": MEDIA_QUEUE,
                "workflow_id": f"concat_{generation_id}",
                "app_version": rt.settings.application_version,
            },
            generation_id,
        ),
    ):
        wakeups.wake([MEDIA_QUEUE])
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
    scratch = rt.scratch_dir / f"concat_{generation_id}"
    scratch.mkdir(parents=True, exist_ok=True)
    key: str | None = None
    try:
        inputs = [_local_copy(rt, s.output_key, scratch / f"{i:02d}.mp4") for i, s in enumerate(shots)]
        dest = scratch / "concatenated.mp4"
        started = time.monotonic()
        result = rt.media.run(concat_videos, inputs, dest)  # in a child process: CPU work
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
