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

from nanogen.db import accounts, generations, tasks, write_transaction
from nanogen.storage import new_key
from nanogen.tasks import retention
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
        fresh = flows.image(account, "fresh", mode="edit", inputImageUrls=[image_host.url("blue.png")])
        fresh_bytes = flows.download(fresh["imageUrl"]).content
        assert old_image["status"] == old_video["status"] == fresh["status"] == "completed"
        old_ids = [old_image["generationId"], old_video["generationId"]]
        old_keys = [key for generation_id in old_ids for key in stored_keys(server, generation_id)]
        assert len(old_keys) == 1 + 1 + 2 + 1, "image + its input, two shots + concatenation"
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

        wait_for(lambda: flows.download(old_image["imageUrl"]).status_code == 410, 30)
        assert flows.image_status(account, running["generationId"])["status"] != "completed", (
            "the sweep ran while the old-but-running task was still open"
        )
        urls = [old_image["imageUrl"], old_video["concatenatedVideoUrl"]]
        urls += [shot["videoUrl"] for shot in old_video["shots"]]
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

        # The fresh generation survived that sweep (and the ones after it).
        kept = flows.download(fresh["imageUrl"])
        assert kept.status_code == 200 and kept.content == fresh_bytes
        assert all((outputs / key).is_file() for key in stored_keys(server, fresh["generationId"]))

        def ended() -> dict[str, Any] | None:
            body = flows.image_status(account, running["generationId"])
            return body if body["status"] in ("completed", "failed") else None

        finished = wait_for(ended, 60)
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
