"""A process's PostgreSQL connection budget (docs/deploy.md, "PostgreSQL connections"): a server on a
database of its own, under a burst of submits and polls with the sandbox engine, never holds more
connections than its settings allow (counted from pg_stat_activity while the burst runs), and a
server given the smallest budget still completes all of its work, videos' concatenations included."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from nanogen.settings import Settings
from tests.conftest import Account, Server, wait_for
from tests.databases import PG_ADMIN_URL, postgres_database

IMAGES = 24  # image requests in the burst, from several clients at once
VIDEOS = 2  # 3-shot videos, concatenated
CLIENTS = 8
# Beyond the three pools: DBOS's LISTEN connection, the DBOSClient's (one, made when a concatenation
# is enqueued), the executor id's advisory lock and the queue wake-ups' LISTEN connection.
FIXED = 4


def budget(extra_env: dict[str, str]) -> int:
    defaults = Settings.model_fields

    def setting(name: str) -> int:
        raw = extra_env.get(f"NANOGEN_{name.upper()}")
        return int(raw) if raw is not None else int(defaults[name].default)

    return setting("db_pool_size") + setting("db_read_connections") + setting("db_system_pool_size") + FIXED


class Counter(threading.Thread):
    """Counts the database's backends (other than its own) every few milliseconds; keeps the peak and
    who held them then (by application_name). The test's own checks go through the API meanwhile."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.peak = 0
        self.held: dict[str, int] = {}
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            while not self.halt.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1",
                    (self.database,),
                ).fetchall()
                total = sum(int(n) for _, n in rows)
                if total > self.peak:
                    self.peak, self.held = total, {name: int(n) for name, n in rows}
                self.samples += 1
                self.halt.wait(0.01)


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database("connections") as url:
        yield url


def burst(account: Account) -> tuple[list[str], list[str]]:
    """Submits from CLIENTS threads, each polling its own request until it ends; returns the final
    statuses of the images and of the videos (with whether the concatenated video was there)."""

    def image(n: int) -> str:
        with account.client() as c:
            r = c.post("/api/nano-banana-2/generate", json={"prompt": f"budget {n}"})
            assert r.status_code == 200, r.text
            generation_id = r.json()["generationId"]

            def ended() -> str | None:
                r = c.post("/api/nano-banana-2/check-status", json={"generationId": generation_id})
                assert r.status_code == 200, r.text
                status: str = r.json()["status"]
                return status if status in ("completed", "failed") else None

            result: str = wait_for(ended, interval=0.02)
            return result

    def video(n: int) -> str:
        shots = [
            {
                "id": f"s{i}",
                "prompt": f"shot {n}.{i}",
                "generationType": "TEXT_2_VIDEO",
                "aspectRatio": "16:9",
            }
            for i in range(3)
        ]
        with account.client() as c:
            r = c.post("/api/veo-3/generate", json={"shots": shots})
            assert r.status_code == 200, r.text
            generation_id = r.json()["generationId"]

            def ended() -> str | None:  # "completed" only once the concatenation is ready
                r = c.post("/api/veo-3/check-status", json={"generationId": generation_id})
                assert r.status_code == 200, r.text
                body = r.json()
                if body["status"] == "processing":
                    return None
                return f"{body['status']} {'concatenatedVideoUrl' in body}"

            result: str = wait_for(ended, interval=0.05)
            return result

    with ThreadPoolExecutor(CLIENTS) as pool:
        videos = [pool.submit(video, n) for n in range(VIDEOS)]
        images = list(pool.map(image, range(IMAGES)))
        return images, [v.result() for v in videos]


@pytest.mark.parametrize(
    "extra_env",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "NANOGEN_DB_POOL_SIZE": "1",
                "NANOGEN_DB_READ_CONNECTIONS": "1",
                "NANOGEN_DB_SYSTEM_POOL_SIZE": "2",
            },
            id="smallest",
        ),
    ],
)
def test_a_burst_stays_within_the_connection_budget(
    tmp_path: Path, database: str, extra_env: dict[str, str]
) -> None:
    env = {"NANOGEN_RATE_LIMIT_GENERATE": "100000/hour", **extra_env}
    server = Server(tmp_path / "home", extra_env=env, database_url=database).start()
    counter = Counter(database.rsplit("/", 1)[1])
    counter.start()
    try:
        account = server.new_account(10_000)
        images, videos = burst(account)
    finally:
        counter.halt.set()
        counter.join()
        server.stop()
    assert images == ["completed"] * IMAGES
    assert videos == ["completed True"] * VIDEOS
    assert counter.samples > 10, "the count ran while the burst did"
    assert 3 <= counter.peak <= budget(extra_env), (counter.held, server.log_tail())
    account.assert_books_balance()
