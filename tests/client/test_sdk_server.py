"""The SDK against a real nanogen server (the shared ``server`` fixture: a uvicorn subprocess over HTTP).

Waits use a short ``poll_interval`` so the suite stays quick; the default intervals (the pages' 3 s and
5 s) are checked in test_transport.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from nanogen import AsyncClient, Client, errors, schemas
from nanogen.media.video import probe_video
from tests.conftest import ImageHost, Server, image_bytes

FAST = 0.2


def client_for(server: Server, key: str) -> Client:
    return Client(api_key=key, base_url=server.base_url)


def test_image_generate_wait_download(server: Server, tmp_path: Path) -> None:
    account = server.new_account(20)
    seen: list[schemas.ImageStatusResponse] = []
    with client_for(server, account.key) as client:
        image = client.images.generate("a lighthouse at dusk", aspect_ratio="4:3", quality="2K")
        assert image.id.startswith("gen_") and image.task_id and image.credits_used == 8
        result = image.wait(on_progress=seen.append, poll_interval=FAST)
        path = image.download(tmp_path / "out.png")
    assert result.status == "completed" and result.progress == 100 and result.imageUrl
    assert seen[-1] == result
    progress = [s.progress for s in seen]
    assert progress == sorted(progress)
    with Image.open(path) as png:
        assert (png.format, png.size) == ("PNG", (2400, 1792))
    assert account.balance() == 12


def test_edit_with_a_local_file_and_a_url(server: Server, image_host: ImageHost, tmp_path: Path) -> None:
    account = server.new_account(20)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes((30, 160, 220), "JPEG", (80, 60)))
    uploads_before = set((server.home / "outputs" / "up").glob("*/*"))
    with client_for(server, account.key) as client:
        image = client.images.generate(
            "make it a watercolour", input_images=[photo, image_host.url("red.png"), str(photo)]
        )
        path = image.download(tmp_path, poll_interval=FAST)
    assert path == tmp_path / f"{image.id}.png"
    with Image.open(path) as png:
        assert png.size == (1376, 768)
    new_uploads = set((server.home / "outputs" / "up").glob("*/*")) - uploads_before
    assert len(new_uploads) == 1, "the same local file is uploaded once"
    assert next(iter(new_uploads)).read_bytes() == photo.read_bytes()


def test_upload_returns_the_decoded_facts(server: Server, tmp_path: Path) -> None:
    account = server.new_account(0)
    path = tmp_path / "frame.webp"
    path.write_bytes(image_bytes((1, 2, 3), "WEBP", (33, 22)))
    with client_for(server, account.key) as client:
        uploaded = client.uploads.create(path)
        from_bytes = client.uploads.create(image_bytes((4, 5, 6), "GIF"))
    assert (uploaded.contentType, uploaded.width, uploaded.height) == ("image/webp", 33, 22)
    assert uploaded.url.startswith(f"{server.base_url}/files/up/")
    assert from_bytes.contentType == "image/gif"


def test_two_shot_video_with_a_local_frame(server: Server, tmp_path: Path) -> None:
    account = server.new_account(50)
    frame = tmp_path / "frame.png"
    frame.write_bytes(image_bytes((250, 200, 0), "PNG", (64, 36)))
    shots: list[schemas.Shot | dict[str, object] | str] = [
        "a city skyline at dawn",
        {"prompt": "the sun rises over the frame", "imageUrls": [str(frame)]},
    ]
    with client_for(server, account.key) as client:
        video = client.videos.generate(shots, resolution="720p")
        assert video.credits_used == 20 and [t.shotId for t in video.shots] == ["shot-1", "shot-2"]
        result = video.wait(poll_interval=FAST, timeout=180)
        whole = video.download(tmp_path / "whole.mp4")
        parts = video.download_shots(tmp_path / "shots")
        # Looked up again by its generationId alone (nanogen's addition to check-status).
        again = client.videos.get(video.id).status()
    assert result.status == "completed" and result.concatenatedVideoUrl
    assert [s.shotId for s in result.shots] == ["shot-1", "shot-2"]
    assert probe_video(whole).duration_s == pytest.approx(16.0, abs=0.1)
    assert len(parts) == 2 and all(probe_video(p).duration_s == pytest.approx(8.0, abs=0.1) for p in parts)
    assert again.concatenatedVideoUrl == result.concatenatedVideoUrl
    assert [s.taskId for s in again.shots] == video.task_ids


def test_a_failed_image_raises_with_its_result_and_is_refunded(server: Server) -> None:
    account = server.new_account(4)
    with client_for(server, account.key) as client:
        image = client.images.generate("[sandbox:fail] a broken thing")
        with pytest.raises(errors.GenerationFailed) as failed:
            image.wait(poll_interval=FAST)
    assert isinstance(failed.value.result, schemas.ImageStatusResponse)
    assert failed.value.result.status == "failed" and failed.value.result.success is False
    assert failed.value.code == "GENERATION_FAILED"
    assert account.balance() == 4


def test_a_video_with_a_failed_shot_raises_naming_it(server: Server) -> None:
    account = server.new_account(20)
    with client_for(server, account.key) as client:
        video = client.videos.generate(["fine", "[sandbox:fail] broken"])
        with pytest.raises(errors.GenerationFailed, match="shot-2") as failed:
            video.wait(poll_interval=FAST, timeout=180)
    result = failed.value.result
    assert isinstance(result, schemas.VideoStatusResponse)
    assert [s.status for s in result.shots] == ["completed", "failed"]
    assert result.shots[0].videoUrl
    assert account.balance() == 10


def test_insufficient_credits_carries_required_credits(server: Server) -> None:
    account = server.new_account(3)
    with client_for(server, account.key) as client, pytest.raises(errors.InsufficientCredits) as refused:
        client.images.generate("too dear", quality="1K")
    assert (refused.value.status, refused.value.code, refused.value.required_credits) == (
        402,
        "INSUFFICIENT_CREDITS",
        4,
    )
    with client_for(server, account.key) as client, pytest.raises(errors.InsufficientCredits) as video:
        client.videos.generate(["a", "b"])
    assert video.value.required_credits == 20
    assert account.balance() == 3


def test_bad_and_missing_keys_are_login_required(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        Client(api_key="ng_not-a-key", base_url=server.base_url) as client,
        pytest.raises(errors.LoginRequired),
    ):
        client.images.generate("p")
    monkeypatch.delenv("NANOGEN_API_KEY", raising=False)
    monkeypatch.setenv("NANOGEN_BASE_URL", server.base_url)
    with Client() as client, pytest.raises(errors.LoginRequired) as missing:
        client.images.get("gen_x").status()
    assert missing.value.status == 401


def test_environment_configures_the_client(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    account = server.new_account(0)
    monkeypatch.setenv("NANOGEN_API_KEY", account.key)
    monkeypatch.setenv("NANOGEN_BASE_URL", server.base_url + "/")
    with Client() as client, pytest.raises(errors.NotFound) as unknown:
        client.images.get("gen_unknown").status()  # authenticated: 404, not 401
    assert unknown.value.code == "NOT_FOUND"


def test_server_side_refusals_map_to_their_classes(server: Server) -> None:
    account = server.new_account(100)
    with client_for(server, account.key) as client:
        with pytest.raises(errors.InvalidImageUrl) as bad_url:
            client.images.generate("p", input_images=[f"{server.base_url}/files/up/{'x' * 20}/1.png"])
        assert bad_url.value.extra["url"].endswith("/1.png")
        with pytest.raises(errors.TaskNotFound):
            client.videos.get(task_ids=[schemas.TaskRef(shotId="a", taskId="task_nope")]).status()
        with pytest.raises(errors.TaskNotFound):
            client.videos.get("gen_nope").status()
    assert account.balance() == 100


def test_wait_stops_at_its_timeout(server: Server) -> None:
    account = server.new_account(4)
    with client_for(server, account.key) as client:
        image = client.images.generate("[sandbox:slow=20] patience")
        with pytest.raises(errors.WaitTimeout):
            image.wait(timeout=1.0, poll_interval=FAST)
        assert image.last_status is not None and image.last_status.status in ("pending", "generating")


def test_async_client_generates_and_downloads(server: Server, tmp_path: Path) -> None:
    account = server.new_account(30)
    photo = tmp_path / "in.png"
    photo.write_bytes(image_bytes((200, 10, 10)))

    async def main() -> tuple[Path, Path, int]:
        async with AsyncClient(api_key=account.key, base_url=server.base_url) as client:
            image, video = await asyncio.gather(
                client.images.generate("async edit", input_images=[photo]),
                client.videos.generate(["one async shot"]),
            )
            image_path, video_path = await asyncio.gather(
                image.download(tmp_path / "a.png", poll_interval=FAST),
                video.download(tmp_path / "a.mp4", poll_interval=FAST, timeout=180),
            )
            with pytest.raises(errors.InsufficientCredits):
                await client.videos.generate(["x"] * 3)
            return image_path, video_path, (video.credits_used or 0) + (image.credits_used or 0)

    image_path, video_path, spent = asyncio.run(main())
    with Image.open(image_path) as png:
        assert png.size == (1376, 768)
    assert probe_video(video_path).duration_s == pytest.approx(8.0, abs=0.1)
    assert spent == 14 and account.balance() == 16


def test_video_lookup_by_generation_id_is_the_owners_only(server: Server) -> None:
    """The check-status extension the SDK's videos.get(id) uses, on the wire."""
    owner, other = server.new_account(20), server.new_account(0)
    with client_for(server, owner.key) as client:
        video = client.videos.generate(["one"])
        image = client.images.generate("an image")
    status = "/api/veo-3/check-status"
    with owner.client() as c:
        mine = c.post(status, json={"generationId": video.id})
        assert mine.status_code == 200 and [s["taskId"] for s in mine.json()["shots"]] == video.task_ids
        assert c.post(status, json={"generationId": image.id}).json()["errorCode"] == "TASK_NOT_FOUND"
        assert c.post(status, json={"generationId": "gen_nope"}).json()["errorCode"] == "TASK_NOT_FOUND"
        assert c.post(status, json={"generationId": ""}).json()["errorCode"] == "TASK_IDS_REQUIRED"
        assert (
            c.post(status, json={"taskIds": [], "generationId": 5}).json()["errorCode"] == "TASK_IDS_REQUIRED"
        )
    with other.client() as c:
        theirs = c.post(status, json={"generationId": video.id})
        assert theirs.status_code == 404 and theirs.json()["errorCode"] == "TASK_NOT_FOUND"
