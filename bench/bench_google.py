"""The Google engine at production load (issue 14): ``nanogen serve`` on the embedded default with the
google engine for images and videos, pointed at bench/fake_google.py (a fixed provider latency), defaults
untouched otherwise. Run with ``.venv/bin/python bench/bench_google.py`` (about 15 minutes at the full
sizes once the engine meets its goals; ``--quick``: about 2) or as part of ``bench/run``.

a. N one-shot video requests (default 1,000) at L s provider latency (default 60): wall time until every
   shot is done over L (goal <= 1.25x), the server's peak RSS (VmHWM; goal <= 1 GB), its CPU per shot
   (utime + stime of the server process and its HTTP child over the run, submits included; goal <= 20 ms;
   beside it the share an idle server would have spent over the same time, measured before the load,
   and the share of the kernel: stime, where contended locks show up; and split at the last accepted
   submission and at L after the first: the submissions, the waiting, the ends),
   ERROR/Traceback lines in its log (goal 0), duplicate submissions at the fake (goal 0).
b. 48 requests of 21 shots at L: the same measures (the wall time includes the 48 concatenations, and
   so does the CPU: the issue's goal excludes them; a stream-copy join costs ~0.07 s, ~3 ms a shot).
c. 2,000 image requests at 15 s image latency: wall time over the latency (goal <= 1.25x). Then a floor in
   the same run (bench/image_floor.py): a bare aiohttp client making the same calls to a fake of its own
   with the same answers, doing nothing but read, parse, decode and write each PNG; c's wall over its.
d. one 21-shot request after one 1-shot request, at L: wall time ratio (goal <= 1.1x), seen by a client
   polling check-status every 0.25 s (the 21-shot one until its concatenated video is ready).
e. a's run with a ``kill -9`` of the server at L/2 (30 s) and a restart on the same data directory and
   executor id: every shot completes, exactly one submission per shot at the fake, credits exact (from
   GET /api/account/ledger and GET /api/account: balance = start - credits of completed shots, no refund
   of completed work).

Requests are spread over accounts of at most ``--shots-per-account`` shots each (default 21, as many
accounts as a real burst would come from; 0: one account for all).
The bench watches completion in the server's SQLite file (no check-status load on the server), except d.
After each load case it checks every account's credits through the API, as in e.
Every provider latency, quota and fault is an argument here (passed on to the fake); ``--server-env
NANOGEN_X=Y`` sets a server setting for a before/after comparison; ``--contend N`` runs it all on one CPU
beside N busy loops, as on a machine several times slower. A missed goal prints MISS; the exit
status is 0 unless the bench itself fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx

from bench_server import (
    HOST,
    ROOT,
    Account,
    Report,
    Row,
    Service,
    free_port,
    machine_busy,
    nanogen_server,
    new_account,
    terminated_on_sigterm,
    timed,
)
from fake_google import raise_open_files_limit
from nanogen.engines.google.process_http import CHILD_NAME as HTTP_CHILD_NAME

API_KEY = "AIzaSy-bench-key-for-the-fake-google"
CASES = ("a", "b", "c", "d", "e")
START_CREDITS = 10**9
VIDEO_STATUS = "/api/veo-3/check-status"
ERROR_LINE = re.compile(r"\bERROR\b|Traceback")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the fake ---------------------------------------------------------------------------------------


@dataclass
class Fake:
    args: argparse.Namespace
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.args.tls_files else "http"
        return f"{scheme}://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        a = self.args
        return [
            sys.executable,
            str(ROOT / "bench" / "fake_google.py"),
            f"--port={self.port}",
            f"--api-key={API_KEY}",
            f"--video-latency-s={a.latency_s}",
            f"--image-latency-s={a.image_latency_s}",
            f"--submit-rpm={a.submit_rpm}",
            f"--image-rpm={a.image_rpm}",
            f"--poll-rpm={a.poll_rpm}",
            f"--submit-error-rate={a.submit_error_rate}",
            f"--poll-error-rate={a.poll_error_rate}",
            f"--image-error-rate={a.image_error_rate}",
            f"--image-kb={a.image_kb}",
        ] + ([f"--certfile={a.tls_files[0]}", f"--keyfile={a.tls_files[1]}"] if a.tls_files else [])

    def start(self) -> Fake:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fake exited early:\n{self.log_path.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_stats", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the fake did not start")

    def stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/_stats", params={"prompts": "1"}, timeout=60)
        r.raise_for_status()
        stats: dict[str, Any] = r.json()
        return stats

    def cpu_s(self) -> float:
        assert self.process is not None
        return tree_cpu_s(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


METRICS_TOKEN = "bench-metrics-token"
FULL_COLLECTIONS = re.compile(r'^python_gc_collections_total\{generation="2"\} (\S+)$', re.M)


def full_collections(server: Service) -> int | None:
    """How many full (generation 2) garbage collections the server has run, from its /metrics: each
    walks every object the collector tracks with the interpreter lock held."""
    try:
        r = httpx.get(
            f"http://{HOST}:{server.port}/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
            timeout=30,
        )
    except httpx.HTTPError:
        return None
    found = FULL_COLLECTIONS.search(r.text) if r.status_code == 200 else None
    return int(float(found.group(1))) if found else None


def google_settings(fake: Fake, extra: dict[str, str]) -> dict[str, str]:
    """nanogen_server's keyword settings (NANOGEN_ + upper case): the google engine at the fake."""
    settings = {
        "ENGINE_IMAGES": "google",
        "ENGINE_VIDEOS": "google",
        "GOOGLE_API_KEY": API_KEY,
        "GOOGLE_BASE_URL": fake.url,
        "METRICS_TOKEN": METRICS_TOKEN,  # to read the server's own garbage-collector counters
    }
    settings.update({k.removeprefix("NANOGEN_"): v for k, v in extra.items()})
    return settings


# -- the server process and its children, from /proc ------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_s(pid: int) -> float:
    """utime + stime of the process, its waited-for children (cutime + cstime) and its live ones."""
    total = 0
    fields = _stat(pid)
    if fields is not None:
        total += sum(int(v) for v in fields[11:15])
    return total / CLK_TCK + sum(process_cpu_s(child) for child in descendants(pid))


def process_cpu_s(pid: int) -> float:
    """utime + stime of the process alone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields is not None else 0.0


def gateway_pids(pid: int) -> list[int]:
    """The server and its HTTP child (the Google engine's calls, process_http.py): the gateway's own
    work. The joins' child processes are left out, as the issue's goal excludes concatenation."""
    return [pid] + [c for c in descendants(pid) if _comm(c) == HTTP_CHILD_NAME]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class CpuReading:
    """The server's CPU seconds at one moment: with its children (the joins), the gateway's own (the
    server process and its HTTP child), and the gateway's in the kernel (stime: system calls, futex
    waits and wake-ups, task switches; where contended locks show up). Differences of readings are
    the CPU spent between them."""

    tree: float = 0.0
    own: float = 0.0
    kernel: float = 0.0

    @classmethod
    def of(cls, pid: int) -> CpuReading:
        own = kernel = 0
        for member in gateway_pids(pid):
            fields = _stat(member)  # user and kernel from one snapshot
            if fields is not None:
                own, kernel = own + int(fields[11]) + int(fields[12]), kernel + int(fields[12])
        return cls(tree_cpu_s(pid), own / CLK_TCK, kernel / CLK_TCK)

    def __add__(self, other: CpuReading) -> CpuReading:
        return CpuReading(self.tree + other.tree, self.own + other.own, self.kernel + other.kernel)

    def __sub__(self, other: CpuReading) -> CpuReading:
        return CpuReading(self.tree - other.tree, self.own - other.own, self.kernel - other.kernel)


def own_cpu_s() -> float:
    """This process's CPU seconds (user and kernel), its threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def status_fields(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS in bytes, and Threads, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                found[key] = int(value)
    except OSError:
        pass
    return found


class Watch:
    """Samples the server's process tree every ``interval`` s: peak RSS (the server's VmHWM, plus its
    children's RSS at the moment), peak threads. Survives a restart: ``follow(pid)``."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_threads = 0
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def follow(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> None:
        pid = self.pid
        own = status_fields(pid)
        children = descendants(pid)
        rss = own.get("VmHWM", 0) + sum(status_fields(c).get("VmRSS", 0) for c in children)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, own.get("Threads", 0))
        self.peak_children = max(self.peak_children, len(children))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# -- load -------------------------------------------------------------------------------------------


@dataclass
class Accepted:
    account: int
    generation_id: str
    credits: int
    shots: int
    task_ids: list[tuple[str, str]]  # (shotId, taskId)


@dataclass
class Submitted:
    accepted: list[Accepted]
    refused: list[str]
    seconds: float


def idle_cpu_rate(pid: int, seconds: float) -> float:
    """The server's CPU seconds per second while it waits for work (its queues' polling, timers): part
    of every figure per shot, and more of it the longer a run takes."""
    if seconds <= 0:
        return 0.0
    settled(pid)
    before = tree_cpu_s(pid)
    time.sleep(seconds)
    return (tree_cpu_s(pid) - before) / seconds


def settled(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until the server has started its worker threads (a worker starts them all at launch, from
    a background thread, in about a second): not idle time, nor the load's."""
    deadline = time.monotonic() + timeout_s
    last, same_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        threads = status_fields(pid).get("Threads", 0)
        if threads != last:
            last, same_since = threads, time.monotonic()
        elif time.monotonic() - same_since >= 1.0:
            return
        time.sleep(0.2)


def spread(shots_per_request: list[int], shots_per_account: int) -> list[int]:
    """The account index of each request: at most ``shots_per_account`` shots an account (0: one)."""
    owners, account, used = [], 0, 0
    for shots in (max(1, s) for s in shots_per_request):  # an image request: one task
        if shots_per_account and used and used + shots > shots_per_account:
            account, used = account + 1, 0
        owners.append(account)
        used += shots
    return owners


def video_body(request: int, shots: int, run: str) -> dict[str, Any]:
    return {
        "shots": [
            {
                "id": f"shot-{s}",
                # Unique per shot: the fake counts submissions per prompt (a duplicate is a second payment).
                "prompt": f"{run} request {request} shot {s}: a lighthouse in a storm at dusk",
                "generationType": "TEXT_2_VIDEO",
                "aspectRatio": "16:9",
            }
            for s in range(shots)
        ],
        "resolution": "720p",
    }


def image_body(request: int, run: str) -> dict[str, Any]:
    return {"prompt": f"{run} image {request}: a red bicycle leaning on a lamp post", "mode": "generate"}


async def post_all(
    host: str, port: int, requests: list[tuple[str, bytes, tuple[str, str]]], connections: int
) -> list[tuple[int, bytes] | str]:
    """POST each ``(path, JSON body, (auth header, value))`` over ``connections`` keep-alive HTTP/1.1
    connections, each one request at a time: ``(status, body)`` per request, in order, or the error
    that lost it.

    The load comes from this process, on the cores the server runs on, so it must cost little: httpx's
    AsyncClient spent 1.2-2.6 ms of CPU per request here (one pool of 64 connections: ~6.5 ms,
    encode/httpx#3215), this loop over asyncio streams and h11 (the HTTP/1.1 parser httpx's own
    transport uses) a few hundred microseconds."""
    results: list[tuple[int, bytes] | str] = ["not sent"] * len(requests)
    queue = iter(range(len(requests)))

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        conn = h11.Connection(h11.CLIENT)
        for index in queue:
            path, body, auth = requests[index]
            try:
                if writer is None or conn.our_state is not h11.IDLE:
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    conn = h11.Connection(h11.CLIENT)
                assert reader is not None
                headers = [
                    ("Host", f"{host}:{port}"),
                    auth,
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                ]
                writer.write(
                    conn.send(h11.Request(method="POST", target=path, headers=headers))
                    + conn.send(h11.Data(data=body))
                    + conn.send(h11.EndOfMessage())
                )
                status, chunks = 0, []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
                results[index] = (status, b"".join(chunks))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
            except (OSError, h11.ProtocolError) as exc:
                results[index] = f"{type(exc).__name__}: {exc}"
                if writer is not None:  # the next request opens a new connection; this one is done
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return results


async def submit_all(
    server: Service,
    accounts: list[Account],
    owners: list[int],
    bodies: list[dict[str, Any]],
    concurrency: int,
) -> Submitted:
    video = "shots" in bodies[0]
    path = "/api/veo-3/generate" if video else "/api/nano-banana-2/generate"
    requests = [
        (path, json.dumps(body).encode(), ("Authorization", f"Bearer {accounts[owner].key}"))
        for owner, body in zip(owners, bodies, strict=True)
    ]
    accepted: list[Accepted] = []
    refused: list[str] = []
    started = time.perf_counter()
    answers = await post_all(HOST, server.port, requests, concurrency)
    seconds = time.perf_counter() - started
    for owner, answer in zip(owners, answers, strict=True):
        if isinstance(answer, str):
            refused.append(answer)
            continue
        status, text = answer
        if status != 200:
            refused.append(f"{status} {text[:200].decode(errors='replace')}")
            continue
        data = json.loads(text)
        shots = [(s["shotId"], s["taskId"]) for s in data["shots"]] if video else [("", data["taskId"])]
        accepted.append(Accepted(owner, data["generationId"], data["creditsUsed"], len(shots), shots))
    return Submitted(accepted, refused, seconds)


# How often the run reads whether every task is done: the wall time is read to this resolution (it was
# 0.5 s, a third of c's margin: c's wall read 0.3 s past its last task's end).
DONE_POLL_S = 0.1


@dataclass
class Progress:
    tasks: int = 0
    completed: int = 0
    failed: int = 0
    concat_open: int = 0
    last_finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.tasks > 0 and self.completed + self.failed == self.tasks and self.concat_open == 0


def progress(home: Path) -> Progress:
    """Read the server's SQLite file (WAL: readers do not block its writer)."""
    with contextlib.closing(sqlite3.connect(home / "nanogen.sqlite", timeout=10)) as db:
        tasks, completed, failed, last = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'completed'), 0), COALESCE(SUM(status = 'failed'), 0),"
            " MAX(finished_at) FROM nanogen_tasks"
        ).fetchone()
        (concat_open,) = db.execute(
            "SELECT COUNT(*) FROM nanogen_generations WHERE task_count > 1"
            " AND (concat_status IS NULL OR concat_status = 'pending')"
        ).fetchone()
    return Progress(tasks, completed, failed, concat_open, last)


def phases(home: Path, t0: float, latency_s: float) -> dict[str, Any]:
    """Where the wall time went, from the task rows (seconds from the first request): when the last
    task was accepted, how long tasks waited to start, and how far past the provider's latency they
    ended once started (the operation's own wait, polling and the output's download and write)."""
    with contextlib.closing(sqlite3.connect(home / "nanogen.sqlite", timeout=10)) as db:
        rows = db.execute(
            "SELECT created_at, started_at, finished_at FROM nanogen_tasks"
            " WHERE started_at IS NOT NULL AND finished_at IS NOT NULL"
        ).fetchall()
    if not rows:
        return {}

    def dist(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        at = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return {"p50": round(at(0.5), 2), "p90": round(at(0.9), 2), "max": round(values[-1], 2)}

    return {
        "last_accepted_s": round(max(r[0] for r in rows) - t0, 2),
        "last_started_s": round(max(r[1] for r in rows) - t0, 2),
        "last_finished_s": round(max(r[2] for r in rows) - t0, 2),
        "start_delay_s": dist([r[1] - r[0] for r in rows]),
        "past_latency_s": dist([r[2] - r[1] - latency_s for r in rows]),
    }


def log_errors(server: Service) -> list[str]:
    text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    return [line for line in text.splitlines() if ERROR_LINE.search(line)]


# -- credits: the account's own view (GET /api/account, /api/account/ledger) -------------------------


def ledger_check(
    server: Service, accounts: list[Account], accepted: list[Accepted], home: Path
) -> dict[str, Any]:
    """Per account: balance = start - credits of completed shots; debits = credits accepted; no refund of
    a generation whose shots all completed."""
    with contextlib.closing(sqlite3.connect(home / "nanogen.sqlite", timeout=10)) as db:
        completed = dict(
            db.execute(
                "SELECT generation_id, SUM(status = 'completed') FROM nanogen_tasks GROUP BY generation_id"
            ).fetchall()
        )
    wrong: list[str] = []
    refunds_of_completed = 0
    totals = {"debited": 0, "refunded": 0, "expected_spent": 0, "spent": 0}
    for index, account in enumerate(accounts):
        mine = [a for a in accepted if a.account == index]
        expected_spent = sum(a.credits * completed.get(a.generation_id, 0) // a.shots for a in mine)
        fully_done = {a.generation_id for a in mine if completed.get(a.generation_id, 0) == a.shots}
        headers = {"Authorization": f"Bearer {account.key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
            balance = c.get("/api/account").raise_for_status().json()["credits"]
            entries: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                params = {"limit": "100"} | ({"cursor": cursor} if cursor else {})
                page = c.get("/api/account/ledger", params=params).raise_for_status().json()
                entries += page["data"]
                cursor = page["nextCursor"]
                if cursor is None:
                    break
        debited = sum(-e["amount"] for e in entries if e["kind"] == "debit")
        refunded = sum(e["amount"] for e in entries if e["kind"] == "refund")
        refunds_of_completed += sum(
            1 for e in entries if e["kind"] == "refund" and e["generationId"] in fully_done
        )
        totals["debited"] += debited
        totals["refunded"] += refunded
        totals["expected_spent"] += expected_spent
        totals["spent"] += START_CREDITS - balance
        if balance != START_CREDITS - expected_spent or debited != sum(a.credits for a in mine):
            wrong.append(
                f"{account.id}: balance {balance}, debited {debited}, expected spent {expected_spent}"
            )
    return totals | {
        "accounts": len(accounts),
        "accounts_wrong": wrong[:10],
        "refunds_of_completed_work": refunds_of_completed,
        "exact": not wrong and refunds_of_completed == 0,
    }


# -- one load case ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    latency_s: float
    requests: int
    shots: int
    refused: int
    submit_s: float
    wall_s: float | None  # None: not all done within the timeout
    first_refusals: list[str]
    shots_done_s: float | None
    completed: int
    failed: int
    server_cpu_s: float
    process_cpu_s: float  # the server process and its HTTP child (the joins' child processes excluded)
    process_kernel_cpu_s: float  # of which in the kernel
    peak_rss: int
    peak_threads: int
    log_errors: list[str]
    fake: dict[str, Any]
    fake_cpu_s: float
    idle_cpu_per_s: float  # the server's CPU seconds per second before the load (queue polling, timers)
    timeout_s: float
    kill: dict[str, Any] | None = None
    credits: dict[str, Any] | None = None
    phases: dict[str, Any] | None = None
    # The server process's CPU seconds until the last submission was answered (the API's work and
    # the jobs started meanwhile), and this process's own CPU seconds for the submissions: the load
    # generator runs on the server's cores, so what it costs is not the server's to spend.
    submit_phase_cpu_s: float | None = None
    client_cpu_s: float | None = None
    # Until the provider's latency had passed since the first submission (read within DONE_POLL_S): before
    # it no operation can be done, so from the last acceptance to here the server only waits (polls,
    # timers); after it come the ends.
    waited_cpu_s: float | None = None
    full_collections: int | None = None  # the server's full garbage collections during the run

    @property
    def cpu_ms_per_shot(self) -> float:
        return self.server_cpu_s / max(1, self.completed) * 1e3

    @property
    def process_ms_per_shot(self) -> float:
        return self.process_cpu_s / max(1, self.completed) * 1e3

    @property
    def idle_ms_per_shot(self) -> float:
        """What the server would have spent idle over the same wall time, per shot."""
        wall = self.wall_s if self.wall_s is not None else self.timeout_s
        return self.idle_cpu_per_s * wall / max(1, self.completed) * 1e3

    def summary(self) -> dict[str, Any]:
        fake = {
            k: self.fake.get(k)
            for k in (
                "submissions",
                "duplicate_submissions",
                "duplicated_prompts",
                "image_calls",
                "duplicate_image_calls",
                "polls",
                "polls_per_operation",
                "done_seen_after_ready_s",
                "submit_span_s",
                "image_call_span_s",
                "sent_429_total",
                "sent_503",
                "rejected",
                "peak_running_operations",
                "peak_unfinished_operations",
                "peak_open_image_calls",
                "peak_open_requests",
            )
        }
        return {
            "case": self.name,
            "latency_s": self.latency_s,
            "requests": self.requests,
            "shots": self.shots,
            "refused_submits": self.refused,
            "first_refusals": self.first_refusals,
            "submit_s": round(self.submit_s, 2),
            "phases": self.phases,
            "wall_s": None if self.wall_s is None else round(self.wall_s, 2),
            "shots_done_s": None if self.shots_done_s is None else round(self.shots_done_s, 2),
            "completed": self.completed,
            "failed": self.failed,
            "server_cpu_s": round(self.server_cpu_s, 2),
            "server_process_cpu_s": round(self.process_cpu_s, 2),
            "server_process_cpu_ms_per_shot": round(self.process_ms_per_shot, 2),
            "server_process_kernel_cpu_s": round(self.process_kernel_cpu_s, 2),
            "server_process_cpu_s_until_last_accepted": rounded(self.submit_phase_cpu_s),
            "server_process_cpu_s_until_latency": rounded(self.waited_cpu_s),
            "client_cpu_s": rounded(self.client_cpu_s),
            "server_cpu_ms_per_shot": round(self.cpu_ms_per_shot, 2),
            "server_idle_cpu_per_s": round(self.idle_cpu_per_s, 4),
            "idle_share_ms_per_shot": round(self.idle_ms_per_shot, 2),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_threads": self.peak_threads,
            "full_gc_collections": self.full_collections,
            "log_error_lines": len(self.log_errors),
            "first_log_errors": self.log_errors[:5],
            "fake": fake,
            "fake_cpu_s": round(self.fake_cpu_s, 2),
            "kill": self.kill,
            "credits": self.credits,
        }


def run_case(
    args: argparse.Namespace,
    tmp: Path,
    name: str,
    shots_per_request: list[int],
    latency_s: float,
    kill_at_s: float | None = None,
) -> Outcome:
    """Submit every request at once (``--client-concurrency`` at a time), wait for all to end, measure."""
    home = tmp / f"home-{name}"
    home.mkdir()
    fake = Fake(args, tmp / f"fake-{name}.log").start()
    server = nanogen_server(home, **google_settings(fake, args.server_env))
    try:
        server.start()
        owners = spread(shots_per_request, args.shots_per_account)
        accounts = [new_account(server, START_CREDITS) for _ in range(owners[-1] + 1)]
        run = f"{name}-{time.monotonic_ns()}"
        video = shots_per_request[0] > 0
        bodies = [
            video_body(i, shots, run) if video else image_body(i, run)
            for i, shots in enumerate(shots_per_request)
        ]
        assert server.process is not None
        kill: dict[str, Any] | None = None
        spent_before_kill = CpuReading()
        idle = idle_cpu_rate(server.process.pid, args.idle_s)
        collections0 = full_collections(server)
        with Watch(server.process.pid) as watch:
            cpu0, fake_cpu0 = CpuReading.of(server.process.pid), fake.cpu_s()
            t0 = time.time()
            client0 = own_cpu_s()
            submitted = asyncio.run(submit_all(server, accounts, owners, bodies, args.client_concurrency))
            client_cpu = own_cpu_s() - client0
            submit_phase = CpuReading.of(server.process.pid) - cpu0
            deadline = t0 + args.timeout_s
            state = progress(home)
            if kill_at_s is not None:
                time.sleep(max(0.0, t0 + kill_at_s - time.time()))
                state = progress(home)
                watch.sample()
                spent_before_kill = CpuReading.of(server.process.pid) - cpu0
                orphans = descendants(server.process.pid)
                killed_at = time.time() - t0
                server.process.send_signal(signal.SIGKILL)  # kill -9: no shutdown code runs
                server.process.wait()
                for pid in orphans:  # the server's own children, left without it
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                before = {"completed": state.completed, "failed": state.failed}
                restart = time.perf_counter()
                server.start()  # same home, port and NANOGEN_EXECUTOR_ID: DBOS recovers the workflows
                watch.follow(server.process.pid)
                cpu0 = CpuReading.of(server.process.pid)  # the restarted process, from its start
                kill = {
                    "killed_at_s": round(killed_at, 2),
                    "done_before_kill": before,
                    "restart_s": round(time.perf_counter() - restart, 2),
                }
            waited: CpuReading | None = None
            while not state.done and time.time() < deadline:
                time.sleep(DONE_POLL_S)
                state = progress(home)
                if waited is None and kill_at_s is None and time.time() >= t0 + latency_s:
                    waited = CpuReading.of(server.process.pid) - cpu0
            seen = time.time()
            watch.sample()
            spent = spent_before_kill + (CpuReading.of(server.process.pid) - cpu0)
            fake_cpu = fake.cpu_s() - fake_cpu0
        collections1 = full_collections(server)
        collections = (
            collections1 - collections0
            if collections0 is not None and collections1 is not None and kill_at_s is None
            else None  # a killed server counts again from zero
        )
        credits = ledger_check(server, accounts, submitted.accepted, home)
        fake_stats = fake.stats()
        timeline = phases(home, t0, latency_s) if kill_at_s is None else None
    finally:
        server.stop()
        fake.stop()
    return Outcome(
        name=name,
        latency_s=latency_s,
        requests=len(shots_per_request),
        shots=sum(max(1, s) for s in shots_per_request),
        refused=len(submitted.refused),
        first_refusals=submitted.refused[:5],
        submit_s=submitted.seconds,
        wall_s=seen - t0 if state.done else None,
        shots_done_s=(state.last_finished_at - t0) if state.done and state.last_finished_at else None,
        completed=state.completed,
        failed=state.failed,
        server_cpu_s=spent.tree,
        process_cpu_s=spent.own,
        process_kernel_cpu_s=spent.kernel,
        peak_rss=watch.peak_rss,
        peak_threads=watch.peak_threads,
        log_errors=log_errors(server),
        fake=fake_stats,
        fake_cpu_s=fake_cpu,
        idle_cpu_per_s=idle,
        timeout_s=args.timeout_s,
        kill=kill,
        credits=credits,
        phases=timeline,
        submit_phase_cpu_s=submit_phase.own,
        waited_cpu_s=None if waited is None else waited.own,
        client_cpu_s=client_cpu,
        full_collections=collections,
    )


def image_floor(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """bench/image_floor.py against a fake of its own with c's settings: the same calls (nanogen's
    default model, aspect ratio and size), answers and latency, with nothing of a gateway around them."""
    fake = Fake(args, tmp / "fake-c-floor.log").start()
    try:
        fake_cpu0 = fake.cpu_s()
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "image_floor.py"),
                f"--url={fake.url}",
                f"--api-key={API_KEY}",
                f"--calls={args.images}",
                f"--timeout-s={args.timeout_s}",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=args.timeout_s + 60,
            check=False,
        )
        fake_cpu = fake.cpu_s() - fake_cpu0
    finally:
        fake.stop()
    if done.returncode != 0:
        raise RuntimeError(f"bench/image_floor.py failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["fake_cpu_s"] = round(fake_cpu, 2)
    return result


def floor_rows(report: Report, floor: dict[str, Any], o: Outcome, latency_s: float) -> None:
    """The floor's wall time beside c's: what the machine itself costs for these answers."""
    report.emit(bench="google_c_floor", **floor)
    wall = floor.get("wall_s")
    report.add(
        Row(
            "   floor: bare aiohttp client, same calls + answers",
            f"{wall:.1f} s" if wall is not None else "not done",
            f"latency {latency_s:g} s; fake CPU {floor['fake_cpu_s']:.1f} s",
            f"{wall / latency_s:.2f}x" if wall is not None else "",
            f"{floor['done']}/{floor['calls']} done",
            floor["done"] == floor["calls"],
        )
    )
    if wall is not None and o.wall_s is not None:
        report.add(
            Row(
                "   c wall over the floor's; CPU per image",
                f"{o.wall_s / wall:.2f}x",
                f"floor {floor['cpu_s'] / max(1, floor['calls']) * 1e3:.1f} ms,"
                f" RSS {floor['peak_rss_mb']} MB",
                "",
                "",
            )
        )


# -- d: one 21-shot request against one 1-shot request ----------------------------------------------


def video_wall(c: httpx.Client, shots: int, run: str, timeout_s: float) -> float:
    started = time.perf_counter()
    r = c.post("/api/veo-3/generate", json=video_body(0, shots, f"{run}-{shots}"))
    r.raise_for_status()
    refs = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in r.json()["shots"]]
    polls = 0
    while True:
        answer = c.post(VIDEO_STATUS, json={"taskIds": refs}).raise_for_status().json()
        if answer["status"] == "completed" and (shots == 1 or answer.get("concatenatedVideoUrl")):
            return time.perf_counter() - started
        if answer["status"] == "failed" or time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"{shots}-shot video did not complete: {json.dumps(answer)[:2000]}")
        polls += 1
        time.sleep(max(0.0, started + polls * 0.25 - time.perf_counter()))


def bench_21_vs_1(args: argparse.Namespace, tmp: Path, report: Report) -> None:
    home = tmp / "home-d"
    fake = Fake(args, tmp / "fake-d.log").start()
    server = nanogen_server(home, **google_settings(fake, args.server_env))
    try:
        server.start()
        account = new_account(server, START_CREDITS)
        run = f"d-{time.monotonic_ns()}"
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {account.key}"}, timeout=60
        ) as c:
            one = video_wall(c, 1, run, args.timeout_s)
            many = video_wall(c, 21, run, args.timeout_s)
        errors = log_errors(server)
        stats = fake.stats()
    finally:
        server.stop()
        fake.stop()
    ratio = many / one
    report.emit(
        bench="google_21_vs_1",
        latency_s=args.latency_s,
        one_shot_s=round(one, 2),
        shots_21_s=round(many, 2),
        ratio=round(ratio, 3),
        log_error_lines=len(errors),
        submissions=stats["submissions"],
        duplicate_submissions=stats["duplicate_submissions"],
    )
    report.add(
        Row(
            f"d. 21-shot vs 1-shot wall, L={args.latency_s:g}s",
            f"{many:.1f} s",
            f"1 shot {one:.1f} s",
            f"{ratio:.2f}x",
            "<= 1.1x",
            ratio <= 1.1 and not errors and stats["duplicate_submissions"] == 0,
        )
    )


# -- rows -------------------------------------------------------------------------------------------


def load_rows(report: Report, label: str, o: Outcome, latency_s: float, full: bool = True) -> None:
    report.emit(bench=f"google_{o.name}", **o.summary())
    all_done = o.wall_s is not None and o.completed == o.shots and o.refused == 0
    wall = f"{o.wall_s:.1f} s" if o.wall_s is not None else f"not all done in {o.timeout_s:g} s"
    ratio = f"{o.wall_s / latency_s:.2f}x" if o.wall_s is not None else ""
    report.add(
        Row(
            f"{label} wall",
            wall,
            f"latency {latency_s:g} s",
            ratio,
            "<= 1.25x",
            all_done and o.wall_s is not None and o.wall_s <= 1.25 * latency_s,
        )
    )
    report.add(
        Row(
            "   completed / failed / refused",
            f"{o.completed}/{o.failed}/{o.refused}",
            f"of {o.shots}",
            "",
            f"{o.shots}/0/0",
            o.completed == o.shots and o.failed == 0 and o.refused == 0,
        )
    )
    if not full:
        return
    report.add(
        Row("   server RSS peak", f"{o.peak_rss / 2**20:.0f} MB", "", "", "<= 1024 MB", o.peak_rss <= 2**30)
    )
    # The goal is the gateway's own CPU, concatenation excluded: the server process and its HTTP child
    # (the joins run in child processes of their own); with the joins, for the record.
    report.add(
        Row(
            "   server CPU per shot (+ HTTP child; joins apart)",
            f"{o.process_ms_per_shot:.1f} ms",
            f"with joins {o.cpu_ms_per_shot:.1f} ms; idle {o.idle_ms_per_shot:.1f} ms; "
            f"kernel {o.process_kernel_cpu_s / max(o.process_cpu_s, 1e-9):.0%}",
            "",
            "<= 20 ms",
            o.completed > 0 and o.process_ms_per_shot <= 20,
        )
    )
    if o.submit_phase_cpu_s is not None and o.client_cpu_s is not None and o.completed > 0:
        # Where the server's CPU went: until the last submission was answered (the API and the jobs
        # started meanwhile), then the wait until L after the first submission (polls, timers; when
        # read) and the ends. The load generator's own cost per request is beside it: it shares the
        # server's cores.
        waited = [] if o.waited_cpu_s is None else [o.waited_cpu_s]
        bounds = [0.0, o.submit_phase_cpu_s, *waited, o.process_cpu_s]
        split = " / ".join(f"{(b - a) / o.completed * 1e3:.1f}" for a, b in itertools.pairwise(bounds))
        label = "accepted / to L / ends" if waited else "to last accepted / after"
        report.add(
            Row(
                f"   server CPU per shot: {label}",
                f"{split} ms",
                f"load generator {o.client_cpu_s / max(1, o.requests) * 1e3:.2f} ms per request",
                "",
                "",
            )
        )
    report.add(Row("   ERROR/Traceback log lines", str(len(o.log_errors)), "", "", "0", not o.log_errors))
    if o.credits is not None:
        credits_row(report, o.credits)
    dup = o.fake.get("duplicate_submissions", 0) + o.fake.get("duplicate_image_calls", 0)
    calls = o.fake.get("submissions", 0) + o.fake.get("image_calls", 0)
    report.add(Row("   duplicate submissions at the fake", str(dup), f"{calls} calls", "", "0", dup == 0))
    running = o.fake.get("peak_running_operations") or o.fake.get("peak_open_image_calls")
    report.add(Row("   peak at the fake / server threads", f"{running} / {o.peak_threads}", "", "", ""))
    if o.full_collections is not None:
        report.add(Row("   full garbage collections in the server", str(o.full_collections), "", "", ""))
    if o.phases:
        ph = o.phases
        report.add(
            Row(
                "   last accepted / start wait p90 / past latency p90",
                f"{ph['last_accepted_s']:.1f} / {ph['start_delay_s']['p90']:.1f} / "
                f"{ph['past_latency_s']['p90']:.1f} s",
                "",
                "",
                "",
            )
        )
        span = o.fake.get("image_call_span_s")
        if span is not None:  # an image call may reach Google before its task starts (tasks/early.py)
            report.add(Row("   image calls reached the fake within", f"{span:.1f} s", "", "", ""))
        answer = o.fake.get("image_answer_bytes")
        if answer:
            report.add(Row("   image answer (JSON) size", f"{answer / 1e6:.2f} MB", "", "", ""))


def credits_row(report: Report, credits: dict[str, Any]) -> None:
    report.add(
        Row(
            "   credits exact (balance, no refund of done)",
            f"spent {credits.get('spent')}",
            f"expected {credits.get('expected_spent')}",
            "",
            f"refunds of done: {credits.get('refunds_of_completed_work')}",
            bool(credits.get("exact")),
        )
    )


def kill_rows(report: Report, o: Outcome) -> None:
    load_rows(
        report, f"e. {o.shots} shots, kill -9 at {o.kill and o.kill['killed_at_s']} s", o, o.latency_s, False
    )
    submissions = o.fake.get("submissions", 0)
    once = submissions == o.shots and o.fake.get("duplicate_submissions", 0) == 0
    report.add(
        Row(
            "   submissions at the fake (one per shot)",
            str(submissions),
            f"{o.shots} shots",
            "",
            f"{o.shots}, 0 duplicates",
            once,
        )
    )
    credits_row(report, o.credits or {})
    report.add(Row("   ERROR/Traceback log lines", str(len(o.log_errors)), "", "", "0", not o.log_errors))


# -- main -------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: 200 shots at 20 s, 400 images at 5 s"
    )
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases: a,b,c,d,e")
    parser.add_argument("--shots", type=int, help="a/e: one-shot requests (1,000; quick 200)")
    parser.add_argument("--latency-s", type=float, help="Veo operation latency at the fake (60; quick 20)")
    parser.add_argument("--multi-requests", type=int, help="b: requests (48; quick 4)")
    parser.add_argument("--multi-shots", type=int, default=21, help="b: shots per request")
    parser.add_argument("--images", type=int, help="c: image requests (2,000; quick 400)")
    parser.add_argument("--image-latency-s", type=float, help="generateContent latency (15; quick 5)")
    parser.add_argument(
        "--image-kb",
        type=int,
        default=0,
        help="fake: each image answer's PNG about this many KB (a photo-like 1K image: 1,000-2,000); "
        "0: one colour, a few KB",
    )
    parser.add_argument("--kill-at-s", type=float, help="e: kill -9 this long after the first submit (L/2)")
    parser.add_argument("--timeout-s", type=float, help="give up on a case after this (max(300, 10 L))")
    parser.add_argument("--shots-per-account", type=int, default=21, help="0: every request on one account")
    parser.add_argument("--idle-s", type=float, default=5.0, help="measure the idle server's CPU this long")
    parser.add_argument("--client-concurrency", type=int, default=64, help="submits in flight at once")
    parser.add_argument("--submit-rpm", type=int, default=0, help="fake: predictLongRunning quota per minute")
    parser.add_argument("--image-rpm", type=int, default=0, help="fake: generateContent quota per minute")
    parser.add_argument("--poll-rpm", type=int, default=0, help="fake: operation polls quota per minute")
    parser.add_argument("--submit-error-rate", type=float, default=0.0, help="fake: fraction of submits 503")
    parser.add_argument("--poll-error-rate", type=float, default=0.0, help="fake: fraction of polls 503")
    parser.add_argument(
        "--image-error-rate", type=float, default=0.0, help="fake: fraction of image calls 503"
    )
    parser.add_argument(
        "--contend",
        type=int,
        metavar="N",
        help="run everything (this bench, the server, the fake) on one CPU with N busy loops beside it: a "
        "machine several times slower, to read a case against the machine's speed (the header's fixed "
        "Python work shows how much slower)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the fake speaks HTTPS, with a certificate made for the run that the server trusts through "
        "SSL_CERT_FILE: every connection the server opens to it costs a TLS handshake, as at Google",
    )
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="run the server from this commit's src/ (git archive into a temporary directory, first on "
        "PYTHONPATH) instead of the working tree",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NANOGEN_X=Y",
        help="a server setting (repeatable); the default is none: the engine's defaults",
    )
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "shots": 200 if quick else 1000,
        "latency_s": 20.0 if quick else 60.0,
        "multi_requests": 4 if quick else 48,
        "images": 400 if quick else 2000,
        "image_latency_s": 5.0 if quick else 15.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kill_at_s is None:
        args.kill_at_s = args.latency_s / 2
    if args.timeout_s is None:
        args.timeout_s = max(300.0, 10 * args.latency_s)
    env = {}
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("NANOGEN_"):
            parser.error(f"--server-env wants NANOGEN_X=Y, not {item!r}")
        env[key] = value
    args.server_env = env
    args.tls_files = None  # (certificate, key) once made, in run(): the fake's HTTPS, read by Fake
    if args.contend is not None and args.contend < 0:
        parser.error("--contend wants a number of busy loops, 0 or more")
    args.cases = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {','.join(CASES)}")
    return args


def export_src(rev: str, dest: Path) -> None:
    """The commit's src/ in ``dest``, first on the PYTHONPATH every process started from here inherits
    (the editable install's path entry comes after it)."""
    dest.mkdir()
    archive = subprocess.run(["git", "archive", rev, "src"], capture_output=True, cwd=ROOT, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(dest / "src"), os.environ.get("PYTHONPATH", "")) if p
    )


# Pure Python work until its parent is gone (a bench killed with -9 leaves no loop spinning).
_SPIN = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


def self_signed(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (P-256, as Google's front ends offer), made with openssl."""
    cert, key = dest / "fake-cert.pem", dest / "fake-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=IP:{HOST}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def contended(busy_loops: int | None) -> Iterator[None]:
    """With ``busy_loops``: this process on one CPU (the server and the fake, its children, inherit
    it) and that many processes spinning on the same CPU until the block ends. The scheduler shares
    the CPU among all of them, so the bench's processes run as on a machine that much slower."""
    if busy_loops is None:
        yield
        return
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    spinning = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(busy_loops)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def main() -> None:
    args = parse_args()
    raise_open_files_limit()  # for the client's connections, and inherited by the server and the fake
    with contended(args.contend):
        run(args)


def run(args: argparse.Namespace) -> None:
    report = Report()
    machine = machine_busy()
    rev = args.commit or "HEAD"
    commit = subprocess.run(
        ["git", "log", "-1", "--oneline", rev], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.strip()[:100]
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    if args.commit is None and dirty:
        commit += " + uncommitted changes in src/"
    settings = {k: v for k, v in vars(args).items() if k not in ("only",)}
    report.emit(bench="machine", commit=commit, **machine, settings=settings)
    L = args.latency_s
    with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="nanogen-bench-google-") as name:
        tmp = Path(name)
        if args.commit:
            export_src(args.commit, tmp / "src-snapshot")
        if args.tls:
            args.tls_files = self_signed(tmp)
            # Trusted by every httpx-made TLS context here and in the server (it inherits the variable).
            os.environ["SSL_CERT_FILE"] = str(args.tls_files[0])
        if "a" in args.cases:
            outcome: list[Outcome] = []
            timed("a one-shot videos", lambda: outcome.append(run_case(args, tmp, "a", [1] * args.shots, L)))
            load_rows(report, f"a. {args.shots} one-shot videos, L={L:g}s", outcome[0], L)
        if "b" in args.cases:
            outcome = []
            sizes = [args.multi_shots] * args.multi_requests
            timed("b multi-shot videos", lambda: outcome.append(run_case(args, tmp, "b", sizes, L)))
            load_rows(
                report, f"b. {args.multi_requests} x {args.multi_shots}-shot videos, L={L:g}s", outcome[0], L
            )
        if "c" in args.cases:
            outcome = []
            IL = args.image_latency_s
            timed("c images", lambda: outcome.append(run_case(args, tmp, "c", [0] * args.images, IL)))
            load_rows(report, f"c. {args.images} images, latency {IL:g}s", outcome[0], IL)
            floor: list[dict[str, Any]] = []
            timed("c floor: a bare client", lambda: floor.append(image_floor(args, tmp)))
            floor_rows(report, floor[0], outcome[0], IL)
        if "d" in args.cases:
            timed("d 21-shot vs 1-shot", lambda: bench_21_vs_1(args, tmp, report))
        if "e" in args.cases:
            outcome = []
            timed(
                "e kill -9 and restart",
                lambda: outcome.append(run_case(args, tmp, "e", [1] * args.shots, L, args.kill_at_s)),
            )
            kill_rows(report, outcome[0])
    report.table()
    extra = ", ".join(f"{k}={v}" for k, v in args.server_env.items()) or "none (defaults)"
    print(
        f"\ncommit {commit}; machine: {machine['cpus']} CPUs, {machine['busy_pct_before_start']}% busy before"
        f" the start (1-min load {machine['loadavg_1m']:.2f}; fixed Python work"
        f" {machine['python_work_ms']} ms). Server: embedded default, google engine at"
        f" bench/fake_google.py, NANOGEN_LOG_LEVEL=warning, generate/status rate limits off; server settings:"
        f" {extra}. Up to {args.shots_per_account or 'all'} shots per account."
        + (
            f" Contended (--contend): everything on one CPU with {args.contend} busy loops beside it."
            if args.contend is not None
            else ""
        )
        + (" The fake spoke HTTPS (--tls)." if args.tls else "")
        + (f" Image answers of about {args.image_kb} KB of PNG (--image-kb)." if args.image_kb else "")
    )


if __name__ == "__main__":
    main()
