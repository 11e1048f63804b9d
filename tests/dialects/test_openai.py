"""The OpenAI-compatible dialect under /v1, with the official ``openai`` package as the client, against
a real server on SQLite and PostgreSQL: the same credits, tasks and ledger as the native routes."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from PIL import Image

from tests.conftest import ROOT, Account, Server, image_bytes, wait_for

# openai's videos.* warn that OpenAI's own video service shuts down; this server is not it.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(100)


def _client(server: Server, key: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, **options)


def _png(colour: tuple[int, int, int]) -> tuple[str, bytes, str]:
    return ("in.png", image_bytes(colour), "image/png")


def _debits(account: Account) -> int:
    return account.ledger_sums().get("debit", 0)


def _refunds(account: Account) -> int:
    return account.ledger_sums().get("refund", 0)


def test_generate_b64_json_and_url_charge_the_catalogue_price(server: Server, account: Account) -> None:
    client = _client(server, account.key)
    raw = client.images.with_raw_response.generate(model="nano-banana-2", prompt="a lighthouse")
    result = raw.parse()
    picture = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json or "")))
    assert picture.size == (1376, 768) and result.size == "1376x768" and result.output_format == "png"
    assert account.balance() == 96  # 1K: 4 credits

    # size 1024x1536: portrait; quality medium: 2K (8 credits); the file at its nanogen URL
    second = client.images.generate(
        prompt="a tower", size="1024x1536", quality="medium", response_format="url"
    )
    assert second.size == "1536x2752" and second.data[0].url
    assert second.data[0].url.startswith(f"{server.base_url}/files/")
    fetched = httpx2.get(second.data[0].url)
    assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (1536, 2752)
    assert account.balance() == 88 and _debits(account) == 12
    account.assert_books_balance()

    # the /v1 generation is a native one: the native check-status answers for it
    generation_id = raw.headers["x-nanogen-generation-id"]
    with account.client() as native:
        status = native.post("/api/nano-banana-2/check-status", json={"generationId": generation_id}).json()
    assert status["status"] == "completed" and status["imageUrl"].startswith(f"{server.base_url}/files/")


def test_edits_take_one_or_several_uploaded_images(server: Server, account: Account) -> None:
    client = _client(server, account.key)
    one = client.images.with_raw_response.edit(image=_png((200, 0, 0)), prompt="make it blue", quality="low")
    assert one.parse().data[0].b64_json
    several = client.images.with_raw_response.edit(
        image=[
            _png((200, 0, 0)),
            _png((0, 200, 0)),
            ("c.jpg", image_bytes((0, 0, 200), "JPEG"), "image/jpeg"),
        ],
        prompt="a collage",
        size="1024x768",
    )
    assert several.parse().size == "1200x896"  # 4:3 at 1K
    assert account.balance() == 92
    with server.db() as db:
        for raw, count in ((one, 1), (several, 3)):
            generation_id = raw.headers["x-nanogen-generation-id"]
            params = db.execute("SELECT params FROM nanogen_tasks WHERE generation_id=?", (generation_id,))
            value = params.fetchone()[0]
            stored = value if isinstance(value, dict) else json.loads(value)
            assert stored["mode"] == "edit" and len(stored["inputs"]) == count
            assert all(item["key"].startswith("in/") for item in stored["inputs"])


def test_refusals_are_openai_errors_and_cost_nothing(server: Server, account: Account) -> None:
    client = _client(server, account.key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        _client(server, "ng_not-a-key").images.generate(prompt="x")
    assert denied.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as square:
        client.images.generate(prompt="x", size="1024x1024")
    assert square.value.param == "size" and square.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as many:
        client.images.generate(prompt="x", n=2)
    assert many.value.param == "n"
    with pytest.raises(openai.BadRequestError) as not_an_image:
        client.images.edit(image=("x.png", b"not an image", "image/png"), prompt="x")
    assert not_an_image.value.code == "invalid_image"
    with pytest.raises(openai.BadRequestError) as seconds:
        client.videos.create(prompt="x", seconds="4")
    assert seconds.value.param == "seconds"
    with pytest.raises(openai.BadRequestError):
        client.videos.create(prompt="x", size="1792x1024")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("gen_nope")
    unknown = httpx2.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {account.key}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["message"].startswith("Invalid URL")
    assert account.balance() == 100 and _debits(account) == 0


def test_insufficient_credits_is_429_insufficient_quota_and_the_sdk_does_not_retry(server: Server) -> None:
    poor = server.new_account(3)
    sent: list[str] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    client = _client(server, poor.key, http_client=http)  # the SDK's default: 2 retries
    with pytest.raises(openai.RateLimitError) as short:
        client.images.generate(prompt="x")
    assert short.value.code == "insufficient_quota" and short.value.type == "insufficient_quota"
    assert short.value.response.headers["x-should-retry"] == "false"
    assert sent == ["/v1/images/generations"]
    with pytest.raises(openai.RateLimitError):
        client.videos.create(prompt="x")
    assert poor.balance() == 3 and _debits(poor) == 0


def test_a_failed_image_is_refunded_and_not_retried(server: Server, account: Account) -> None:
    sent: list[str] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    with pytest.raises(openai.InternalServerError) as failed:
        _client(server, account.key, http_client=http).images.generate(prompt="[sandbox:fail] x")
    assert failed.value.code == "generation_failed" and len(sent) == 1
    assert _debits(account) == 4 and _refunds(account) == 4 and account.balance() == 100


def _completed(client: openai.OpenAI, video_id: str) -> Any:
    return wait_for(lambda: (v := client.videos.retrieve(video_id)).status in ("completed", "failed") and v)


def test_video_create_retrieve_list_content_delete(server: Server, account: Account) -> None:
    client = _client(server, account.key)
    video = client.videos.create(model="veo-3.1", prompt="waves", size="1280x720", seconds="8")
    assert video.object == "video" and video.id.startswith("gen_") and video.seconds == "8"
    assert video.status in ("queued", "in_progress", "completed") and video.size == "1280x720"
    assert account.balance() == 90  # 720p: 10 credits
    done = _completed(client, video.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at

    mp4 = client.videos.download_content(video.id).content
    assert mp4[4:8] == b"ftyp"
    thumbnail = client.videos.download_content(video.id, variant="thumbnail").content
    assert Image.open(io.BytesIO(thumbnail)).size == (1280, 720)

    # the native check-status answers for the /v1 video (its id is the generationId)
    with account.client() as native:
        status = native.post("/api/veo-3/check-status", json={"generationId": video.id}).json()
    assert status["status"] == "completed" and status["shots"][0]["videoUrl"]

    assert [v.id for v in client.videos.list()] == [video.id]
    deleted = client.videos.delete(video.id)
    assert deleted.deleted is True and deleted.object == "video.deleted" and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert httpx2.get(status["shots"][0]["videoUrl"]).status_code == 410  # the file is gone
    assert list(client.videos.list()) == []
    assert account.balance() == 90 and _refunds(account) == 0


def test_a_first_frame_video_and_a_failed_one_refunded(server: Server, account: Account) -> None:
    client = _client(server, account.key)
    framed = client.videos.create(prompt="from this", size="720x1280", input_reference=_png((9, 99, 199)))
    failed = client.videos.create(prompt="[sandbox:fail] no", size="1920x1080")
    assert _completed(client, framed.id).size == "720x1280"
    gone = _completed(client, failed.id)
    assert gone.status == "failed" and gone.error is not None and gone.error.message
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content(failed.id)
    assert _debits(account) == 24 and _refunds(account) == 14 and account.balance() == 90
    account.assert_books_balance()


def test_list_pages_with_a_cursor_and_shows_native_videos(server: Server, account: Account) -> None:
    client = _client(server, account.key)
    made = [client.videos.create(prompt=f"clip {i}").id for i in range(2)]
    with account.client() as native:
        shot = {"id": "s1", "prompt": "native", "generationType": "TEXT_2_VIDEO"}
        made.append(native.post("/api/veo-3/generate", json={"shots": [shot]}).json()["generationId"])
    page = client.videos.list(limit=2)
    assert [v.id for v in page.data] == made[::-1][:2] and page.has_more
    assert [v.id for v in client.videos.list(limit=2)] == made[::-1]  # the SDK follows the cursor
    assert [v.id for v in client.videos.list(order="asc", limit=1)] == made
    assert _completed(client, made[2]).model == "veo-3.1"


def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("\n## OpenAI-compatible API (/v1)\n", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


@pytest.fixture
def sdk_environment(server: Server, account: Account, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", account.key)
    yield


def test_the_docs_sdk_examples_run_as_printed(
    server: Server, account: Account, sdk_environment: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = _doc_examples()
    assert len(examples) >= 2
    monkeypatch.chdir(tmp_path)
    for example in examples:
        exec(compile(example, "docs/api.md", "exec"), {})
    assert Image.open(tmp_path / "lighthouse.png").size == (1376, 768)
    assert (tmp_path / "waves.mp4").read_bytes()[4:8] == b"ftyp"
    assert account.balance() < 100


def test_the_generate_budget_is_shared_with_the_native_api(tmp_path: Any) -> None:
    server = Server(tmp_path, extra_env={"NANOGEN_RATE_LIMIT_GENERATE": "2/hour"}).start()
    try:
        account = server.new_account(100)
        with account.client() as native:
            assert native.post("/api/nano-banana-2/generate", json={"prompt": "native"}).status_code == 200
        client = _client(server, account.key, max_retries=0)
        client.images.generate(prompt="the second of two")
        with pytest.raises(openai.RateLimitError) as limited:
            client.videos.create(prompt="a third")
        assert limited.value.code == "rate_limit_exceeded" and limited.value.type == "requests"
        assert int(limited.value.response.headers["retry-after"]) > 0
        assert account.balance() == 92
    finally:
        server.stop()
