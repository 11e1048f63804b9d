"""nanogen with its files in a real S3-compatible server (moto on 127.0.0.1): whole generations,
downloads decoded, concatenation from shots in the bucket, HTTP Range, workers on other machines,
the three URL modes, retention, and readiness while the bucket is down."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ImageHost, Server, assert_envelope, wait_for
from tests.databases import postgres_database
from tests.storage import flows
from tests.storage.conftest import SECRET_KEY, MotoS3


def test_image_and_two_shot_video_live_in_the_bucket(
    s3: MotoS3, image_host: ImageHost, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    env = s3.env(bucket, NANOGEN_RETENTION_DAYS="30", NANOGEN_RETENTION_SWEEP_INTERVAL_S="0.3")
    server = Server(flows.new_home(tmp_path, "home"), extra_env=env).start()
    try:
        account = server.new_account(1000)
        edited = flows.image(account, "a lighthouse", mode="edit", inputImageUrls=[image_host.url("red.png")])
        assert edited["status"] == "completed", edited
        image_url = edited["imageUrl"]
        assert image_url.startswith(f"{server.base_url}/files/out/")
        got = flows.download(image_url)
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert flows.decoded_image(got.content).size == (1376, 768)

        refs, finished = flows.video(account, ["a harbour at dawn", "gulls over the pier"])
        assert finished["status"] == "completed", finished
        for shot in finished["shots"]:
            data = flows.download(shot["videoUrl"]).content
            assert flows.decoded_video(data, tmp_path)[:3] == (1280, 720, 192)
        whole = flows.download(finished["concatenatedVideoUrl"])
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        width, height, frames, duration = flows.decoded_video(whole.content, tmp_path)
        assert (width, height, frames) == (1280, 720, 384), "both shots, read back from the bucket"
        assert duration == pytest.approx(16, abs=0.1)

        keys = s3.keys(bucket)
        assert len([k for k in keys if k.startswith("in/")]) == 1, keys
        assert len([k for k in keys if k.startswith("out/")]) == 4, "image, two shots, concatenation"
        assert flows.local_files(server.home) == [], "nothing kept on the API machine's disk"

        # HTTP Range through nanogen's /files, as a video player seeks.
        url, full = finished["concatenatedVideoUrl"], whole.content
        first = flows.download(url, Range="bytes=0-1023")
        assert first.status_code == 206 and first.content == full[:1024]
        assert first.headers["content-range"] == f"bytes 0-1023/{len(full)}"
        assert first.headers["accept-ranges"] == "bytes"
        tail = flows.download(url, Range="bytes=-1000")
        assert tail.status_code == 206 and tail.content == full[-1000:]
        middle = flows.download(url, Range=f"bytes={len(full) // 2}-")
        assert middle.status_code == 206 and middle.content == full[len(full) // 2 :]
        beyond = flows.download(url, Range=f"bytes={len(full) + 5}-")
        assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(full)}"
        unknown = flows.download(image_url.rsplit("/", 2)[0] + "/AAAAAAAAAAAAAAAAAAAAAAAA/x.png")
        assert_envelope(unknown, 404, "NOT_FOUND")

        # Retention on S3: the old generation's objects go, its URL answers 410, the rest stays.
        balance = account.balance()
        with server.db() as db:
            flows.backdate(db, edited["generationId"], 31)
        wait_for(lambda: flows.download(image_url).status_code == 410)
        assert_envelope(flows.download(image_url), 410, "GONE")
        remaining = s3.keys(bucket)
        assert not [k for k in remaining if k.startswith("in/")], "the stored input went with it"
        assert len(remaining) == 3 and flows.download(url).content == full, "the fresh video survives"
        again = flows.image_status(account, edited["generationId"])
        assert again["status"] == "completed" and again["imageUrl"] == image_url, "check-status answers"
        assert flows.video_status(account, refs)["status"] == "completed"
        assert account.balance() == balance, "retention never touches credits"
        assert SECRET_KEY not in server.log_tail()
    finally:
        server.stop()
    assert SECRET_KEY not in (server.home / "server.log").read_text(errors="replace")


def test_a_worker_elsewhere_writes_what_every_api_process_serves(s3: MotoS3, tmp_path: Path) -> None:
    # Several processes on one database: PostgreSQL (a SQLite data directory takes one process).
    with postgres_database("s3split") as url:
        _worker_elsewhere(s3, tmp_path, url)


def _worker_elsewhere(s3: MotoS3, tmp_path: Path, database_url: str) -> None:
    bucket = s3.new_bucket()
    shared = {"NANOGEN_DATABASE_URL": database_url}
    api_a = Server(flows.new_home(tmp_path, "api-a"), args=("--no-worker",))
    api_b = Server(flows.new_home(tmp_path, "api-b"), args=("--no-worker",))
    for api, name in ((api_a, "api-a"), (api_b, "api-b")):
        # Clients are given one public address (a load balancer in production; api-a here).
        api.extra_env = s3.env(bucket, NANOGEN_EXECUTOR_ID=name, NANOGEN_PUBLIC_URL=api_a.base_url, **shared)
    api_a.start()
    api_b.start()
    worker_home = flows.new_home(tmp_path, "worker")
    worker_env = api_a.env | {"NANOGEN_HOME": str(worker_home), "NANOGEN_EXECUTOR_ID": "worker-1"}
    with open(worker_home / "worker.log", "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "nanogen", "worker"], env=worker_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        account = api_b.new_account(100)  # one database: the key works on both API processes
        picture = flows.image(account, "made by the worker")
        _, finished = flows.video(account, ["first shot", "second shot"])
        assert picture["status"] == finished["status"] == "completed", (picture, finished)
        shots = [s["videoUrl"] for s in finished["shots"]]
        urls = [picture["imageUrl"], finished["concatenatedVideoUrl"], *shots]
        for url in urls:
            assert url.startswith(f"{api_a.base_url}/files/out/"), url
            via_a = flows.download(url)
            via_b = flows.download(url.replace(api_a.base_url, api_b.base_url))
            assert via_a.status_code == via_b.status_code == 200
            assert via_a.content == via_b.content
        assert flows.decoded_image(flows.download(urls[0]).content).size == (1376, 768)
        assert flows.decoded_video(flows.download(urls[1]).content, tmp_path)[2] == 384
        for home in (api_a.home, api_b.home, worker_home):
            assert flows.local_files(home) == [], home
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        api_b.stop()
        api_a.stop()


@pytest.mark.parametrize("mode", ["presigned", "public"])
def test_presigned_and_public_urls(s3: MotoS3, mode: str, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    extra = {"NANOGEN_S3_URLS": mode}
    if mode == "public":
        s3.make_outputs_public(bucket)
        extra["NANOGEN_S3_PUBLIC_URL"] = f"{s3.endpoint}/{bucket}"
    server = Server(tmp_path, extra_env=s3.env(bucket, **extra)).start()
    try:
        account = server.new_account(100)
        done = flows.image(account, f"served by {mode} URLs")
        url = done["imageUrl"]
        if mode == "public":
            assert url.startswith(f"{s3.endpoint}/{bucket}/out/"), "clients go straight to the bucket"
        else:
            assert url.startswith(f"{server.base_url}/files/out/")
            redirect = httpx.get(url)
            assert redirect.status_code == 307
            assert redirect.headers["location"].startswith(f"{s3.endpoint}/{bucket}/out/")
            assert "X-Amz-Signature=" in redirect.headers["location"]
        got = flows.download(url)
        assert got.status_code == 200
        assert flows.decoded_image(got.content).size == (1376, 768)
        part = flows.download(url, Range="bytes=0-7")
        assert part.status_code == 206 and part.content == got.content[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.stop()


def test_readiness_and_requests_while_the_bucket_is_down(image_host: ImageHost, tmp_path: Path) -> None:
    moto = MotoS3(tmp_path).start()  # its own S3 server: this test stops it
    bucket = moto.new_bucket()
    server = Server(flows.new_home(tmp_path, "home"), extra_env=moto.env(bucket)).start()
    try:
        ready = httpx.get(f"{server.base_url}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}
        account = server.new_account(100)
        url = flows.image(account, "before the outage")["imageUrl"]

        moto.stop()
        down = httpx.get(f"{server.base_url}/readyz")
        assert_envelope(down, 503, "SERVICE_UNAVAILABLE")
        assert down.json()["checks"]["database"] == "ok" and down.json()["checks"]["storage"] != "ok"
        assert_envelope(flows.download(url), 503, "SERVICE_UNAVAILABLE")
        with account.client() as c:
            refused = c.post(
                "/api/nano-banana-2/generate",
                json={"prompt": "x", "mode": "edit", "inputImageUrls": [image_host.url("blue.png")]},
            )
        assert_envelope(refused, 503, "SERVICE_UNAVAILABLE")
        assert account.balance() == 96, "the input could not be stored: nothing charged"
        failed = flows.image(account, "rendered while the bucket is down")
        assert failed["status"] == "failed", "the output could not be stored: failed..."
        assert account.balance() == 96, "...and refunded"
        account.assert_books_balance()

        moto.start()  # same port, empty again: the operator recreates the bucket
        moto.client().create_bucket(Bucket=bucket)
        wait_for(lambda: httpx.get(f"{server.base_url}/readyz").status_code == 200)
        assert flows.image(account, "after the outage")["status"] == "completed"
    finally:
        server.stop()
        moto.stop()
