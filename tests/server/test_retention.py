"""Retention (NANOGEN_RETENTION_DAYS) on the default local storage: old generations' files are deleted
on purpose and answer 410 GONE; fresh ones, and anything still running, are never touched."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from nanogen.db import accounts, generations, ledger, tasks, write_transaction
from nanogen.storage import new_key
from nanogen.tasks import retention, store
from tests.conftest import ImageHost, Server, assert_envelope, wait_for
from tests.databases import migrated_engine
from tests.storage import flows

DAY_S = 86_400


def stored_keys(server: Server, generation_id: str) -> list[str]:
    with server.db() as db:
        rows = db.execute(
            "SELECT output_key, json_extract(params, '$.inputs') FROM nanogen_tasks WHERE generation_id=?",
            (generation_id,),
        ).fetchall()
        concat = db.execute(
            "SELECT concat_key FROM nanogen_generations WHERE id=?", (generation_id,)
        ).fetchone()[0]
    keys = [out for out, _ in rows if out] + [i["key"] for _, inputs in rows for i in json.loads(inputs)]
    return keys + ([concat] if concat else [])


def test_old_outputs_are_deleted_fresh_and_running_ones_kept(image_host: ImageHost, tmp_path: Path) -> None:
    env = {"NANOGEN_RETENTION_DAYS": "30", "NANOGEN_RETENTION_SWEEP_INTERVAL_S": "0.3"}
    server = Server(flows.new_home(tmp_path, "home"), extra_env=env).start()
    outputs = server.home / "outputs"
    try:
        account = server.new_account(1000)
        old_image = flows.image(account, "old", mode="edit", inputImageUrls=[image_host.url("red.png")])
        old_refs, old_video = flows.video(account, ["old shot one", "old shot two"])
        # A shot failed: no concatenation, and the generation must still end and expire. The second
        # one is left as earlier versions left it (concatenation pending forever): the sweep settles it.
        broken_refs, broken = flows.video(account, ["kept shot", "lost shot [sandbox:fail]"])
        stuck_refs, stuck = flows.video(account, ["kept too", "lost too [sandbox:fail]"])
        for body in (broken, stuck):
            assert body["status"] == "failed", body
            assert [s["status"] for s in body["shots"]] == ["completed", "failed"]
            assert "concatenatedVideoUrl" not in body and "concatenationError" not in body
        with server.db() as db:
            for body in (broken, stuck):
                row = db.execute(
                    "SELECT concat_status, concat_error FROM nanogen_generations WHERE id=?",
                    (body["generationId"],),
                ).fetchone()
                assert tuple(row) == ("failed", None), "settled with the shot, in its transaction"
            db.execute(
                "UPDATE nanogen_generations SET concat_status='pending' WHERE id=?", (stuck["generationId"],)
            )
        fresh = flows.image(account, "fresh", mode="edit", inputImageUrls=[image_host.url("blue.png")])
        fresh_bytes = flows.download(fresh["imageUrl"]).content
        assert old_image["status"] == old_video["status"] == fresh["status"] == "completed"
        old_ids = [old_image["generationId"], old_video["generationId"]]
        old_ids += [broken["generationId"], stuck["generationId"]]
        old_keys = [key for generation_id in old_ids for key in stored_keys(server, generation_id)]
        assert len(old_keys) == 1 + 1 + 2 + 1 + 1 + 1, "image + its input, two shots + concatenation, 2 shots"
        assert all((outputs / key).is_file() for key in old_keys)

        # Still running and older than the cutoff (by its records): its input must survive.
        with account.client() as c:
            running = c.post(
                "/api/nano-banana-2/generate",
                json={
                    "prompt": "slow [sandbox:slow=8]",
                    "mode": "edit",
                    "inputImageUrls": [image_host.url("green.jpg")],
                },
            ).json()
        balance = account.balance()
        with server.db() as db:
            for generation_id in [*old_ids, running["generationId"]]:
                flows.backdate(db, generation_id, 31)

        wait_for(lambda: flows.download(old_image["imageUrl"]).status_code == 410)
        assert flows.image_status(account, running["generationId"])["status"] != "completed", (
            "the sweep ran while the old-but-running task was still open"
        )
        urls = [old_image["imageUrl"], old_video["concatenatedVideoUrl"]]
        urls += [shot["videoUrl"] for body in (old_video, broken, stuck) for shot in body["shots"][:1]]
        urls += [old_video["shots"][1]["videoUrl"]]
        for url in urls:
            assert_envelope(httpx.get(url), 410, "GONE")
        assert not any((outputs / key).exists() for key in old_keys), "outputs and the stored input deleted"
        with server.db() as db:
            tombstones = {k for (k,) in db.execute("SELECT key FROM nanogen_expired_files")}
        assert tombstones == set(old_keys)

        # check-status still answers, as documented: same status and URLs (which now answer 410).
        status = flows.image_status(account, old_image["generationId"])
        assert status["status"] == "completed" and status["imageUrl"] == old_image["imageUrl"]
        video = flows.video_status(account, old_refs)
        assert video["status"] == "completed"
        assert video["concatenatedVideoUrl"] == old_video["concatenatedVideoUrl"]
        assert flows.video_status(account, broken_refs) == broken, "the same answer, now final"
        assert flows.video_status(account, stuck_refs) == stuck
        with server.db() as db:
            settled = db.execute(
                "SELECT concat_status FROM nanogen_generations WHERE id=?", (stuck["generationId"],)
            ).fetchone()[0]
        assert settled == "failed"

        # The fresh generation survived that sweep (and the ones after it).
        kept = flows.download(fresh["imageUrl"])
        assert kept.status_code == 200 and kept.content == fresh_bytes
        assert all((outputs / key).is_file() for key in stored_keys(server, fresh["generationId"]))

        def ended() -> dict[str, Any] | None:
            body = flows.image_status(account, running["generationId"])
            return body if body["status"] in ("completed", "failed") else None

        finished = wait_for(ended)
        assert finished["status"] == "completed", "its input was still there when it rendered"
        assert flows.decoded_image(flows.download(finished["imageUrl"]).content).size == (1376, 768)
        assert account.balance() == balance, "retention never moves credits"
        account.assert_books_balance()
        never = f"{server.base_url}/files/out/AAAAAAAAAAAAAAAAAAAAAAAA/x.png"
        assert_envelope(httpx.get(never), 404, "NOT_FOUND")
    finally:
        server.stop()


# -- the selection rules, on both databases ---------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    with migrated_engine(request.param, tmp_path_factory.mktemp("retention"), "retention") as eng:
        yield eng


def _generation(
    engine: sa.Engine, ended_days_ago: list[float | None], concat: str | None = None
) -> tuple[str, list[str]]:
    """A generation whose tasks ended that many days ago (None: still running); (id, its keys)."""
    now = time.time()
    gid, account = f"gen_{uuid.uuid4().hex}", f"acct_{uuid.uuid4().hex[:20]}"
    created = now - max((d or 0) for d in ended_days_ago) * DAY_S - 60
    keys: list[str] = []
    rows = []
    for i, ago in enumerate(ended_days_ago):
        out, inp = new_key("out", f"task_{i}.mp4"), new_key("in", "input.png")
        done = ago is not None
        keys += [out, inp] if done else [inp]
        rows.append(
            {
                "id": f"task_{uuid.uuid4().hex}",
                "generation_id": gid,
                "account_id": account,
                "product": "video",
                "position": i,
                "engine": "sandbox",
                "status": "completed" if done else "generating",
                "credits": 10,
                "params": {"inputs": [{"key": inp, "mimeType": "image/png", "width": 1, "height": 1}]},
                "output_key": out if done else None,
                "created_at": created,
                "finished_at": now - ago * DAY_S if ago is not None else None,
                "deadline_at": now + 600,
            }
        )
    concat_key = new_key("out", f"{gid}.mp4") if concat == "completed" else None
    with write_transaction(engine) as conn:
        conn.execute(sa.insert(accounts).values(id=account, name=account, balance=0, created_at=created))
        conn.execute(
            sa.insert(generations).values(
                id=gid,
                account_id=account,
                product="video",
                params={},
                credits=10 * len(rows),
                task_count=len(rows),
                created_at=created,
                concat_status=concat,
                concat_key=concat_key,
            )
        )
        conn.execute(sa.insert(tasks), rows)
    return gid, keys + ([concat_key] if concat_key else [])


def test_only_generations_whose_every_task_ended_before_the_cutoff_are_due(engine: sa.Engine) -> None:
    old, old_keys = _generation(engine, [40, 35], concat="completed")
    failed_concat, _ = _generation(engine, [40], concat="failed")
    fresh, _ = _generation(engine, [1])
    partly_fresh, _ = _generation(engine, [40, 2])
    running, _ = _generation(engine, [40, None])
    concat_pending, _ = _generation(engine, [40, 40], concat="pending")
    cutoff = time.time() - 30 * DAY_S
    with engine.connect() as conn:
        due = retention.due(conn, cutoff, limit=1000)
    mine = {old, failed_concat, fresh, partly_fresh, running, concat_pending}
    assert set(due) & mine == {old, failed_concat}
    assert sorted(due[old]) == sorted(old_keys), "outputs, inputs and the concatenation"
    now = time.time()
    with write_transaction(engine) as conn:
        assert retention.mark_expired(conn, old, due[old], now)
        assert not retention.mark_expired(conn, old, due[old], now), "marked once"
    with engine.connect() as conn:
        assert old not in retention.due(conn, cutoff, limit=1000)
        assert all(retention.is_expired(conn, key) for key in old_keys)
        assert not retention.is_expired(conn, new_key("out", "never.png"))


def _concat(engine: sa.Engine, generation_id: str) -> tuple[str | None, str | None, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                generations.c.concat_status, generations.c.concat_url, generations.c.concat_error
            ).where(generations.c.id == generation_id)
        ).one()
    return row.concat_status, row.concat_url, row.concat_error


def _task_ids(engine: sa.Engine, generation_id: str) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(tasks.c.id).where(tasks.c.generation_id == generation_id).order_by(tasks.c.position)
        )
        return [r.id for r in rows]


def test_a_failed_shot_settles_the_concatenation_once_and_for_good(engine: sa.Engine) -> None:
    gid, _ = _generation(engine, [None, None, None], concat="pending")
    first, second, third = _task_ids(engine, gid)
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, first, "the engine said no")
    assert _concat(engine, gid) == ("failed", None, None), "settled, without a concatenationError"
    with write_transaction(engine) as conn:
        assert not store.fail_and_refund(conn, first, "again"), "a task fails once"
        assert store.complete(conn, second, "http://x/files/out/a/b.mp4", new_key("out", "b.mp4"))
        assert store.fail_and_refund(conn, third, "deadline")
    # A concatenation that would run now (it cannot: request_concat_step and concat_step check
    # the status first) could not overwrite the settled one either.
    with write_transaction(engine) as conn:
        assert not store.set_concat(conn, gid, "completed", url="http://x/y.mp4", key=new_key("out", "y.mp4"))
        assert not store.set_concat(conn, gid, "failed", error="late")
    assert _concat(engine, gid) == ("failed", None, None)
    single, _ = _generation(engine, [None])  # a one-shot video (or an image) has no concatenation
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, _task_ids(engine, single)[0], "no")
    assert _concat(engine, single) == (None, None, None)


def test_concatenations_left_pending_after_a_failed_shot_are_settled_then_due(engine: sa.Engine) -> None:
    """What earlier versions left behind: a shot failed, the concatenation stayed pending."""
    stuck, stuck_keys = _generation(engine, [40, 40], concat="pending")
    young_stuck, _ = _generation(engine, [2, 2], concat="pending")
    joining, _ = _generation(engine, [40, 40], concat="pending")  # every shot completed: it may run
    for gid in (stuck, young_stuck):
        with write_transaction(engine) as conn:
            conn.execute(
                sa.update(tasks)
                .where(tasks.c.id == _task_ids(engine, gid)[1])
                .values(status="failed", output_key=None, error="Video generation failed")
            )
    cutoff = time.time() - 30 * DAY_S
    with engine.connect() as conn:
        assert stuck not in retention.due(conn, cutoff, limit=1000)
    with write_transaction(engine) as conn:
        assert store.settle_concats_of_failed_shots(conn, cutoff) >= 1
    assert _concat(engine, stuck) == ("failed", None, None)
    assert _concat(engine, young_stuck)[0] == "pending", "settled when it is old enough to matter"
    assert _concat(engine, joining)[0] == "pending", "a concatenation that may still run is left alone"
    with write_transaction(engine) as conn:
        assert store.settle_concats_of_failed_shots(conn, cutoff) == 0, "idempotent"
    with engine.connect() as conn:
        due = retention.due(conn, cutoff, limit=1000)
    assert sorted(due[stuck]) == sorted(k for k in stuck_keys if not k.endswith("task_1.mp4"))
    assert joining not in due


def test_long_and_odd_error_texts_are_cut_to_their_columns(engine: sa.Engine) -> None:
    """An exception's text longer than its column (or holding what PostgreSQL refuses in text) must
    not make the write that records the failure fail: the video would report processing forever."""
    huge = "Concatenation failed: " + "x" * 5000 + "\x00 \udcff tail"
    gid, _ = _generation(engine, [1, 1], concat="pending")
    with write_transaction(engine) as conn:
        assert store.set_concat(conn, gid, "failed", error=huge)
    status, url, error = _concat(engine, gid)
    assert (status, url) == ("failed", None)
    assert error is not None and len(error) == 2000 and error.startswith("Concatenation failed: xxx")
    odd, _ = _generation(engine, [None, None], concat="pending")
    task_id = _task_ids(engine, odd)[0]
    message = "engine: \x00 \udcff " + "y" * 3000
    with write_transaction(engine) as conn:
        assert store.fail_and_refund(conn, task_id, message)
    with engine.connect() as conn:
        error = conn.execute(sa.select(tasks.c.error).where(tasks.c.id == task_id)).scalar_one()
        memo = conn.execute(sa.select(ledger.c.memo).where(ledger.c.task_id == task_id)).scalar_one()
    assert len(error) == 2000 and error.startswith("engine: \ufffd ? yyy")
    assert len(memo) == 500 and memo == error[:500]
    assert _concat(engine, odd)[0] == "failed"


# -- uploads: always swept, retention setting or not ------------------------------------------------
def test_expired_uploads_are_deleted_while_the_tasks_that_used_them_keep_their_copy(
    image_host: ImageHost, tmp_path: Path
) -> None:
    """No NANOGEN_RETENTION_DAYS: uploads are swept by default. A task submitted with an upload URL
    renders from its own stored copy after the upload itself was deleted."""
    env = {"NANOGEN_UPLOAD_TTL_S": "2", "NANOGEN_RETENTION_SWEEP_INTERVAL_S": "0.2"}
    server = Server(flows.new_home(tmp_path, "home"), extra_env=env).start()
    uploads = server.home / "outputs" / "up"
    try:
        account = server.new_account(100)
        data = image_host.files["/green.jpg"][0]

        def submitted() -> tuple[str, str] | None:
            with account.client() as c:
                up = c.post("/api/uploads", content=data, headers={"Content-Type": "image/jpeg"})
                assert up.status_code == 201, up.text
                r = c.post(
                    "/api/nano-banana-2/generate",
                    json={
                        "prompt": "slow [sandbox:slow=3]",
                        "mode": "edit",
                        "inputImageUrls": [up.json()["url"]],
                    },
                )
            if r.status_code == 400 and r.json()["errorCode"] == "INVALID_IMAGE_URL":
                return None  # it expired before the request was read (a slow machine): again
            assert r.status_code == 200, r.text
            return str(up.json()["url"]), str(r.json()["generationId"])

        url, generation_id = wait_for(submitted)
        key = url.split("/files/", 1)[1]
        wait_for(lambda: not (server.home / "outputs" / key).exists())
        assert_envelope(httpx.get(url), 404, "NOT_FOUND")
        inputs = [k for k in stored_keys(server, generation_id) if k.startswith("in/")]
        assert len(inputs) == 1 and (server.home / "outputs" / inputs[0]).is_file(), "the task's own copy"

        def ended() -> dict[str, Any] | None:
            body = flows.image_status(account, generation_id)
            return body if body["status"] in ("completed", "failed") else None

        finished = wait_for(ended)
        assert finished["status"] == "completed", finished
        assert flows.decoded_image(flows.download(finished["imageUrl"]).content).size == (1376, 768)
        wait_for(lambda: not any(uploads.rglob("*")))  # every upload of the retries too, folders included
    finally:
        server.stop()
