"""One process per SQLite data directory; one live process per executor id on PostgreSQL. A second
process must never take over the first one's running work (DBOS recovers its own executor id's
workflows at launch): on SQLite it refuses to start before touching anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Account, Server, free_port, wait_for
from tests.databases import postgres_database

STATUS = "/api/nano-banana-2/check-status"


def _start_slow_image(account: Account, seconds: int) -> str:
    with account.client() as c:
        r = c.post("/api/nano-banana-2/generate", json={"prompt": f"slow [sandbox:slow={seconds}]"})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _status(account: Account, generation_id: str) -> dict[str, Any]:
    with account.client() as c:
        body: dict[str, Any] = c.post(STATUS, json={"generationId": generation_id}).json()
    return body


def _second(server: Server, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanogen", *command],
        env=server.env | {"COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _attempts(server: Server, account: Account) -> list[int]:
    with server.db() as db:
        rows = db.execute("SELECT attempts FROM nanogen_tasks WHERE account_id=?", (account.id,)).fetchall()
    return [int(r[0]) for r in rows]


def test_a_second_process_on_the_same_sqlite_data_directory_refuses_to_start(tmp_path: Path) -> None:
    first = Server(tmp_path).start()
    assert first.process is not None
    try:
        account = first.new_account(100)
        running = _start_slow_image(account, 3)
        wait_for(lambda: _status(account, running)["status"] == "generating")
        for command in (("serve", "--port", str(free_port())), ("worker",), ("serve", "--no-worker")):
            second = _second(first, *command)
            assert second.returncode == 3, second.stderr
            assert f"pid {first.process.pid}" in second.stderr, second.stderr
            assert "NANOGEN_HOME" in second.stderr
        # The first server's job was not taken over: it completes in one attempt, paid once, never refunded.
        final = wait_for(lambda: (s := _status(account, running))["status"] in ("completed", "failed") and s)
        assert final["status"] == "completed", final
        assert _attempts(first, account) == [1]
        assert account.ledger_sums() == {"grant": 100, "debit": 4}
    finally:
        first.stop()
    # The lock goes with the process (a kill -9 too: tests/server/test_durability.py restarts after one).
    Server(tmp_path).start().stop()


def test_processes_on_one_postgres_database_never_share_an_executor_id(tmp_path: Path) -> None:
    with postgres_database("owners") as url:
        default_id = {"NANOGEN_EXECUTOR_ID": ""}  # unset: <role>-<hostname>, the same for both
        first = Server(tmp_path / "a", database_url=url, extra_env=default_id).start()
        try:
            account = first.new_account(100)
            running = _start_slow_image(account, 3)
            wait_for(lambda: _status(account, running)["status"] == "generating")
            # Same role, same host, same database: before, it recovered the first one's running job.
            second = Server(tmp_path / "b", database_url=url, extra_env=default_id).start()
            try:
                final = wait_for(
                    lambda: (s := _status(account, running))["status"] in ("completed", "failed") and s
                )
                assert final["status"] == "completed", final
                assert _attempts(first, account) == [1]
                assert account.ledger_sums() == {"grant": 100, "debit": 4}
            finally:
                second.stop()
        finally:
            first.stop()
        # An id set explicitly is refused while a live process holds it.
        holder = Server(tmp_path / "c", database_url=url, extra_env={"NANOGEN_EXECUTOR_ID": "node-1"}).start()
        try:
            refused = _second(holder, "worker")
            assert refused.returncode == 3, refused.stderr
            assert "NANOGEN_EXECUTOR_ID=node-1 is in use" in refused.stderr
        finally:
            holder.stop()
