"""The ``nanogen`` command line as a user runs it: ``python -m nanogen ...`` in a subprocess.

Keys made by the CLI are used against a running server on the same database (the shared ``server``
fixture's: its SQLite file, or its PostgreSQL database), written by both processes.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server


def _env(target: Server | Path) -> dict[str, str]:
    """The environment of a CLI working on a server's database (or on a bare data directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
    env["NANOGEN_HOME"] = str(target.home if isinstance(target, Server) else target)
    if isinstance(target, Server) and target.database_url:
        env["NANOGEN_DATABASE_URL"] = target.database_url
    env["COLUMNS"] = "250"  # a wide terminal: rich tables keep whole ids
    return env


def cli(target: Server | Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanogen", *args],
        env=_env(target),
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(target: Server | Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = cli(target, *args)
    assert result.returncode == 0, f"nanogen {' '.join(args)} -> {result.returncode}\n{result.stderr}"
    return result


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return lines[-1].strip()


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def check_status(server: Server, key: str) -> httpx.Response:
    with server.client(key) as c:
        return c.post("/api/nano-banana-2/check-status", json={"generationId": "gen_does_not_exist"})


def assert_key_works(server: Server, key: str) -> None:
    r = check_status(server, key)
    # 404 for an unknown generation: authentication passed (a bad key would be 401).
    assert r.status_code == 404, r.text
    assert r.json()["errorCode"] == "NOT_FOUND"


def show(target: Server, account: str) -> dict[str, Any]:
    rows = table_rows(ok(target, "credits", "show", account).stdout)
    assert len(rows) == 1, rows
    name, account_id, balance, granted, debited, refunded, provider_cost = rows[0]
    assert provider_cost == "0.000000", "the sandbox costs nothing at a provider"
    return {
        "name": name,
        "id": account_id,
        "balance": int(balance),
        "granted": int(granted),
        "debited": int(debited),
        "refunded": int(refunded),
    }


def test_keys_create_list_revoke(server: Server) -> None:
    name = f"alice-{uuid.uuid4().hex[:8]}"
    created = ok(server, "keys", "create", "--credits", "50", "--name", name)
    key = last_line(created)
    assert key.startswith("ng_") and len(key) > 40
    assert key not in created.stderr  # shown once, on stdout
    assert name in created.stderr and "balance 50" in created.stderr
    assert_key_works(server, key)

    # A second key for the same account, with more credits.
    more = ok(server, "keys", "create", "--account", name, "--credits", "7", "--name", "ci")
    second = last_line(more)
    assert second != key and "balance 57" in more.stderr
    assert_key_works(server, second)

    listing = ok(server, "keys", "list", "--account", name)
    for secret in (key, second):
        assert secret not in listing.stdout and secret not in listing.stderr
        assert secret[10:20] not in listing.stdout
    rows = table_rows(listing.stdout)
    assert len(rows) == 2, rows
    by_prefix = {row[3].rstrip("…"): row for row in rows}
    assert set(by_prefix) == {key[:10], second[:10]}
    key_id, account, key_name, _prefix, state = by_prefix[key[:10]]
    assert (account, key_name, state) == (name, "", "live")
    assert key_id.startswith("key_")
    assert by_prefix[second[:10]][1:3] == [name, "ci"]

    revoked = ok(server, "keys", "revoke", key_id)
    assert key_id in revoked.stderr
    r = check_status(server, key)
    assert r.status_code == 401, r.text
    assert r.json()["errorCode"] == "LOGIN_REQUIRED"
    assert_key_works(server, second)  # only that key was revoked

    again = cli(server, "keys", "revoke", key_id)
    assert again.returncode == 2
    assert "no live key" in again.stderr


def test_credits_grant_and_show_add_up(server: Server) -> None:
    name = f"carol-{uuid.uuid4().hex[:8]}"
    key = last_line(ok(server, "keys", "create", "--credits", "50", "--name", name))
    with server.client(key) as c:
        r = c.post("/api/nano-banana-2/generate", json={"prompt": "a lighthouse at dusk"})
    assert r.status_code == 200, r.text
    spent = r.json()["creditsUsed"]
    assert spent > 0

    granted = ok(server, "credits", "grant", name, "25", "--memo", "monthly top-up")
    assert f"balance {75 - spent}" in granted.stderr

    numbers = show(server, name)
    assert numbers["name"] == name and str(numbers["id"]).startswith("acct_")
    assert numbers["granted"] == 75
    assert numbers["debited"] == spent
    assert numbers["balance"] == numbers["granted"] - numbers["debited"] + numbers["refunded"]

    # The full listing has the account with the same numbers, and every row adds up.
    everyone = table_rows(ok(server, "credits", "show").stdout)
    assert [
        numbers["name"],
        numbers["id"],
        *(str(numbers[k]) for k in ("balance", "granted", "debited", "refunded")),
    ] in [row[:6] for row in everyone]
    for row in everyone:
        balance, grants, debits, refunds = (int(x) for x in row[2:6])
        assert balance == grants - debits + refunds, row


def test_demo_prints_a_working_key(server: Server) -> None:
    first, second = (ok(server, "demo") for _ in range(2))
    key1, key2 = last_line(first), last_line(second)
    assert key1.startswith("ng_") and key2.startswith("ng_") and key1 != key2
    assert_key_works(server, key1)
    assert_key_works(server, key2)
    numbers = show(server, "demo")
    # Running demo again adds a key, not another 1000 credits.
    assert numbers["granted"] == 1000
    assert numbers["balance"] == numbers["granted"] - numbers["debited"] + numbers["refunded"]


def test_a_new_key_is_announced_only_where_it_is_shown(server: Server) -> None:
    """Piped (``key=$(nanogen demo | tail -n 1)``, as scripts/serve does), stderr does not announce a key
    that never appears after it; on a terminal the announcement comes and the key follows it."""
    piped = ok(server, "demo")
    assert last_line(piped).startswith("ng_")
    assert "API key" not in piped.stderr and not piped.stderr.rstrip().endswith(":"), piped.stderr

    leader, follower = pty.openpty()
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "nanogen", "demo"],
            env=_env(server),
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
        os.close(follower)
        terminal = b""
        while chunk := _read_or_eof(leader):
            terminal += chunk
    finally:
        os.close(leader)
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.rstrip().endswith("API key (shown once, stored only as a hash):"), shown.stderr
    key = terminal.decode().split()[-1]
    assert key.startswith("ng_")
    assert_key_works(server, key)


def _read_or_eof(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end is closed and everything was read
        return b""


def test_names_with_brackets_are_printed_as_they_are(server: Server) -> None:
    name = f"[bold]ann[/bold]-{uuid.uuid4().hex[:8]}"
    created = ok(server, "keys", "create", "--credits", "5", "--name", name)
    assert f"account {name} (acct_" in created.stderr, created.stderr
    rows = table_rows(ok(server, "keys", "list", "--account", name).stdout)
    assert [row[1] for row in rows] == [name]
    granted = ok(server, "credits", "grant", name, "1", "--memo", "[x]")
    assert f"{name}: +1 credit, balance 6" in granted.stderr
    missing = cli(server, "credits", "grant", f"[red]{name}", "1")
    assert missing.returncode == 2 and f"no account '[red]{name}'" in missing.stderr


def test_unknown_account_exits_2_with_a_message(server: Server) -> None:
    missing = f"nobody-{uuid.uuid4().hex[:8]}"
    commands = [
        ("credits", "grant", missing, "5"),
        ("credits", "show", missing),
        ("keys", "create", "--account", missing, "--credits", "3"),
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda args: cli(server, *args), commands))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert f"no account '{missing}'" in result.stderr, (args, result.stderr)
        assert result.stdout.strip() == "", (args, result.stdout)  # no key printed
        assert "Traceback" not in result.stderr


def test_invalid_amounts_are_usage_errors(tmp_path: Path) -> None:
    commands = [
        ("credits", "grant", "dave", "0"),
        ("credits", "grant", "dave", "--", "-3"),
        ("keys", "create", "--credits", "-1"),
    ]
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda args: cli(tmp_path, *args), commands))
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert "Invalid value" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stdout.strip() == ""
    assert not (tmp_path / "nanogen.sqlite").exists()  # refused before touching any database
