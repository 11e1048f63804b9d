"""What N concurrent image calls cost the caller's CPU, by how the caller waits.

The Google engine spent a thread per call in flight (httpx.Client, pools of 64 connections), and at the
end of bench_google's case c most of the worker's CPU went to threads handing the interpreter lock to
each other; it now makes its Gemini API calls the ``threads-aiohttp`` way (engines/google/transport.py),
chosen from this benchmark's figures. This measures the HTTP layer alone, against bench/fake_google.py:
N generateContent calls at once (default 2,000) whose answers all come back after the same latency
(default 5 s), each answer's JSON parsed and its image decoded from base64, in a fresh process per
way of waiting:

* ``threads``: one thread per call (started before the clock), httpx.Client pools of 64, as the engine
  did (and still does for Vertex AI, through the SDK).
* ``asyncio-httpx``: one event loop, httpx.AsyncClient pools of 64.
* ``asyncio-h11``: one event loop, a connection per call over asyncio streams, h11 parsing (bench_google's
  load generator).
* ``asyncio-aiohttp``: one event loop, one aiohttp ClientSession (its C parser).
* ``threads-aiohttp``: a thread per call, as the engine's jobs, each handing its request to one event
  loop thread with one aiohttp ClientSession and blocking on the answer; the JSON is parsed and the
  image decoded in the calling thread. The engine's way on the Gemini API.

Printed: the caller's CPU per call (user + system, ``getrusage``, from the start of the calls to the last
answer) and the wall time past the latency, each beside the threads' figure of the same run.

    .venv/bin/python bench/bench_http_clients.py [--calls 2000] [--latency-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench_google import API_KEY, Fake, post_all

MODES = ("threads", "asyncio-httpx", "asyncio-h11", "asyncio-aiohttp", "threads-aiohttp")
POOL = 64
PATH = "/v1beta/models/gemini-3.1-flash-image-preview:generateContent"


def body(i: int) -> bytes:
    return json.dumps(
        {
            "contents": [{"role": "user", "parts": [{"text": f"image {i}: a red bicycle"}]}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"},
            },
        }
    ).encode()


def image_of(answer: dict[str, Any]) -> bytes:
    part = answer["candidates"][0]["content"]["parts"][-1]
    return base64.b64decode(part["inlineData"]["data"])


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_threads(url: str, calls: int, clock: list[float]) -> int:
    """The calls on threads started first; ``clock`` gets the CPU and wall readings when they go."""
    clients = [
        httpx.Client(
            base_url=url,
            timeout=120,
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL),
        )
        for _ in range(-(-calls // POOL))
    ]
    headers = {"x-goog-api-key": API_KEY}
    return on_threads(
        calls, lambda i: clients[i % len(clients)].post(PATH, content=body(i), headers=headers).content, clock
    )


def on_threads(calls: int, fetch: Callable[[int], bytes], clock: list[float]) -> int:
    """``fetch(i)`` for each call on a thread of its own, all started before the clock (``clock`` gets
    the CPU and wall readings when they go), each answer parsed and its image decoded there."""
    go = threading.Event()
    done: list[int] = []

    def call(i: int) -> None:
        go.wait()
        done.append(len(image_of(json.loads(fetch(i)))))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    clock[:] = [cpu_s(), time.perf_counter()]
    go.set()
    for t in threads:
        t.join()
    return len(done)


async def run_asyncio_httpx(url: str, calls: int) -> int:
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120, limits=limits))
            for _ in range(-(-calls // POOL))
        ]

        async def call(i: int) -> int:
            r = await clients[i % len(clients)].post(
                PATH, content=body(i), headers={"x-goog-api-key": API_KEY}
            )
            return len(image_of(r.json()))

        return len(await asyncio.gather(*(call(i) for i in range(calls))))


async def run_asyncio_h11(host: str, port: int, calls: int) -> int:
    """bench_google's own load generator, one connection per call."""
    auth = ("x-goog-api-key", API_KEY)
    answers = await post_all(host, port, [(PATH, body(i), auth) for i in range(calls)], calls)
    return sum(1 for a in answers if not isinstance(a, str) and a[0] == 200 and image_of(json.loads(a[1])))


async def run_asyncio_aiohttp(url: str, calls: int) -> int:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def call(i: int) -> int:
            headers = {"x-goog-api-key": API_KEY, "Content-Type": "application/json"}
            async with session.post(PATH, data=body(i), headers=headers) as r:
                return len(image_of(json.loads(await r.read())))

        return len(await asyncio.gather(*(call(i) for i in range(calls))))


def run_threads_aiohttp(url: str, calls: int, clock: list[float]) -> int:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=0))

    session = asyncio.run_coroutine_threadsafe(open_session(), loop).result()

    async def post(i: int) -> bytes:
        headers = {"x-goog-api-key": API_KEY, "Content-Type": "application/json"}
        async with session.post(PATH, data=body(i), headers=headers) as r:
            return await r.read()

    ok = on_threads(calls, lambda i: asyncio.run_coroutine_threadsafe(post(i), loop).result(), clock)
    asyncio.run_coroutine_threadsafe(session.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return ok


def measure(mode: str, url: str, calls: int) -> dict[str, Any]:
    """In this process: the calls one way, timed."""
    host, port = url.removeprefix("http://").split(":")
    clock = [cpu_s(), time.perf_counter()]
    if mode == "threads":  # the clock starts once the threads have (the engine starts its own ahead)
        ok = run_threads(url, calls, clock)
    elif mode == "asyncio-httpx":
        ok = asyncio.run(run_asyncio_httpx(url, calls))
    elif mode == "threads-aiohttp":
        ok = run_threads_aiohttp(url, calls, clock)
    elif mode == "asyncio-h11":
        ok = asyncio.run(run_asyncio_h11(host, int(port), calls))
    else:
        ok = asyncio.run(run_asyncio_aiohttp(url, calls))
    return {"mode": mode, "ok": ok, "cpu_s": cpu_s() - clock[0], "wall_s": time.perf_counter() - clock[1]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--latency-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="each mode this many times, alternating")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.url, args.calls)))
        return
    fake_args = argparse.Namespace(
        latency_s=60.0,
        image_latency_s=args.latency_s,
        submit_rpm=0,
        image_rpm=0,
        poll_rpm=0,
        submit_error_rate=0.0,
        poll_error_rate=0.0,
        image_error_rate=0.0,
    )
    log = Path(tempfile.gettempdir()) / f"bench-http-clients-fake-{time.monotonic_ns()}.log"
    fake = Fake(fake_args, log).start()
    modes = list(MODES)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    try:
        for _ in range(args.rounds):
            for mode in modes:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--measure",
                        mode,
                        "--url",
                        fake.url,
                        "--calls",
                        str(args.calls),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                results[mode].append(result)
                print(json.dumps(result), flush=True)
    finally:
        fake.stop()
        log.unlink(missing_ok=True)
    base = results["threads"]
    print(f"\n{args.calls} image calls at once, answers after {args.latency_s} s (bench/fake_google.py)")
    print(f"{'way of waiting':16} {'CPU per call':>22} {'vs threads':>16} {'wall past latency':>22}")
    for mode in modes:
        per_call = [r["cpu_s"] / args.calls * 1e3 for r in results[mode]]
        ratio = [r["cpu_s"] / b["cpu_s"] for r, b in zip(results[mode], base, strict=True)]
        past = [r["wall_s"] - args.latency_s for r in results[mode]]
        print(
            f"{mode:16} {', '.join(f'{v:.2f}' for v in per_call) + ' ms':>22} "
            f"{', '.join(f'{v:.2f}x' for v in ratio):>16} {', '.join(f'{v:.2f}' for v in past) + ' s':>22}"
        )
        if any(r["ok"] != args.calls for r in results[mode]):
            print(f"  {mode}: some calls failed: {[r['ok'] for r in results[mode]]}")


if __name__ == "__main__":
    main()
