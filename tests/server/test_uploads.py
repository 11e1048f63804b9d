"""``POST /api/uploads`` against a real server: raw image bodies become URLs that the generate
endpoints read from storage, never over the network (this server refuses loopback fetches)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Account, ImageHost, Server, assert_envelope, image_bytes, wait_for

UPLOAD_CAP = 64 * 1024


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No host is allowed on loopback: any network fetch of 127.0.0.1 URLs would be refused."""
    srv = Server(
        tmp_path_factory.mktemp("uploads"),
        extra_env={
            "NANOGEN_FETCH_ALLOW_HOSTS": "",
            "NANOGEN_UPLOAD_MAX_BYTES": str(UPLOAD_CAP),
            "NANOGEN_RATE_LIMIT_UPLOAD": "6/hour",
        },
    ).start()
    yield srv
    srv.stop()


def upload(account: Account, data: bytes, content_type: str = "image/png") -> httpx.Response:
    with account.client() as c:
        return c.post("/api/uploads", content=data, headers={"Content-Type": content_type})


def uploaded_url(account: Account, data: bytes, content_type: str = "image/png") -> str:
    r = upload(account, data, content_type)
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def wait_image(account: Account, generation_id: str) -> dict[str, object]:
    def done() -> dict[str, object] | None:
        with account.client() as c:
            body: dict[str, object] = c.post(
                "/api/nano-banana-2/check-status", json={"generationId": generation_id}
            ).json()
        return body if body["status"] in ("completed", "failed") else None

    result: dict[str, object] = wait_for(done)
    return result


def test_upload_answers_url_expiry_and_decoded_facts(strict: Server) -> None:
    account = strict.new_account(0)
    data = image_bytes((10, 200, 90), "JPEG", (120, 80))
    before = time.time()
    # Declared as PNG, really a JPEG: the decoded format is what counts.
    r = upload(account, data, "image/png")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["success"] is True
    assert (body["contentType"], body["width"], body["height"], body["bytes"]) == (
        "image/jpeg",
        120,
        80,
        len(data),
    )
    assert body["url"].startswith(f"{strict.base_url}/files/up/")
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert expires.tzinfo is not None and expires.utcoffset() == UTC.utcoffset(None)
    assert before + 86_400 - 5 <= expires.timestamp() <= time.time() + 86_400 + 5
    served = httpx.get(body["url"])
    assert served.status_code == 200 and served.content == data
    assert account.balance() == 0  # uploads cost nothing


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_each_accepted_format(strict: Server, fmt: str, mime: str) -> None:
    r = upload(strict.new_account(0), image_bytes((200, 30, 30), fmt), f"{mime}; charset=binary")
    assert r.status_code == 201, r.text
    assert r.json()["contentType"] == mime


def mpo_bytes(first: tuple[int, int, int], second: tuple[int, int, int]) -> bytes:
    """A JPEG with a multi-picture segment, as phones write (Pillow opens it as "MPO")."""
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), first).save(
        buffer, "MPO", save_all=True, append_images=[Image.new("RGB", (60, 40), second)]
    )
    return buffer.getvalue()


def test_an_mpo_upload_is_a_jpeg_and_edits(strict: Server) -> None:
    account = strict.new_account(100)
    data = mpo_bytes((230, 20, 20), (20, 20, 230))
    r = upload(account, data, "image/jpeg")
    assert r.status_code == 201, r.text  # was 500 INTERNAL_ERROR
    body = r.json()
    assert (body["contentType"], body["width"], body["height"], body["bytes"]) == (
        "image/jpeg",
        120,
        80,
        len(data),
    )
    assert body["url"].endswith(".jpg")
    with account.client() as c:
        g = c.post(
            "/api/nano-banana-2/generate",
            json={"prompt": "phone photo", "mode": "edit", "inputImageUrls": [body["url"]]},
        )
    assert g.status_code == 200, g.text
    result = wait_image(account, g.json()["generationId"])
    assert result["status"] == "completed", result
    pixels = np.asarray(Image.open(io.BytesIO(httpx.get(str(result["imageUrl"])).content)).convert("RGB"))
    red = (np.abs(pixels.astype(int) - (230, 20, 20)).max(axis=-1) <= 16).mean()
    assert red > 0.05  # the first picture is drawn


def test_an_edit_fetching_an_mpo_completes(server: Server, image_host: ImageHost) -> None:
    image_host.files["/phone.mpo.jpg"] = (mpo_bytes((20, 200, 20), (0, 0, 0)), "image/jpeg")
    account = server.new_account(100)
    with account.client() as c:
        g = c.post(
            "/api/nano-banana-2/generate",
            json={"prompt": "p", "mode": "edit", "inputImageUrls": [image_host.url("phone.mpo.jpg")]},
        )
    assert g.status_code == 200, g.text  # was 500 INTERNAL_ERROR
    assert wait_image(account, g.json()["generationId"])["status"] == "completed"


def test_edit_with_an_upload_reads_storage_not_the_network(strict: Server, image_host: ImageHost) -> None:
    account = strict.new_account(100)
    red, blue = image_bytes((230, 20, 20)), image_bytes((20, 20, 230), "WEBP")
    urls = [uploaded_url(account, red), uploaded_url(account, blue, "image/webp")]
    with account.client() as c:
        # The same server refuses a loopback URL that it would have to fetch.
        refused = c.post(
            "/api/nano-banana-2/generate",
            json={"prompt": "p", "mode": "edit", "inputImageUrls": [image_host.url("red.png")]},
        )
        assert_envelope(refused, 400, "INVALID_IMAGE_URL")
        hits = image_host.hits
        r = c.post(
            "/api/nano-banana-2/generate", json={"prompt": "compose", "mode": "edit", "inputImageUrls": urls}
        )
    assert r.status_code == 200, r.text
    result = wait_image(account, r.json()["generationId"])
    assert result["status"] == "completed", result
    image = Image.open(io.BytesIO(httpx.get(str(result["imageUrl"])).content))
    assert image.size == (1376, 768)
    assert image_host.hits == hits
    assert account.balance() == 96


def test_an_output_url_can_be_edited_again(strict: Server) -> None:
    account = strict.new_account(100)
    with account.client() as c:
        first = c.post("/api/nano-banana-2/generate", json={"prompt": "a lighthouse"}).json()
        output = wait_image(account, first["generationId"])
        assert output["status"] == "completed", output
        r = c.post(
            "/api/nano-banana-2/generate",
            json={"prompt": "at night", "mode": "edit", "inputImageUrls": [output["imageUrl"]]},
        )
    assert r.status_code == 200, r.text
    assert wait_image(account, r.json()["generationId"])["status"] == "completed"


def test_video_frames_from_uploads(strict: Server) -> None:
    account = strict.new_account(100)
    first, last = (
        uploaded_url(account, image_bytes((250, 250, 0))),
        uploaded_url(account, image_bytes((0, 0, 0))),
    )
    with account.client() as c:
        r = c.post(
            "/api/veo-3/generate",
            json={
                "shots": [
                    {
                        "id": "s1",
                        "prompt": "from yellow to black",
                        "generationType": "FIRST_AND_LAST_FRAMES_2_VIDEO",
                        "imageUrls": [first, last],
                    }
                ]
            },
        )
        assert r.status_code == 200, r.text
        refs = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in r.json()["shots"]]

        def done() -> dict[str, object] | None:
            body: dict[str, object] = c.post("/api/veo-3/check-status", json={"taskIds": refs}).json()
            return body if body["status"] != "processing" else None

        assert wait_for(done)["status"] == "completed"


def test_unknown_and_malformed_own_urls_are_refused_before_any_debit(strict: Server) -> None:
    account = strict.new_account(100)
    for url in (
        f"{strict.base_url}/files/up/{'A' * 24}/{int(time.time()) + 999}.png",
        f"{strict.base_url}/files/../../etc/passwd",
        f"{strict.base_url}/files/",
    ):
        with account.client() as c:
            r = c.post(
                "/api/nano-banana-2/generate", json={"prompt": "p", "mode": "edit", "inputImageUrls": [url]}
            )
        assert_envelope(r, 400, "INVALID_IMAGE_URL")
        assert r.json()["url"] == url
    assert account.balance() == 100


def test_upload_errors(strict: Server) -> None:
    account = strict.new_account(0)
    png = image_bytes((1, 2, 3))
    with strict.client() as anonymous:
        assert_envelope(
            anonymous.post("/api/uploads", content=png, headers={"Content-Type": "image/png"}),
            401,
            "LOGIN_REQUIRED",
        )
    with strict.client("ng_not-a-real-key") as bad:
        assert_envelope(
            bad.post("/api/uploads", content=png, headers={"Content-Type": "image/png"}),
            401,
            "LOGIN_REQUIRED",
        )
    assert_envelope(upload(account, png, "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_envelope(upload(account, png, "image/svg+xml"), 415, "UNSUPPORTED_MEDIA_TYPE")
    with account.client() as c:
        assert_envelope(c.post("/api/uploads", content=png), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_envelope(upload(account, b"this is text, not a picture"), 400, "INVALID_IMAGE")
    assert_envelope(upload(account, b""), 400, "INVALID_IMAGE")
    assert_envelope(upload(account, png[: len(png) // 2]), 400, "INVALID_IMAGE")


def test_size_cap_with_and_without_content_length(strict: Server) -> None:
    account = strict.new_account(0)
    big = image_bytes((9, 9, 9), "BMP", (200, 200))  # any bytes over the cap
    assert len(big) > UPLOAD_CAP
    r = upload(account, big)
    assert_envelope(r, 413, "REQUEST_TOO_LARGE")
    assert r.json()["maxBytes"] == UPLOAD_CAP

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to check up front
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    with account.client() as c:
        streamed = c.post("/api/uploads", content=chunks(), headers={"Content-Type": "image/png"})
    assert_envelope(streamed, 413, "REQUEST_TOO_LARGE")


def test_uploads_have_their_own_rate_limit(strict: Server) -> None:
    account = strict.new_account(10)
    png = image_bytes((5, 5, 5))
    for _ in range(6):
        assert upload(account, png).status_code == 201
    limited = upload(account, png)
    assert_envelope(limited, 429, "API_KEY_RATE_LIMIT_EXCEEDED")
    assert 3000 < int(limited.headers["Retry-After"]) <= 3600
    with account.client() as c:  # the generate budget is untouched
        assert c.post("/api/nano-banana-2/generate", json={"prompt": "p"}).status_code == 200
    assert upload(strict.new_account(0), png).status_code == 201  # another key, its own budget


def test_openapi_documents_uploads(strict: Server) -> None:
    operation = httpx.get(f"{strict.base_url}/openapi.json").json()["paths"]["/api/uploads"]["post"]
    assert set(operation["requestBody"]["content"]) == {"image/png", "image/jpeg", "image/webp", "image/gif"}
    assert {"201", "401", "413", "415", "429"} <= set(operation["responses"])


def test_an_expired_upload_is_refused_and_no_longer_served(tmp_path: Path) -> None:
    srv = Server(tmp_path, extra_env={"NANOGEN_UPLOAD_TTL_S": "1"}).start()
    try:
        account = srv.new_account(100)
        url = uploaded_url(account, image_bytes((1, 1, 1)))
        wait_for(lambda: httpx.get(url).status_code == 404)
        with account.client() as c:
            r = c.post(
                "/api/nano-banana-2/generate", json={"prompt": "p", "mode": "edit", "inputImageUrls": [url]}
            )
        assert_envelope(r, 400, "INVALID_IMAGE_URL")
        assert "expired" in r.json()["error"]
        assert account.balance() == 100
        assert not list((tmp_path / "outputs" / "up").glob("*/*.png"))  # deleted when refused
    finally:
        srv.stop()
