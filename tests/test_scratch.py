"""A job's scratch folder is deleted after the job, whatever the engine left in it, and nothing
outside it is touched (workflows._remove_scratch)."""

from __future__ import annotations

from pathlib import Path

from nanogen.tasks.workflows import _remove_scratch


def _scratch(tmp_path: Path, *names: str) -> Path:
    scratch = tmp_path / "scratch" / "task-1"
    scratch.mkdir(parents=True)
    for name in names:
        (scratch / name).write_bytes(b"x")
    return scratch


def test_a_folder_with_only_the_output_is_deleted(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, "image.png")
    _remove_scratch(scratch, scratch / "image.png")
    assert not scratch.exists()
    assert (tmp_path / "scratch").is_dir()  # the parent stays


def test_a_folder_with_the_engines_own_files_is_deleted_whole(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, "shot.mp4", "frame-0.png")
    (scratch / "frames").mkdir()
    (scratch / "frames" / "1.png").write_bytes(b"x")
    _remove_scratch(scratch, scratch / "shot.mp4")
    assert not scratch.exists()


def test_a_failed_job_s_folder_is_deleted(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, "partial.png")
    _remove_scratch(scratch, None)
    assert not scratch.exists()


def test_an_output_outside_the_folder_is_left_alone(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path, "image.png")
    elsewhere = tmp_path / "kept.png"
    elsewhere.write_bytes(b"not the job's")
    _remove_scratch(scratch, elsewhere)
    assert elsewhere.read_bytes() == b"not the job's"
    assert not scratch.exists()


def test_a_folder_already_gone_is_no_error(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch" / "never-made"
    _remove_scratch(scratch, scratch / "image.png")
    assert not scratch.exists()
