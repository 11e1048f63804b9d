"""docs/quickstart.md's examples run as printed against a real server: every Python block, the YAML shots
file with its command, and the multi-shot video command (only example.com URLs are pointed at the local
image host, and the files the examples name are put in the working directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nanogen.media.video import probe_video
from tests.conftest import ROOT, ImageHost, Server, image_bytes

QUICKSTART = (ROOT / "docs" / "quickstart.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", QUICKSTART, flags=re.DOTALL)


def commands() -> list[str]:
    """The ``nanogen ...`` commands of the bash blocks, continuation lines joined."""
    joined = "\n".join(blocks("bash")).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.startswith("nanogen ")]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "photo.jpg").write_bytes(image_bytes((30, 120, 200), "JPEG", (120, 90)))
    (tmp_path / "frame.png").write_bytes(image_bytes((250, 200, 20), "PNG", (96, 54)))
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "bird.png").write_bytes(image_bytes((200, 60, 10)))
    return tmp_path


def environment(server: Server, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
    env.update(NANOGEN_API_KEY=key, NANOGEN_BASE_URL=server.base_url, COLUMNS="200")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def localised(text: str, image_host: ImageHost) -> str:
    return re.sub(r"https://example\.com/(\w+)\.png", lambda m: image_host.url("red.png"), text)


def test_python_examples_run(server: Server, image_host: ImageHost, workdir: Path) -> None:
    account = server.new_account(1000)
    examples = blocks("python")
    assert len(examples) >= 3
    for code in examples:
        result = subprocess.run(
            [sys.executable, "-c", localised(code, image_host)],
            cwd=workdir,
            env=environment(server, account.key),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{code}\n{result.stderr}"
    for name, size in (
        ("lighthouse.png", (2752, 1536)),
        ("watercolour.png", (1376, 768)),
        ("kite.png", (1376, 768)),
    ):
        with Image.open(workdir / name) as png:
            assert png.size == size
    assert probe_video(workdir / "city.mp4").duration_s == pytest.approx(24.0, abs=0.1)
    assert probe_video(workdir / "ab.mp4").duration_s == pytest.approx(16.0, abs=0.1)
    assert probe_video(workdir / "beach.mp4").duration_s == pytest.approx(8.0, abs=0.1)
    assert len(list((workdir / "shots").glob("*.mp4"))) == 3


def test_video_commands_run(server: Server, workdir: Path) -> None:
    account = server.new_account(1000)
    story = next(b for b in blocks("yaml") if b.startswith("# story.yaml"))
    (workdir / "story.yaml").write_text(story)
    chosen = [c for c in commands() if c.startswith("nanogen video")]
    assert len(chosen) == 2
    for command in chosen:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env=environment(server, account.key),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert probe_video(workdir / "city.mp4").duration_s == pytest.approx(24.0, abs=0.1)
    assert probe_video(workdir / "story.mp4").duration_s == pytest.approx(24.0, abs=0.1)
