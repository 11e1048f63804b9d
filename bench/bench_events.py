"""Live progress at rest: the server's CPU and memory with 1,000 idle event streams
(``GET /api/generations/{id}/events``) against the same server with 1 stream, side by side in one run.
Run with ``.venv/bin/python bench/bench_events.py`` (also part of ``bench/run``).

One ``nanogen serve`` (defaults: the watcher ticks every 0.25 s), 1,000 image generations that stay
running for an hour (sandbox ``[sandbox:slow=3600]``), and this process as the clients, on loopback:

1. **1 stream** open on one generation, idle for ``--seconds``: the server process's CPU (utime +
   stime from /proc) and its RSS, the watcher's ticks and statements (from /metrics).
2. **1,000 streams**, one per generation (the watcher's worst case: 1,000 ids to read each tick), idle
   for the same time: the same figures. Then 1 stream again, so that drift of the machine shows.

Goals: CPU with 1,000 streams at most 2x the 1-stream figure (about what one costs: no read, no task
per stream per tick), the watcher's statements per tick the same (2: 1,000 ids in two chunks of 512,
vs 1), memory per stream under 64 KiB. The idle server's own baseline (DBOS queue polling) is in both.
Prints one JSON line per measurement, then a table; a missed goal prints MISS; the exit status is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench_server import (
    Account,
    Report,
    Row,
    Service,
    machine_busy,
    nanogen_server,
    new_account,
    process_cpu_s,
    terminated_on_sigterm,
    timed,
)

METRICS_TOKEN = "bench-events-metrics-token"
STREAMS = 1000
SLOW = "[sandbox:slow=3600]"
CPU_GOAL_RATIO = 2.0
MEMORY_GOAL_KIB = 64.0


@dataclass
class Idle:
    streams: int
    seconds: float
    cpu_s: float
    rss_kib: int
    ticks: float
    statements: float

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.seconds

    @property
    def per_tick(self) -> float:
        return self.statements / max(1.0, self.ticks)


def rss_kib(service: Service) -> int:
    assert service.process is not None
    for line in Path(f"/proc/{service.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def watcher_counters(service: Service) -> tuple[float, float]:
    r = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    r.raise_for_status()
    values = {"nanogen_watch_ticks_total": 0.0, "nanogen_watch_queries_total": 0.0}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return values["nanogen_watch_ticks_total"], values["nanogen_watch_queries_total"]


def submit(service: Service, account: Account, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {account.key}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=60) as c:
        ids = []
        for i in range(count):
            r = c.post("/api/nano-banana-2/generate", json={"prompt": f"idle {i} {SLOW}"})
            r.raise_for_status()
            ids.append(r.json()["generationId"])
    return ids


async def idle_streams(service: Service, account: Account, ids: list[str], seconds: float) -> Idle:
    """Open a stream per id, wait until each has its first event, then measure ``seconds`` of idling."""
    opened = asyncio.Event()
    connected = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {account.key}"}

    async def one(h: httpx.AsyncClient, generation_id: str) -> None:
        nonlocal connected
        async with h.stream("GET", f"/api/generations/{generation_id}/events") as r:
            r.raise_for_status()
            first = True
            async for line in r.aiter_lines():
                if first and line.startswith("data:"):
                    first = False
                    connected += 1
                    if connected == len(ids):
                        opened.set()

    timeout = httpx.Timeout(60, read=None)
    async with httpx.AsyncClient(base_url=service.url, headers=headers, limits=limits, timeout=timeout) as h:
        tasks = [asyncio.create_task(one(h, generation_id)) for generation_id in ids]
        try:
            await asyncio.wait_for(opened.wait(), 300)
            await asyncio.sleep(2)  # the opening burst settles
            ticks0, statements0 = await asyncio.to_thread(watcher_counters, service)
            cpu0, started = process_cpu_s(service), time.monotonic()
            await asyncio.sleep(seconds)
            cpu1, elapsed = process_cpu_s(service), time.monotonic() - started
            rss = rss_kib(service)
            ticks1, statements1 = await asyncio.to_thread(watcher_counters, service)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return Idle(len(ids), elapsed, cpu1 - cpu0, rss, ticks1 - ticks0, statements1 - statements0)


def bench(tmp: Path, seconds: float, streams: int, report: Report) -> None:
    service = nanogen_server(tmp / "events", metrics_token=METRICS_TOKEN).start()
    try:
        account = new_account(service, 100 * streams)
        ids = submit(service, account, streams)
        runs = []
        for count in (1, streams, 1):
            run = asyncio.run(idle_streams(service, account, ids[:count], seconds))
            report.emit(
                bench="idle_streams",
                streams=run.streams,
                seconds=round(run.seconds, 1),
                server_cpu_pct=round(run.cpu_pct, 2),
                server_rss_kib=run.rss_kib,
                watcher_ticks=run.ticks,
                watcher_statements=run.statements,
                statements_per_tick=round(run.per_tick, 2),
            )
            runs.append(run)
            time.sleep(2)  # the previous streams' connections close
    finally:
        service.stop()
    one = min(runs[0], runs[2], key=lambda r: r.cpu_pct)  # the quieter of the two 1-stream runs
    many = runs[1]
    ratio = many.cpu_pct / max(0.01, one.cpu_pct)
    report.add(
        Row(
            f"server CPU, {streams} idle streams vs 1",
            f"{many.cpu_pct:.2f}%",
            f"{one.cpu_pct:.2f}%",
            f"{ratio:.2f}x",
            f"<= {CPU_GOAL_RATIO:.0f}x",
            ratio <= CPU_GOAL_RATIO,
        )
    )
    per_stream = (many.rss_kib - runs[0].rss_kib) / max(1, streams - 1)
    report.add(
        Row(
            "server memory per idle stream",
            f"{per_stream:.1f} KiB",
            f"{runs[0].rss_kib / 1024:.0f} MiB RSS",
            f"{many.rss_kib / 1024:.0f} MiB",
            f"<= {MEMORY_GOAL_KIB:.0f} KiB",
            per_stream <= MEMORY_GOAL_KIB,
        )
    )
    report.add(
        Row(
            f"watcher statements per tick, {streams} streams vs 1",
            f"{many.per_tick:.2f}",
            f"{one.per_tick:.2f}",
            f"{many.per_tick / max(0.01, one.per_tick):.2f}x",
            "no read per stream",
            many.per_tick <= 2 * max(1.0, one.per_tick),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="idle time measured per run (default 20)")
    parser.add_argument(
        "--streams", type=int, default=STREAMS, help=f"streams of the big run (default {STREAMS})"
    )
    args = parser.parse_args()
    with contextlib.suppress(ValueError, OSError):  # sockets: the clients' and the server's
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.streams + 1024)), hard))
    report = Report()
    machine = machine_busy()
    report.emit(bench="machine", **machine)
    with terminated_on_sigterm(), tempfile.TemporaryDirectory(prefix="nanogen-bench-events-") as name:
        timed("idle event streams", lambda: bench(Path(name), args.seconds, args.streams, report))
    report.table()
    print(
        f"\nmachine: {machine['cpus']} CPUs, {machine['busy_pct_before_start']}% busy with other work before"
        f" the start (1-min load {machine['loadavg_1m']:.2f}; fixed Python work"
        f" {machine['python_work_ms']} ms); the runs alternate 1, {args.streams}, 1"
        " streams on one server, and the quieter 1-stream run is the baseline.",
    )


if __name__ == "__main__":
    main()
