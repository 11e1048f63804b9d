"""H264Writer, probe_video and concat_videos on real MP4s, checked by decoding them with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from nanogen.media import video


def write_clip(path: Path, size: tuple[int, int] = (320, 180), frames: int = 48, shade: int = 60) -> Path:
    """A small clip: a flat background with a bright block that moves one step per frame."""
    width, height = size
    with video.H264Writer(path, width, height, 24) as writer:
        video.fill_box(writer.planes, (0, 0, width, height), (shade, 100, 150))
        previous = None
        for index in range(frames):
            if previous:
                video.fill_box(writer.planes, previous, (shade, 100, 150))
            x = index * 2 % (width - 32)
            previous = (x, 16, x + 32, 48)
            video.fill_box(writer.planes, previous, (235, 128, 128))
            writer.write()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_writer_makes_a_faststart_h264_mp4(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mp4")
    info = video.probe_video(path)
    assert (info.width, info.height, info.fps, info.frames) == (320, 180, 24.0, 48)
    assert info.duration_s == pytest.approx(2.0)
    assert (info.codec, info.pix_fmt, info.has_audio) == ("h264", "yuv420p", False)
    assert video.probe_video(path, decode=True).frames == 48
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart
    with av.open(str(path)) as container:
        assert "creation_time" not in container.metadata
        assert "creation_time" not in container.streams.video[0].metadata


def test_writer_is_deterministic_and_frames_move(tmp_path: Path) -> None:
    a = write_clip(tmp_path / "a.mp4")
    b = write_clip(tmp_path / "b.mp4")
    assert a.read_bytes() == b.read_bytes()
    frames = decoded_frames(a)
    assert not np.array_equal(frames[0], frames[20])  # the block moved


def test_rgb_to_planes_round_trips_colours(tmp_path: Path) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (220, 30, 30)
    rgb[:, 32:] = (30, 30, 220)
    planes = video.rgb_to_planes(rgb)
    path = tmp_path / "rgb.mp4"
    with video.H264Writer(path, 64, 64, 24) as writer:
        video.copy_all(writer.planes, planes)
        writer.write()
    (frame,) = decoded_frames(path)
    assert np.abs(frame[8:56, 4:28].mean(axis=(0, 1)) - (220, 30, 30)).max() < 12
    assert np.abs(frame[8:56, 36:60].mean(axis=(0, 1)) - (30, 30, 220)).max() < 12


def test_concat_stream_copies_matching_shots(tmp_path: Path) -> None:
    shots = [write_clip(tmp_path / f"{i}.mp4", shade=40 + 40 * i) for i in range(3)]
    result = video.concat_videos(shots, tmp_path / "all.mp4")
    assert result.stream_copied and result.reason == ""
    assert result.frames == 144
    assert result.duration_s == pytest.approx(6.0)
    info = video.probe_video(result.path)
    assert (info.width, info.height, info.frames) == (320, 180, 144)
    assert info.duration_s == pytest.approx(6.0)
    frames = decoded_frames(result.path)
    assert len(frames) == 144
    # Each shot's own picture plays in order.
    means = [frames[i][100:, :].mean() for i in (10, 58, 106)]
    assert means[0] < means[1] < means[2]
    with av.open(str(result.path)) as container:
        stamps = [p.dts for p in container.demux(video=0) if p.dts is not None]
    assert stamps == sorted(set(stamps))  # strictly increasing
    data = result.path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")


def test_concat_reencodes_mismatched_sizes(tmp_path: Path) -> None:
    wide = write_clip(tmp_path / "wide.mp4", (320, 180), frames=24)
    tall = write_clip(tmp_path / "tall.mp4", (180, 320), frames=24, shade=200)
    result = video.concat_videos([wide, tall], tmp_path / "mixed.mp4")
    assert not result.stream_copied and "tall.mp4" in result.reason
    info = video.probe_video(result.path, decode=True)
    assert (info.width, info.height, info.frames, info.codec) == (320, 180, 48, "h264")
    assert info.duration_s == pytest.approx(2.0)
    last = decoded_frames(result.path)[-1]
    assert last[:, :20].mean() < 30  # letterbox bars beside the portrait clip
    assert last[:, 150:170].mean() > 120


def test_concat_refuses_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        video.concat_videos([], tmp_path / "none.mp4")
