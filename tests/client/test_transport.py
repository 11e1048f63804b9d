"""The SDK's decisions, through httpx's transport seam (``httpx.MockTransport``): polling intervals,
Retry-After, timeouts, network failures, error mapping and where the API key goes.

These answer in the contract's wire format; everything else about the SDK is tested against a real
server in test_sdk_server.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanogen import AsyncClient, Client, errors, schemas
from nanogen.client import IMAGE_POLL_INTERVAL_S, VIDEO_POLL_INTERVAL_S

BASE = "http://nanogen.test"
Handler = Callable[[httpx.Request], httpx.Response]


def image_status(status: str, progress: int = 0, **extra: Any) -> httpx.Response:
    body = {"success": status != "failed", "status": status, "generationId": "gen_1", "progress": progress}
    return httpx.Response(200, json=body | extra)


def scripted(*answers: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering each request with the next scripted answer (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


def recording_client(handler: Handler, **kwargs: Any) -> tuple[Client, list[float]]:
    client = Client(api_key="ng_test", base_url=BASE, transport=httpx.MockTransport(handler), **kwargs)
    sleeps: list[float] = []
    client._sleep = sleeps.append  # record the waits instead of sleeping
    return client, sleeps


def test_image_polls_at_the_pages_interval() -> None:
    handler, seen = scripted(
        image_status("pending"),
        image_status("generating", 40),
        image_status("completed", 100, imageUrl="http://x/a.png"),
    )
    client, sleeps = recording_client(handler)
    progress: list[int] = []
    result = client.images.get("gen_1").wait(on_progress=lambda s: progress.append(s.progress))
    assert result.imageUrl == "http://x/a.png"
    assert sleeps == [IMAGE_POLL_INTERVAL_S] * 2 == [3.0, 3.0]
    assert progress == [0, 40, 100]
    assert all(json.loads(r.content) == {"generationId": "gen_1"} for r in seen)
    assert all(r.url.path == "/api/nano-banana-2/check-status" for r in seen)


def test_video_polls_at_the_pages_interval_by_task_ids() -> None:
    processing = {
        "status": "processing",
        "shots": [{"shotId": "s", "taskId": "task_1", "status": "processing"}],
    }
    done = {
        "status": "completed",
        "shots": [{"shotId": "s", "taskId": "task_1", "status": "completed", "videoUrl": "http://x/v.mp4"}],
    }
    handler, seen = scripted(httpx.Response(200, json=processing), httpx.Response(200, json=done))
    client, sleeps = recording_client(handler)
    video = client.videos.get(task_ids=[schemas.TaskRef(shotId="s", taskId="task_1")])
    assert video.wait().status == "completed"
    assert sleeps == [VIDEO_POLL_INTERVAL_S] == [5.0]
    # The contract's body, as the page's TypeScript example sends it (hosted service has no generationId).
    assert json.loads(seen[0].content) == {"taskIds": [{"shotId": "s", "taskId": "task_1"}]}


def test_retry_after_is_honoured_while_polling() -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "7"},
        json={"error": "Rate limit exceeded", "errorCode": "API_KEY_RATE_LIMIT_EXCEEDED"},
    )
    unavailable = httpx.Response(
        503, headers={"Retry-After": "2"}, json={"error": "down", "errorCode": "SERVICE_UNAVAILABLE"}
    )
    handler, seen = scripted(limited, unavailable, image_status("completed", 100, imageUrl="http://x/a.png"))
    client, sleeps = recording_client(handler)
    client.images.get("gen_1").wait(poll_interval=0.5)
    assert sleeps == [7.0, 2.0]  # the header's seconds (more than the interval), not the interval
    assert len(seen) == 3


def test_retry_after_really_waits() -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "1"},
        json={"error": "slow down", "errorCode": "API_KEY_RATE_LIMIT_EXCEEDED"},
    )
    handler, seen = scripted(limited, image_status("completed", 100, imageUrl="http://x/a.png"))
    with Client(api_key="ng_t", base_url=BASE, transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        client.images.get("gen_1").wait(poll_interval=0.01)
    assert time.monotonic() - started >= 1.0
    assert len(seen) == 2


def test_retry_after_past_the_timeout_gives_up_at_once() -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "3600"},
        json={"error": "hour", "errorCode": "API_KEY_RATE_LIMIT_EXCEEDED"},
    )
    handler, _ = scripted(limited)
    client, sleeps = recording_client(handler)
    with pytest.raises(errors.WaitTimeout):
        client.images.get("gen_1").wait(timeout=60)
    assert sleeps == []


def test_wait_stops_at_the_timeout() -> None:
    handler, seen = scripted(image_status("generating", 10))
    with Client(api_key="ng_t", base_url=BASE, transport=httpx.MockTransport(handler)) as client:
        started = time.monotonic()
        with pytest.raises(errors.WaitTimeout) as timed_out:
            client.images.get("gen_1").wait(timeout=0.5, poll_interval=0.1)
    assert 0.5 <= time.monotonic() - started < 30
    assert isinstance(timed_out.value, TimeoutError)
    assert len(seen) >= 2


def test_brief_network_failures_are_retried_then_reported() -> None:
    down = httpx.ConnectError("connection refused")
    handler, seen = scripted(down, down, image_status("completed", 100, imageUrl="http://x/a.png"))
    client, sleeps = recording_client(handler)
    assert client.images.get("gen_1").wait(poll_interval=1).status == "completed"
    assert sleeps == [1, 1] and len(seen) == 3

    handler, seen = scripted(down)
    client, _ = recording_client(handler)
    with pytest.raises(errors.ConnectionFailed, match=r"nanogen\.test"):
        client.images.get("gen_1").wait(poll_interval=1)
    assert len(seen) == 5
    with pytest.raises(errors.ConnectionFailed):  # outside wait(): at once
        client.images.generate("p")


def test_generate_does_not_retry_a_rate_limit() -> None:
    limited = httpx.Response(
        429,
        headers={"Retry-After": "1800"},
        json={"error": "limit", "errorCode": "API_KEY_RATE_LIMIT_EXCEEDED", "retryAfter": 1800},
    )
    handler, seen = scripted(limited)
    client, sleeps = recording_client(handler)
    with pytest.raises(errors.RateLimited) as refused:
        client.images.generate("p")
    assert (refused.value.retry_after, refused.value.status, len(seen), sleeps) == (1800, 429, 1, [])


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, {"error": "e", "errorCode": "INVALID_PROMPT"}, errors.InvalidPrompt, "INVALID_PROMPT"),
        (
            400,
            {"error": "e", "errorCode": "INVALID_PARAMETER", "field": "x"},
            errors.InvalidParameter,
            "INVALID_PARAMETER",
        ),
        (400, {"error": "e", "errorCode": "REQUEST_TOO_LARGE"}, errors.RequestTooLarge, "REQUEST_TOO_LARGE"),
        (413, {"error": "e", "errorCode": "REQUEST_TOO_LARGE"}, errors.UploadTooLarge, "REQUEST_TOO_LARGE"),
        (401, {"error": "e", "errorCode": "LOGIN_REQUIRED"}, errors.LoginRequired, "LOGIN_REQUIRED"),
        (403, {"error": "e", "errorCode": "FORBIDDEN"}, errors.Forbidden, "FORBIDDEN"),
        (404, {"error": "e", "errorCode": "TASK_NOT_FOUND"}, errors.TaskNotFound, "TASK_NOT_FOUND"),
        (
            415,
            {"error": "e", "errorCode": "UNSUPPORTED_MEDIA_TYPE"},
            errors.UnsupportedMediaType,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (500, {"error": "e", "errorCode": "GENERATION_FAILED"}, errors.GenerationFailed, "GENERATION_FAILED"),
        (500, {"error": "e", "errorCode": "INTERNAL_ERROR"}, errors.InternalError, "INTERNAL_ERROR"),
        (
            500,
            {"error": "e", "errorCode": "CREDIT_RESERVATION_FAILED"},
            errors.CreditReservationFailed,
            "CREDIT_RESERVATION_FAILED",
        ),
        # Codes another server may send: the class of the HTTP status, keeping the code.
        (400, {"error": "e", "errorCode": "SOMETHING_NEW"}, errors.BadRequest, "SOMETHING_NEW"),
        (409, {"error": "e", "errorCode": "CONFLICT"}, errors.BadRequest, "CONFLICT"),
        (502, "<html>bad gateway</html>", errors.InternalError, "HTTP_502"),
    ],
)
def test_error_responses_become_the_servers_exceptions(
    status: int, body: Any, cls: type[errors.APIError], code: str
) -> None:
    response = (
        httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)
    )
    handler, _ = scripted(response)
    client, _ = recording_client(handler)
    with pytest.raises(errors.APIError) as raised:
        client.images.get("gen_1").status()
    assert type(raised.value) is cls
    assert (raised.value.status, raised.value.code) == (status, code)
    if isinstance(body, dict):
        assert raised.value.body() == body


def test_insufficient_credits_keeps_required_credits() -> None:
    handler, _ = scripted(
        httpx.Response(
            402,
            json={
                "error": "Insufficient credits",
                "errorCode": "INSUFFICIENT_CREDITS",
                "requiredCredits": 30,
            },
        )
    )
    client, _ = recording_client(handler)
    with pytest.raises(errors.InsufficientCredits) as refused:
        client.videos.generate([{"prompt": "p", "aspectRatio": "9:16"}], resolution="4k")
    assert refused.value.required_credits == 30 and str(refused.value) == "Insufficient credits"


def test_bad_requests_are_refused_before_sending() -> None:
    handler, seen = scripted(httpx.Response(500))
    client, _ = recording_client(handler)
    with pytest.raises(errors.InvalidPrompt):
        client.images.generate("   ")
    with pytest.raises(errors.InvalidParameter, match="imageQuality"):
        client.images.generate("p", quality="2k")
    with pytest.raises(errors.TooManyImages):
        client.images.generate("p", input_images=[f"https://x.test/{i}.png" for i in range(15)])
    with pytest.raises(errors.ResolutionNotAvailable):
        client.videos.generate(["a", "b"], resolution="1080p")
    with pytest.raises(errors.InvalidImageCount):
        client.videos.generate(
            [{"prompt": "p", "generationType": "TEXT_2_VIDEO", "imageUrls": ["https://x.test/a.png"]}]
        )
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        client.images.generate("p", input_images=["https://x.test/a.png", "nope.png"])
    assert seen == []


def test_request_bodies_are_the_contracts(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/api/uploads":
            return httpx.Response(
                201,
                json={
                    "success": True,
                    "url": "http://nanogen.test/files/up/t/1.png",
                    "expiresAt": "2030-01-01T00:00:00Z",
                    "contentType": "image/png",
                    "width": 1,
                    "height": 1,
                    "bytes": 8,
                },
            )
        if request.url.path == "/api/veo-3/generate":
            shots = json.loads(request.content)["shots"]
            return httpx.Response(
                200,
                json={
                    "status": "processing",
                    "shots": [
                        {"shotId": s["id"], "taskId": f"task_{i}", "status": "processing"}
                        for i, s in enumerate(shots)
                    ],
                    "creditsUsed": 10 * len(shots),
                },
            )
        return httpx.Response(
            200, json={"success": True, "generationId": "gen_1", "taskId": "task_1", "status": "pending"}
        )

    client = Client(api_key="ng_k", base_url=BASE, transport=httpx.MockTransport(handle))
    frame = tmp_path / "frame.bin"
    frame.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8)
    image = client.images.generate(
        "  edit me ", quality="4K", google_search=True, input_images=["https://x.test/a.png", frame]
    )
    assert image.credits_used is None  # the hosted service's answer has no creditsUsed
    upload, generate = sent[0], sent[1]
    assert upload.headers["Content-Type"] == "image/png"  # sniffed from the bytes, not the name
    assert upload.content == frame.read_bytes()
    assert json.loads(generate.content) == {
        "prompt": "edit me",
        "mode": "edit",
        "aspectRatio": "16:9",
        "imageQuality": "4K",
        "googleSearch": True,
        "inputImageUrls": ["https://x.test/a.png", "http://nanogen.test/files/up/t/1.png"],
    }
    assert generate.headers["Authorization"] == "Bearer ng_k"
    video = client.videos.generate(
        [
            "a",
            {
                "id": "mine",
                "prompt": "b",
                "imageUrls": ["https://x.test/1.png", "https://x.test/2.png", "https://x.test/3.png"],
            },
        ]
    )
    body = json.loads(sent[-1].content)
    assert [(s["id"], s["generationType"], s["aspectRatio"]) for s in body["shots"]] == [
        ("shot-1", "TEXT_2_VIDEO", "16:9"),
        ("mine", "REFERENCE_2_VIDEO", "16:9"),
    ]
    assert video.id is None and video.task_ids == ["task_0", "task_1"]


def test_the_api_key_never_goes_to_file_hosts(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=b"PNGDATA")
        return image_status("completed", 100, imageUrl="https://cdn.test/generations/abc.png")

    client = Client(api_key="ng_secret", base_url=BASE, transport=httpx.MockTransport(handle))
    path = client.images.get("gen_1").download(tmp_path)
    assert path == tmp_path / "gen_1.png" and path.read_bytes() == b"PNGDATA"
    assert "Authorization" in sent[0].headers and "Authorization" not in sent[1].headers
    assert not list(tmp_path.glob(".*.part"))
    assert "ng_secret" not in repr(client._config)  # nor in a repr that a log or traceback could show


def test_a_failed_download_leaves_no_file(tmp_path: Path) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/files/"):
            return httpx.Response(404, json={"error": "File not found", "errorCode": "NOT_FOUND"})
        return image_status("completed", 100, imageUrl=f"{BASE}/files/out/x/a.png")

    client = Client(api_key="ng_k", base_url=BASE, transport=httpx.MockTransport(handle))
    with pytest.raises(errors.NotFound):
        client.images.get("gen_1").download(tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_async_client_honours_retry_after_too() -> None:
    limited = httpx.Response(
        429, headers={"Retry-After": "4"}, json={"error": "e", "errorCode": "API_KEY_RATE_LIMIT_EXCEEDED"}
    )
    handler, seen = scripted(limited, image_status("completed", 100, imageUrl="http://x/a.png"))
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> schemas.ImageStatusResponse:
        async with AsyncClient(
            api_key="ng_k", base_url=BASE, transport=httpx.MockTransport(handler)
        ) as client:
            client._sleep = record
            return await client.images.get("gen_1").wait()

    assert asyncio.run(main()).status == "completed"
    assert sleeps == [4.0] and len(seen) == 2
