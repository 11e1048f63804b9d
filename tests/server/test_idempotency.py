"""``Idempotency-Key`` on both generate endpoints (docs/api.md, "Idempotent retries"), on SQLite and
PostgreSQL: concurrent retries make one generation and one debit, a replay answers the first response,
another body is refused, a refused first request is not remembered, keys are per account."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from nanogen import Client
from tests.conftest import ADMIN_TOKEN, Account, Server, assert_envelope, image_bytes, wait_for
from tests.local_http import LocalHTTPServer

IMAGE = "/api/nano-banana-2/generate"
VIDEO = "/api/veo-3/generate"
BODY = {"prompt": "A lighthouse at dusk", "aspectRatio": "16:9", "imageQuality": "1K"}
REPLAYED = "idempotent-replayed"


def new_key() -> str:
    return f"retry-{uuid.uuid4()}"


def post(account: Account, path: str, body: dict[str, Any], key: str | None) -> httpx.Response:
    with account.client() as c:
        return c.post(path, json=body, headers={"Idempotency-Key": key} if key is not None else {})


def generations(account: Account) -> int:
    with account.server.db() as db:
        row = db.execute(
            "SELECT COUNT(*) FROM nanogen_generations WHERE account_id=?", (account.id,)
        ).fetchone()
    return int(row[0])


def test_fifty_concurrent_retries_make_one_generation_and_one_debit(server: Server) -> None:
    account = server.new_account(100)
    key = new_key()

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {account.key}", "Idempotency-Key": key}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as c:
            return await asyncio.gather(*(c.post(IMAGE, json=BODY) for _ in range(50)))

    answers = asyncio.run(burst())
    accepted = [r for r in answers if r.status_code == 200]
    for r in answers:
        if r.status_code != 200:
            assert_envelope(r, 409, "IDEMPOTENCY_KEY_IN_USE")
    originals = [r for r in accepted if REPLAYED not in r.headers]
    assert len(originals) == 1, [r.headers.get(REPLAYED) for r in accepted]
    assert all(r.headers[REPLAYED] == "true" for r in accepted if r is not originals[0])
    first = originals[0].json()
    assert first["creditsUsed"] == 4 and first["status"] == "pending"
    assert all(r.json() == first for r in accepted)
    assert generations(account) == 1
    assert account.ledger_sums() == {"grant": 100, "debit": 4}
    assert account.balance() == 96

    # Once it has committed, every retry is the first response again, and nothing more is debited.
    again = post(account, IMAGE, BODY, key)
    assert again.status_code == 200 and again.headers[REPLAYED] == "true"
    assert again.json() == first
    assert generations(account) == 1 and account.balance() == 96
    account.assert_books_balance()


def test_a_replay_is_the_first_response_and_key_order_does_not_matter(server: Server) -> None:
    account = server.new_account(100)
    key = new_key()
    shots = [
        {"id": "a", "prompt": "Dawn", "generationType": "TEXT_2_VIDEO", "aspectRatio": "16:9"},
        {"id": "b", "prompt": "Dusk", "generationType": "TEXT_2_VIDEO", "aspectRatio": "16:9"},
    ]
    first = post(account, VIDEO, {"shots": shots, "resolution": "720p"}, key)
    assert first.status_code == 200, first.text
    assert REPLAYED not in first.headers
    assert first.json()["creditsUsed"] == 20
    # The same body, its keys in another order and spaced differently: the same request.
    reordered = {"resolution": "720p", "shots": [dict(reversed(list(s.items()))) for s in shots]}
    with account.client() as c:
        again = c.post(
            VIDEO,
            content=httpx.Request("POST", "/", json=reordered).content.replace(b",", b", "),
            headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        )
    assert again.status_code == 200, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert account.balance() == 80 and generations(account) == 1


def test_the_key_with_another_body_is_refused(server: Server) -> None:
    account = server.new_account(100)
    key = new_key()
    assert post(account, IMAGE, BODY, key).status_code == 200
    assert_envelope(post(account, IMAGE, BODY | {"imageQuality": "2K"}, key), 422, "IDEMPOTENCY_KEY_REUSED")
    shot = {"id": "s", "prompt": "Dawn", "generationType": "TEXT_2_VIDEO", "aspectRatio": "16:9"}
    assert_envelope(post(account, VIDEO, {"shots": [shot]}, key), 422, "IDEMPOTENCY_KEY_REUSED")
    assert account.balance() == 96 and generations(account) == 1


def test_a_refused_first_request_is_not_remembered(server: Server) -> None:
    account = server.new_account(3)  # an image costs 4
    key = new_key()
    assert_envelope(post(account, IMAGE, BODY, key), 402, "INSUFFICIENT_CREDITS")
    # An invalid body with the key: 400, and the key stays free for the valid one.
    assert_envelope(post(account, IMAGE, BODY | {"imageQuality": "8K"}, key), 400, "INVALID_PARAMETER")
    with server.client(ADMIN_TOKEN) as admin:
        assert admin.post(f"/admin/accounts/{account.id}/credits", json={"credits": 10}).status_code == 200
    retried = post(account, IMAGE, BODY, key)
    assert retried.status_code == 200, retried.text
    assert REPLAYED not in retried.headers  # a new request, not a replay of the 402
    assert account.balance() == 13 - 4 and generations(account) == 1


def test_keys_are_per_account(server: Server) -> None:
    one, two = server.new_account(100), server.new_account(100)
    key = new_key()
    a, b = post(one, IMAGE, BODY, key), post(two, IMAGE, BODY, key)
    assert a.status_code == b.status_code == 200
    assert REPLAYED not in a.headers and REPLAYED not in b.headers
    assert a.json()["generationId"] != b.json()["generationId"]
    assert one.balance() == two.balance() == 96


@pytest.mark.parametrize("value", ["", "x" * 256, "tab\there"])
def test_a_key_that_is_not_a_printable_string_of_at_most_255_characters_is_refused(
    server: Server, value: str
) -> None:
    account = server.new_account(100)
    r = post(account, IMAGE, BODY, value)
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert r.json()["field"] == "Idempotency-Key"
    assert post(account, IMAGE, BODY, "k" * 255).status_code == 200  # the longest allowed
    assert account.balance() == 96


class SlowImages:
    """An image host whose answers wait until ``release()``: a first request held in its input fetch."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.requests = 0
        host = self
        png = image_bytes((200, 40, 40))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.requests += 1
                host.gate.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/slow.png"


@pytest.fixture
def slow_images() -> Iterator[SlowImages]:
    host = SlowImages()
    yield host
    host.gate.set()
    host.httpd.shutdown()


def test_while_the_first_request_is_processed_a_retry_gets_409(
    server: Server, slow_images: SlowImages
) -> None:
    account = server.new_account(100)
    key = new_key()
    body = {"prompt": "As a watercolour", "mode": "edit", "inputImageUrls": [slow_images.url]}
    first: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: first.append(post(account, IMAGE, body, key)))
    worker.start()
    try:
        wait_for(lambda: slow_images.requests >= 1)  # the first holds the key, fetching
        assert_envelope(post(account, IMAGE, body, key), 409, "IDEMPOTENCY_KEY_IN_USE")
        assert_envelope(post(account, IMAGE, BODY, key), 422, "IDEMPOTENCY_KEY_REUSED")
        assert account.balance() == 100
    finally:
        slow_images.gate.set()
        worker.join(60)
    assert first and first[0].status_code == 200, first and first[0].text
    replay = post(account, IMAGE, body, key)
    assert replay.status_code == 200 and replay.headers[REPLAYED] == "true"
    assert replay.json() == first[0].json()
    assert slow_images.requests == 1  # the retries fetched nothing
    assert account.balance() == 96 and generations(account) == 1


def test_the_sdk_sends_idempotency_key(server: Server) -> None:
    account = server.new_account(100)
    key = new_key()
    with Client(api_key=account.key, base_url=server.base_url) as client:
        first = client.images.generate("A lighthouse at dusk", quality="2K", idempotency_key=key)
        again = client.images.generate("A lighthouse at dusk", quality="2K", idempotency_key=key)
        video = client.videos.generate(["Dawn", "Dusk"], idempotency_key=key + "-video")
        video_again = client.videos.generate(["Dawn", "Dusk"], idempotency_key=key + "-video")
    assert again.id == first.id and again.task_id == first.task_id
    assert video_again.id == video.id
    assert video_again.task_ids == video.task_ids
    assert account.balance() == 100 - 8 - 20 and generations(account) == 2


def test_the_header_is_documented_on_both_generate_operations(server: Server) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()
    for path in (IMAGE, VIDEO):
        operation = spec["paths"][path]["post"]
        headers = [p for p in operation.get("parameters", []) if p["in"] == "header"]
        assert [p["name"] for p in headers] == ["Idempotency-Key"]
        assert headers[0]["schema"]["maxLength"] == 255
        assert {"409", "422"} <= set(operation["responses"])
