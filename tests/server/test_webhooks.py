"""Signed webhooks (docs/api.md, "Webhooks"), end to end over real HTTP: a ``nanogen serve`` process and a
receiver server that verifies every delivery with the ``standardwebhooks`` package, as a user's would.

The module's server retries on a short schedule (0.2, 0.2, 0.2, 0.5 s) and gives a receiver 1 s, so
the retry and timeout paths run in seconds; the restart test has a server of its own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook, WebhookVerificationError

from nanogen.client import Client
from tests.conftest import Account, Server, assert_envelope, nanogen_cli, wait_for
from tests.server.webhook_receiver import HANG, REFUSE_UNTIL_RELEASED, Receiver

IMAGE = "/api/nano-banana-2"
VIDEO = "/api/veo-3"
TIMEOUT_S = 1.0
SCHEDULE = "0.2,0.2,0.2,0.5"  # four retries: five attempts in all
METRICS_TOKEN = "metrics-token-for-the-webhook-tests"
SETTINGS = {
    "NANOGEN_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
    "NANOGEN_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
    "NANOGEN_METRICS_TOKEN": METRICS_TOKEN,
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver(hang_s=TIMEOUT_S + 2)
    yield found
    found.close()


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("webhooks"), extra_env=SETTINGS).start()
    yield server
    server.stop()


@pytest.fixture
def account(hooked: Server) -> Account:
    return hooked.new_account(1000)


def _secret(c: httpx.Client) -> str:
    r = c.get("/api/account/webhook-secret")
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    assert secret.startswith("whsec_")
    return secret


def _image(c: httpx.Client, prompt: str = "a lighthouse", **extra: Any) -> str:
    r = c.post(f"{IMAGE}/generate", json={"prompt": prompt, "imageQuality": "1K", **extra})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _video(c: httpx.Client, prompts: list[str], **extra: Any) -> str:
    shots = [{"id": f"s{i}", "prompt": p, "generationType": "TEXT_2_VIDEO"} for i, p in enumerate(prompts)]
    r = c.post(f"{VIDEO}/generate", json={"shots": shots, **extra})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def _image_status(c: httpx.Client, generation_id: str) -> dict[str, Any]:
    r = c.post(f"{IMAGE}/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _video_status(c: httpx.Client, generation_id: str) -> dict[str, Any]:
    r = c.post(f"{VIDEO}/check-status", json={"generationId": generation_id})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _deliveries(c: httpx.Client, **params: Any) -> dict[str, Any]:
    r = c.get("/api/account/webhook-deliveries", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _delivery(c: httpx.Client, webhook_id: str) -> dict[str, Any]:
    found = [d for d in _deliveries(c, limit=100)["data"] if d["id"] == webhook_id]
    assert len(found) == 1, found
    return found[0]


def _ended_at(server: Server, generation_id: str) -> float:
    """When the generation's last task or its concatenation settled (the event's own timestamp)."""
    with server.db() as db:
        row = db.execute(
            "SELECT created_at FROM nanogen_webhook_deliveries WHERE generation_id=?", (generation_id,)
        ).fetchone()
    return float(row[0])


def test_an_image_completed_is_delivered_signed_with_the_check_status_answer(
    hooked: Server, account: Account, receiver: Receiver
) -> None:
    url = receiver.url()
    with account.client() as c:
        secret = _secret(c)
        generation_id = _image(c, webhookUrl=url)
        [delivery] = wait_for(lambda: receiver.at(url))
        event = delivery.verify(secret)
        assert event["type"] == "image.completed"
        assert event["data"] == _image_status(c, generation_id)
        assert event["data"]["status"] == "completed" and event["data"]["imageUrl"]
        assert event["timestamp"].endswith("Z")
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.webhook_id.startswith("msg_")
        assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 60
        listed = wait_for(lambda: (d := _delivery(c, delivery.webhook_id))["state"] == "delivered" and d)
        assert listed | {"createdAt": None, "lastAttemptAt": None, "endedAt": None} == {
            "id": delivery.webhook_id,
            "type": "image.completed",
            "generationId": generation_id,
            "url": url,
            "state": "delivered",
            "attempts": 1,
            "lastStatusCode": 200,
            "lastError": None,
            "createdAt": None,
            "lastAttemptAt": None,
            "nextAttemptAt": None,
            "endedAt": None,
        }
    # The goal is delivery within 1 s of the end; measured here, not asserted (a loaded machine is slower).
    print(
        f"webhook latency: {delivery.at - _ended_at(hooked, generation_id):.3f} s after the generation ended"
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(delivery.body + b" ", delivery.headers)


def test_a_two_shot_video_is_delivered_once_joined(account: Account, receiver: Receiver) -> None:
    url = receiver.url()
    with account.client() as c:
        secret = _secret(c)
        generation_id = _video(c, ["a city at dawn", "steam rising from a cup"], webhookUrl=url)
        [delivery] = wait_for(lambda: receiver.at(url))
        event = delivery.verify(secret)
        assert event["type"] == "video.completed"
        assert event["data"] == _video_status(c, generation_id)
        assert event["data"]["concatenatedVideoUrl"]
        assert [s["status"] for s in event["data"]["shots"]] == ["completed", "completed"]


def test_failed_generations_give_failed_events(account: Account, receiver: Receiver) -> None:
    image_url, video_url = receiver.url(), receiver.url()
    with account.client() as c:
        secret = _secret(c)
        image_id = _image(c, "[sandbox:fail] a lighthouse", webhookUrl=image_url)
        video_id = _video(c, ["a city", "[sandbox:fail] a cup"], webhookUrl=video_url)
        [image] = wait_for(lambda: receiver.at(image_url))
        [video] = wait_for(lambda: receiver.at(video_url))
        image_event, video_event = image.verify(secret), video.verify(secret)
        assert image_event["type"] == "image.failed"
        assert image_event["data"] == _image_status(c, image_id)
        assert image_event["data"]["status"] == "failed" and image_event["data"]["error"]
        assert video_event["type"] == "video.failed"
        assert video_event["data"] == _video_status(c, video_id)
        assert [s["status"] for s in video_event["data"]["shots"]] == ["completed", "failed"]
    account.assert_books_balance()


def test_a_receiver_that_fails_three_times_gets_the_event_on_the_fourth_attempt(
    account: Account, receiver: Receiver
) -> None:
    url = receiver.url(500, 503, 404)
    with account.client() as c:
        secret = _secret(c)
        _image(c, webhookUrl=url)
        attempts = wait_for(lambda: (found := receiver.at(url)) and found[-1].answered == 200 and found)
        assert [a.answered for a in attempts] == [500, 503, 404, 200]
        assert len({a.webhook_id for a in attempts}) == 1  # one event, one id
        assert len({a.body for a in attempts}) == 1
        for attempt in attempts:  # each attempt signed afresh, each valid
            attempt.verify(secret)
        listed = wait_for(lambda: (d := _delivery(c, attempts[0].webhook_id))["state"] == "delivered" and d)
        assert (listed["attempts"], listed["lastStatusCode"]) == (4, 200)


def test_a_receiver_that_hangs_times_out_and_is_retried(account: Account, receiver: Receiver) -> None:
    url = receiver.url(HANG)
    with account.client() as c:
        _image(c, webhookUrl=url)
        attempts = wait_for(lambda: len(found := receiver.at(url)) >= 2 and found)
        assert [a.answered for a in attempts] == [HANG, 200]
        assert attempts[0].webhook_id == attempts[1].webhook_id
        listed = wait_for(lambda: (d := _delivery(c, attempts[0].webhook_id))["state"] == "delivered" and d)
        assert listed["attempts"] == 2
        # The first attempt was given up at the timeout, not when the receiver finally answered.
        assert attempts[1].at - attempts[0].at < TIMEOUT_S + 2


def test_a_delivery_that_never_succeeds_is_marked_failed_after_the_schedule(
    account: Account, receiver: Receiver
) -> None:
    url = receiver.url(*([500] * 10))
    with account.client() as c:
        _image(c, webhookUrl=url)
        webhook_id = wait_for(lambda: receiver.at(url))[0].webhook_id
        listed = wait_for(lambda: (d := _delivery(c, webhook_id))["state"] == "failed" and d)
        assert (listed["attempts"], listed["lastStatusCode"], listed["lastError"]) == (5, 500, "HTTP 500")
        assert listed["endedAt"] and listed["nextAttemptAt"] is None
        assert len(receiver.at(url)) == 5
    counted = _metrics(account.server)
    assert counted[("nanogen_webhook_deliveries_total", "failed")] >= 1
    assert counted[("nanogen_webhook_attempts_total", "http_error")] >= 5


def _metrics(server: Server) -> dict[tuple[str, str], float]:
    """The webhook samples of /metrics, by name and (outcome or result) label."""
    r = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200, r.text
    return {
        (s.name, s.labels.get("outcome") or s.labels.get("result") or ""): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name.startswith("nanogen_webhook_")
    }


def test_a_rotated_secret_and_the_one_before_both_sign_for_a_day(
    account: Account, receiver: Receiver
) -> None:
    url = receiver.url()
    with account.client() as c:
        first = _secret(c)
        assert _secret(c) == first  # made once, then the same
        r = c.post("/api/account/webhook-secret/rotate")
        assert r.status_code == 200, r.text
        second = r.json()["secret"]
        assert second != first and second.startswith("whsec_")
        assert r.json()["previousSecretValidUntil"]
        assert _secret(c) == second
        _image(c, webhookUrl=url)
        [delivery] = wait_for(lambda: receiver.at(url))
        signatures = delivery.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        assert delivery.verify(first) == delivery.verify(second)
        with pytest.raises(WebhookVerificationError):
            delivery.verify("whsec_" + "A" * 44)


def test_secrets_are_per_account_and_not_stored(hooked: Server, receiver: Receiver) -> None:
    one, two = hooked.new_account(10), hooked.new_account(10)
    with one.client() as c1, two.client() as c2:
        secret = _secret(c1)
        assert secret != _secret(c2)
    with hooked.db() as db:
        rows = db.execute("SELECT * FROM nanogen_webhook_accounts").fetchall()
    assert rows and not any(secret in str(value) or secret[6:] in str(value) for row in rows for value in row)
    key_file = hooked.home / "webhook-master-key"
    assert key_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9/hook",  # loopback by name (only 127.0.0.1 is allow-listed here)
        "http://10.1.2.3/hook",  # private
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "ftp://example.com/hook",
        "http://user:pass@example.com/hook",
        "not a url",
    ],
)
def test_a_refused_webhook_url_is_400_before_any_credit_moves(hooked: Server, url: str) -> None:
    account = hooked.new_account(100)
    with account.client() as c:
        r = c.post(f"{IMAGE}/generate", json={"prompt": "a lighthouse", "webhookUrl": url})
        assert_envelope(r, 400, "INVALID_PARAMETER")
        assert r.json()["field"] == "webhookUrl"
        shots = [{"id": "a", "prompt": "a city", "generationType": "TEXT_2_VIDEO"}]
        r = c.post(f"{VIDEO}/generate", json={"shots": shots, "webhookUrl": url})
        assert_envelope(r, 400, "INVALID_PARAMETER")
        assert r.json()["field"] == "webhookUrl"
        r = c.put("/api/account/webhook", json={"url": url})
        assert_envelope(r, 400, "INVALID_PARAMETER")
        assert r.json()["field"] == "url"
        assert c.get("/api/account/webhook").json()["url"] is None
    assert account.balance() == 100
    assert account.ledger_sums() == {"grant": 100}


@pytest.mark.parametrize("value", [123, "", ["http://example.com"], "http://example.com/\x01"])
def test_a_webhook_url_of_the_wrong_type_is_400(account: Account, value: object) -> None:
    with account.client() as c:
        r = c.post(f"{IMAGE}/generate", json={"prompt": "a lighthouse", "webhookUrl": value})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert r.json()["field"] == "webhookUrl"


def test_the_account_default_url_is_used_when_a_request_names_none(
    account: Account, receiver: Receiver
) -> None:
    default, own = receiver.url(), receiver.url()
    with account.client() as c:
        assert c.get("/api/account/webhook").json() == {"success": True, "url": None}
        r = c.put("/api/account/webhook", json={"url": default})
        assert r.status_code == 200 and r.json() == {"success": True, "url": default}, r.text
        assert c.get("/api/account/webhook").json()["url"] == default
        first = _image(c)
        second = _image(c, webhookUrl=own)  # the request's own URL wins
        [to_default] = wait_for(lambda: receiver.at(default))
        [to_own] = wait_for(lambda: receiver.at(own))
        assert to_default.event()["data"]["generationId"] == first
        assert to_own.event()["data"]["generationId"] == second
        r = c.delete("/api/account/webhook")
        assert r.status_code == 200 and r.json() == {"success": True, "url": None}, r.text
        third = _image(c)
        wait_for(lambda: _image_status(c, third)["status"] == "completed")
        # The event would have been recorded with the completion: there is none, now or later.
        assert {d["generationId"] for d in _deliveries(c)["data"]} == {first, second}
    assert len(receiver.at(default)) == 1


def test_the_deliveries_list_is_paginated_newest_first(hooked: Server, receiver: Receiver) -> None:
    account = hooked.new_account(100)
    with account.client() as c:
        assert _deliveries(c) == {"data": [], "nextCursor": None}
        generation_ids = []
        for _ in range(3):  # one after the other: their events are made in this order
            url = receiver.url()
            generation_ids.append(_image(c, webhookUrl=url))
            wait_for(lambda url=url: receiver.at(url))
        page = _deliveries(c, limit=2)
        assert [d["generationId"] for d in page["data"]] == generation_ids[::-1][:2]
        assert page["nextCursor"]
        rest = _deliveries(c, limit=2, cursor=page["nextCursor"])
        assert [d["generationId"] for d in rest["data"]] == generation_ids[:1]
        assert rest["nextCursor"] is None
        assert_envelope(
            c.get("/api/account/webhook-deliveries", params={"cursor": "nope"}), 400, "INVALID_PARAMETER"
        )
        assert_envelope(
            c.get("/api/account/webhook-deliveries", params={"limit": 0}), 400, "INVALID_PARAMETER"
        )
    with hooked.new_account(1).client() as other:  # another account sees none of them
        assert _deliveries(other)["data"] == []


def test_the_sdk_and_the_cli_send_webhook_urls_and_manage_the_account_webhook(
    account: Account, receiver: Receiver
) -> None:
    sdk_url, cli_url, default = receiver.url(), receiver.url(), receiver.url()
    with Client(api_key=account.key, base_url=account.server.base_url) as client:
        secret = client.webhook_secret().secret
        generation = client.images.generate("a lighthouse", quality="1K", webhook_url=sdk_url)
        [delivery] = wait_for(lambda: receiver.at(sdk_url))
        assert delivery.verify(secret)["data"]["generationId"] == generation.id
        assert client.set_webhook(default).url == default
        assert client.webhook().url == default
        assert client.set_webhook(None).url is None
        rotated = client.webhook_secret(rotate=True)
        assert rotated.secret != secret and rotated.previousSecretValidUntil is not None
        page = client.webhook_deliveries(limit=1)
        assert [d.id for d in page.data] == [delivery.webhook_id] and page.data[0].state == "delivered"
    env = {**account.server.env, "NANOGEN_API_KEY": account.key, "NANOGEN_BASE_URL": account.server.base_url}
    done = nanogen_cli("image", "a lighthouse", "--webhook", cli_url, "--no-wait", "--json", env=env)
    assert done.returncode == 0, done.stderr
    [delivery] = wait_for(lambda: receiver.at(cli_url))
    assert delivery.event()["data"]["generationId"] == json.loads(done.stdout)["generationId"]


def test_a_canceled_image_gives_image_failed(account: Account, receiver: Receiver) -> None:
    url = receiver.url()
    with account.client() as c:
        generation_id = _image(c, "[sandbox:slow=600] a lighthouse", webhookUrl=url)
        r = c.post(f"/api/generations/{generation_id}/cancel")
        assert r.status_code == 200, r.text
        [delivery] = wait_for(lambda: receiver.at(url))
        event = delivery.event()
        assert event["type"] == "image.failed"
        assert event["data"] == _image_status(c, generation_id)
        assert event["data"]["error"] == "Canceled"


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: retries 2 s apart (the kill comes while one waits), images due in 3 s."""
    env = {"NANOGEN_WEBHOOK_RETRY_SCHEDULE": "2x10", "NANOGEN_IMAGE_DEADLINE_S": "3"}
    server = Server(tmp_path_factory.mktemp("webhooks-restart"), extra_env=env).start()
    yield server
    server.stop()


def test_an_image_past_its_deadline_gives_image_failed(restartable: Server, receiver: Receiver) -> None:
    """The deadline watchdog fails the task, and its transaction records the event."""
    account = restartable.new_account(100)
    url = receiver.url()
    with account.client() as c:
        generation_id = _image(c, "[sandbox:slow=60] a lighthouse", webhookUrl=url)
        [delivery] = wait_for(lambda: receiver.at(url))
        event = delivery.event()
        assert event["type"] == "image.failed"
        assert event["data"] == _image_status(c, generation_id)
    account.assert_books_balance()


def test_a_delivery_pending_at_a_kill_9_is_made_after_the_restart_with_the_same_id(
    restartable: Server, receiver: Receiver
) -> None:
    """The receiver refuses the first attempt; the server is killed while the retry waits; after the
    restart (same database) the workflow resumes and delivers the same event."""
    account = restartable.new_account(100)
    url = receiver.url(REFUSE_UNTIL_RELEASED)
    with account.client() as c:
        secret = _secret(c)
        _image(c, webhookUrl=url)
    [refused] = wait_for(lambda: receiver.at(url))
    restartable.kill()
    receiver.release(url)
    restartable.start()
    delivered = wait_for(lambda: [r for r in receiver.at(url) if r.answered == 200])
    assert {r.webhook_id for r in receiver.at(url)} == {refused.webhook_id}
    assert delivered[0].verify(secret) == refused.verify(secret)
    with account.client() as c:
        wait_for(lambda: _delivery(c, refused.webhook_id)["state"] == "delivered")
    # The refused attempt is counted unless the kill came before it was recorded: then it is made
    # again after the restart as the same attempt (at least once).
    assert len(receiver.at(url)) >= 2


def test_the_openapi_schema_documents_the_webhook_endpoints(hooked: Server) -> None:
    spec = httpx.get(hooked.base_url + "/openapi.json").json()
    paths = spec["paths"]
    assert set(paths["/api/account/webhook"]) == {"get", "put", "delete"}
    assert (
        "url"
        in paths["/api/account/webhook"]["put"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"
        ]
    )
    assert "get" in paths["/api/account/webhook-secret"]
    assert "post" in paths["/api/account/webhook-secret/rotate"]
    assert "get" in paths["/api/account/webhook-deliveries"]
    for path in ("/api/account/webhook", "/api/account/webhook-secret", "/api/account/webhook-deliveries"):
        assert all(operation["security"] for operation in paths[path].values()), path
    delivery = spec["components"]["schemas"]["WebhookDelivery"]["properties"]
    assert {"id", "type", "url", "attempts", "lastStatusCode", "state", "createdAt"} <= set(delivery)
