"""Webhooks on PostgreSQL: the core path (image and video events, signed, data as check-status) and one
event for a video whose shots end at once in concurrent transactions (the generation row's lock orders
them: exactly one sees the video ended). Kept apart from test_webhooks.py so that the SQLite tests are
not grouped onto the PostgreSQL worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, wait_for
from tests.databases import postgres_database
from tests.server.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver(hang_s=1)
    yield found
    found.close()


def test_events_on_postgres(tmp_path: Path, receiver: Receiver) -> None:
    with postgres_database("webhooks") as url:
        server = Server(tmp_path / "home", database_url=url).start()
        try:
            account = server.new_account(1000)
            image_url, video_url, racing_url = receiver.url(), receiver.url(), receiver.url()
            with account.client() as c:
                secret = c.get("/api/account/webhook-secret").json()["secret"]
                r = c.post(
                    "/api/nano-banana-2/generate", json={"prompt": "a lighthouse", "webhookUrl": image_url}
                )
                image_id = r.json()["generationId"]
                shots = [
                    {"id": f"s{i}", "prompt": "a city", "generationType": "TEXT_2_VIDEO"} for i in range(2)
                ]
                r = c.post("/api/veo-3/generate", json={"shots": shots, "webhookUrl": video_url})
                video_id = r.json()["generationId"]
                failing = [
                    {"id": f"f{i}", "prompt": "[sandbox:fail] a cup", "generationType": "TEXT_2_VIDEO"}
                    for i in range(6)
                ]
                r = c.post("/api/veo-3/generate", json={"shots": failing, "webhookUrl": racing_url})
                racing_id = r.json()["generationId"]
                [image] = wait_for(lambda: receiver.at(image_url))
                [video] = wait_for(lambda: receiver.at(video_url))
                [racing] = wait_for(lambda: receiver.at(racing_url))
                assert (
                    image.verify(secret)["data"]
                    == c.post("/api/nano-banana-2/check-status", json={"generationId": image_id}).json()
                )
                assert video.verify(secret)["type"] == "video.completed"
                assert (
                    video.event()["data"]
                    == c.post("/api/veo-3/check-status", json={"generationId": video_id}).json()
                )
                assert racing.verify(secret)["type"] == "video.failed"
                assert racing.event()["data"]["generationId"] == racing_id
                # Every shot had ended when the event was made: a second one would be recorded by now.
                listed = c.get("/api/account/webhook-deliveries").json()["data"]
                assert [d["generationId"] for d in listed].count(racing_id) == 1
            account.assert_books_balance()
        finally:
            server.stop()
