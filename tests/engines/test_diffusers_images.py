"""The diffusers engine's images, on the CPU with tiny random pipelines (no download): real pipeline
classes, real scheduler loops and real VAE decoding, loaded by path as a deployment loads its weights.

In-process tests drive the engine directly (size, progress, cancellation and the deadline between
steps, failures as messages, the runtime's device lock and memory budget, doctor); the last ones run
a real ``nanogen serve`` with ``NANOGEN_ENGINE_IMAGES=diffusers`` (credits, refusal, refund)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: nothing is fetched

import pytest
from PIL import Image
from tests.conftest import ImageHost, Server, image_bytes, wait_for
from tests.engines import diffusers_support as support

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
support.single_thread()

from nanogen.engines.base import DEADLINE_MESSAGE, ImageJob, InputImage, JobStopped  # noqa: E402
from nanogen.engines.diffusers.engine import (  # noqa: E402
    DiffusersEngine,
    native_size,
    reference_images,
)
from nanogen.engines.diffusers.runtime import PipelineRuntime, seed_for  # noqa: E402
from nanogen.errors import EngineError  # noqa: E402
from nanogen.products import ImageAspectRatio, ImageMode, ImageQuality, Product, image_size  # noqa: E402
from nanogen.settings import Settings  # noqa: E402

NATIVE_PIXELS = 4096  # 64 x 64 natively: a few seconds per image on two cores


# -- tiny pipelines, built once per session ------------------------------------------------------------
@pytest.fixture(scope="session")
def klein_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.tiny_flux2_klein(tmp_path_factory.mktemp("flux2-klein"))


@pytest.fixture(scope="session")
def broken_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline that raises while it runs: its text encoder lacks the layers the pipeline reads."""
    return support.tiny_flux2_klein(tmp_path_factory.mktemp("flux2-klein-broken"), text_layers=8)


@pytest.fixture(scope="session")
def tiny_z_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.tiny_z_image(tmp_path_factory.mktemp("z-image-tiny"))


@pytest.fixture(scope="session")
def z_image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the index of a Z-Image pipeline: enough for what is checked before loading (it cannot edit)."""
    directory = tmp_path_factory.mktemp("z-image")
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    return directory


def settings_for(tmp: Path, model: Path | str, **more: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp,
        "diffusers_image_model": str(model),
        "diffusers_native_pixels": NATIVE_PIXELS,
        "diffusers_device": "cpu",
    }
    return Settings(**{**values, **more})


@pytest.fixture(scope="module")
def engine(klein_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    return DiffusersEngine(settings_for(tmp_path_factory.mktemp("home"), klein_dir))


def image_job(
    task_id: str,
    mode: ImageMode = ImageMode.GENERATE,
    aspect: ImageAspectRatio = ImageAspectRatio.LANDSCAPE,
    quality: ImageQuality = ImageQuality.Q1K,
    images: tuple[InputImage, ...] = (),
    deadline: float = float("inf"),
) -> ImageJob:
    width, height = image_size(aspect, quality)
    return ImageJob(
        task_id=task_id,
        prompt="a lighthouse at dusk",
        mode=mode,
        aspect_ratio=aspect,
        quality=quality,
        width=width,
        height=height,
        images=images,
        deadline=deadline,
    )


def input_image(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> InputImage:
    return InputImage(image_bytes(colour, size=size), "image/png", *size)


def device_free(engine: DiffusersEngine) -> bool:
    return not any(device.lock.locked() for device in engine.runtime.devices)


# -- images ------------------------------------------------------------------------------------------
def test_generate_makes_the_contract_size_from_the_native_one(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    reports: list[int] = []
    output = engine.generate_image(image_job("task_generate"), tmp_path / "out.png", reports.append)
    with Image.open(output.path) as picture:
        assert (picture.format, picture.size) == ("PNG", (1376, 768))
    meta = output.metadata
    assert (
        (meta["native_width"], meta["native_height"]) == native_size(1376, 768, NATIVE_PIXELS, 16) == (80, 48)
    )
    assert meta["seed"] == seed_for("task_generate")
    assert meta["steps"] == 4 and meta["device"] == "cpu"  # FLUX.2 [klein] distilled: 4 steps
    # Loading (1, 5), then one report per denoising step from 5 to 95, then the resize.
    assert reports == [1, 5, 27, 50, 72, 95, 97]
    assert device_free(engine)


def test_edit_passes_the_references_the_model_uses_and_tiles_the_rest(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    inputs = tuple(input_image(c, (64, 64)) for c in colours)
    job = image_job(
        "task_edit", ImageMode.EDIT, ImageAspectRatio.CLASSIC_PORTRAIT, ImageQuality.Q2K, images=inputs
    )
    output = engine.generate_image(job, tmp_path / "out.png", lambda _: None)
    with Image.open(output.path) as picture:
        assert picture.size == image_size(ImageAspectRatio.CLASSIC_PORTRAIT, ImageQuality.Q2K)
    assert output.metadata["inputs_used"] == 4  # three inputs, then a grid of the other three


def test_z_image_generates_and_cannot_edit(tiny_z_image_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, tiny_z_image_dir))
    assert engine.capabilities(Product.IMAGE)["mode"] == {"generate"}
    reports: list[int] = []
    job = image_job("task_z", aspect=ImageAspectRatio.CLASSIC_LANDSCAPE)
    output = engine.generate_image(job, tmp_path / "out.png", reports.append)
    with Image.open(output.path) as picture:
        assert picture.size == (1200, 896)
    assert output.metadata["steps"] == 9  # Z-Image-Turbo: 8 evaluations
    assert reports == [1, 5, *range(15, 96, 10), 97]
    edit = image_job("task_z_edit", ImageMode.EDIT, images=(input_image((1, 2, 3)),))
    with pytest.raises(EngineError, match=r"cannot do this: Z-Image-Turbo .* cannot edit"):
        engine.generate_image(edit, tmp_path / "edit.png", lambda _: None)


def test_reference_images_decode_each_input_once_and_keep_every_input() -> None:
    red = input_image((230, 20, 20), (32, 20))
    many = (red, input_image((0, 0, 230)), red, input_image((0, 230, 0)), input_image((9, 9, 9)))
    pictures = reference_images(many, limit=3, pixels=1024 * 1024)
    assert len(pictures) == 3
    assert pictures[0].size == (102, 64)  # small inputs are brought up to the pipelines' minimum
    assert pictures[2].size == (1024, 1024)  # the grid of the inputs past the second
    large = InputImage(image_bytes((1, 2, 3), "JPEG", (2000, 1500)), "image/jpeg", 2000, 1500)
    assert reference_images((large, red, large), limit=4, pixels=4096)[0].size == (85, 64)
    again = reference_images((red, red), limit=4, pixels=4096)
    assert again[0] is again[1]  # decoded once


# -- stopping between steps ----------------------------------------------------------------------------
def test_a_canceled_job_stops_between_steps_and_frees_the_device(
    engine: DiffusersEngine, tmp_path: Path
) -> None:
    job = image_job("task_cancel")
    reports: list[int] = []

    def progress(value: int) -> None:
        reports.append(value)
        if value == 27:  # after the first step: the task was canceled elsewhere
            job.stop.set()

    with pytest.raises(JobStopped, match="its task ended"):
        engine.generate_image(job, tmp_path / "out.png", progress)
    assert reports == [1, 5, 27]  # no further step ran
    assert device_free(engine)
    assert not (tmp_path / "out.png").exists()


def test_the_deadline_stops_the_job_between_steps(engine: DiffusersEngine, tmp_path: Path) -> None:
    job = image_job("task_late", deadline=time.time() + 3600)
    reports: list[int] = []

    def progress(value: int) -> None:
        reports.append(value)
        if value == 50:  # the task's deadline passes during the second step
            object.__setattr__(job, "deadline", time.time() - 1)

    with pytest.raises(JobStopped) as stopped:
        engine.generate_image(job, tmp_path / "out.png", progress)
    assert stopped.value.message == DEADLINE_MESSAGE
    assert reports == [1, 5, 27, 50]
    assert device_free(engine)


# -- failures as messages --------------------------------------------------------------------------------
def test_a_pipeline_that_raises_fails_with_a_message(broken_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, broken_dir))
    with pytest.raises(EngineError) as failed:
        engine.generate_image(image_job("task_broken"), tmp_path / "out.png", lambda _: None)
    assert failed.value.message.startswith(f"The model {broken_dir} failed: IndexError")
    assert "Traceback" not in failed.value.message
    assert device_free(engine)


@pytest.mark.parametrize("where", ["directory", "empty", "hub"])
def test_missing_weights_are_named(where: str, tmp_path: Path, klein_dir: Path) -> None:
    if where == "hub":  # a known hub id that is not in the cache (downloads are off)
        model: str = "black-forest-labs/FLUX.2-klein-4B"
    else:
        model = str(tmp_path / "weights")
        if where == "empty":
            (tmp_path / "weights").mkdir()
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_edit_model=model))
    inputs = (input_image((1, 2, 3)),)
    job = image_job("task_missing", ImageMode.EDIT, images=inputs)
    if where != "hub":  # nanogen cannot tell a missing directory's model: refused at submit already
        assert "edit" not in engine.capabilities(Product.IMAGE)["mode"]
        assert engine.unsupported(Product.IMAGE, mode="edit") is not None
        return
    with pytest.raises(EngineError, match=r"^Model weights not found at black-forest-labs/FLUX.2-klein-4B"):
        engine.generate_image(job, tmp_path / "out.png", lambda _: None)
    checks = {c.name: c for c in engine.diagnose(frozenset({Product.IMAGE}))}
    assert "not downloaded yet" in checks["image edit model"].detail


def test_out_of_gpu_memory_is_a_message(engine: DiffusersEngine, klein_dir: Path) -> None:
    with (
        pytest.raises(EngineError, match=r"^Out of GPU memory on cpu running .*CPU_OFFLOAD"),
        engine.runtime.session(image_job("task_oom"), str(klein_dir), lambda _: None),
    ):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert device_free(engine)


def test_a_required_gpu_that_is_missing_is_a_message(klein_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_device="cuda"))
    with pytest.raises(EngineError, match=r"^No GPU: NANOGEN_DIFFUSERS_DEVICE=cuda"):
        engine.generate_image(image_job("task_gpu"), tmp_path / "out.png", lambda _: None)
    checks = {c.name: c for c in engine.diagnose(frozenset({Product.IMAGE}))}
    assert not checks["gpu"].ok


def test_the_local_cost_is_the_gpu_seconds_at_the_hour_rate(klein_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_gpu_hour_usd=3.6))
    job = image_job("task_cost")
    engine.record_gpu_seconds("task_cost", 2.5)
    assert engine.cost_micros(job) == 2_500  # 2.5 s of a $3.60 hour: $0.0025
    assert engine.cost_micros(job) is None  # counted once
    unpriced = DiffusersEngine(settings_for(tmp_path, klein_dir))
    unpriced.record_gpu_seconds("task_cost", 2.5)
    assert unpriced.cost_micros(job) is None


def test_the_attention_backend_setting_reaches_the_transformer(klein_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_attention_backend="_native_math"))
    output = engine.generate_image(image_job("task_backend"), tmp_path / "out.png", lambda _: None)
    assert Image.open(output.path).size == (1376, 768)
    (resident,) = engine.runtime.devices[0].resident.values()
    backends = {
        getattr(m.processor, "_attention_backend", None)
        for m in resident.pipe.transformer.modules()
        if hasattr(m, "processor")
    }
    assert {getattr(b, "value", b) for b in backends} == {"_native_math"}
    bogus = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_attention_backend="warp-drive"))
    (check,) = [c for c in bogus.diagnose(frozenset({Product.IMAGE})) if c.name == "attention backend"]
    assert not check.ok and "_native_cudnn" in check.detail


# -- capabilities, doctor ------------------------------------------------------------------------------
def test_options_the_configured_model_cannot_do_are_refused(
    klein_dir: Path, z_image_dir: Path, tmp_path: Path
) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir, diffusers_edit_model=str(z_image_dir)))
    assert engine.capabilities(Product.IMAGE)["mode"] == {"generate"}
    assert engine.unsupported(Product.IMAGE, quality="4K", mode="generate") is None
    reason = engine.unsupported(Product.IMAGE, quality="1K", mode="edit")
    assert reason is not None and "Z-Image-Turbo cannot edit" in reason


def test_doctor_reports_weights_device_and_versions_without_loading(klein_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(settings_for(tmp_path, klein_dir))
    checks = engine.diagnose(frozenset({Product.IMAGE}))
    assert all(c.ok for c in checks), checks
    details = " | ".join(c.detail for c in checks)
    assert f"torch {torch.__version__}" in details and "diffusers 0.42.0" in details
    assert "FLUX.2 [klein] (distilled, 4 steps)" in details and "uses up to 4 input images" in details
    assert all(not device.resident for device in engine.runtime.devices)  # nothing was loaded


# -- the runtime: resident pipelines and devices ------------------------------------------------------
class FakePipeline:
    """Stands for a loaded pipeline: one 256x256 linear layer (263,168 bytes of float32)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.components = {"transformer": torch.nn.Linear(256, 256)}


def test_resident_pipelines_are_evicted_least_recently_used(tmp_path: Path) -> None:
    loads: list[str] = []

    def loader(model: str, device: Any) -> FakePipeline:
        loads.append(model)
        return FakePipeline(model)

    budget_gb = 2.5 * 263_168 / 1024**3  # two fit
    runtime = PipelineRuntime(settings_for(tmp_path, "a", diffusers_memory_budget_gb=budget_gb), loader)
    job = image_job("task_lru")
    for model in ["a", "b", "a", "c", "a", "b"]:
        with runtime.session(job, model, lambda _: None) as session:
            assert session.pipe.name == model
    # "b" was the least recently used when "c" came, and "c" when "b" came back.
    assert loads == ["a", "b", "c", "b"]
    assert list(runtime.devices[0].resident) == ["a", "b"]


def test_one_generation_at_a_time_per_device_and_a_waiting_job_can_stop(tmp_path: Path) -> None:
    runtime = PipelineRuntime(settings_for(tmp_path, "a"), lambda model, device: FakePipeline(model))
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with runtime.session(image_job("task_first"), "a", lambda _: None):
            inside.set()
            leave.wait(30)

    first = threading.Thread(target=hold)
    first.start()
    assert inside.wait(30)
    waiting = image_job("task_waiting")
    outcome: list[BaseException] = []

    def wait_then_stop() -> None:
        try:
            with runtime.session(waiting, "a", lambda _: None):
                pass
        except JobStopped as exc:
            outcome.append(exc)

    second = threading.Thread(target=wait_then_stop)
    second.start()
    waiting.stop.set()  # canceled while waiting for the device
    second.join(30)
    assert len(outcome) == 1
    leave.set()
    first.join(30)
    with runtime.session(image_job("task_third"), "a", lambda _: None) as session:
        assert session.device == "cpu"


# -- end to end: a real server with NANOGEN_ENGINE_IMAGES=diffusers ----------------------------------
def diffusers_server(home: Path, image_model: Path, edit_model: Path) -> Server:
    return Server(
        home,
        extra_env={
            "HF_HUB_OFFLINE": "1",
            **support.SINGLE_THREAD_ENV,
            "NANOGEN_ENGINE_IMAGES": "diffusers",
            "NANOGEN_DIFFUSERS_IMAGE_MODEL": str(image_model),
            "NANOGEN_DIFFUSERS_EDIT_MODEL": str(edit_model),
            "NANOGEN_DIFFUSERS_NATIVE_PIXELS": str(NATIVE_PIXELS),
            "NANOGEN_DIFFUSERS_DEVICE": "cpu",
            "NANOGEN_DIFFUSERS_GPU_HOUR_USD": "3.6",
        },
    )


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, klein_dir: Path, broken_dir: Path, z_image_dir: Path
) -> Iterator[tuple[Server, Server]]:
    good = diffusers_server(tmp_path_factory.mktemp("srv-good"), klein_dir, z_image_dir)
    broken = diffusers_server(tmp_path_factory.mktemp("srv-broken"), broken_dir, broken_dir)
    try:
        yield good.start(), broken.start()
    finally:
        good.stop()
        broken.stop()


def generate(client: Any, **body: Any) -> Any:
    return client.post("/api/nano-banana-2/generate", json={"prompt": "a red lighthouse at dusk", **body})


def ended(client: Any, generation_id: str) -> Any:
    def check() -> Any:
        body = client.post("/api/nano-banana-2/check-status", json={"generationId": generation_id}).json()
        return body if body["status"] in {"completed", "failed"} else None

    return wait_for(check)


def test_server_generates_with_the_contract_credits_and_records_the_seed(
    servers: tuple[Server, Server],
) -> None:
    server, _ = servers
    account = server.new_account(100)
    with account.client() as client:
        r = generate(client, aspectRatio="16:9", imageQuality="2K")
        assert r.status_code == 200, r.text
        assert r.json()["creditsUsed"] == 8
        status = ended(client, r.json()["generationId"])
        assert status["status"] == "completed", status
        picture = Image.open(io.BytesIO(client.get(status["imageUrl"]).content))
        assert picture.size == image_size(ImageAspectRatio.LANDSCAPE, ImageQuality.Q2K)
    assert account.balance() == 92
    with server.db() as db:
        raw, cost = db.execute(
            "SELECT params, provider_cost_micros FROM nanogen_tasks WHERE id=?", (r.json()["taskId"],)
        ).fetchone()
    assert json.loads(raw)["seed"] == seed_for(r.json()["taskId"])
    assert cost > 0  # the seconds it held the device, at $3.60 an hour (nanogen credits show)


def test_server_refuses_what_the_model_cannot_do_before_any_debit(
    servers: tuple[Server, Server], image_host: ImageHost
) -> None:
    server, _ = servers
    account = server.new_account(100)
    with account.client() as client:
        r = generate(client, mode="edit", inputImageUrls=[image_host.url("red.png")])
    assert r.status_code == 400, r.text
    assert r.json()["errorCode"] == "INVALID_PARAMETER"
    assert "Z-Image-Turbo cannot edit" in r.json()["error"]
    assert account.balance() == 100 and account.ledger_sums() == {"grant": 100}


def test_server_fails_and_refunds_a_pipeline_that_raises(servers: tuple[Server, Server]) -> None:
    _, server = servers
    account = server.new_account(100)
    with account.client() as client:
        r = generate(client, imageQuality="4K")
        assert r.status_code == 200, r.text
        status = ended(client, r.json()["generationId"])
    assert status["status"] == "failed"
    assert "failed: IndexError" in status["error"]
    wait_for(lambda: account.balance() == 100)
    account.assert_books_balance()
