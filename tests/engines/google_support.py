"""What the Google engine tests share: a nanogen server pointed at the fake Google, and polling."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from PIL import Image
from tests.conftest import ADMIN_TOKEN, OUTCOME_WAIT_S, Account, Server, wait_for
from tests.fakes.google_server import FakeGoogle

IMAGE_GENERATE = "/api/nano-banana-2/generate"
IMAGE_STATUS = "/api/nano-banana-2/check-status"
VIDEO_GENERATE = "/api/veo-3/generate"
VIDEO_STATUS = "/api/veo-3/check-status"


@contextmanager
def fake_google() -> Iterator[FakeGoogle]:
    """A fake Google, closed after; every request nanogen sent it was readable."""
    fake = FakeGoogle()
    yield fake
    assert fake.failures == [], "every request nanogen sent was readable"
    fake.close()


@contextmanager
def google_server(home: Path, fake: FakeGoogle, mode: str = "gemini", **env: str) -> Iterator[Server]:
    server = Server(home, extra_env=fake.env(mode, **env)).start()
    try:
        yield server
    finally:
        server.stop()


def generate_image(account: Account, body: dict[str, Any]) -> dict[str, Any]:
    with account.client() as c:
        r = c.post(IMAGE_GENERATE, json=body)
    assert r.status_code == 200, r.text
    accepted: dict[str, Any] = r.json()
    return accepted


def wait_image(
    account: Account, generation_id: str, timeout: float = OUTCOME_WAIT_S
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """The final check-status answer, and every (status, progress) seen on the way."""
    seen: list[tuple[str, int]] = []

    def done() -> dict[str, Any] | None:
        with account.client() as c:
            r = c.post(IMAGE_STATUS, json={"generationId": generation_id})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        seen.append((body["status"], body["progress"]))
        return body if body["status"] in ("completed", "failed") else None

    final: dict[str, Any] = wait_for(done, timeout, interval=0.05)
    progress = [p for status, p in seen if status != "failed"]  # failed reports 0, as on the page
    assert progress == sorted(progress), f"progress only moves forward: {seen}"
    return final, seen


def generate_video(account: Account, shots: list[dict[str, Any]], resolution: str = "720p") -> dict[str, Any]:
    with account.client() as c:
        r = c.post(VIDEO_GENERATE, json={"shots": shots, "resolution": resolution})
    assert r.status_code == 200, r.text
    accepted: dict[str, Any] = r.json()
    return accepted


def wait_video(
    account: Account, accepted: dict[str, Any], timeout: float = OUTCOME_WAIT_S, concatenated: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final check-status answer (with the concatenated video when asked), and every answer seen."""
    task_ids = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in accepted["shots"]]
    seen: list[dict[str, Any]] = []

    def done() -> dict[str, Any] | None:
        with account.client() as c:
            r = c.post(VIDEO_STATUS, json={"taskIds": task_ids})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        seen.append(body)
        if body["status"] == "processing":
            return None
        if (
            concatenated
            and body["status"] == "completed"
            and not set(body) & {"concatenatedVideoUrl", "concatenationError"}
        ):
            return None
        return body

    final: dict[str, Any] = wait_for(done, timeout, interval=0.05)
    return final, seen


def shot(
    shot_id: str, prompt: str, kind: str = "TEXT_2_VIDEO", ratio: str = "16:9", **extra: Any
) -> dict[str, Any]:
    return {"id": shot_id, "prompt": prompt, "generationType": kind, "aspectRatio": ratio, **extra}


def admin_task(server: Server, task_id: str) -> dict[str, Any]:
    with server.client(ADMIN_TOKEN) as c:
        r = c.get(f"/admin/tasks/{task_id}")
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()
    return task


def download(account: Account, url: str, server: Server) -> bytes:
    assert url.startswith(server.base_url + "/files/"), f"served by nanogen itself, not a provider URL: {url}"
    with account.client() as c:
        r = c.get(url)
    assert r.status_code == 200
    return r.content


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


@dataclass(frozen=True)
class Clip:
    width: int
    height: int
    codec: str
    fps: float
    duration_s: float
    has_audio: bool


def probe(data: bytes, tmp_path: Path) -> Clip:
    path = tmp_path / f"clip-{len(list(tmp_path.iterdir()))}.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = float(stream.average_rate or 0)
        return Clip(
            stream.codec_context.width,
            stream.codec_context.height,
            stream.codec_context.name,
            fps,
            frames / fps if fps else 0.0,
            bool(container.streams.audio),
        )
