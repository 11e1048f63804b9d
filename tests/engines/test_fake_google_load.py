"""The benchmarks' fake Google (bench/fake_google.py) speaks what the Google engine expects: one image and
one video through a real ``nanogen serve`` pointed at it, with tiny latencies. Its counters are what
bench/bench_google.py reports, so they are checked too."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import ROOT, Server, free_port
from tests.engines.google_support import (
    download,
    generate_image,
    generate_video,
    open_png,
    probe,
    shot,
    wait_image,
    wait_video,
)

API_KEY = "AIzaSy-key-for-the-load-fake"


class LoadFake:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(ROOT / "bench" / "fake_google.py"), f"--port={self.port}", *args]
        self.log = (tmp / "fake.log").open("wb")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, (tmp / "fake.log").read_text()
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_stats", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, "the fake did not start"
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"{self.url}/_stats", params={"prompts": "1"}, timeout=10).json()
        return stats

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[LoadFake]:
    fake = LoadFake(tmp_path, f"--api-key={API_KEY}", "--video-latency-s=0.5", "--image-latency-s=0.2")
    yield fake
    fake.close()


def google_env(fake: LoadFake) -> dict[str, str]:
    return {
        "NANOGEN_ENGINE_IMAGES": "google",
        "NANOGEN_ENGINE_VIDEOS": "google",
        "NANOGEN_GOOGLE_API_KEY": API_KEY,
        "NANOGEN_GOOGLE_BASE_URL": fake.url,
        "NANOGEN_GOOGLE_POLL_INTERVAL_S": "0.1",
    }


def test_an_image_and_a_video_through_nanogen(fake: LoadFake, tmp_path: Path) -> None:
    server = Server(tmp_path / "home", extra_env=google_env(fake)).start()
    try:
        account = server.new_account(100)
        image_prompt = "load fake: a red bicycle by a lamp post"
        accepted_image = generate_image(account, {"prompt": image_prompt, "mode": "generate"})
        video_prompt = "load fake: a lighthouse in a storm"
        accepted_video = generate_video(account, [shot("s1", video_prompt)])

        final_image, _ = wait_image(account, accepted_image["generationId"])
        assert final_image["status"] == "completed", final_image
        picture = open_png(download(account, final_image["imageUrl"], server))
        assert picture.size == (1376, 768), "the default 16:9 at 1K, as the fake made it"

        final_video, _ = wait_video(account, accepted_video)
        assert final_video["status"] == "completed", final_video
        clip = probe(download(account, final_video["shots"][0]["videoUrl"], server), tmp_path)
        assert (clip.width, clip.height, clip.codec, clip.has_audio) == (1280, 720, "h264", True)
    finally:
        server.stop()

    stats = fake.stats()
    assert stats["per_prompt_submissions"] == {video_prompt: 1}
    assert stats["per_prompt_image_calls"] == {image_prompt: 1}
    assert stats["duplicate_submissions"] == stats["duplicate_image_calls"] == 0
    assert stats["polls_done"] >= 1 and stats["signed_downloads"] == 1
    assert stats["rejected"] == {} and stats["sent_429_total"] == 0, "every call in the expected shape"


def test_the_quota_answers_google_s_429_with_retry_info(tmp_path: Path) -> None:
    fake = LoadFake(tmp_path, f"--api-key={API_KEY}", "--submit-rpm=1")
    try:
        url = f"{fake.url}/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
        body = {"instances": [{"prompt": "quota"}], "parameters": {"resolution": "720p"}}
        headers = {"x-goog-api-key": API_KEY}
        assert httpx.post(url, json=body, headers=headers).status_code == 200
        refused = httpx.post(url, json=body, headers=headers)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        assert error["details"][0]["retryDelay"].endswith("s")
        stats = fake.stats()
        assert (stats["submissions"], stats["sent_429_total"]) == (1, 1)
    finally:
        fake.close()
