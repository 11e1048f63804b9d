"""LocalStorage.put_file: a file from a job's scratch directory is stored whole, kept after the scratch
directory is removed, and stored by copy where it cannot be linked (another filesystem)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from nanogen.storage.base import new_key
from nanogen.storage.local import LocalStorage


def test_a_stored_file_outlives_its_scratch_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "outputs", "http://127.0.0.1:1")
    scratch = tmp_path / "scratch" / "task"
    scratch.mkdir(parents=True)
    src = scratch / "out.png"
    data = os.urandom(70_000)
    src.write_bytes(data)
    key = new_key("out", "task.png")

    storage.put_file(key, src)
    stored = storage.local_path(key)
    assert stored is not None
    assert stored.stat().st_ino == src.stat().st_ino  # linked, not copied
    shutil.rmtree(scratch)

    assert storage.read_bytes(key) == data
    assert [p.name for p in stored.parent.iterdir()] == ["task.png"]  # no temporary file left


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
    reason="needs /dev/shm on a filesystem of its own",
)
def test_a_file_on_another_filesystem_is_copied(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "outputs", "http://127.0.0.1:1")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        src = Path(other) / "out.mp4"
        src.write_bytes(b"\x00\x01" * 5000)
        key = new_key("out", "shot.mp4")
        storage.put_file(key, src)
        src.write_bytes(b"changed")  # a copy, not a link: the stored file is not this one
    assert storage.read_bytes(key) == b"\x00\x01" * 5000
