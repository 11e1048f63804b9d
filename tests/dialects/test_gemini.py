"""The Gemini-compatible dialect (/v1beta), with Google's own SDK and nanogen's own Google engine as the
clients, on SQLite and PostgreSQL (the session ``server``): images held until made, Veo operations, the
same credits as the native endpoints, Google's error shape and statuses, proto3 JSON spellings, and the
examples of docs/api.md run as printed."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from PIL import Image

from nanogen.engines.google.calls import ProviderError
from tests.conftest import OUTCOME_WAIT_S, ROOT, Account, ImageHost, Server, image_bytes, wait_for

IMAGE_MODEL = "gemini-3.1-flash-image-preview"
VIDEO_MODEL = "veo-3.1-generate-preview"
RED = image_bytes((230, 20, 20))


def sdk(server: Server, key: str) -> genai.Client:
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta")
    )


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def google_error(r: httpx.Response, code: int, status: str, reason: str | None = None) -> dict[str, Any]:
    assert r.status_code == code, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code and error["status"] == status and error["message"], error
    if reason is not None:
        assert reason in [d.get("reason") for d in error.get("details", [])], error
    return error


def reasons(exc: genai_errors.APIError) -> list[str]:
    details = exc.details.get("error", {}).get("details", []) if isinstance(exc.details, dict) else []
    return [d.get("reason") for d in details]


def native_image_status(account: Account, generation_id: str) -> dict[str, Any]:
    with account.client() as c:
        r = c.post("/api/nano-banana-2/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- images ----------------------------------------------------------------------------------------------
def test_sdk_generate_content_generates_and_edits_for_the_native_price(server: Server) -> None:
    account = server.new_account(20)
    client = sdk(server, account.key)
    made = client.models.generate_content(
        model=IMAGE_MODEL,
        contents="A lighthouse at dusk",
        config=types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
        ),
    )
    candidate = made.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    assert png_size(candidate.content.parts[0].inline_data.data) == (2752, 1536)
    assert made.usage_metadata.candidates_token_count == 1680
    assert account.balance() == 12  # 8 credits, as /api/nano-banana-2/generate charges for 2K
    native = native_image_status(account, made.response_id)
    assert native["status"] == "completed" and native["imageUrl"].startswith(server.base_url + "/files/")

    # Edit: an inline image (the SDK sends it URL-safe base64, snake_case mime_type) and Google Search.
    edited = client.models.generate_content(
        model="gemini-3-pro-image-preview",
        contents=[types.Part.from_bytes(data=RED, mime_type="image/png"), "Make it a poster"],
        config=types.GenerateContentConfig(
            image_config=types.ImageConfig(aspect_ratio="3:4"),
            tools=[types.Tool(google_search=types.GoogleSearch())],
        ),
    )
    assert png_size(edited.candidates[0].content.parts[0].inline_data.data) == (896, 1200)
    assert account.balance() == 8
    account.assert_books_balance()


def test_proto3_spellings_and_both_base64_alphabets_with_key_in_the_query(server: Server) -> None:
    account = server.new_account(8)
    picture = image_bytes((250, 250, 250), size=(40, 30))
    standard = base64.b64encode(picture).decode()
    assert set(standard) & {"+", "/"}, "the picture's standard base64 must differ from URL-safe"
    bodies = [
        {  # snake_case, URL-safe alphabet, no padding
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "Frame it"},
                        {
                            "inline_data": {
                                "mime_type": "image/png",
                                "data": standard.translate(str.maketrans("+/", "-_")).rstrip("="),
                            }
                        },
                    ],
                }
            ],
            "generation_config": {"image_config": {"aspect_ratio": "4:3", "image_size": "1K"}},
        },
        {  # lowerCamel, standard alphabet, padded
            "contents": [
                {"parts": [{"text": "Frame it"}, {"inlineData": {"mimeType": "image/png", "data": standard}}]}
            ],
            "generationConfig": {"imageConfig": {"aspectRatio": "4:3", "imageSize": "1K"}},
        },
    ]
    for body in bodies:
        r = httpx.post(
            f"{server.base_url}/v1beta/models/{IMAGE_MODEL}:generateContent",
            params={"key": account.key},
            json=body,
            timeout=OUTCOME_WAIT_S,
        )
        assert r.status_code == 200, r.text
        data = r.json()["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
        assert png_size(base64.b64decode(data)) == (1200, 896)
    assert account.balance() == 0
    account.assert_books_balance()


def test_google_error_statuses(server: Server) -> None:
    url = f"{server.base_url}/v1beta/models/{IMAGE_MODEL}:generateContent"
    prompt = {"contents": [{"parts": [{"text": "A cat"}]}]}
    google_error(httpx.post(url, json=prompt), 403, "PERMISSION_DENIED")
    stranger = sdk(server, "ng_not-a-key")  # held: a client collected mid-call closes its connection
    with pytest.raises(genai_errors.ClientError) as wrong:
        stranger.models.generate_content(model=IMAGE_MODEL, contents="A cat")
    assert (wrong.value.code, wrong.value.status) == (400, "INVALID_ARGUMENT")
    assert "API_KEY_INVALID" in reasons(wrong.value)

    poor = server.new_account(3)
    poor_client = sdk(server, poor.key)
    with pytest.raises(genai_errors.ClientError) as short:
        poor_client.models.generate_content(model=IMAGE_MODEL, contents="A cat")
    assert (short.value.code, short.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "INSUFFICIENT_CREDITS" in reasons(short.value)
    assert poor.balance() == 3 and "debit" not in poor.ledger_sums()

    funded = server.new_account(10)  # the balance is checked before inputs are read (as natively)
    key = {"x-goog-api-key": funded.key}
    google_error(
        httpx.post(url.replace(IMAGE_MODEL, "gemini-9-ultra"), json=prompt, headers=key), 404, "NOT_FOUND"
    )
    bad_ratio = {**prompt, "generationConfig": {"imageConfig": {"aspectRatio": "21:9"}}}
    google_error(httpx.post(url, json=bad_ratio, headers=key), 400, "INVALID_ARGUMENT")
    not_image = {
        "contents": [
            {"parts": [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}}]}
        ]
    }
    google_error(httpx.post(url, json=not_image, headers=key), 400, "INVALID_ARGUMENT")
    google_error(httpx.post(url, content=b"{not json", headers=key), 400, "INVALID_ARGUMENT")
    empty_prompt = {"contents": [{"parts": [{"text": "  "}]}]}
    google_error(httpx.post(url, json=empty_prompt, headers=key), 400, "INVALID_ARGUMENT", "INVALID_PROMPT")
    google_error(httpx.get(f"{server.base_url}/v1beta/nothing/here", headers=key), 404, "NOT_FOUND")
    assert poor.balance() == 3 and funded.balance() == 10


def test_a_failed_image_is_a_candidate_without_content_and_refunded(server: Server) -> None:
    account = server.new_account(4)
    client = sdk(server, account.key)
    made = client.models.generate_content(model=IMAGE_MODEL, contents="A cat [sandbox:fail]")
    candidate = made.candidates[0]
    assert candidate.content is None and candidate.finish_reason == types.FinishReason.IMAGE_OTHER
    assert account.balance() == 4
    raw = httpx.post(
        f"{server.base_url}/v1beta/models/{IMAGE_MODEL}:generateContent",
        headers={"x-goog-api-key": account.key},
        json={"contents": [{"parts": [{"text": "A dog [sandbox:fail]"}]}]},
        timeout=OUTCOME_WAIT_S,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["candidates"][0]["finishMessage"]  # the task's error
    account.assert_books_balance()


# -- Veo -------------------------------------------------------------------------------------------------
def predict(server: Server, key: str, body: dict[str, Any], model: str = VIDEO_MODEL) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1beta/models/{model}:predictLongRunning",
        headers={"x-goog-api-key": key},
        json=body,
        timeout=30,
    )


def finished(client: genai.Client, name: str) -> types.GenerateVideosOperation:
    def poll() -> types.GenerateVideosOperation | None:
        operation = client.operations.get(types.GenerateVideosOperation(name=name))
        return operation if operation.done else None

    done: types.GenerateVideosOperation = wait_for(poll, interval=0.2)
    return done


def test_veo_operation_with_a_first_frame_polled_with_the_sdk(server: Server, tmp_path: Path) -> None:
    account = server.new_account(25)
    frame = base64.b64encode(RED).decode()
    r = predict(
        server,
        account.key,
        {
            "instances": [
                {
                    "prompt": "The red card flies away",
                    "image": {"bytesBase64Encoded": frame, "mimeType": "image/png"},
                }
            ],
            "parameters": {"aspectRatio": "9:16", "resolution": "720p", "durationSeconds": 8},
        },
    )
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    assert re.fullmatch(rf"models/{VIDEO_MODEL}/operations/gen_[0-9a-f]+", name)
    assert account.balance() == 15  # one 720p shot: 10 credits
    client = sdk(server, account.key)
    operation = finished(client, name)
    uri = operation.result.generated_videos[0].video.uri
    assert uri.startswith(server.base_url + "/files/")
    video = httpx.get(uri, timeout=30)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    from tests.engines.google_support import probe

    clip = probe(video.content, tmp_path)
    assert (clip.width, clip.height) == (720, 1280)
    # The same generation through the native check-status.
    with account.client() as c:
        native = c.post("/api/veo-3/check-status", json={"generationId": name.rpartition("/")[2]}).json()
    assert native["status"] == "completed" and native["shots"][0]["videoUrl"] == uri

    # A failed shot: the operation ends with an error, and the credits come back.
    failed = predict(server, account.key, {"instances": [{"prompt": "Nothing [sandbox:fail]"}]})
    assert failed.status_code == 200, failed.text
    ended = finished(client, failed.json()["name"])
    assert ended.error and ended.error["message"]
    assert account.balance() == 15
    # Someone else's operation is not found; bad parameters are refused before any debit.
    stranger = server.new_account(10)
    google_error(
        httpx.get(f"{server.base_url}/v1beta/{name}", params={"key": stranger.key}), 404, "NOT_FOUND"
    )
    six = predict(
        server, stranger.key, {"instances": [{"prompt": "x"}], "parameters": {"durationSeconds": 6}}
    )
    google_error(six, 400, "INVALID_ARGUMENT")
    short = predict(
        server, stranger.key, {"instances": [{"prompt": "x"}], "parameters": {"resolution": "1080p"}}
    )
    google_error(short, 429, "RESOURCE_EXHAUSTED", "INSUFFICIENT_CREDITS")
    assert stranger.balance() == 10
    account.assert_books_balance()


# -- nanogen's own Google engine, pointed at this server's /v1beta --------------------------------------
@pytest.fixture
def downstream(server: Server, tmp_path: Path) -> Iterator[tuple[Server, Account]]:
    upstream_account = server.new_account(18)  # one 1K image, one 1K edit, one 720p shot
    env = {
        "NANOGEN_ENGINE_IMAGES": "google",
        "NANOGEN_ENGINE_VIDEOS": "google",
        "NANOGEN_GOOGLE_MODE": "gemini",
        "NANOGEN_GOOGLE_BASE_URL": server.base_url,
        "NANOGEN_GOOGLE_API_KEY": upstream_account.key,
        "NANOGEN_GOOGLE_POLL_INTERVAL_S": "0.1",
        "NANOGEN_GOOGLE_RETRY_BASE_S": "0.05",
        "NANOGEN_GOOGLE_RETRY_MAX_S": "0.5",
    }
    other = Server(tmp_path / "downstream", extra_env=env).start()
    try:
        yield other, upstream_account
    finally:
        other.stop()


def test_nanogens_google_engine_completes_images_and_videos_through_v1beta(
    downstream: tuple[Server, Account], image_host: ImageHost
) -> None:
    from tests.engines.google_support import (
        download,
        generate_image,
        generate_video,
        open_png,
        shot,
        wait_image,
        wait_video,
    )

    other, upstream = downstream
    user = other.new_account(100)
    image, _ = wait_image(
        user, generate_image(user, {"prompt": "A quiet harbour", "aspectRatio": "9:16"})["generationId"]
    )
    assert image["status"] == "completed", image
    assert open_png(download(user, image["imageUrl"], other)).size == (768, 1376)
    edit = generate_image(user, {"prompt": "Add a moon", "inputImageUrls": [image_host.url("red.png")]})
    edited, _ = wait_image(user, edit["generationId"])
    assert edited["status"] == "completed", edited
    video, _ = wait_video(user, generate_video(user, [shot("s1", "Gulls over the harbour")]))
    assert video["status"] == "completed", video
    assert download(user, video["shots"][0]["videoUrl"], other)[4:8] == b"ftyp"
    assert upstream.balance() == 0  # 4 + 4 + 10: the upstream charged its catalogue's prices
    upstream.assert_books_balance()

    # The upstream account is now short: its 429 INSUFFICIENT_CREDITS is final, not retried until the
    # deadline (600 s): the task fails at once, refunded downstream, nothing debited upstream.
    before = user.balance()
    poor, _ = wait_image(user, generate_image(user, {"prompt": "One more"})["generationId"])
    assert poor["status"] == "failed" and "INSUFFICIENT_CREDITS" in poor["error"], poor
    assert user.balance() == before
    assert upstream.balance() == 0 and upstream.ledger_sums().get("debit") == 18


def test_insufficient_credits_is_final_for_the_google_engine() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Insufficient credits",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INSUFFICIENT_CREDITS"}
            ],
        }
    }
    assert not ProviderError.from_body(429, body).retryable
    quota = {"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}
    assert ProviderError.from_body(429, quota).retryable


# -- docs/api.md's examples, as printed ------------------------------------------------------------------
def _section_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Gemini-compatible API (/v1beta)", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def test_docs_examples_run_as_printed(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = server.new_account(8 + 4 + 10)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOGEN_API_KEY", account.key)
    monkeypatch.setenv("NANOGEN_BASE_URL", server.base_url)
    image_example, video_example = _section_blocks("python")
    exec(compile(image_example, "docs/api.md (SDK image)", "exec"), {})
    assert png_size((tmp_path / "lighthouse.png").read_bytes()) == (2752, 1536)
    (curl,) = _section_blocks("bash")
    env = {**os.environ, "KEY": account.key, "URL": server.base_url}
    subprocess.run(["bash", "-euo", "pipefail", "-c", curl], env=env, check=True, timeout=60)
    answer = httpx.Response(200, content=(tmp_path / "answer.json").read_bytes()).json()
    data = answer["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
    assert png_size(base64.b64decode(data)) == (1200, 896)
    exec(compile(video_example, "docs/api.md (Veo)", "exec"), {})
    assert (tmp_path / "waves.mp4").read_bytes()[4:8] == b"ftyp"
    assert account.balance() == 0
