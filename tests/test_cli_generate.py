"""``nanogen image / video / status / download`` as a user runs them: ``python -m nanogen`` subprocesses
against a real server (the shared ``server`` fixture), with the key and URL in the environment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nanogen import cli_generate, schemas
from nanogen.client import IMAGE_POLL_INTERVAL_S
from nanogen.media.video import probe_video
from tests.conftest import OUTCOME_WAIT_S, Account, Server, free_port, image_bytes, wait_for

FAST = ("--poll-interval", "0.2")


def env_for(server: Server, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
    env.update(NANOGEN_BASE_URL=server.base_url, COLUMNS="200")
    if key is not None:
        env["NANOGEN_API_KEY"] = key
    return env


def run(
    server: Server, key: str | None, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nanogen", *args],
        env=env_for(server, key),
        capture_output=True,
        text=True,
        timeout=OUTCOME_WAIT_S,
        cwd=cwd,
    )


def ok(server: Server, key: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = run(server, key, *args, cwd=cwd)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    data: dict[str, Any] = json.loads(lines[0])
    return data


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(200)


def test_image_edit_of_a_local_file_saved_where_asked(
    server: Server, account: Account, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes((40, 90, 200), "JPEG", (90, 60)))
    result = ok(
        server,
        account.key,
        "image",
        "a watercolour",
        "--edit",
        str(photo),
        "--aspect",
        "9:16",
        "-o",
        str(tmp_path / "out.png"),
        *FAST,
    )
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "out.png")
    assert "saved" in result.stderr and "submitted (4 credits)" in result.stderr
    assert "uploading and submitting (1 image)…" in result.stderr
    with Image.open(tmp_path / "out.png") as png:
        assert png.size == (768, 1376)
    assert account.balance() == 196


def test_image_json_and_default_file_name(server: Server, account: Account, tmp_path: Path) -> None:
    data = as_json(
        ok(
            server,
            account.key,
            "image",
            "a red bicycle",
            "--quality",
            "2k",
            "--search",
            "--json",
            *FAST,
            cwd=tmp_path,
        )
    )
    assert data["success"] is True and data["kind"] == "image" and data["status"] == "completed"
    assert data["creditsUsed"] == 8 and data["url"].startswith(server.base_url)
    assert Path(data["path"]) == tmp_path / f"{data['generationId']}.png"
    with Image.open(data["path"]) as png:
        assert png.size == (2752, 1536)


def test_two_shot_video_with_a_local_frame(server: Server, account: Account, tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(image_bytes((250, 210, 0), "PNG", (64, 36)))
    out = tmp_path / "film.mp4"
    result = ok(
        server, account.key, "video", "--shot", "a city at dawn", "--shot", "the sun comes up",
        "--type", "text", "--type", "frames", "--image", f"2={frame}", "-o", str(out), "--json", *FAST,
    )  # fmt: skip
    data = as_json(result)
    assert data["kind"] == "video" and data["status"] == "completed" and data["creditsUsed"] == 20
    assert [s["shotId"] for s in data["shots"]] == ["shot-1", "shot-2"]
    assert all(s["status"] == "completed" and s["videoUrl"] for s in data["shots"])
    assert Path(data["path"]) == out
    assert probe_video(out).duration_s == pytest.approx(16.0, abs=0.1)


def test_video_from_a_yaml_shots_file(server: Server, account: Account, tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.webp").write_bytes(image_bytes((0, 120, 60), "WEBP"))
    shots = tmp_path / "shots.yaml"
    shots.write_text(
        "resolution: 720p\n"
        "shots:\n"
        "  - A drone shot over a forest\n"
        "  - id: close\n"
        "    prompt: A bird on a branch\n"
        "    generationType: reference\n"
        "    aspectRatio: '16:9'\n"
        "    imageUrls: [refs/a.webp]\n"
    )
    result = ok(server, account.key, "video", "--shots-file", str(shots), "-o", str(tmp_path), *FAST)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == tmp_path and path.suffix == ".mp4"
    assert probe_video(path).duration_s == pytest.approx(16.0, abs=0.1)
    # The per-shot progress display names each shot.
    assert "shot shot-1" in result.stderr and "shot close" in result.stderr


def test_status_and_download_by_id(server: Server, account: Account, tmp_path: Path) -> None:
    shots_file = tmp_path / "shots.json"
    shots_file.write_text(json.dumps(["first shot", "second shot"]))
    submitted = as_json(
        ok(server, account.key, "video", "--shots-file", str(shots_file), "--no-wait", "--json")
    )
    video_id, task_ids = submitted["generationId"], submitted["taskIds"]
    assert submitted["status"] == "submitted" and len(task_ids) == 2
    image_id = ok(server, account.key, "image", "a kite", "--no-wait").stdout.strip()
    assert image_id.startswith("gen_")

    saved = ok(server, account.key, "download", video_id, "-o", str(tmp_path / "v.mp4"), *FAST)
    assert probe_video(tmp_path / "v.mp4").duration_s == pytest.approx(16.0, abs=0.1)
    assert saved.stdout.strip().endswith("v.mp4")
    ok(server, account.key, "download", image_id, "-o", str(tmp_path), *FAST)
    assert (tmp_path / f"{image_id}.png").is_file()

    video_status = as_json(ok(server, account.key, "status", video_id, "--json"))
    assert video_status["kind"] == "video" and video_status["status"] == "completed"
    assert video_status["concatenatedVideoUrl"] and video_status["generationId"] == video_id
    by_tasks = as_json(ok(server, account.key, "status", ",".join(task_ids), "--json"))
    assert [s["taskId"] for s in by_tasks["shots"]] == task_ids
    image_status = as_json(ok(server, account.key, "status", image_id, "--json"))
    assert (image_status["kind"], image_status["status"], image_status["progress"]) == (
        "image",
        "completed",
        100,
    )
    human = ok(server, account.key, "status", video_id).stdout
    assert "completed" in human and "whole video: http" in human and "shot shot-2" in human


def test_failed_generation_exits_5(server: Server, account: Account) -> None:
    result = run(server, account.key, "image", "boom [sandbox:fail]", *FAST)
    assert result.returncode == 5, result.stderr
    # The task's own error, word for word (brackets are text, not markup), and no HTTP status: none failed.
    assert (
        "error: GENERATION_FAILED: The sandbox engine failed as asked by [sandbox:fail] in the prompt"
        in result.stderr
    ), result.stderr
    assert "(500)" not in result.stderr and "HTTP" not in result.stderr
    data = as_json(
        run(
            server, account.key, "video", "--shot", "fine", "--shot", "[sandbox:fail] broken", "--json", *FAST
        )
    )
    assert data["success"] is False and data["errorCode"] == "GENERATION_FAILED"
    assert [s["status"] for s in data["result"]["shots"]] == ["completed", "failed"]
    assert account.balance() == 190  # the failed image and the failed shot were refunded


def test_auth_credits_and_input_errors_have_their_exit_codes(server: Server, tmp_path: Path) -> None:
    poor = server.new_account(3)
    refused = run(server, poor.key, "image", "too dear")
    assert refused.returncode == 4 and "costs 4 credits" in refused.stderr
    data = as_json(run(server, poor.key, "video", "--shot", "x", "--json"))
    assert (data["errorCode"], data["requiredCredits"], data["status"]) == ("INSUFFICIENT_CREDITS", 10, 402)

    bad_key = run(server, "ng_wrong", "image", "p")
    assert bad_key.returncode == 3 and "LOGIN_REQUIRED" in bad_key.stderr
    no_key = run(server, None, "status", "gen_x")
    assert no_key.returncode == 3 and "NANOGEN_API_KEY" in no_key.stderr

    for args in (
        ("image", "   "),  # INVALID_PROMPT, refused before sending
        ("image", "p", "--edit", str(tmp_path / "missing.png")),
        ("video", "--shot", "a", "--shot", "b", "--image", "frame.png"),
        ("video", "--shot", "a", "--image", "3=frame.png"),
        ("video", "--shot", "a", "--type", "sideways"),
        ("video",),
        ("status", "gen_does_not_exist"),
    ):
        result = run(server, poor.key, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "error" in result.stderr and "Traceback" not in result.stderr
    assert poor.balance() == 3


def test_timeout_exits_7_and_unreachable_server_exits_1(server: Server, account: Account) -> None:
    slow = run(server, account.key, "image", "[sandbox:slow=30] patience", "--timeout", "1", *FAST)
    assert slow.returncode == 7, slow.stderr
    # Like Ctrl-C, it says how to pick the generation up again.
    generation_id = next(word for word in slow.stderr.split() if word.startswith("gen_"))
    # It says how long it waited in all: the 1 s asked for, or a little more on a loaded machine.
    waited = re.search(r"still not finished after (\d+) s", slow.stderr)
    assert waited is not None and int(waited[1]) >= 1, slow.stderr
    assert f"nanogen status {generation_id}" in slow.stderr
    assert f"nanogen download {generation_id}" in slow.stderr
    data = as_json(run(server, account.key, "image", "[sandbox:slow=30] p", "--timeout", "0.5", "--json"))
    assert data["success"] is False and data["generationId"].startswith("gen_")
    env = env_for(server, account.key) | {"NANOGEN_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    down = subprocess.run(
        [sys.executable, "-m", "nanogen", "image", "p"], env=env, capture_output=True, text=True, timeout=120
    )
    assert down.returncode == 1 and "Is the server running" in down.stderr


def test_rate_limited_exits_6(tmp_path: Path) -> None:
    srv = Server(tmp_path, extra_env={"NANOGEN_RATE_LIMIT_GENERATE": "1/hour"}).start()
    try:
        account = srv.new_account(100)
        ok(srv, account.key, "image", "one", "--no-wait")
        limited = run(srv, account.key, "image", "two", "--no-wait")
        assert limited.returncode == 6 and "Try again in" in limited.stderr
    finally:
        srv.stop()


def _lines(stream: Any) -> Iterator[str]:
    yield from iter(stream.readline, "")


def _interruptible() -> None:
    """In the child, before exec: SIGINT's default disposition. A shell starts background jobs
    (`nohup pytest ... &`) with SIGINT ignored, the child would inherit that, and Python then installs
    no KeyboardInterrupt handler: the test would not test Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_bracketed_text_from_users_and_the_server_is_printed_as_is(
    server: Server, account: Account, tmp_path: Path
) -> None:
    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps([{"id": "[bold]one[/bold]", "prompt": "a [red] kite [/red]"}]))
    out = tmp_path / "out [1].mp4"
    result = ok(server, account.key, "video", "--shots-file", str(shots), "-o", str(out), *FAST)
    assert out.is_file()
    assert "shot [bold]one[/bold]" in result.stderr, result.stderr
    assert f"saved {out}" in result.stderr, result.stderr


def test_the_first_status_checks_come_sooner_than_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks at once, then after 0.5 s, 1 s and 2 s, then the SDK's wait at the pages' 3 s interval: the
    schedule itself, recorded (a wall-clock bound would fail on a loaded machine, not on a wrong one)."""
    slept: list[float] = []
    monkeypatch.setattr(cli_generate.time, "sleep", slept.append)
    answers = iter(["pending", "generating", "generating", "generating", "completed"])
    seen: list[str] = []

    def check() -> schemas.ImageStatusResponse:
        status = next(answers)
        return schemas.ImageStatusResponse(success=True, status=status, generationId="gen_x", progress=0)

    wait = cli_generate._first_checks(check, lambda s: seen.append(s.status), IMAGE_POLL_INTERVAL_S, None)
    assert slept == [0.5, 1.0, 2.0]
    assert seen == ["pending", "generating", "generating"]
    assert wait == {"poll_interval": IMAGE_POLL_INTERVAL_S}
    # A job already done at the first check is not waited for at all.
    slept.clear()
    answers = iter(["completed"])
    cli_generate._first_checks(check, lambda s: None, IMAGE_POLL_INTERVAL_S, None)
    assert slept == []


def test_a_quick_image_is_saved(server: Server, account: Account, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nanogen", "image", "[sandbox:slow=0.2] quick"],
        env=env_for(server, account.key),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=OUTCOME_WAIT_S,
    )
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stderr
    assert len(list(tmp_path.glob("gen_*.png"))) == 1


def test_ctrl_c_says_how_to_resume_and_download_resumes(
    server: Server, account: Account, tmp_path: Path
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "nanogen", "image", "[sandbox:slow=4] a slow sunrise", *FAST],
        env=env_for(server, account.key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # where the image would land if the signal were missed
        preexec_fn=_interruptible,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(_lines(process.stderr)), daemon=True)
    reader.start()
    submitted = wait_for(lambda: next((line for line in seen if "submitted" in line), None))
    generation_id = next(word for word in submitted.split() if word.startswith("gen_"))
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    reader.join(timeout=10)
    message = "".join(seen)
    assert f"nanogen status {generation_id}" in message and f"nanogen download {generation_id}" in message

    resumed = ok(server, account.key, "download", generation_id, "-o", str(tmp_path / "sunrise.png"), *FAST)
    assert resumed.stdout.strip().endswith("sunrise.png")
    with Image.open(tmp_path / "sunrise.png") as png:
        assert png.size == (1376, 768)
