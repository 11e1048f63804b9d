"""LocalStorage.put_file: the file itself is linked into the outputs when it can be (one system
call, not a copy), a copy otherwise; either way the stored bytes outlive the source."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nanogen.storage.base import new_key
from nanogen.storage.local import LocalStorage


def _put(tmp_path: Path, data: bytes) -> tuple[LocalStorage, Path, str, Path]:
    """A job's output stored as a job stores it: (storage, its scratch file, key, stored file)."""
    scratch = tmp_path / "scratch" / "task"
    scratch.mkdir(parents=True)
    src = scratch / "image.png"
    src.write_bytes(data)
    storage = LocalStorage(tmp_path / "outputs", "http://127.0.0.1:1")
    key = new_key("out", "task.png")
    storage.put_file(key, src)
    stored = storage.local_path(key)
    assert stored is not None
    return storage, src, key, stored


def test_put_file_links_the_file_and_it_outlives_the_scratch_copy(tmp_path: Path) -> None:
    storage, src, key, stored = _put(tmp_path, b"\x89PNG linked")
    assert stored.read_bytes() == b"\x89PNG linked"
    assert os.stat(stored).st_ino == os.stat(src).st_ino  # one file, two names
    src.unlink()  # the job's scratch folder is removed after
    assert storage.read_bytes(key) == b"\x89PNG linked"
    assert [p.name for p in stored.parent.iterdir()] == ["task.png"]  # no temporary file left


def test_put_file_copies_where_the_file_cannot_be_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(src: object, dst: object) -> None:  # what link(2) says across file systems
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    _, src, _, stored = _put(tmp_path, b"copied bytes")
    assert stored.read_bytes() == b"copied bytes"
    assert os.stat(stored).st_ino != os.stat(src).st_ino
    assert [p.name for p in stored.parent.iterdir()] == ["task.png"]


def test_put_file_replaces_a_key_stored_before(tmp_path: Path) -> None:
    storage, _, key, stored = _put(tmp_path, b"first")
    again = tmp_path / "again.png"
    again.write_bytes(b"second")
    storage.put_file(key, again)  # linked under a temporary name, then renamed over the old file
    assert storage.read_bytes(key) == b"second"
    assert os.stat(stored).st_ino == os.stat(again).st_ino
    assert [p.name for p in stored.parent.iterdir()] == ["task.png"]
