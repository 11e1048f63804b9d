"""Memory benchmark: a real ``nanogen serve``'s peak RSS above idle under hostile images, against the
same server's peak under the same requests with small normal images, in the same run.

Run with ``.venv/bin/python bench/bench_memory.py`` (``bench/run`` runs it last). The mix, each time:
8 concurrent ``POST /api/uploads`` plus one image edit naming one upload 14 times, waited until the
task completes. Hostile: a lossless 8000x8000 WebP (64 MP, ~50 KB: every row repeats the first, with
many colours, so libwebp holds 4 bytes a pixel). Baseline: a 1600x1200 JPEG photo (~300 KB).
Peak RSS is the server process's VmHWM, reset at idle (``/proc/<pid>/clear_refs``; Linux), minus its
idle VmRSS; "kept" is what RSS stays above idle once the work is done. Goal: hostile peak <= 512 MB.

Prints one JSON line per measurement, then a table. A missed goal prints MISS; the exit status is 0.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench_server import Report, Row, Service, client, nanogen_server, new_account

MIB = 1024 * 1024
GOAL_MB = 512
UPLOADS = 8
POSITIONS = 14
SIDE = 8000


def hostile_webp() -> bytes:
    x = np.arange(SIDE, dtype=np.uint32)
    row = np.stack([x % 256, (x // 3) % 256, (x * 7) % 256], axis=-1).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (SIDE, SIDE, 3))))
    buffer = io.BytesIO()
    picture.save(buffer, "WEBP", lossless=True, quality=0, method=0)
    return buffer.getvalue()


def normal_jpeg() -> bytes:
    rng = np.random.default_rng(7)
    coarse = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    coarse.resize((1600, 1200), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def memory(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(kb) * 1024 for key, kb in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}


def settle(pid: int, idle: int, seconds: float = 5.0) -> int:
    """RSS above idle once it stops falling (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    last = memory(pid)["VmRSS"]
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = memory(pid)["VmRSS"]
        if now >= last and now - idle < 64 * MIB:
            break
        last = now
    return memory(pid)["VmRSS"] - idle


def run_mix(server: Service, c: httpx.Client, key: str, data: bytes, content_type: str) -> dict[str, float]:
    """The mix on a warm server: peak and kept RSS above idle, and how long it took."""
    assert server.process is not None
    pid = server.process.pid
    idle = memory(pid)["VmRSS"]
    first = c.post("/api/uploads", content=data, headers={"Content-Type": content_type})
    first.raise_for_status()
    url = first.json()["url"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    idle = min(idle, memory(pid)["VmRSS"])
    started = time.perf_counter()
    statuses: list[int] = []

    def upload() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as own:
            statuses.append(
                own.post("/api/uploads", content=data, headers={"Content-Type": content_type}).status_code
            )

    threads = [threading.Thread(target=upload) for _ in range(UPLOADS)]
    for thread in threads:
        thread.start()
    r = c.post(
        "/api/nano-banana-2/generate",
        json={"prompt": "bench", "mode": "edit", "inputImageUrls": [url] * POSITIONS},
    )
    r.raise_for_status()
    for thread in threads:
        thread.join()
    generation = r.json()["generationId"]
    while True:
        body = c.post("/api/nano-banana-2/check-status", json={"generationId": generation}).json()
        if body["status"] in ("completed", "failed"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    peak = memory(pid)["VmHWM"] - idle
    if statuses != [201] * UPLOADS or body["status"] != "completed":
        sys.exit(f"the mix failed: uploads {statuses}, edit {body}")
    kept = settle(pid, idle)
    return {"peak_mb": peak / MIB, "kept_mb": kept / MIB, "seconds": elapsed, "idle_mb": idle / MIB}


def main() -> None:
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("bench_memory needs Linux /proc")
    report = Report()
    bomb, photo = hostile_webp(), normal_jpeg()
    with tempfile.TemporaryDirectory(prefix="nanogen-bench-memory-") as tmp:
        server = nanogen_server(Path(tmp) / "home", rate_limit_upload="100000/hour").start()
        try:
            account = new_account(server, 1000)
            with client(server, account) as c:
                c.timeout = httpx.Timeout(120)
                for data, kind in ((photo, "image/jpeg"), (bomb, "image/webp")):  # every path warm
                    c.post("/api/uploads", content=data, headers={"Content-Type": kind}).raise_for_status()
                baseline = run_mix(server, c, account.key, photo, "image/jpeg")
                hostile = run_mix(server, c, account.key, bomb, "image/webp")
        finally:
            server.stop()
    report.emit(bench="memory_normal_mix", bytes=len(photo), **{k: round(v, 1) for k, v in baseline.items()})
    report.emit(
        bench="memory_hostile_mix",
        bytes=len(bomb),
        goal_mb=GOAL_MB,
        ok=hostile["peak_mb"] <= GOAL_MB,
        **{k: round(v, 1) for k, v in hostile.items()},
    )
    ratio = hostile["peak_mb"] / max(1.0, baseline["peak_mb"])
    report.add(
        Row(
            f"peak RSS above idle: {UPLOADS} uploads + {POSITIONS}-input edit, 64 MP lossless WebP",
            f"{hostile['peak_mb']:.0f} MB in {hostile['seconds']:.1f} s",
            f"1600x1200 JPEG: {baseline['peak_mb']:.0f} MB in {baseline['seconds']:.1f} s",
            f"{ratio:.1f}x",
            f"<= {GOAL_MB} MB",
            hostile["peak_mb"] <= GOAL_MB,
        )
    )
    report.add(
        Row(
            "RSS kept above idle after the mix",
            f"{hostile['kept_mb']:.0f} MB",
            f"{baseline['kept_mb']:.0f} MB",
            "",
            "",
        )
    )
    report.table()


if __name__ == "__main__":
    main()
