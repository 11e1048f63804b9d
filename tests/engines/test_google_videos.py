"""Veo 3.1 through the Google engine (API key mode, REST), end to end: every generation type, the
operation recorded and polled, the file downloaded and served by nanogen, failures refunded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Account, ImageHost, Server
from tests.engines.google_support import (
    admin_task,
    download,
    generate_video,
    google_server,
    probe,
    shot,
    wait_video,
)
from tests.fakes.google_server import API_KEY, FakeGoogle, b64decode

SUBMIT = "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"


@pytest.fixture(scope="module")
def server(fake: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with google_server(tmp_path_factory.mktemp("google-videos"), fake) as server:
        yield server


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(1000)


def test_text_to_video_submits_once_polls_and_serves_the_file(
    fake: FakeGoogle, server: Server, account: Account, tmp_path: Path
) -> None:
    prompt = "A golden retriever running on a beach at sunset, cinematic lighting"
    accepted = generate_video(account, [shot("shot-1", prompt)])
    final, _ = wait_video(account, accepted)
    assert final["status"] == "completed", final
    [done] = final["shots"]
    clip = probe(download(account, done["videoUrl"], server), tmp_path)
    assert (clip.width, clip.height, clip.codec, clip.fps) == (1280, 720, "h264", 24.0)
    assert abs(clip.duration_s - 8) < 0.1 and clip.has_audio, "Veo's audio track is kept"

    [sent] = fake.requests_for(prompt, ":predictLongRunning")
    assert sent.path == SUBMIT and sent.headers["x-goog-api-key"] == API_KEY and not sent.query
    assert sent.body == {
        "instances": [{"prompt": prompt}],
        "parameters": {"aspectRatio": "16:9", "resolution": "720p", "durationSeconds": 8, "sampleCount": 1},
    }
    [operation] = fake.operations_for(prompt)
    assert operation.polls >= 2, "polled until done"
    task = admin_task(server, done["taskId"])
    assert task["providerOperation"] == operation.name
    assert task["providerCostUsd"] == "3.200000", "8 s at Veo 3.1's $0.40/s"

    fid = [r for r in fake.requests_to(r"^/v1beta/files/") if r.headers.get("x-goog-api-key") == API_KEY]
    signed = fake.requests_to(r"^/signed/")
    assert fid and signed, "downloaded through Google's redirect"
    assert all("x-goog-api-key" not in r.headers for r in signed), "the key never follows a redirect"


def test_every_generation_type_with_its_images(
    fake: FakeGoogle, server: Server, account: Account, image_host: ImageHost, tmp_path: Path
) -> None:
    red, green, blue, webp = (image_host.url(n) for n in ("red.png", "green.jpg", "blue.png", "demo.webp"))
    prompts = ["Frames from red to green", "Starting on a red frame", "The three props, in a studio"]
    accepted = generate_video(
        account,
        [
            shot("a", prompts[0], "FIRST_AND_LAST_FRAMES_2_VIDEO", "9:16", imageUrls=[red, green]),
            shot("b", prompts[1], "FIRST_AND_LAST_FRAMES_2_VIDEO", "9:16", imageUrls=[red]),
            shot("c", prompts[2], "REFERENCE_2_VIDEO", "9:16", imageUrls=[blue, webp, green]),
        ],
    )
    assert account.balance() == 1000 - 30
    final, _ = wait_video(account, accepted, concatenated=True)
    assert final["status"] == "completed", final

    def image(name: str, mime_type: str) -> tuple[bytes, str]:
        return image_host.files[f"/{name}"][0], mime_type

    def sent(prompt: str) -> dict[str, object]:
        [request] = fake.requests_for(prompt, ":predictLongRunning")
        assert request.body["parameters"]["aspectRatio"] == "9:16"
        instance: dict[str, object] = request.body["instances"][0]
        return instance

    def decoded(part: object) -> tuple[bytes, str]:
        assert isinstance(part, dict)
        return b64decode(part["bytesBase64Encoded"]), part["mimeType"]

    first_last = sent(prompts[0])
    assert set(first_last) == {"prompt", "image", "lastFrame"}
    assert decoded(first_last["image"]) == image("red.png", "image/png")
    assert decoded(first_last["lastFrame"]) == image("green.jpg", "image/jpeg")
    first_only = sent(prompts[1])
    assert set(first_only) == {"prompt", "image"}
    references = sent(prompts[2])
    assert set(references) == {"prompt", "referenceImages"}
    assert isinstance(references["referenceImages"], list)
    assert [r["referenceType"] for r in references["referenceImages"]] == ["ASSET"] * 3
    assert [decoded(r["image"]) for r in references["referenceImages"]] == [
        image("blue.png", "image/png"),
        image("demo.webp", "image/webp"),
        image("green.jpg", "image/jpeg"),
    ]
    clip = probe(download(account, final["concatenatedVideoUrl"], server), tmp_path)
    assert (clip.width, clip.height) == (720, 1280)
    assert abs(clip.duration_s - 24) < 0.2


def test_1080p_single_shot(fake: FakeGoogle, server: Server, account: Account, tmp_path: Path) -> None:
    prompt = "Slow drone shot over a futuristic skyline"
    accepted = generate_video(account, [shot("s", prompt)], resolution="1080p")
    final, _ = wait_video(account, accepted)
    assert final["status"] == "completed", final
    clip = probe(download(account, final["shots"][0]["videoUrl"], server), tmp_path)
    assert (clip.width, clip.height) == (1920, 1080)
    [sent] = fake.requests_for(prompt, ":predictLongRunning")
    assert sent.body["parameters"]["resolution"] == "1080p"
    assert account.balance() == 1000 - 14


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("[google:filtered]", "Google blocked the video (responsible AI filter): Unable to generate videos"),
        ("[google:op-error]", "Google could not make the video: Video generation failed: internal error."),
        ("[google:malformed]", "Google returned a malformed response (the video does not decode"),
    ],
)
def test_a_failed_operation_fails_the_shot_with_the_reason_and_refunds(
    fake: FakeGoogle, server: Server, account: Account, marker: str, expected: str
) -> None:
    prompt = f"A shot Google will not make {marker}"
    accepted = generate_video(account, [shot("s", prompt), shot("ok", f"A calm lake ({marker[8:-1]})")])
    final, _ = wait_video(account, accepted)
    assert final["status"] == "failed"
    failed, completed = final["shots"]
    assert failed["status"] == "failed" and failed["error"].startswith(expected), failed
    assert completed["status"] == "completed" and completed["videoUrl"]
    assert account.balance() == 1000 - 10, "the failed shot is refunded, the good one paid"
    assert len(fake.requests_for(prompt, ":predictLongRunning")) == 1
    account.assert_books_balance()


def test_429_at_submit_and_500_while_polling_are_retried(fake: FakeGoogle, account: Account) -> None:
    prompt = "Rain on a tin roof [google:429x2] [google:poll500x2]"
    accepted = generate_video(account, [shot("s", prompt)])
    final, _ = wait_video(account, accepted)
    assert final["status"] == "completed", final
    assert len(fake.requests_for(prompt, ":predictLongRunning")) == 3, "two 429s, then accepted"
    [operation] = fake.operations_for(prompt)
    assert operation.polls == 3, "two polls answered 500 and were retried; the third found it done"


def test_polls_answered_429_back_off_without_failing_the_shot(fake: FakeGoogle, account: Account) -> None:
    """Polling over Google's quota waits (RetryInfo) and goes on; the shot is not failed or resubmitted."""
    prompt = "Snow on a quiet street [google:poll429x3]"
    accepted = generate_video(account, [shot("s", prompt)])
    final, _ = wait_video(account, accepted)
    assert final["status"] == "completed", final
    assert len(fake.requests_for(prompt, ":predictLongRunning")) == 1, "submitted once"
    [operation] = fake.operations_for(prompt)
    assert operation.polls == 4, "three polls answered 429 and were retried; the fourth found it done"
    account.assert_books_balance()


def test_shots_report_processing_with_progress_until_done(fake: FakeGoogle, account: Account) -> None:
    prompt = "Clouds over mountains, time lapse [google:slow]"
    accepted = generate_video(account, [shot("s", prompt)])
    final, seen = wait_video(account, accepted)
    assert final["status"] == "completed"
    processing = [b["shots"][0] for b in seen if b["status"] == "processing"]
    assert processing and all(s["status"] == "processing" for s in processing)
    waiting = [s["progress"] for s in processing]
    assert any(0 < p < 100 for p in waiting), f"progress while Veo works: {waiting}"
    assert waiting == sorted(waiting)
    assert final["shots"][0]["progress"] == 100
