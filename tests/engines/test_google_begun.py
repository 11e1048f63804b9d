"""Image calls begun at acceptance (tasks/early.py): the Google engine reserves them before the tasks'
transaction, sends those whose tasks committed, and the task's job takes up the answer instead of
calling again; what it did not begin, the job calls itself. The engine against the fake Google over
HTTP; the whole path through a server is in test_google_images.py."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from tests.conftest import wait_for
from tests.fakes.google_server import API_KEY, FakeGoogle

from nanogen.engines.base import ImageJob, InputImage
from nanogen.engines.google.begun import SWEEP_EVERY_S, BegunCalls
from nanogen.engines.google.engine import GoogleEngine
from nanogen.errors import EngineError
from nanogen.settings import Settings
from nanogen.tasks import jobs
from nanogen.tasks.early import EarlyImageCalls
from nanogen.tasks.lifecycle import build_runtime, worker_queues


@pytest.fixture
def make_engine(fake: FakeGoogle, tmp_path: Path) -> Iterator[Callable[..., GoogleEngine]]:
    made: list[GoogleEngine] = []

    def make(**values: object) -> GoogleEngine:
        settings = Settings(
            home=tmp_path,
            engine_images="google",
            engine_videos="google",
            google_base_url=fake.base_url,
            google_api_key=API_KEY,
            google_retry_base_s=0.05,
            google_retry_max_s=0.5,
            **values,
        )
        made.append(GoogleEngine(settings))
        return made[-1]

    yield make
    for engine in made:
        engine._rest.close()


def image(prompt: str, *inputs: InputImage) -> ImageJob:
    params = {
        "prompt": f"{prompt} {uuid.uuid4().hex[:8]}",
        "mode": "edit" if inputs else "generate",
        "aspectRatio": "4:3",
        "imageQuality": "1K",
        "width": 1200,
        "height": 896,
        "googleSearch": False,
    }
    job = jobs.image_job(uuid.uuid4().hex, params, inputs)
    return dataclasses.replace(job, deadline=time.time() + 60)


def begun_count() -> float:
    labels = {"engine": "google", "call": "generate_image"}
    return REGISTRY.get_sample_value("nanogen_provider_calls_begun_at_acceptance_total", labels) or 0.0


def test_a_call_sent_at_acceptance_is_taken_up_by_its_job_not_made_again(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    engine = make_engine()
    job = image("A red door")
    before = begun_count()
    prepared = engine.prepare_image_calls([job])
    assert prepared is not None
    assert fake.requests_for(job.prompt) == [], "nothing is sent before the tasks commit"
    assert prepared({job.task_id}) == 1
    wait_for(lambda: fake.requests_for(job.prompt))  # at Google before the job has started

    progress: list[int] = []
    output = engine.generate_image(job, tmp_path / "out.png", progress.append)
    assert output.path.read_bytes() == fake.images[job.prompt]
    assert len(fake.requests_for(job.prompt)) == 1, "the job waited on the call begun for it"
    assert begun_count() - before == 1
    assert progress == [10, 90]


def test_a_job_that_starts_before_its_call_is_sent_waits_for_it(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    """The call is reserved before the transaction: a job that starts the instant its task commits,
    before the writer has sent the call, waits for that call instead of making a second one."""
    engine = make_engine()
    job = image("A blue gate")
    prepared = engine.prepare_image_calls([job])
    assert prepared is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(engine.generate_image, job, tmp_path / "out.png", lambda _: None)
        taken = engine._image_calls
        wait_for(lambda: len(taken) == 0 and taken.room() == taken.capacity - 1)  # claimed, waiting
        assert not running.done(), "the job waits: its call is not sent yet"
        prepared({job.task_id})
        assert running.result(timeout=30).path.read_bytes() == fake.images[job.prompt]
    assert len(fake.requests_for(job.prompt)) == 1


def test_calls_of_tasks_that_did_not_commit_are_never_sent(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    engine = make_engine()
    kept, refused = image("A green bench"), image("A short balance")
    prepared = engine.prepare_image_calls([kept, refused])
    assert prepared is not None
    assert prepared({kept.task_id}) == 1
    engine.generate_image(refused, tmp_path / "refused.png", lambda _: None)  # as a later task would
    engine.generate_image(kept, tmp_path / "kept.png", lambda _: None)
    assert len(fake.requests_for(kept.prompt)) == 1
    assert len(fake.requests_for(refused.prompt)) == 1, "only the job's own call: none was begun for it"
    rolled_back = image("A rolled back batch")
    again = engine.prepare_image_calls([rolled_back])
    assert again is not None and again(set()) == 0
    assert len(engine._image_calls) == 0, "a batch that did not commit leaves nothing reserved"


def test_a_call_begun_that_failed_is_retried_by_its_job(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    engine = make_engine()
    job = image("A lighthouse [google:500x2]")
    prepared = engine.prepare_image_calls([job])
    assert prepared is not None and prepared({job.task_id}) == 1
    output = engine.generate_image(job, tmp_path / "out.png", lambda _: None)
    assert output.path.read_bytes() == fake.images[job.prompt]
    assert len(fake.requests_for(job.prompt)) == 3, "the begun call, then two retries"


def test_a_begun_call_google_answered_badly_fails_its_job_without_another_call(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    engine = make_engine()
    job = image("A garbled answer [google:malformed]")
    prepared = engine.prepare_image_calls([job])
    assert prepared is not None and prepared({job.task_id}) == 1
    with pytest.raises(EngineError, match="malformed response"):
        engine.generate_image(job, tmp_path / "out.png", lambda _: None)
    assert len(fake.requests_for(job.prompt)) == 1, "a paid call is not repeated"


def test_no_more_calls_begin_than_the_image_slots_hold(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine], tmp_path: Path
) -> None:
    engine = make_engine(image_concurrency=2)
    first, second, third = image("One"), image("Two"), image("Three")
    prepared = engine.prepare_image_calls([first, second, third])
    assert prepared is not None
    assert prepared({first.task_id, second.task_id, third.task_id}) == 2
    assert engine.prepare_image_calls([image("Four")]) is None, "no room until a job takes one up"
    for job in (first, second, third):
        engine.generate_image(job, tmp_path / "out.png", lambda _: None)
        assert len(fake.requests_for(job.prompt)) == 1
    assert engine._image_calls.room() == 2, "every slot free again"


def test_nothing_begins_for_an_edit_or_under_a_configured_rate(
    fake: FakeGoogle, make_engine: Callable[..., GoogleEngine]
) -> None:
    photo = InputImage(data=b"\x89PNG...", mime_type="image/png", width=1, height=1)
    assert make_engine().prepare_image_calls([image("An edit", photo)]) is None
    assert make_engine(google_image_rate="100/minute").prepare_image_calls([image("Under a rate")]) is None


def test_an_answer_nobody_took_up_is_dropped_after_keep_s() -> None:
    now = [1000.0]
    calls = BegunCalls(capacity=3, keep_s=60, clock=lambda: now[0])
    reserved = calls.reserve(["answered", "waiting", "refused"])
    assert list(reserved) == ["answered", "waiting", "refused"] and calls.room() == 0
    calls.drop(["refused"])
    assert reserved["refused"].cancelled() and calls.room() == 1
    with calls.running():
        assert calls.room() == 0, "a job's own call takes a slot too"
    for future in reserved.values():
        future.set_running_or_notify_cancel()
    reserved["answered"].set_result(httpx.Response(200))
    now[0] += SWEEP_EVERY_S + 30
    assert calls.room() == 1, "answered 40 s ago: kept"
    now[0] += 31
    assert calls.room() == 2, "answered more than keep_s ago and never taken up: dropped"
    assert calls.claim("answered") is None
    waiting = calls.claim("waiting")
    assert waiting is not None and waiting.future is reserved["waiting"], "not answered yet: kept"


def test_calls_begin_at_acceptance_only_where_this_process_runs_every_image_task(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    """The embedded default (one process runs every task) without a per-account cap; not an API-only
    process, not on PostgreSQL (another worker may take the task and call again), not the sandbox."""

    def hook(api_only: bool = False, **values: object) -> EarlyImageCalls | None:
        settings = Settings(
            home=tmp_path,
            engine_images=str(values.pop("engine_images", "google")),
            google_base_url=fake.base_url,
            google_api_key=API_KEY,
            **values,
        )
        rt = build_runtime(settings)
        try:
            return EarlyImageCalls.for_process(rt, [] if api_only else list(worker_queues(rt)))
        finally:
            rt.db.dispose()

    assert hook() is not None
    assert hook(api_only=True) is None
    assert hook(account_concurrency=5) is None
    assert hook(database_url="postgresql+psycopg://nanogen@127.0.0.1:5432/nanogen_not_used") is None
    assert hook(engine_images="sandbox") is None
