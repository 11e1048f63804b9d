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

With ``--tls`` each way (but ``asyncio-h11``, which speaks plain HTTP only) runs against the fake over
plain HTTP and against a second one over HTTPS (a certificate made for the run, trusted through
SSL_CERT_FILE), side by side: what the TLS handshake of each new connection adds to the caller's CPU, as
at Google, where every call of a burst that needs new connections pays one.

    .venv/bin/python bench/bench_http_clients.py [--calls 2000] [--latency-s 5] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
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

from bench_google import API_KEY, Fake, post_all, self_signed

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
    host, port = url.split("://")[1].split(":")
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
    parser.add_argument("--tls", action="store_true", help="each way over HTTP and over HTTPS, side by side")
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
        tls_files=None,
    )
    with tempfile.TemporaryDirectory(prefix="bench-http-clients-") as name:
        tmp = Path(name)
        fakes = {"http": Fake(fake_args, tmp / "fake-http.log").start()}
        try:
            if args.tls:
                tls_args = argparse.Namespace(**vars(fake_args) | {"tls_files": self_signed(tmp)})
                # Trusted by httpx's and aiohttp's default contexts in the processes measured.
                os.environ["SSL_CERT_FILE"] = str(tls_args.tls_files[0])
                fakes["https"] = Fake(tls_args, tmp / "fake-https.log").start()
            results = run_rounds(args, fakes)
        finally:
            for fake in fakes.values():
                fake.stop()
    print(f"\n{args.calls} image calls at once, answers after {args.latency_s} s (bench/fake_google.py)")
    if args.tls:
        tls_table(args, results)
    else:
        threads_table(args, results)


def run_rounds(
    args: argparse.Namespace, fakes: dict[str, Fake]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each way against each fake, ``args.rounds`` times, alternating, each in a fresh process."""
    runs = [(m, scheme) for m in MODES for scheme in fakes if not (scheme == "https" and m == "asyncio-h11")]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {run: [] for run in runs}
    for _ in range(args.rounds):
        for mode, scheme in runs:
            argv = [
                sys.executable,
                __file__,
                "--measure",
                mode,
                "--url",
                fakes[scheme].url,
                "--calls",
                str(args.calls),
            ]
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1]) | {"scheme": scheme}
            results[(mode, scheme)].append(result)
            print(json.dumps(result), flush=True)
    for (mode, scheme), rs in results.items():
        if any(r["ok"] != args.calls for r in rs):
            print(f"  {mode} over {scheme}: some calls failed: {[r['ok'] for r in rs]}")
    return results


def per_call_ms(args: argparse.Namespace, rs: list[dict[str, Any]]) -> list[float]:
    return [r["cpu_s"] / args.calls * 1e3 for r in rs]


def joined(values: list[float], fmt: str, each: str = "") -> str:
    """The runs' values side by side; ``each`` follows every value (a ratio's x)."""
    return ", ".join(format(v, fmt) + each for v in values)


def threads_table(args: argparse.Namespace, results: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    base = results[("threads", "http")]
    print(f"{'way of waiting':16} {'CPU per call':>22} {'vs threads':>16} {'wall past latency':>22}")
    for mode in MODES:
        rs = results[(mode, "http")]
        ratio = [r["cpu_s"] / b["cpu_s"] for r, b in zip(rs, base, strict=True)]
        past = [r["wall_s"] - args.latency_s for r in rs]
        print(
            f"{mode:16} {joined(per_call_ms(args, rs), '.2f') + ' ms':>22} {joined(ratio, '.2f', 'x'):>16}"
            f" {joined(past, '.2f') + ' s':>22}"
        )


def tls_table(args: argparse.Namespace, results: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    print(
        f"{'way of waiting':16} {'CPU per call, HTTP':>20} {'over HTTPS':>18} {'ratio':>14}"
        f" {'added per call':>18}"
    )
    for mode in MODES:
        if (mode, "https") not in results:
            continue
        plain, tls = per_call_ms(args, results[(mode, "http")]), per_call_ms(args, results[(mode, "https")])
        ratio = [t / p for t, p in zip(tls, plain, strict=True)]
        added = [t - p for t, p in zip(tls, plain, strict=True)]
        print(
            f"{mode:16} {joined(plain, '.2f') + ' ms':>20} {joined(tls, '.2f') + ' ms':>18}"
            f" {joined(ratio, '.2f', 'x'):>14} {joined(added, '.2f') + ' ms':>18}"
        )


if __name__ == "__main__":
    main()
