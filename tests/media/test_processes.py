"""MediaProcesses: joins run in child processes, which end with their parent however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import av
import pytest
from tests.conftest import wait_for
from tests.media.test_video import write_clip

from nanogen.media.processes import MediaProcesses
from nanogen.media.video import concat_videos

ROOT = Path(__file__).resolve().parents[2]


def child_pid() -> int:
    return os.getpid()


def die() -> None:
    os._exit(3)  # a decoder fault, say: the child is gone without an answer


def test_a_join_runs_in_a_child_and_its_errors_come_back(tmp_path: Path) -> None:
    media = MediaProcesses(workers=2)
    try:
        clips = [write_clip(tmp_path / f"{i}.mp4", shade=40 + 40 * i) for i in range(2)]
        result = media.run(concat_videos, clips, tmp_path / "joined.mp4")
        assert result.stream_copied and result.frames == 96
        with av.open(str(tmp_path / "joined.mp4")) as joined:
            assert sum(1 for _ in joined.decode(video=0)) == 96
        assert media.run(child_pid) != os.getpid()
        with pytest.raises(ValueError, match="nothing to concatenate"):
            media.run(concat_videos, [], tmp_path / "none.mp4")
    finally:
        media.stop()


def test_a_child_that_dies_fails_its_call_only(tmp_path: Path) -> None:
    media = MediaProcesses(workers=1)
    try:
        with pytest.raises(BrokenProcessPool):
            media.run(die)
        assert media.run(child_pid) != os.getpid(), "the next call starts a new child"
    finally:
        media.stop()


def test_children_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from nanogen.media.processes import MediaProcesses
        from tests.media.test_processes import child_pid

        media = MediaProcesses(workers=1)
        print(media.run(child_pid), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert Path(f"/proc/{child}").exists()
        parent.send_signal(signal.SIGKILL)  # kill -9: no shutdown code runs in the parent
        parent.wait()
        wait_for(lambda: not Path(f"/proc/{child}").exists() or _zombie(child))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
