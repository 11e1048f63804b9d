"""Whole generations through a real server, and decoding what comes back (storage and retention tests)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import httpx
from PIL import Image

from tests.conftest import Account, wait_for
from tests.databases import Database

DAY_S = 86_400


def image(account: Account, prompt: str, **extra: Any) -> dict[str, Any]:
    """Submit an image and wait for it to end; the final check-status body."""
    with account.client() as c:
        r = c.post("/api/nano-banana-2/generate", json={"prompt": prompt, **extra})
        assert r.status_code == 200, r.text
        generation_id = r.json()["generationId"]

        def ended() -> dict[str, Any] | None:
            s = c.post("/api/nano-banana-2/check-status", json={"generationId": generation_id})
            assert s.status_code == 200, s.text
            body: dict[str, Any] = s.json()
            return body if body["status"] in ("completed", "failed") else None

        result: dict[str, Any] = wait_for(ended)
    return result


def video(account: Account, prompts: list[str]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Submit shots and wait for the whole video (concatenated when several); (taskIds, final body)."""
    shots = [
        {"id": f"shot-{i}", "prompt": prompt, "generationType": "TEXT_2_VIDEO"}
        for i, prompt in enumerate(prompts)
    ]
    with account.client() as c:
        r = c.post("/api/veo-3/generate", json={"shots": shots})
        assert r.status_code == 200, r.text
        refs = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in r.json()["shots"]]

        def ended() -> dict[str, Any] | None:
            s = c.post("/api/veo-3/check-status", json={"taskIds": refs})
            assert s.status_code == 200, s.text
            body: dict[str, Any] = s.json()
            return body if body["status"] != "processing" else None

        result: dict[str, Any] = wait_for(ended)
    return refs, result


def video_status(account: Account, refs: list[dict[str, str]]) -> dict[str, Any]:
    with account.client() as c:
        r = c.post("/api/veo-3/check-status", json={"taskIds": refs})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def image_status(account: Account, generation_id: str) -> dict[str, Any]:
    with account.client() as c:
        r = c.post("/api/nano-banana-2/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def download(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=60, follow_redirects=True)


def decoded_image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()  # decodes every pixel: a truncated file fails here
    return picture


def decoded_video(data: bytes, scratch: Path) -> tuple[int, int, int, float]:
    """(width, height, decoded frames, duration in seconds) of an MP4."""
    path = scratch / f"video-{len(list(scratch.glob('video-*.mp4')))}.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        duration = float(container.duration or 0) / av.time_base
        return stream.codec_context.width, stream.codec_context.height, frames, duration


def new_home(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path


def local_files(home: Path) -> list[Path]:
    outputs = home / "outputs"
    return [p for p in outputs.rglob("*") if p.is_file()] if outputs.exists() else []


def backdate(db: Database, generation_id: str, days: float) -> None:
    """Make a generation look ``days`` older: what retention measures is the records' age (committed
    when ``db`` closes)."""
    shift = days * DAY_S
    db.execute(
        "UPDATE nanogen_tasks SET created_at = created_at - ?, finished_at = finished_at - ? "
        "WHERE generation_id = ?",
        (shift, shift, generation_id),
    )
    db.execute(
        "UPDATE nanogen_generations SET created_at = created_at - ? WHERE id = ?", (shift, generation_id)
    )
