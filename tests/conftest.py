"""Shared fixtures: real nanogen servers (uvicorn subprocesses over HTTP), real SQLite files, and a
local HTTP server that plays the part of the public web for input image URLs.

DBOS is a process-wide singleton, so every server runs in its own process.
"""

from __future__ import annotations

import inspect
import io
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.databases import Database, postgres_database
from tests.local_http import LocalHTTPServer

ADMIN_TOKEN = "test-admin-token"
ROOT = Path(__file__).resolve().parent.parent
# How long a server may take to answer /healthz: a few seconds here on a quiet day, but these machines'
# speed moves 3-5x between days, and three test workers start servers beside each other's loads (one
# start took over 60 s on a slow day). A bound on behaviour, not a speed check.
SERVER_START_TIMEOUT_S = 180
# How long a test waits for an outcome (a generation ends, a webhook arrives, a row changes). A wait ends
# the moment its condition holds, so the bound costs nothing when the code works; it only has to lie far
# past what the slowest machine day needs (one 720p sandbox shot took over 115 s beside a loaded suite).
OUTCOME_WAIT_S = 480
# One TLS context for every client the tests make: httpx builds a fresh one per Client (loading the CA
# bundle: 27 ms of CPU each on this machine, 0.1 ms with this one), and the tests make a client per
# poll of a generation and per probe of a starting server (35% of the machine's samples were the
# test workers, mostly OpenSSL, in a minute of `perf record -a` during a run on 2026-12-07).
TLS_CONTEXT = httpx.create_ssl_context()


# Ports for the tests' own servers: each test worker takes them in turn from a block of its own, just
# below the kernel's ephemeral range. A port the kernel picks (bind to port 0) is free only at that
# moment: two workers were once given the same one before either server had bound it, so one test's
# requests reached another test's server and then found nothing (2026-12-06 CI). Blocks of their own
# never overlap, and outgoing connections, whose ports come from the ephemeral range, never take one.
PORT_BLOCKS = 8
PORT_BLOCK_SIZE = 1000


def _port_block() -> range | None:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the kernel's pick
        return None
    first = ephemeral_low - PORT_BLOCKS * PORT_BLOCK_SIZE
    if first < 10_000:  # an unusually wide ephemeral range leaves no room below it
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...; unset in one process and benches
    index = int(worker[2:]) + 1 if worker[2:].isdigit() else 0
    start = first + index % PORT_BLOCKS * PORT_BLOCK_SIZE
    return range(start, start + PORT_BLOCK_SIZE)


_PORT_BLOCK = _port_block()
# A random place to start, so that two runs side by side (a benchmark beside the suite) rarely meet.
_next_port = itertools.count(random.randrange(PORT_BLOCK_SIZE))


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port still in TIME_WAIT is passed over too
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that nothing listens on now, which no other test worker of this run is given."""
    if _PORT_BLOCK is not None:
        for _ in range(PORT_BLOCK_SIZE):
            port = _PORT_BLOCK[next(_next_port) % PORT_BLOCK_SIZE]
            if _bindable(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nanogen_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanogen", *args], env=env, capture_output=True, text=True, timeout=120
    )


@dataclass
class Server:
    """A `nanogen serve` process on a free port, with its own data directory."""

    home: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None  # None: the embedded default, SQLite under ``home``
    port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
        env.update(
            NANOGEN_HOME=str(self.home),
            NANOGEN_ADMIN_TOKEN=ADMIN_TOKEN,
            NANOGEN_FETCH_ALLOW_HOSTS="127.0.0.1",
            NANOGEN_EXECUTOR_ID="test-serve",
            NANOGEN_LOG_LEVEL="warning",
            NANOGEN_WATCHDOG_INTERVAL_S="0.5",
            # The spacing of queue polls while there is work (an idle server's pollers wait for its
            # own submissions, tasks/wakeups.py): shots dispatched about as fast as images (the tests
            # wait for many videos), and images every 0.1 s rather than the sandbox's 0.05 s, on a
            # machine the suite keeps busy with several servers.
            NANOGEN_VIDEO_QUEUE_POLLING_INTERVAL_S="0.1",
            NANOGEN_IMAGE_QUEUE_POLLING_INTERVAL_S="0.1",
        )
        if self.database_url:
            env["NANOGEN_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nanogen", "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with httpx.Client(timeout=1, verify=TLS_CONTEXT) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log_tail()}")
                try:
                    if probe.get(f"{self.base_url}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)  # refused, timed out or not ready yet: the same pause before the next probe
        self.process.kill()  # not left running for the rest of the session
        self.process.wait()
        raise RuntimeError(f"server did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def log_size(self) -> int:
        path = self.home / "server.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, offset: int) -> str:
        """What the server logged after ``offset`` (log_size()): a shared server also logs other tests'."""
        path = self.home / "server.log"
        if not path.exists():
            return ""
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    # -- helpers the tests use
    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, verify=TLS_CONTEXT)

    def new_account(self, credits: int) -> Account:
        with self.client(ADMIN_TOKEN) as c:
            name = f"acct-{time.monotonic_ns()}"
            r = c.post("/admin/accounts", json={"name": name, "credits": credits})
            assert r.status_code == 201, r.text
            body = r.json()
        return Account(self, body["account"]["id"], body["apiKey"])

    def db(self) -> Database:
        return Database(self.database_url, self.home / "nanogen.sqlite")


@dataclass
class Account:
    server: Server
    id: str
    key: str

    def client(self) -> httpx.Client:
        return self.server.client(self.key)

    def balance(self) -> int:
        with self.server.db() as db:
            return int(
                db.execute("SELECT balance FROM nanogen_accounts WHERE id=?", (self.id,)).fetchone()[0]
            )

    def ledger_sums(self) -> dict[str, int]:
        with self.server.db() as db:
            rows = db.execute(
                "SELECT kind, SUM(amount) FROM nanogen_ledger WHERE account_id=? GROUP BY kind", (self.id,)
            ).fetchall()
        return {kind: int(total) for kind, total in rows}

    def assert_books_balance(self) -> None:
        sums = self.ledger_sums()
        expected = sums.get("grant", 0) - sums.get("debit", 0) + sums.get("refund", 0)
        assert self.balance() == expected, sums


def assert_envelope(r: httpx.Response, status: int, code: str) -> None:
    """The contract's error envelope: this status, this errorCode and a message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "errorCode"}, body
    assert body["errorCode"] == code, body
    assert isinstance(body["error"], str) and body["error"]


def wait_for(check: Any, timeout: float = OUTCOME_WAIT_S, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy (behaviour, not speed: a generous bound)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def _uses_postgres(item: pytest.Item, memo: dict[Any, bool]) -> bool:
    """Whether a test touches PostgreSQL: it is the postgres case of a fixture parametrised over both
    databases, or it (or a fixture it uses) opens a PostgreSQL database of its own."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "postgres" in callspec.id.split("-"):
        return True
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        for defs in info.name2fixturedefs.values():
            # A fixture parametrised over the databases is the callspec's to decide (above).
            functions.extend(d.func for d in defs if not d.params)
    for function in functions:
        if function is None:
            continue
        if function not in memo:
            try:
                memo[function] = "postgres" in inspect.getsource(function)
            except (OSError, TypeError):
                memo[function] = False
        if memo[function]:
            return True
    return False


POSTGRES_GROUPS = 2
# Each PostgreSQL test's seconds in a recent full run (``./scripts/test --store-durations`` writes it),
# to give the two groups even work: dealt one test at a time in order, the groups' longest tests fell
# on one side (2026-12-07: one group's worker ran 758 s of the 80 slowest tests, the other's 248 s).
DURATIONS_FILE = Path(__file__).with_name("durations.json")
DURATIONS_OPTION = "--store-durations"
_GROUP_SUFFIX = re.compile(r"@postgres-\d+$")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        DURATIONS_OPTION,
        action="store_true",
        help=f"write each PostgreSQL test's seconds to {DURATIONS_FILE.name} (balances the groups)",
    )


def _known_durations() -> dict[str, float]:
    try:
        known = json.loads(DURATIONS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in known.items()} if isinstance(known, dict) else {}


# Before pytest-xdist's own hook, which reads the xdist_group marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (scripts/test), the tests that touch the shared
    PostgreSQL run on two workers, one at a time on each: each server holds up to 18 connections, a
    fault test's cluster several times that, and the server's default max_connections (100) is
    shared with whatever else runs on the machine. Every other test, including the SQLite cases of
    the same files, spreads over the workers. Two groups, because one took longer than the rest of
    the suite on the other two workers (2026-12-06: 882 s against 595 s; 43 connections at most,
    against 77 and 92 with the tests spread over all three). Not slots that any worker takes
    (tried: the work evened out, 972 s against 1,055 s, but every worker then kept a shared
    PostgreSQL server up, and the run peaked at 75 and then 91 connections of the 100).

    The tests are dealt longest first, each to the group with less work so far (by their seconds in
    DURATIONS_FILE; a test not there counts as the median one), so the two groups end together. Every
    worker deals the same way from the same file, as pytest-xdist requires (each worker collects)."""
    memo: dict[Any, bool] = {}
    chosen = [item for item in items if _uses_postgres(item, memo)]
    known = _known_durations()
    typical = statistics.median(known.values()) if known else 1.0
    seconds = {item.nodeid: known.get(item.nodeid, typical) for item in chosen}
    work = [0.0] * POSTGRES_GROUPS
    for item in sorted(chosen, key=lambda item: seconds[item.nodeid], reverse=True):
        index = work.index(min(work))
        work[index] += seconds[item.nodeid]
        group = f"postgres-{index}"
        item.add_marker(pytest.mark.xdist_group(group))
        _name_the_group(config, item, group)


class _DurationRecorder:
    """On the controller (or a run without workers): each PostgreSQL test's setup, call and teardown
    seconds, written to DURATIONS_FILE at the end of a run that passed. Tests that did not run keep
    their old figure; a group suffix (``@postgres-1``) is not part of a test's id."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if _GROUP_SUFFIX.search(report.nodeid):
            nodeid = _GROUP_SUFFIX.sub("", report.nodeid)
            self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus != 0 or not self.seconds:
            return
        merged = _known_durations() | {k: round(v, 1) for k, v in self.seconds.items()}
        DURATIONS_FILE.write_text(json.dumps(merged, indent=0, sort_keys=True) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption(DURATIONS_OPTION) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_DurationRecorder(), "nanogen-durations")


def _name_the_group(config: pytest.Config, item: pytest.Item, group: str) -> None:
    """pytest-xdist 3.8 tells its scheduler an item's group by renaming the item in the worker
    (``<nodeid>@<group>``), but it writes the name's old field, which pytest 9.2 no longer reads
    (its node ids are structured): the mark was ignored and these tests spread over every worker
    (pytest-xdist#1386; on 2026-12-06 two sampled runs peaked at 77 and 92 connections). On such
    a pytest the structured id is renamed here, as xdist means to."""
    if not getattr(config.option, "loadgroup", False):
        return  # not an xdist worker under loadgroup
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest, whose ids xdist renames itself
        return
    item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The database a test's servers use: the embedded default (None: SQLite under the server's
    home) or a PostgreSQL database of this run's own. Tests that take it run on both."""
    if request.param == "sqlite":
        yield None
        return
    with postgres_database("server") as url:
        yield url


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[Server]:
    """One shared server per database, for tests that don't restart it. Each test worker keeps one of
    each up for the whole run, idle most of it."""
    srv = Server(tmp_path_factory.mktemp("nanogen-home"), database_url=database_url).start()
    yield srv
    srv.stop()


# -- a stand-in for "the public web": images at http://127.0.0.1:<port>/<name> ------------------------
def image_bytes(colour: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


class ImageHost:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {
            "/red.png": (image_bytes((230, 20, 20)), "image/png"),
            "/blue.png": (image_bytes((20, 20, 230)), "image/png"),
            "/green.jpg": (image_bytes((20, 200, 20), "JPEG"), "image/jpeg"),
            "/demo.webp": (image_bytes((240, 200, 40), "WEBP", (96, 64)), "image/webp"),
            "/not-an-image.png": (b"this is text, not a picture", "image/png"),
        }
        self.hits = 0
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hits += 1
                found = host.files.get(self.path.split("?")[0])
                if found is None:
                    self.send_error(404)
                    return
                body, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()
