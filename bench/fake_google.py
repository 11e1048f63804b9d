"""A load-capable fake of the Gemini API subset nanogen's Google engine uses, for benchmarks.

One asyncio process (Starlette on uvicorn, no thread per request) that holds thousands of Veo operations
and held-open image calls at once. The wire format is the test fake's (tests/fakes/google_server.py, which
follows Google's own): this one keeps only what the engine's Gemini-API path calls, and trades the test
fake's per-prompt fault markers for fixed latencies and quotas given on the command line.

    .venv/bin/python bench/fake_google.py --port 8911 --video-latency-s 60 --image-latency-s 15

Endpoints (the API key in ``x-goog-api-key``, as the engine sends it):

* ``POST /v1beta/models/{m}:predictLongRunning``  starts an operation (counted per prompt and in total)
* ``GET  /v1beta/{operation name}``               ``{"name"}`` while running, done ``--video-latency-s``
  after submission with the file URI
* ``GET  /v1beta/files/{id}:download?alt=media``   302 to a signed URL (``/signed/{id}``), which serves the
  MP4 (one H.264/AAC 8 s clip per frame size, encoded once)
* ``POST /v1beta/models/{m}:generateContent``      answers after ``--image-latency-s`` with a PNG of the
  asked size: one colour (a few KB), or about ``--image-kb`` KB with rows of noise in it, as a
  photo-like image of Google's weighs (a 1K one is 1-2 MB as PNG, a third more as base64 in the JSON)
* ``GET  /v1beta/models/{m}``                      the model exists
* ``GET  /_stats`` (``?prompts=1`` adds per-prompt counts), ``POST /_reset``: the fake's own

Quotas (0: none): ``--submit-rpm``, ``--image-rpm`` and ``--poll-rpm`` are requests per minute per model
(polls: per API key), counted over a sliding minute; past one the call answers 429 RESOURCE_EXHAUSTED with
Google's RetryInfo (``retryDelay`` until the window has room). Faults: ``--submit-error-rate``,
``--poll-error-rate`` and ``--image-error-rate`` answer that fraction of calls 503 UNAVAILABLE (a submit
or image call that fails so creates nothing and is not counted as a submission).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import re
import resource
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.google_server import (  # noqa: E402 - after the path is set
    API_KEY,
    IMAGE_MODELS,
    IMAGE_SIZES,
    VIDEO_MODELS,
    VIDEO_SIZES,
    error_body,
    mp4,
    png,
)

HOST = "127.0.0.1"
WINDOW_S = 60.0
COLOUR = (30, 140, 200)
_OPERATION = re.compile(r"^models/[\w.-]+/operations/[\w-]+$")


@dataclass
class Operation:
    prompt: str
    size: tuple[int, int]
    submitted_at: float
    polls: int = 0
    done_seen_at: float | None = None


@dataclass
class Quota:
    """Requests per minute over a sliding window, per key (a model, or the API key for polls)."""

    per_minute: int
    seen: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, key: str, now: float) -> float | None:
        """None when the call fits (and is counted); else seconds until it would."""
        if self.per_minute <= 0:
            return None
        window = self.seen.setdefault(key, deque())
        while window and window[0] <= now - WINDOW_S:
            window.popleft()
        if len(window) < self.per_minute:
            window.append(now)
            return None
        return window[0] + WINDOW_S - now


@dataclass
class Stats:
    submissions: Counter[str] = field(default_factory=Counter)  # prompt -> predictLongRunning accepted
    image_calls: Counter[str] = field(default_factory=Counter)  # prompt -> generateContent answered
    polls: int = 0
    polls_done: int = 0
    downloads: int = 0
    signed_downloads: int = 0
    model_gets: int = 0
    sent_429: Counter[str] = field(default_factory=Counter)
    sent_503: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # 4xx for requests the fake could not accept
    open_requests: int = 0
    peak_open_requests: int = 0
    open_image_calls: int = 0
    peak_open_image_calls: int = 0
    unfinished: int = 0  # submitted, and no poll has yet been told it is done
    peak_unfinished: int = 0
    submit_times: list[float] = field(default_factory=list)
    image_call_times: list[float] = field(default_factory=list)  # each generateContent's arrival
    done_lags: list[float] = field(default_factory=list)  # ready at the fake -> first poll that saw it
    started_at: float = field(default_factory=time.monotonic)


class FakeGoogle:
    def __init__(self, args: argparse.Namespace) -> None:
        self.video_latency_s: float = args.video_latency_s
        self.image_latency_s: float = args.image_latency_s
        self.api_key: str = args.api_key
        self.submit_quota = Quota(args.submit_rpm)
        self.image_quota = Quota(args.image_rpm)
        self.poll_quota = Quota(args.poll_rpm)
        self.submit_error_rate: float = args.submit_error_rate
        self.poll_error_rate: float = args.poll_error_rate
        self.image_error_rate: float = args.image_error_rate
        self.random = random.Random(args.seed)
        # What its answers point at (Veo's video URIs, the signed redirect): HTTPS under --certfile.
        self.base_url = f"{'https' if args.certfile else 'http'}://{HOST}:{args.port}"
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, Operation] = {}  # file id (the operation's last part) -> operation
        self.stats = Stats()
        self.videos: dict[tuple[int, int], bytes] = {}
        self.video_lock = asyncio.Lock()
        self.image_kb = args.image_kb
        self.answers: dict[tuple[str, str, str], bytes] = {}  # (model, ratio, size) -> the JSON answer
        self.settings = {k: v for k, v in vars(args).items() if k != "api_key"}

    # -- media, made once
    async def video(self, size: tuple[int, int]) -> bytes:
        if size not in self.videos:
            async with self.video_lock:
                if size not in self.videos:
                    self.videos[size] = await asyncio.to_thread(mp4, size, COLOUR)
        return self.videos[size]

    def image(self, ratio: str, quality: str) -> bytes:
        """One colour, or with ``--image-kb`` as many rows of noise as make the PNG about that size
        (noise does not compress: a row of it weighs its width x 3 bytes)."""
        width, height = IMAGE_SIZES[ratio][quality]
        picture = Image.new("RGB", (width, height), COLOUR)
        rows = min(height, self.image_kb * 1024 // (width * 3))
        if rows:
            noise = random.Random(f"{ratio} {quality}").randbytes(width * rows * 3)
            picture.paste(Image.frombytes("RGB", (width, rows), noise), (0, 0))
        return png(picture)

    def answer(self, model: str, ratio: str, quality: str) -> bytes:
        """The JSON answer, encoded once: a megabyte-sized one would cost the fake milliseconds of
        the machine's CPU a call, which the server under test would lose."""
        key = (model, ratio, quality)
        if key not in self.answers:
            data = base64.b64encode(self.image(ratio, quality)).decode()
            part = {"inlineData": {"mimeType": "image/png", "data": data}}
            candidate = {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
            usage = {"promptTokenCount": 12, "candidatesTokenCount": 1120, "totalTokenCount": 1132}
            body = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}
            self.answers[key] = json.dumps(body).encode()
        return self.answers[key]

    # -- the ASGI entry: one route, dispatched here (Starlette's router does not split at ':')
    async def handle(self, request: Request) -> Response:
        stats = self.stats
        stats.open_requests += 1
        stats.peak_open_requests = max(stats.peak_open_requests, stats.open_requests)
        try:
            return await self.route(request)
        finally:
            stats.open_requests -= 1

    async def route(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if path == "/_stats" and method == "GET":
            return JSONResponse(self.report(request.query_params.get("prompts") == "1"))
        if path == "/_reset" and method == "POST":
            self.operations.clear()
            self.files.clear()
            self.stats = Stats()
            return JSONResponse({"reset": True})
        if path.startswith("/signed/") and method == "GET":
            return await self.signed(request, path.removeprefix("/signed/"))
        if not path.startswith("/v1beta/"):
            return self.error(404, "NOT_FOUND", f"no route {method} {path}")
        denied = self.auth(request)
        if denied is not None:
            return denied
        rest = path.removeprefix("/v1beta/")
        if method == "POST" and rest.startswith("models/"):
            model, _, verb = rest.removeprefix("models/").partition(":")
            if verb == "predictLongRunning":
                return await self.predict(request, model)
            if verb == "generateContent":
                return await self.generate_content(request, model)
        if method == "GET":
            if rest.startswith("files/") and rest.endswith(":download"):
                return self.download(request, rest.removeprefix("files/").removesuffix(":download"))
            if _OPERATION.match(rest):
                return self.poll(rest)
            if rest.startswith("models/") and "/" not in rest.removeprefix("models/"):
                return self.model(rest.removeprefix("models/"))
        return self.error(404, "NOT_FOUND", f"no route {method} {path}")

    # -- Google's error shapes
    def error(
        self, code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> Response:
        if code in (400, 403, 404):
            self.stats.rejected[status] += 1
        return JSONResponse(error_body(code, status, message, details), status_code=code)

    def exhausted(self, kind: str, wait_s: float) -> Response:
        self.stats.sent_429[kind] += 1
        retry = {
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": f"{max(1, math.ceil(wait_s))}s",
        }
        message = "Resource has been exhausted (e.g. check quota)."
        return self.error(429, "RESOURCE_EXHAUSTED", message, [retry])

    def unavailable(self, kind: str, rate: float) -> Response | None:
        if rate > 0 and self.random.random() < rate:
            self.stats.sent_503[kind] += 1
            return self.error(503, "UNAVAILABLE", "The service is currently unavailable.")
        return None

    def auth(self, request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key")
        if key == self.api_key:
            return None
        if key is None:
            return self.error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
        return self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info])

    @staticmethod
    async def body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    # -- models
    def model(self, model: str) -> Response:
        self.stats.model_gets += 1
        if model not in IMAGE_MODELS | VIDEO_MODELS:
            return self.error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
        return JSONResponse({"name": f"models/{model}", "displayName": model.replace("-", " ").title()})

    # -- images
    async def generate_content(self, request: Request, model: str) -> Response:
        if model not in IMAGE_MODELS:
            return self.error(404, "NOT_FOUND", f"models/{model} is not found")
        body = await self.body(request)
        wait = self.image_quota.retry_after(model, time.monotonic())
        if wait is not None:
            return self.exhausted("image", wait)
        failed = self.unavailable("image", self.image_error_rate)
        if failed is not None:
            return failed
        contents = body.get("contents") or [{}]
        parts = contents[0].get("parts") or [] if isinstance(contents[0], dict) else []
        prompt = next((str(p["text"]) for p in parts if isinstance(p, dict) and "text" in p), "")
        image_config = (body.get("generationConfig") or {}).get("imageConfig") or {}
        ratio, quality = image_config.get("aspectRatio", "1:1"), image_config.get("imageSize", "1K")
        if ratio not in IMAGE_SIZES or quality not in ("1K", "2K", "4K"):
            return self.error(400, "INVALID_ARGUMENT", f"Invalid imageConfig {image_config}")
        stats = self.stats
        stats.image_call_times.append(time.monotonic())
        stats.open_image_calls += 1
        stats.peak_open_image_calls = max(stats.peak_open_image_calls, stats.open_image_calls)
        try:
            await asyncio.sleep(self.image_latency_s)
        finally:
            stats.open_image_calls -= 1
        stats.image_calls[prompt] += 1
        return Response(self.answer(model, ratio, quality), media_type="application/json")

    # -- videos
    async def predict(self, request: Request, model: str) -> Response:
        if model not in VIDEO_MODELS:
            return self.error(404, "NOT_FOUND", f"models/{model} is not found")
        body = await self.body(request)
        now = time.monotonic()
        wait = self.submit_quota.retry_after(model, now)
        if wait is not None:
            return self.exhausted("submit", wait)
        failed = self.unavailable("submit", self.submit_error_rate)
        if failed is not None:
            return failed
        instances, parameters = body.get("instances") or [], body.get("parameters") or {}
        if len(instances) != 1 or not isinstance(instances[0], dict) or not instances[0].get("prompt"):
            return self.error(400, "INVALID_ARGUMENT", "instances[0].prompt is required")
        resolution, ratio = parameters.get("resolution", "720p"), parameters.get("aspectRatio", "16:9")
        if resolution not in VIDEO_SIZES or ratio not in ("16:9", "9:16"):
            return self.error(400, "INVALID_ARGUMENT", f"Unsupported parameters {parameters}")
        width, height = VIDEO_SIZES[resolution]
        name = f"models/{model}/operations/{uuid.uuid4().hex[:16]}"
        prompt = str(instances[0]["prompt"])
        op = Operation(prompt, (height, width) if ratio == "9:16" else (width, height), now)
        self.operations[name] = self.files[name.rsplit("/", 1)[1]] = op
        stats = self.stats
        stats.submissions[prompt] += 1
        stats.submit_times.append(now)
        stats.unfinished += 1
        stats.peak_unfinished = max(stats.peak_unfinished, stats.unfinished)
        return JSONResponse({"name": name})

    def poll(self, name: str) -> Response:
        now = time.monotonic()
        op = self.operations.get(name)
        if op is None:
            return self.error(404, "NOT_FOUND", f"Operation {name} not found")
        wait = self.poll_quota.retry_after(self.api_key, now)
        if wait is not None:
            return self.exhausted("poll", wait)
        failed = self.unavailable("poll", self.poll_error_rate)
        if failed is not None:
            return failed
        stats = self.stats
        stats.polls += 1
        op.polls += 1
        ready_at = op.submitted_at + self.video_latency_s
        if now < ready_at:
            return JSONResponse({"name": name})
        stats.polls_done += 1
        if op.done_seen_at is None:
            op.done_seen_at = now
            stats.unfinished -= 1
            stats.done_lags.append(now - ready_at)
        fid = name.rsplit("/", 1)[1]
        uri = f"{self.base_url}/v1beta/files/{fid}:download?alt=media"
        response = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]},
        }
        return JSONResponse({"name": name, "done": True, "response": response})

    def download(self, request: Request, fid: str) -> Response:
        self.stats.downloads += 1
        if request.query_params.get("alt") != "media" or fid not in self.files:
            return self.error(404, "NOT_FOUND", "File not found")
        location = f"{self.base_url}/signed/{fid}?Expires=9999999999&Signature=c2lnbmVk"
        return Response(b"", status_code=302, headers={"Location": location}, media_type="text/html")

    async def signed(self, request: Request, fid: str) -> Response:
        op = self.files.get(fid)
        if op is None or "Signature" not in request.query_params:
            return Response(b"AccessDenied", status_code=403, media_type="text/plain")
        self.stats.signed_downloads += 1
        return Response(await self.video(op.size), media_type="video/mp4")

    # -- what the fake saw
    def report(self, per_prompt: bool) -> dict[str, Any]:
        s = self.stats
        duplicates = {p: n for p, n in s.submissions.items() if n > 1}
        image_duplicates = {p: n for p, n in s.image_calls.items() if n > 1}
        polls_per_op = [op.polls for op in self.operations.values()]
        lags = sorted(s.done_lags)
        report: dict[str, Any] = {
            "settings": self.settings,
            "uptime_s": round(time.monotonic() - s.started_at, 3),
            "submissions": sum(s.submissions.values()),
            "submitted_prompts": len(s.submissions),
            "duplicate_submissions": sum(n - 1 for n in duplicates.values()),
            "duplicated_prompts": dict(list(duplicates.items())[:20]),
            "image_calls": sum(s.image_calls.values()),
            "image_prompts": len(s.image_calls),
            "duplicate_image_calls": sum(n - 1 for n in image_duplicates.values()),
            "polls": s.polls,
            "polls_done": s.polls_done,
            "polls_per_operation": {
                "mean": round(sum(polls_per_op) / len(polls_per_op), 2) if polls_per_op else 0,
                "max": max(polls_per_op, default=0),
            },
            "done_seen_after_ready_s": {
                "n": len(lags),
                "p50": round(lags[len(lags) // 2], 3) if lags else None,
                "max": round(lags[-1], 3) if lags else None,
            },
            # Where a wave's wall time goes: its submissions' spread, then the latency and the lag.
            "submit_span_s": round(s.submit_times[-1] - s.submit_times[0], 3) if s.submit_times else None,
            # The same for a burst of images: the first call's arrival to the last one's.
            "image_call_span_s": (
                round(s.image_call_times[-1] - s.image_call_times[0], 3) if s.image_call_times else None
            ),
            "image_answer_bytes": max((len(a) for a in self.answers.values()), default=0),
            "downloads": s.downloads,
            "signed_downloads": s.signed_downloads,
            "model_gets": s.model_gets,
            "sent_429": dict(s.sent_429),
            "sent_429_total": sum(s.sent_429.values()),
            "sent_503": dict(s.sent_503),
            "rejected": dict(s.rejected),
            "open_requests": s.open_requests - 1,  # not this one
            "peak_open_requests": s.peak_open_requests,
            "peak_open_image_calls": s.peak_open_image_calls,
            "unfinished_operations": s.unfinished,
            "peak_unfinished_operations": s.peak_unfinished,
            "peak_running_operations": self.peak_running(),
        }
        if per_prompt:
            report["per_prompt_submissions"] = dict(s.submissions)
            report["per_prompt_image_calls"] = dict(s.image_calls)
        return report

    def peak_running(self) -> int:
        """Most operations running at the fake at one moment (submitted, latency not yet over)."""
        times, peak, first = self.stats.submit_times, 0, 0
        for i, t in enumerate(times):  # submission times only grow
            while times[first] <= t - self.video_latency_s:
                first += 1
            peak = max(peak, i - first + 1)
        return peak


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--video-latency-s", type=float, default=60.0, help="submission -> operation done")
    parser.add_argument("--image-latency-s", type=float, default=15.0, help="generateContent answer time")
    parser.add_argument("--api-key", default=API_KEY, help="the key the fake accepts")
    parser.add_argument("--submit-rpm", type=int, default=0, help="predictLongRunning per minute per model")
    parser.add_argument("--image-rpm", type=int, default=0, help="generateContent per minute per model")
    parser.add_argument("--poll-rpm", type=int, default=0, help="operation polls per minute")
    parser.add_argument(
        "--submit-error-rate", type=float, default=0.0, help="fraction of submits answered 503"
    )
    parser.add_argument("--poll-error-rate", type=float, default=0.0, help="fraction of polls answered 503")
    parser.add_argument("--image-error-rate", type=float, default=0.0, help="fraction of image calls 503")
    parser.add_argument(
        "--image-kb",
        type=int,
        default=0,
        help="make each answer's PNG about this many KB (noise rows); 0: one colour, a few KB",
    )
    parser.add_argument("--seed", type=int, default=0, help="for the error rates")
    parser.add_argument("--certfile", help="speak HTTPS with this certificate (PEM; --keyfile with it)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    return parser.parse_args(argv)


def raise_open_files_limit() -> None:
    """Thousands of open connections need thousands of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    raise_open_files_limit()
    fake = FakeGoogle(args)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The 720p clip every default shot gets, encoded while the fake already answers (a download
        # that comes first waits for it) rather than during the first download or before listening.
        encoding = asyncio.create_task(fake.video(VIDEO_SIZES["720p"]))
        yield
        encoding.cancel()

    app = Starlette(routes=[Route("/{path:path}", fake.handle, methods=["GET", "POST"])], lifespan=lifespan)
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=8192,
        timeout_keep_alive=75,
        limit_concurrency=None,
        loop="uvloop",
        http="httptools",
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
