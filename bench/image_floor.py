"""The floor under bench_google.py's case c: the least any gateway does for N image calls.

A bare client on one event loop (aiohttp on uvloop, what nanogen's Google engine uses) sends every
``generateContent`` call at once, reads each answer whole, parses it with ``json``, decodes its image
with pybase64 and writes the PNG to a file. No HTTP API in front, no database, no queue, no threads.
bench_google.py runs it against a fake of its own with case c's latency and answer size, in the same
run as case c, and prints nanogen's wall time over this one's: on a machine whose cores the fake also
uses, an answer the size of a real photo costs the machine seconds that no gateway can skip.

Run alone: ``.venv/bin/python bench/image_floor.py --url http://127.0.0.1:PORT --api-key K --calls 2000``;
prints one JSON line (wall from the first call sent to the last PNG written, this process's CPU, peak RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pybase64
import uvloop

from fake_google import raise_open_files_limit
from nanogen.products import DEFAULT_IMAGE_ASPECT_RATIO, DEFAULT_IMAGE_QUALITY
from nanogen.settings import Settings


async def one_call(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], dest: Path, timeout_s: float
) -> float:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as answer:
        raw = await answer.read()
        answer.raise_for_status()
    parts = json.loads(raw)["candidates"][0]["content"]["parts"]
    data = next(p["inlineData"]["data"] for p in reversed(parts) if "inlineData" in p)
    dest.write_bytes(pybase64.b64decode(data))
    return time.monotonic()


async def all_calls(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    url = f"{args.url.rstrip('/')}/v1beta/models/{args.model}:generateContent"
    image = {"aspectRatio": args.aspect_ratio, "imageSize": args.size}
    config = {"responseModalities": ["IMAGE"], "imageConfig": image}
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"x-goog-api-key": args.api_key}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        calls = [
            one_call(
                session,
                url,
                {
                    "contents": [{"role": "user", "parts": [{"text": f"floor {i}"}]}],
                    "generationConfig": config,
                },
                out / f"{i}.png",
                args.timeout_s,
            )
            for i in range(args.calls)
        ]
        ends = await asyncio.gather(*calls, return_exceptions=True)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    done = [t for t in ends if isinstance(t, float)]
    errors = [repr(e) for e in ends if isinstance(e, BaseException)]
    return {
        "calls": args.calls,
        "done": len(done),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(max(done) - t0, 2) if done else None,
        "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 2),
        "peak_rss_mb": round(cpu1.ru_maxrss / 1024),
        "png_bytes": (out / "0.png").stat().st_size if (out / "0.png").exists() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the fake's base URL")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    # What nanogen sends for an image request that names none of them.
    parser.add_argument("--model", default=Settings.model_fields["google_image_model"].default)
    parser.add_argument("--aspect-ratio", default=DEFAULT_IMAGE_ASPECT_RATIO.value)
    parser.add_argument("--size", default=DEFAULT_IMAGE_QUALITY.value)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    raise_open_files_limit()  # a socket per call in flight
    with tempfile.TemporaryDirectory(prefix="nanogen-image-floor-") as name:
        print(json.dumps(uvloop.run(all_calls(args, Path(name)))), flush=True)


if __name__ == "__main__":
    main()
