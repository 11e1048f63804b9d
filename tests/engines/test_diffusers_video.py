"""The diffusers engine's shots, on the CPU with tiny random pipelines (no download): real LTX-2, Wan,
Wan image-to-video and Wan VACE pipeline classes, real scheduler loops, real VAE (and LTX-2 audio VAE
and vocoder) decoding and real MP4 encoding, loaded by path as a deployment loads its weights.

The models generate a few frames at a few hundred pixels (NANOGEN_DIFFUSERS_VIDEO_FPS=1,
..._NATIVE_PIXELS=256: 9 frames of 32x32 or 32x16); every shot is still 8 s at 24 fps, which is what
the tests check. In-process tests drive the engine at a tenth of 720p (sizes, frames, sound, progress,
cancellation and the deadline between steps, a pipeline that raises); the last runs a real ``nanogen
serve`` with ``NANOGEN_ENGINE_VIDEOS=diffusers`` (1280 x 720 shots joined, credits, refusal, refund)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: nothing is fetched

import av
import numpy as np
import pytest
from PIL import Image
from tests.conftest import ImageHost, Server, wait_for
from tests.engines import diffusers_support as support

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from nanogen.engines.base import DEADLINE_MESSAGE, InputImage, JobStopped, ShotJob  # noqa: E402
from nanogen.engines.diffusers import video  # noqa: E402
from nanogen.engines.diffusers.engine import DiffusersEngine  # noqa: E402
from nanogen.engines.diffusers.runtime import seed_for  # noqa: E402
from nanogen.errors import EngineError  # noqa: E402
from nanogen.media.video import probe_video  # noqa: E402
from nanogen.products import (  # noqa: E402
    SHOT_FPS,
    SHOT_SECONDS,
    GenerationType,
    Product,
    Resolution,
    VideoAspectRatio,
    video_size,
)
from nanogen.settings import Settings  # noqa: E402

T2V, FLF2V, REF = (
    GenerationType.TEXT_2_VIDEO,
    GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO,
    GenerationType.REFERENCE_2_VIDEO,
)
SMALL = {
    "diffusers_device": "cpu",
    # 1 s between frames: 9 frames for 8 s (Wan VACE needs as many latent frames, 3, as references)
    "diffusers_video_fps": 1.0,
    "diffusers_video_native_pixels": 256,
    "diffusers_video_steps": 2,  # Wan; the distilled LTX-2 keeps its 8 sigmas
}


# -- tiny pipelines, built once per session ------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one torch thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video-models")
    return {
        # 'distilled' in the name: the default family, LTX-2.3 distilled's 8-sigma schedule.
        "ltx2": support.tiny_ltx2(root / "ltx2-distilled"),
        "wan": support.tiny_wan(root / "wan"),
        "vace": support.tiny_wan_vace(root / "wan-vace"),
        "i2v": support.tiny_wan_i2v(root / "wan-flf2v"),
        "broken": support.tiny_wan_vace(root / "wan-vace-broken", text_dim=24),
    }


@pytest.fixture(scope="module")
def engine(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    settings = Settings(
        home=tmp_path_factory.mktemp("home"),
        diffusers_video_model=str(models["ltx2"]),
        diffusers_reference_video_model=str(models["vace"]),
        **SMALL,
    )
    return DiffusersEngine(settings)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> InputImage:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return InputImage(buffer.getvalue(), "image/png", *size)


def shot_job(
    generation_type: GenerationType = T2V,
    aspect: VideoAspectRatio = VideoAspectRatio.LANDSCAPE,
    images: tuple[InputImage, ...] = (),
    task_id: str = "task_shot",
    scale: int = 1,
) -> ShotJob:
    """A 720p shot; ``scale`` 10 makes it a tenth of the size (128 x 72), the same aspect ratio: the
    engine writes whatever size the job says (the route gives it the contract's, as the server test
    checks), and encoding 192 frames at 720p is most of a tiny model's shot."""
    width, height = (side // scale for side in video_size(aspect, Resolution.P720))
    return ShotJob(
        task_id=task_id,
        prompt="a red dog walking in the park at dawn",
        generation_type=generation_type,
        aspect_ratio=aspect,
        resolution=Resolution.P720,
        width=width,
        height=height,
        images=images,
    )


def audio_track(path: Path) -> tuple[int, np.ndarray]:
    """The decoded sound: (sample rate, samples as channels x samples)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        return stream.codec_context.sample_rate, np.concatenate(chunks, axis=1)


def assert_contract_shot(path: Path, aspect: VideoAspectRatio, scale: int = 1) -> None:
    info = probe_video(path, decode=True)
    assert (info.width, info.height) == tuple(side // scale for side in video_size(aspect, Resolution.P720))
    assert info.frames == SHOT_SECONDS * SHOT_FPS and info.fps == SHOT_FPS
    assert info.duration_s == pytest.approx(SHOT_SECONDS, abs=0.05)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    rate, samples = audio_track(path)  # every shot has AAC, 48 kHz stereo, 8 s (Veo's)
    assert rate == video.AUDIO_RATE and samples.shape[0] == 2
    assert samples.shape[1] / rate == pytest.approx(SHOT_SECONDS, abs=0.05)


# -- in process -----------------------------------------------------------------------------------------
def test_text_to_video_on_ltx2_is_the_contract_shot_with_the_models_sound(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    reports: list[int] = []
    job = shot_job(task_id="task_t2v", scale=10)  # the server test below makes 1280 x 720 ones
    output = engine.generate_shot(job, tmp_path / "shot.mp4", reports.append)
    assert output.content_type == "video/mp4"
    assert_contract_shot(output.path, VideoAspectRatio.LANDSCAPE, scale=10)
    _, samples = audio_track(output.path)
    assert np.abs(samples).max() > 0  # LTX-2's vocoder made it: not the silent track
    meta = output.metadata
    assert meta["seed"] == seed_for("task_t2v") and meta["family"] == "ltx2-distilled"
    assert meta["steps"] == 8 and meta["audio"] == "model"
    # 8 s at 1 fps: 9 frames (8 intervals, a multiple of the tiny VAE's 2); 32 x 32, LTX-2's multiple.
    assert (meta["native_width"], meta["native_height"], meta["native_frames"]) == (32, 32, 9)
    # Loading 1-5, one report per step from 5 to 85, then decoded and written.
    assert reports == sorted(reports) and reports[0] == 1
    steps = [p for p in reports if 5 < p <= video.STEPS_END]
    assert len(steps) == 8 and steps[-1] == video.STEPS_END
    assert reports[-2:] == [video.DECODED, video.WRITTEN]


def test_first_and_last_frames_on_ltx2_portrait(engine: DiffusersEngine, tmp_path: Path) -> None:
    images = (png((230, 20, 20)), png((20, 20, 230), (40, 90)))
    job = shot_job(FLF2V, VideoAspectRatio.PORTRAIT, images, scale=10)
    output = engine.generate_shot(job, tmp_path / "flf.mp4", lambda _: None)
    assert_contract_shot(output.path, VideoAspectRatio.PORTRAIT, scale=10)
    assert output.metadata["family"] == "ltx2-distilled"


def test_reference_images_on_wan_vace_get_a_silent_track(engine: DiffusersEngine, tmp_path: Path) -> None:
    images = (png((230, 20, 20)), png((20, 200, 20), (30, 80)), png((20, 20, 230), (1, 1)))
    output = engine.generate_shot(
        shot_job(REF, images=images, scale=10), tmp_path / "ref.mp4", lambda _: None
    )
    assert_contract_shot(output.path, VideoAspectRatio.LANDSCAPE, scale=10)
    _, samples = audio_track(output.path)
    assert not samples.any()  # Wan makes no sound: silence, so mixed shots still join with theirs
    assert output.metadata["family"] == "wan-vace" and output.metadata["steps"] == 2


def test_wan_text_to_video_and_what_it_cannot_do(models: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        diffusers_video_model=str(models["wan"]),
        diffusers_reference_video_model=str(models["vace"]),
        **SMALL,
    )
    engine = DiffusersEngine(settings)
    caps = engine.capabilities(Product.VIDEO)
    assert caps["generation_type"] == {T2V.value, REF.value}  # first/last frames: the Wan T2V model
    assert caps["resolution"] == {r.value for r in Resolution}
    reason = engine.unsupported(Product.VIDEO, generation_type=FLF2V.value)
    assert reason and "generation_type FIRST_AND_LAST_FRAMES_2_VIDEO" in reason
    with pytest.raises(EngineError, match=r"Wan text-to-video .* does not make FIRST_AND_LAST"):
        engine.generate_shot(shot_job(FLF2V, images=(png((1, 2, 3)),)), tmp_path / "no.mp4", lambda _: None)
    output = engine.generate_shot(shot_job(scale=10), tmp_path / "wan.mp4", lambda _: None)
    assert_contract_shot(output.path, VideoAspectRatio.LANDSCAPE, scale=10)
    assert output.metadata["family"] == "wan" and output.metadata["audio"] == "silent"
    assert any(c.ok and "Wan text-to-video, 16 fps" in c.detail for c in video.diagnose(engine))


def test_first_and_last_frames_on_wan_image_to_video(models: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", diffusers_flf2v_model=str(models["i2v"]), **SMALL)
    engine = DiffusersEngine(settings)
    for images in [(png((230, 20, 20)), png((20, 20, 230))), (png((230, 20, 20)),)]:  # last frame optional
        job = shot_job(FLF2V, images=images, scale=10)
        output = engine.generate_shot(job, tmp_path / f"i2v-{len(images)}.mp4", lambda _: None)
        assert_contract_shot(output.path, VideoAspectRatio.LANDSCAPE, scale=10)
        assert output.metadata["family"] == "wan-i2v"


def test_a_canceled_shot_stops_between_steps(engine: DiffusersEngine, tmp_path: Path) -> None:
    job = shot_job(task_id="task_cancel")
    reports: list[int] = []

    def progress(value: int) -> None:
        reports.append(value)
        if value > 5:  # the first step is done: the client cancels
            job.stop.set()

    with pytest.raises(JobStopped, match="stopped"):
        engine.generate_shot(job, tmp_path / "canceled.mp4", progress)
    assert [p for p in reports if p > 5] == [reports[-1]]  # no step after the one that saw the cancel
    assert not (tmp_path / "canceled.mp4").exists()


def test_a_late_shot_stops_at_its_deadline_between_steps(engine: DiffusersEngine, tmp_path: Path) -> None:
    job = replace(shot_job(task_id="task_late"), deadline=time.time() + 3600)
    reports: list[int] = []

    def progress(value: int) -> None:
        reports.append(value)
        if value > 5:  # the task's deadline passes during the second step
            object.__setattr__(job, "deadline", time.time() - 1)

    with pytest.raises(JobStopped) as stopped:
        engine.generate_shot(job, tmp_path / "late.mp4", progress)
    assert str(stopped.value) == DEADLINE_MESSAGE
    assert len([p for p in reports if p > 5]) == 1


def test_a_pipeline_that_raises_is_a_message(models: dict[str, Path], tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        diffusers_video_model=str(models["ltx2"]),
        diffusers_reference_video_model=str(models["broken"]),
        **SMALL,
    )
    engine = DiffusersEngine(settings)
    with pytest.raises(EngineError) as failed:
        engine.generate_shot(shot_job(REF, images=(png((9, 9, 9)),)), tmp_path / "x.mp4", lambda _: None)
    message = str(failed.value)
    assert message.startswith(f"The model {models['broken']} failed: RuntimeError")
    assert "Traceback" not in message and "\n" not in message


def test_plan_arithmetic() -> None:
    # LTX-2 at 24 fps: 193 frames (8k + 1), of which the contract keeps 192; Wan at 16 fps: 129.
    assert video.frame_count(8, 24, 8) == 193 and video.frame_count(8, 16, 4) == 129
    # 720p at LTX-2's native size: 1280 x 736 (multiples of 32), centre-cropped to 1280 x 720.
    assert video.generation_size(1280, 720, 1280 * 720, 32) == (1280, 736)
    assert video.generation_size(1920, 1080, 832 * 480, 16) == (848, 480)  # Wan 480p, resized up
    assert video.generation_size(720, 1280, 832 * 480, 16) == (480, 848)


# -- end to end: a real server with NANOGEN_ENGINE_VIDEOS=diffusers ----------------------------------
@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("srv-video"),
        extra_env={
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "NANOGEN_ENGINE_VIDEOS": "diffusers",
            "NANOGEN_DIFFUSERS_VIDEO_MODEL": str(models["ltx2"]),
            "NANOGEN_DIFFUSERS_FLF2V_MODEL": str(models["wan"]),  # text only: refused at submit
            "NANOGEN_DIFFUSERS_REFERENCE_VIDEO_MODEL": str(models["broken"]),  # raises: refunded
            "NANOGEN_DIFFUSERS_DEVICE": "cpu",
            "NANOGEN_DIFFUSERS_VIDEO_FPS": "1",
            "NANOGEN_DIFFUSERS_VIDEO_NATIVE_PIXELS": "256",
            "NANOGEN_DIFFUSERS_VIDEO_STEPS": "2",
        },
    ).start()
    yield srv
    srv.stop()


def shot(
    shot_id: str, generation_type: GenerationType = T2V, images: list[str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": shot_id, "prompt": "a cat at dusk", "generationType": generation_type.value}
    if images:
        body["imageUrls"] = images
    return body


def ended(client: Any, task_ids: list[dict[str, str]]) -> Any:
    def check() -> Any:
        r = client.post("/api/veo-3/check-status", json={"taskIds": task_ids, "resolution": "720p"})
        body = r.json()
        return body if body["status"] in {"completed", "failed", "partial"} else None

    return wait_for(check, interval=0.5)


def test_server_makes_a_two_shot_video_and_refuses_or_refunds_what_it_cannot_make(
    server: Server, image_host: ImageHost, tmp_path: Path
) -> None:
    account = server.new_account(100)
    with account.client() as client:
        r = client.post("/api/veo-3/generate", json={"shots": [shot("a"), shot("b")], "resolution": "720p"})
        assert r.status_code == 200, r.text
        assert r.json()["creditsUsed"] == 20  # the contract's 10 per 720p shot
        task_ids = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in r.json()["shots"]]
        status = ended(client, task_ids)
        assert status["status"] == "completed", status
        joined = tmp_path / "joined.mp4"
        joined.write_bytes(client.get(status["concatenatedVideoUrl"]).content)

        # First/last frames: the configured model is text-to-video only, refused before any debit.
        flf = shot("c", FLF2V, [image_host.url("red.png"), image_host.url("blue.png")])
        refused = client.post("/api/veo-3/generate", json={"shots": [flf], "resolution": "720p"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["errorCode"] == "INVALID_PARAMETER"
        assert "FIRST_AND_LAST_FRAMES_2_VIDEO" in refused.json()["error"]
        assert account.balance() == 80

        # References: the model loads, then raises while it runs: the shot fails and is refunded.
        r = client.post(
            "/api/veo-3/generate",
            json={"shots": [shot("d", REF, [image_host.url("green.jpg")])], "resolution": "720p"},
        )
        assert r.status_code == 200, r.text
        failed = ended(client, [{"shotId": "d", "taskId": r.json()["shots"][0]["taskId"]}])
    info = probe_video(joined)
    assert (info.width, info.height, info.has_audio) == (1280, 720, True)
    assert info.frames == 2 * SHOT_SECONDS * SHOT_FPS
    assert info.duration_s == pytest.approx(2 * SHOT_SECONDS, abs=0.1)
    assert failed["status"] == "failed", failed
    assert "failed: RuntimeError" in json.dumps(failed)
    wait_for(lambda: account.balance() == 80)
    account.assert_books_balance()
    with server.db() as db:
        (raw,) = db.execute(
            "SELECT params FROM nanogen_tasks WHERE id=?", (task_ids[0]["taskId"],)
        ).fetchone()
    assert json.loads(raw)["seed"] == seed_for(task_ids[0]["taskId"])


def test_sound_is_fitted_to_the_shot_and_frames_are_blended_between_generated_ones() -> None:
    # 3 s of a 24 kHz mono tone: resampled to 48 kHz stereo, then 5 s of silence up to 8 s.
    tone = np.sin(np.arange(3 * 24_000, dtype=np.float32) * 0.05)[None, :]
    track = video.shot_audio(tone, 24_000, SHOT_SECONDS)
    assert track.shape == (2, video.AUDIO_RATE * SHOT_SECONDS) and track.dtype == np.float32
    assert np.abs(track[:, : 2 * video.AUDIO_RATE]).max() > 0.5 and not track[:, 4 * video.AUDIO_RATE :].any()
    assert not video.shot_audio(None, 0, SHOT_SECONDS).any()
    # 16 fps to 24: output frame 1 is 2/3 of the way from generated frame 0 to frame 1.
    frames = np.array([np.zeros((2, 2, 3)), np.full((2, 2, 3), 255)], dtype=np.uint8)
    assert video.frame_at(frames, 0.0).max() == 0 and video.frame_at(frames, 1.0).min() == 255
    assert int(video.frame_at(frames, 1 * 16 / 24)[0, 0, 0]) == 170
