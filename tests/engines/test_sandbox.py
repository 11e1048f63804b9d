"""The sandbox engine makes real, deterministic PNGs and MP4s: checked by decoding them, no mocks."""

from __future__ import annotations

import io
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from nanogen.engines.base import ImageJob, InputImage, ShotJob
from nanogen.engines.sandbox import SandboxEngine, parse_prompt
from nanogen.errors import EngineError
from nanogen.media.video import probe_video
from nanogen.products import (
    IMAGE_SIZES,
    GenerationType,
    ImageAspectRatio,
    ImageMode,
    ImageQuality,
    Product,
    Resolution,
    VideoAspectRatio,
    video_size,
)
from nanogen.settings import Settings

RED, GREEN, BLUE = (230, 20, 20), (20, 200, 20), (20, 20, 230)


@pytest.fixture
def engine(tmp_path: Path) -> SandboxEngine:
    return SandboxEngine(Settings(home=tmp_path, sandbox_latency_s=0, sandbox_progress_steps=5))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (160, 120)) -> InputImage:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return InputImage(buffer.getvalue(), "image/png", *size)


def image_job(
    prompt: str = "a lighthouse in a storm",
    aspect_ratio: ImageAspectRatio = ImageAspectRatio.LANDSCAPE,
    quality: ImageQuality = ImageQuality.Q1K,
    mode: ImageMode = ImageMode.GENERATE,
    google_search: bool = False,
    images: tuple[InputImage, ...] = (),
) -> ImageJob:
    width, height = IMAGE_SIZES[(aspect_ratio, quality)]
    return ImageJob("img_1", prompt, mode, aspect_ratio, quality, width, height, google_search, images)


def shot_job(
    prompt: str = "a cat surfing a wave",
    kind: GenerationType = GenerationType.TEXT_2_VIDEO,
    aspect: VideoAspectRatio = VideoAspectRatio.LANDSCAPE,
    images: tuple[InputImage, ...] = (),
) -> ShotJob:
    width, height = video_size(aspect, Resolution.P720)
    return ShotJob("shot_1", prompt, kind, aspect, Resolution.P720, width, height, images)


def make_image(engine: SandboxEngine, job: ImageJob, dest: Path) -> np.ndarray:
    output = engine.generate_image(job, dest, lambda _: None)
    assert output.path == dest and output.content_type == "image/png"
    with Image.open(dest) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def share_near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    """The share of pixels within ``tolerance`` of ``colour`` on every channel."""
    return float((np.abs(pixels.astype(int) - colour).max(axis=-1) <= tolerance).mean())


# -- capabilities -----------------------------------------------------------------------------------


def test_capabilities_cover_everything(engine: SandboxEngine) -> None:
    assert engine.name == "sandbox" and engine.supports_google_search
    assert engine.default_concurrency == 32
    for kind in GenerationType:
        for resolution in Resolution:
            assert engine.unsupported(Product.VIDEO, generation_type=kind, resolution=resolution) is None
    for quality in ImageQuality:
        assert engine.unsupported(Product.IMAGE, quality=quality) is None


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", list(ImageAspectRatio))
def test_image_sizes_for_every_aspect(
    engine: SandboxEngine, tmp_path: Path, aspect: ImageAspectRatio
) -> None:
    pixels = make_image(engine, image_job(aspect_ratio=aspect), tmp_path / "out.png")
    assert pixels.shape[1::-1] == IMAGE_SIZES[(aspect, ImageQuality.Q1K)]


def test_4k_image(engine: SandboxEngine, tmp_path: Path) -> None:
    job = image_job(quality=ImageQuality.Q4K)
    make_image(engine, job, tmp_path / "4k.png")
    with Image.open(tmp_path / "4k.png") as picture:
        assert picture.size == (5504, 3072)


def test_image_is_deterministic_and_follows_the_prompt(engine: SandboxEngine, tmp_path: Path) -> None:
    a = make_image(engine, image_job("a red fox"), tmp_path / "a.png")
    make_image(engine, image_job("a red fox"), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other = make_image(engine, image_job("a blue whale"), tmp_path / "c.png")
    assert np.abs(a.astype(int) - other).mean() > 10  # visibly different, not just the text


def test_options_show_on_the_image(engine: SandboxEngine, tmp_path: Path) -> None:
    plain = make_image(engine, image_job(), tmp_path / "plain.png")
    searched = make_image(engine, image_job(google_search=True), tmp_path / "search.png")
    assert not np.array_equal(plain, searched)  # the "search" badge


def test_edit_composes_the_input_images(engine: SandboxEngine, tmp_path: Path) -> None:
    job = image_job(mode=ImageMode.EDIT, images=(solid(RED), solid(BLUE, (90, 200))))
    pixels = make_image(engine, job, tmp_path / "edit.png")
    assert share_near(pixels, RED, 10) > 0.03
    assert share_near(pixels, BLUE, 10) > 0.03


# -- video shots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", list(VideoAspectRatio))
def test_shot_is_a_real_720p_mp4(engine: SandboxEngine, tmp_path: Path, aspect: VideoAspectRatio) -> None:
    dest = tmp_path / "shot.mp4"
    output = engine.generate_shot(shot_job(aspect=aspect), dest, lambda _: None)
    assert output.content_type == "video/mp4" and output.metadata["frames"] == 192
    info = probe_video(dest, decode=True)
    assert (info.width, info.height) == video_size(aspect, Resolution.P720)
    assert (info.fps, info.frames, info.codec, info.pix_fmt) == (24.0, 192, "h264", "yuv420p")
    assert info.duration_s == pytest.approx(8.0)


def test_shot_is_deterministic_moves_and_follows_the_prompt(engine: SandboxEngine, tmp_path: Path) -> None:
    engine.generate_shot(shot_job("a red fox"), tmp_path / "a.mp4", lambda _: None)
    engine.generate_shot(shot_job("a red fox"), tmp_path / "b.mp4", lambda _: None)
    engine.generate_shot(shot_job("a blue whale"), tmp_path / "c.mp4", lambda _: None)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    fox, whale = frames_of(tmp_path / "a.mp4"), frames_of(tmp_path / "c.mp4")
    assert np.abs(fox[0].astype(int) - whale[0]).mean() > 10
    assert np.abs(fox[0].astype(int) - fox[60]).max() > 100  # something moves


def test_first_and_last_frames(engine: SandboxEngine, tmp_path: Path) -> None:
    job = shot_job(kind=GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO, images=(solid(RED), solid(BLUE)))
    engine.generate_shot(job, tmp_path / "fl.mp4", lambda _: None)
    frames = frames_of(tmp_path / "fl.mp4")
    assert len(frames) == 192
    assert share_near(frames[5], RED) > 0.5 and share_near(frames[5], BLUE) < 0.05
    assert share_near(frames[-5], BLUE) > 0.5 and share_near(frames[-5], RED) < 0.05
    assert 0.1 < share_near(frames[96], RED) < 0.9  # mid-transition: some of each
    assert 0.1 < share_near(frames[96], BLUE) < 0.9


def test_first_frame_only_moves_to_a_prompt_card(engine: SandboxEngine, tmp_path: Path) -> None:
    job = shot_job(
        kind=GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO,
        aspect=VideoAspectRatio.PORTRAIT,
        images=(solid(RED),),
    )
    engine.generate_shot(job, tmp_path / "one.mp4", lambda _: None)
    frames = frames_of(tmp_path / "one.mp4")
    assert share_near(frames[5], RED) > 0.5
    assert share_near(frames[-5], RED) < 0.05


def test_references_are_visible(engine: SandboxEngine, tmp_path: Path) -> None:
    refs = (solid(RED), solid(GREEN), solid(BLUE))
    engine.generate_shot(
        shot_job(kind=GenerationType.REFERENCE_2_VIDEO, images=refs), tmp_path / "r.mp4", lambda _: None
    )
    frames = frames_of(tmp_path / "r.mp4")
    for frame in (frames[0], frames[150]):
        for colour in (RED, GREEN, BLUE):
            assert share_near(frame, colour, 30) > 0.02


# -- latency, progress and failure markers ----------------------------------------------------------


def test_progress_is_monotonic_and_ends_at_100(tmp_path: Path) -> None:
    engine = SandboxEngine(Settings(home=tmp_path, sandbox_latency_s=0.05, sandbox_progress_steps=5))
    seen: list[int] = []
    engine.generate_image(image_job(), tmp_path / "a.png", seen.append)
    assert seen == sorted(set(seen)) and seen[-1] == 100 and len(seen) == 5


def test_markers_are_parsed_case_insensitively() -> None:
    parsed = parse_prompt("A cat [SANDBOX:Fail] on a [sandbox:slow=2.5] mat [Sandbox:error]")
    assert parsed.text == "A cat on a mat"
    assert parsed.fail and parsed.error and parsed.slow_s == 2.5
    assert parse_prompt("no markers [sandbox:unknown]").text == "no markers [sandbox:unknown]"


def test_markers_are_not_drawn(engine: SandboxEngine, tmp_path: Path) -> None:
    make_image(engine, image_job("a red fox [SANDBOX:slow=0]"), tmp_path / "a.png")
    make_image(engine, image_job("a red fox"), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_fail_marker_raises_engine_error(engine: SandboxEngine, tmp_path: Path) -> None:
    seen: list[int] = []
    with pytest.raises(EngineError):
        engine.generate_shot(shot_job("boom [sandbox:FAIL]"), tmp_path / "x.mp4", seen.append)
    assert 100 not in seen and not (tmp_path / "x.mp4").exists()


def test_error_marker_raises_a_plain_error(engine: SandboxEngine, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        engine.generate_image(image_job("bug [sandbox:error]"), tmp_path / "x.png", lambda _: None)
    assert not isinstance(info.value, EngineError)


def test_slow_marker_sets_the_latency(engine: SandboxEngine, tmp_path: Path) -> None:
    started = time.monotonic()
    engine.generate_image(image_job("wait [sandbox:slow=0.3]"), tmp_path / "x.png", lambda _: None)
    assert time.monotonic() - started >= 0.3  # a lower bound: sleeping at least this long
