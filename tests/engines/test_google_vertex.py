"""The Google engine in Vertex AI mode: application default credentials (a service account whose token
endpoint is the fake), the SDK's Vertex paths for images and Veo, videos returned inline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import Account, ImageHost, Server, nanogen_cli
from tests.engines.google_support import (
    download,
    generate_image,
    generate_video,
    google_server,
    open_png,
    probe,
    shot,
    wait_image,
    wait_video,
)
from tests.fakes.google_server import PROJECT, FakeGoogle, b64decode, inline_parts

VERTEX_MODELS = f"/v1beta1/projects/{PROJECT}/locations/{{location}}/publishers/google/models/{{model}}"


@pytest.fixture(scope="module")
def credentials(fake: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.service_account_file(tmp_path_factory.mktemp("adc") / "service-account.json")


@pytest.fixture(scope="module")
def server(fake: FakeGoogle, credentials: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("google-vertex")
    with google_server(home, fake, "vertex", GOOGLE_APPLICATION_CREDENTIALS=str(credentials)) as server:
        yield server


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(1000)


def test_image_edit_on_vertex(
    fake: FakeGoogle, server: Server, account: Account, image_host: ImageHost
) -> None:
    prompt = "Turn this into a pencil sketch"
    accepted = generate_image(
        account,
        {
            "prompt": prompt,
            "mode": "edit",
            "aspectRatio": "4:3",
            "inputImageUrls": [image_host.url("blue.png")],
        },
    )
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "completed", final
    assert open_png(download(account, final["imageUrl"], server)).size == (1200, 896)

    [sent] = fake.requests_for(prompt, ":generateContent")
    assert sent.path == VERTEX_MODELS.format(location="global", model="gemini-3.1-flash-image-preview") + (
        ":generateContent"
    )
    token = sent.headers["authorization"].removeprefix("Bearer ")
    assert token in fake.tokens, "an access token from the service account's token endpoint"
    assert "x-goog-api-key" not in sent.headers
    assert sent.body["generationConfig"]["imageConfig"] == {"aspectRatio": "4:3", "imageSize": "1K"}
    [(data, mime_type)] = inline_parts(sent.body["contents"][0]["parts"])
    assert (data, mime_type) == (image_host.files["/blue.png"][0], "image/png")


def test_reference_video_on_vertex(
    fake: FakeGoogle, server: Server, account: Account, image_host: ImageHost, tmp_path: Path
) -> None:
    prompt = "The character walks through a magical forest"
    urls = [image_host.url("red.png"), image_host.url("demo.webp")]
    accepted = generate_video(account, [shot("s", prompt, "REFERENCE_2_VIDEO", imageUrls=urls)])
    final, _ = wait_video(account, accepted)
    assert final["status"] == "completed", final
    clip = probe(download(account, final["shots"][0]["videoUrl"], server), tmp_path)
    assert (clip.width, clip.height, clip.codec) == (1280, 720, "h264")

    base = VERTEX_MODELS.format(location="us-central1", model="veo-3.1-generate-001")
    [sent] = fake.requests_for(prompt, ":predictLongRunning")
    assert sent.path == f"{base}:predictLongRunning"
    instance = sent.body["instances"][0]
    assert instance["prompt"] == prompt
    references = instance["referenceImages"]
    assert [r["referenceType"] for r in references] == ["ASSET", "ASSET"]
    assert [b64decode(r["image"]["bytesBase64Encoded"]) for r in references] == [
        image_host.files["/red.png"][0],
        image_host.files["/demo.webp"][0],
    ]
    assert sent.body["parameters"] == {
        "aspectRatio": "16:9",
        "resolution": "720p",
        "durationSeconds": 8,
        "sampleCount": 1,
    }
    [operation] = fake.operations_for(prompt)
    polls = fake.requests_to(r":fetchPredictOperation$")
    assert {r.body["operationName"] for r in polls if r.body["operationName"] == operation.name}
    assert all(r.path == f"{base}:fetchPredictOperation" for r in polls)


def test_filtered_video_on_vertex_is_refunded(fake: FakeGoogle, account: Account) -> None:
    accepted = generate_video(account, [shot("s", "Something against the rules [google:filtered]")])
    final, _ = wait_video(account, accepted)
    assert final["shots"][0]["error"].startswith("Google blocked the video (responsible AI filter)")
    assert account.balance() == 1000


def test_doctor_in_vertex_mode(fake: FakeGoogle, server: Server, credentials: Path) -> None:
    result = nanogen_cli("doctor", env=server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "application default credentials work" in result.stdout
    assert f"nanogen@{PROJECT}.iam.gserviceaccount.com" in result.stdout
    assert "veo-3.1-generate-001 answers" in result.stdout

    no_adc = server.env | {"GOOGLE_APPLICATION_CREDENTIALS": str(credentials.parent / "missing.json")}
    result = nanogen_cli("doctor", env=no_adc)
    assert result.returncode == 1
    assert "no usable application default credentials" in result.stdout
