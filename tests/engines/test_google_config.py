"""Configuration problems fail fast and say what is wrong: a missing key stops the server from starting,
a wrong key fails the task at once (refunded, never retried, never logged), `nanogen doctor` explains,
and what the configured model cannot do is refused before any credit moves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import Server, assert_envelope, free_port, nanogen_cli
from tests.engines.google_support import (
    IMAGE_GENERATE,
    generate_image,
    generate_video,
    shot,
    wait_image,
    wait_video,
)
from tests.fakes.google_server import API_KEY, FakeGoogle

WRONG_KEY = "AIzaSy-a-key-google-does-not-know"


def cli_env(tmp_path: Path, fake: FakeGoogle, **env: str) -> dict[str, str]:
    return Server(tmp_path, extra_env=fake.env(**env)).env


def test_doctor_passes_with_a_good_key(fake: FakeGoogle, tmp_path: Path) -> None:
    result = nanogen_cli("doctor", env=cli_env(tmp_path, fake))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"ok    mode: Gemini API with an API key at {fake.base_url}" in out
    assert "ok    image model: gemini-3.1-flash-image-preview answers" in out and "Nano Banana 2" in out
    assert "ok    video model: veo-3.1-generate-preview answers" in out
    assert "1K $0.067, 2K $0.101, 4K $0.151 per image" in out
    assert "720p $0.40, 1080p $0.40, 4k $0.60 per second" in out
    assert API_KEY not in out + result.stderr, "the key is never printed"
    checked = fake.requests_to(r"^/v1beta/models/[\w.-]+$")
    assert {r.path for r in checked} >= {
        "/v1beta/models/gemini-3.1-flash-image-preview",
        "/v1beta/models/veo-3.1-generate-preview",
    }
    assert not fake.requests_to(r":(generateContent|predictLongRunning)$"), "the doctor makes no paid call"


def test_doctor_explains_a_wrong_key_an_unknown_model_and_an_unreachable_google(
    fake: FakeGoogle, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, fake, NANOGEN_GOOGLE_API_KEY=WRONG_KEY)
    result = nanogen_cli("doctor", env=env)
    assert result.returncode == 1
    assert (
        "FAIL  image model: gemini-3.1-flash-image-preview: Google rejected nanogen's credentials"
        in result.stdout
    )
    assert "400/INVALID_ARGUMENT/API_KEY_INVALID" in result.stdout
    assert WRONG_KEY not in result.stdout + result.stderr

    env = cli_env(tmp_path, fake, NANOGEN_GOOGLE_VIDEO_MODEL="veo-9-imaginary")
    result = nanogen_cli("doctor", env=env)
    assert result.returncode == 1
    assert "FAIL  video model: veo-9-imaginary: Google does not offer the configured model" in result.stdout
    assert "no list price for veo-9-imaginary: costs are not estimated" in result.stdout

    env = cli_env(tmp_path, fake, NANOGEN_GOOGLE_BASE_URL=f"http://127.0.0.1:{free_port()}")
    result = nanogen_cli("doctor", env=env)
    assert result.returncode == 1
    assert "cannot reach Google (ConnectError" in result.stdout


def test_a_missing_key_stops_serve_and_doctor_with_a_clear_message(fake: FakeGoogle, tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env(tmp_path, fake).items() if k != "NANOGEN_GOOGLE_API_KEY"}
    result = nanogen_cli("doctor", env=env)
    assert result.returncode == 1
    assert (
        "FAIL  configuration: the google engine (gemini mode) needs NANOGEN_GOOGLE_API_KEY" in result.stdout
    )

    serve = subprocess.run(
        [sys.executable, "-m", "nanogen", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2
    assert "cannot start the google engine for images and videos" in serve.stderr
    assert "NANOGEN_GOOGLE_API_KEY" in serve.stderr

    vertex = {**env, "NANOGEN_GOOGLE_MODE": "vertex"}
    vertex.pop("NANOGEN_GOOGLE_PROJECT", None)
    result = nanogen_cli("doctor", env=vertex)
    assert result.returncode == 1 and "needs NANOGEN_GOOGLE_PROJECT" in result.stdout


def test_a_wrong_key_fails_the_task_at_once_and_refunds(fake: FakeGoogle, tmp_path: Path) -> None:
    env = {"NANOGEN_GOOGLE_API_KEY": WRONG_KEY, "NANOGEN_GOOGLE_IMAGE_MODEL": "gemini-2.5-flash-image"}
    server = Server(tmp_path, extra_env=fake.env(**env)).start()
    try:
        account = server.new_account(100)
        with account.client() as c:
            refused = c.post(IMAGE_GENERATE, json={"prompt": "A red fox", "imageQuality": "2K"})
        assert_envelope(refused, 400, "INVALID_PARAMETER")
        assert "quality 2K with model gemini-2.5-flash-image" in refused.json()["error"]
        assert account.balance() == 100, "refused before any credit moved"

        prompt = "A red fox in the snow"
        accepted = generate_image(account, {"prompt": prompt})
        final, _ = wait_image(account, accepted["generationId"])
        assert final["status"] == "failed"
        assert final["error"].startswith(
            "Google rejected nanogen's credentials (400/INVALID_ARGUMENT/API_KEY_INVALID"
        )
        assert "NANOGEN_GOOGLE_API_KEY" in final["error"]
        assert len(fake.requests_for(prompt, ":generateContent")) == 1, "not retried"

        video_prompt = "A fox running"
        accepted = generate_video(account, [shot("s", video_prompt)])
        final, _ = wait_video(account, accepted)
        assert final["shots"][0]["error"].startswith("Google rejected nanogen's credentials")
        assert len(fake.requests_for(video_prompt, ":predictLongRunning")) == 1
        assert account.balance() == 100
        account.assert_books_balance()
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert WRONG_KEY not in log, "the key is never logged"
    with server.db() as db:
        dump = "\n".join(db.iterdump())
    assert WRONG_KEY not in dump, "nor stored"
