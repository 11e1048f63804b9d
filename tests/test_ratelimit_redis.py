"""Rate limits shared through the real Redis at 127.0.0.1:6379: two API processes behind one key
allow the budget once between them, Retry-After is when a slot frees, and an unreachable Redis gives
the documented fail-open / fail-closed behaviour (never a 500). Keys use a fresh prefix per test."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import Account, Server, assert_envelope, free_port, wait_for
from tests.databases import postgres_database
from tests.storage.flows import new_home

REDIS_URL = "redis://127.0.0.1:6379/0"
IMAGE, VIDEO = "/api/nano-banana-2/generate", "/api/veo-3/generate"
IMAGE_STATUS = "/api/nano-banana-2/check-status"


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    name = f"nanogen-test-{uuid.uuid4().hex}"
    yield name
    keys = client.keys(f"{name}:*")
    if keys:
        client.delete(*keys)


def counted(url: str, prefix: str) -> int:
    """Entries in this prefix's moving windows, read straight from Redis."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    return sum(int(client.llen(key)) for key in client.keys(f"{prefix}:*"))


@pytest.fixture
def shared_database() -> Iterator[str]:
    """Two processes share a database on PostgreSQL (a SQLite data directory takes one process)."""
    with postgres_database("ratelimit") as url:
        yield url


def api_pair(database_url: str, tmp_path: Path, prefix: str, **extra: str) -> tuple[Server, Server]:
    """Two API processes on one database (so one key works on both) and one Redis."""
    shared = {
        "NANOGEN_DATABASE_URL": database_url,
        "NANOGEN_RATE_LIMIT_STORAGE": REDIS_URL,
        "NANOGEN_RATE_LIMIT_PREFIX": prefix,
        **extra,
    }
    first = Server(new_home(tmp_path, "api-a"), extra_env=shared | {"NANOGEN_EXECUTOR_ID": "api-a"})
    second_env = shared | {"NANOGEN_EXECUTOR_ID": "api-b"}
    second = Server(new_home(tmp_path, "api-b"), args=("--no-worker",), extra_env=second_env)
    return first.start(), second.start()


def generate(server: Server, account: Account, i: int) -> httpx.Response:
    """A counted generate request that costs nothing: the key has no credits (402) or the body is bad."""
    with server.client(account.key) as c:
        return c.post(IMAGE, json={"prompt": "x"}) if i % 2 else c.post(VIDEO, json={"shots": []})


def test_two_api_processes_share_the_100_per_hour_budget(
    prefix: str, tmp_path: Path, shared_database: str
) -> None:
    first, second = api_pair(shared_database, tmp_path, prefix)
    try:
        account = first.new_account(0)
        for i in range(100):
            r = generate((first, second)[i % 2], account, i)
            assert r.status_code in (400, 402), (i, r.text)
        assert counted(REDIS_URL, prefix) == 100, "every request counted in the one shared window"
        for server in (second, first):  # the 101st, on either process
            limited = generate(server, account, 1)
            assert_envelope(limited, 429, "API_KEY_RATE_LIMIT_EXCEEDED")
            retry_after = int(limited.headers["Retry-After"])
            assert 3000 < retry_after <= 3600, "the oldest request leaves the window about an hour from now"
            assert limited.json()["retryAfter"] == retry_after
        with second.client(account.key) as c:
            polled = c.post(IMAGE_STATUS, json={"generationId": "gen_x"})
        assert polled.status_code == 404, "polling has its own budget"
    finally:
        second.stop()
        first.stop()


def test_retry_after_is_when_a_slot_frees(prefix: str, tmp_path: Path, shared_database: str) -> None:
    # The five requests must fall within one window: 4 s was too short for a slow, loaded day's
    # machine (the oldest slot freed before the last request), so the window is 20 s.
    window_s = 20
    first, second = api_pair(
        shared_database, tmp_path, prefix, NANOGEN_RATE_LIMIT_GENERATE=f"3/{window_s} seconds"
    )
    try:
        account = first.new_account(0)
        assert [generate((first, second)[i % 2], account, i).status_code for i in range(3)] == [400, 402, 400]
        limited = generate(second, account, 1)
        assert limited.status_code == 429
        retry_after = int(limited.headers["Retry-After"])
        assert 1 <= retry_after <= window_s
        assert generate(first, account, 1).status_code == 429, "the other process agrees"
        time.sleep(retry_after)
        assert generate(first, account, 1).status_code == 402, "a slot freed when Retry-After said"
    finally:
        second.stop()
        first.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_redis_is_a_documented_choice_never_a_500(mode: str, tmp_path: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {
        "NANOGEN_RATE_LIMIT_STORAGE": nowhere,
        "NANOGEN_RATE_LIMIT_GENERATE": "3/hour",
        "NANOGEN_RATE_LIMIT_FAIL": mode,
    }
    server = Server(new_home(tmp_path, "home"), extra_env=env).start()
    try:
        account = server.new_account(0)
        codes = [generate(server, account, i).status_code for i in range(5)]
        with account.client() as c:
            polled = c.post(IMAGE_STATUS, json={"generationId": "gen_x"})
        anonymous = httpx.post(server.base_url + IMAGE, json={"prompt": "x"})
        assert anonymous.status_code == 401, "authentication comes first"
        if mode == "open":
            # Counted in this process's memory instead: the budget still holds, per process.
            assert codes == [400, 402, 400, 429, 429]
            assert polled.status_code == 404
        else:
            assert codes == [503] * 5
            assert_envelope(generate(server, account, 1), 503, "SERVICE_UNAVAILABLE")
            assert generate(server, account, 1).headers["Retry-After"] == "2"
            assert_envelope(polled, 503, "SERVICE_UNAVAILABLE")
        ready = httpx.get(f"{server.base_url}/readyz")
        assert_envelope(ready, 503, "SERVICE_UNAVAILABLE")
        assert ready.json()["checks"] == {"database": "ok", "storage": "ok", "redis": "unreachable"}
        log = server.log_tail()
        assert log.count("rate-limit storage unreachable") == 1, "one line per outage, not per request"
        assert "Traceback" not in log
    finally:
        server.stop()


class RedisProcess:
    """A redis-server of the test's own on a free loopback port, to stop and start again."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.home = home
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            cwd=self.home,
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: self._pings())
        return self

    def _pings(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_counting_moves_to_memory_while_redis_is_down_and_back_by_itself(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    own = RedisProcess(tmp_path).start()
    prefix = f"nanogen-test-{uuid.uuid4().hex}"
    env = {"NANOGEN_RATE_LIMIT_STORAGE": own.url, "NANOGEN_RATE_LIMIT_PREFIX": prefix}
    server = Server(new_home(tmp_path, "home"), extra_env=env).start()
    try:
        account = server.new_account(0)
        assert [generate(server, account, i).status_code for i in range(2)] == [400, 402]
        assert counted(own.url, prefix) == 2
        own.stop()
        assert [generate(server, account, i).status_code for i in range(3)] == [400, 402, 400]
        assert httpx.get(f"{server.base_url}/readyz").status_code == 503
        own.start()  # empty again, as after a restart without persistence

        def shared_again() -> Any:
            generate(server, account, 1)
            return counted(own.url, prefix)

        wait_for(shared_again, interval=0.5)
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        log = server.log_tail()
        assert "rate-limit storage unreachable" in log and "reachable again" in log
        assert "Traceback" not in log
    finally:
        server.stop()
        own.stop()
