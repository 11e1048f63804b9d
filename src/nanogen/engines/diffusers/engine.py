"""The diffusers engine: open-weight models on this machine's GPU, behind the same endpoints.

Images: the configured model (``NANOGEN_DIFFUSERS_IMAGE_MODEL``, and ``..._EDIT_MODEL`` for edits)
generates at its native size for the request's aspect ratio (about ``native_pixels``, both sides a
multiple of the model's patch), and Pillow's Lanczos filter resizes that to the contract's exact size
(docs/engines.md: a 4K image is a resized ~1 MP one, not four times the detail). Edits pass the input
images as references, up to as many as the model really uses; the rest are tiled into the last one.

Video shots are ``video.py``'s (imported on first use). It provides, taking this engine:
``generate_shot(engine, job, dest, progress) -> Output``, ``capabilities(engine) -> dict`` (the
``generation_type`` and ``resolution`` values the configured video models can do) and
``diagnose(engine) -> list[Check]``. Both kinds run through ``engine.runtime`` (runtime.py).

Money: nothing is paid per call; ``cost_micros`` estimates a job's cost from the GPU-seconds it
took at ``NANOGEN_DIFFUSERS_GPU_HOUR_USD`` (unset: no estimate).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from PIL import Image

from nanogen.engines.base import Check, Engine, ImageJob, InputImage, Output, ProgressFn, ShotJob
from nanogen.engines.diffusers.models import ModelFamily, family_of, is_local, model_index
from nanogen.engines.diffusers.runtime import GIB, PipelineRuntime, gpu_required_message, unable
from nanogen.media import images as im
from nanogen.products import ImageMode, ImageQuality, Product
from nanogen.settings import Settings


def native_size(width: int, height: int, pixels: int, multiple: int) -> tuple[int, int]:
    """The size a model generates for a ``width`` x ``height`` request: the same aspect ratio at
    about ``pixels`` (never more than the request), both sides rounded to ``multiple``."""
    scale = min(1.0, (pixels / (width * height)) ** 0.5)
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def to_contract_size(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The documented last step: Lanczos resize to the contract's exact pixel size."""
    picture = picture.convert("RGB")
    return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)


# FLUX.2 refuses references with a side under 64 px: smaller inputs are scaled up to it.
REFERENCE_MIN_SIDE = 64


def _reference(picture: Image.Image, pixels: int) -> Image.Image:
    scale = min(1.0, (pixels / (picture.width * picture.height)) ** 0.5)
    scale = max(scale, REFERENCE_MIN_SIDE / min(picture.width, picture.height))
    if scale == 1.0:
        return picture
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def reference_images(images: tuple[InputImage, ...], limit: int, pixels: int) -> list[Image.Image]:
    """The inputs a model gets, each decoded once and brought to at most about ``pixels`` (the
    model's native size: each reference costs as many tokens per step as the output); past
    ``limit``, the last reference is a square grid of all the remaining inputs, so every input
    still reaches the model."""
    decoded: dict[int, Image.Image] = {}
    for image in images:
        if id(image) not in decoded:
            decoded[id(image)] = _reference(im.open_rgb(image.data), pixels)
    pictures = [decoded[id(image)] for image in images]
    if limit <= 0 or len(pictures) <= limit:
        return pictures
    side = max(REFERENCE_MIN_SIDE, int(pixels**0.5))
    sheet = Image.new("RGB", (side, side))
    im.compose_grid(sheet, pictures[limit - 1 :], (0, 0, side, side), max(1, side // 128))
    return [*pictures[: limit - 1], sheet]


class DiffusersEngine(Engine):
    name = "diffusers"
    products: ClassVar[frozenset[Product]] = frozenset(Product)
    image_qualities: ClassVar[frozenset[ImageQuality]] = frozenset(ImageQuality)
    # One generation at a time per device; more jobs would only wait for a device while holding a
    # queue slot another worker could use. Several GPUs: NANOGEN_*_CONCURRENCY = their number.
    default_concurrency = 1

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.models: dict[ImageMode, str] = {
            ImageMode.GENERATE: settings.diffusers_image_model,
            ImageMode.EDIT: settings.diffusers_edit_model or settings.diffusers_image_model,
        }
        self.runtime = PipelineRuntime(settings)
        self._gpu_seconds: dict[str, float] = {}  # task id -> seconds its last run held a device
        self._seconds_lock = threading.Lock()

    # -- capabilities: those of the configured models ----------------------------------------------
    def family(self, model: str) -> ModelFamily | None:
        return family_of(model)

    def capabilities(self, product: Product) -> dict[str, frozenset[str]]:
        if product is Product.VIDEO:
            hook = getattr(self._video(), "capabilities", None) if self._has_video() else None
            if hook is None:
                return {"generation_type": frozenset(), "resolution": frozenset()}
            caps: dict[str, frozenset[str]] = hook(self)
            return caps
        modes = frozenset(
            mode.value
            for mode, model in self.models.items()
            if (family := self.family(model)) is not None and mode in family.image_modes
        )
        return {"quality": frozenset(q.value for q in ImageQuality), "mode": modes}

    def unsupported(self, product: Product, **options: str) -> str | None:
        reason = super().unsupported(product, **options)
        if reason and product is Product.IMAGE and "mode" in options:
            model = self.models[ImageMode(options["mode"])]
            known = self.family(model)
            what = f"{known.label} cannot {options['mode']}" if known else "nanogen cannot tell what it is"
            return f"{reason} with model {model} ({what})"
        return reason

    def cost_micros(self, job: ImageJob | ShotJob) -> int | None:
        rate = self.settings.diffusers_gpu_hour_usd
        with self._seconds_lock:
            seconds = self._gpu_seconds.pop(job.task_id, None)
        if rate is None or seconds is None:
            return None
        return round(seconds * rate / 3600 * 1_000_000)

    def record_gpu_seconds(self, task_id: str, seconds: float) -> None:
        """What a job held its device for (video.py calls it too), for :meth:`cost_micros`."""
        with self._seconds_lock:
            self._gpu_seconds[task_id] = seconds

    # -- images --------------------------------------------------------------------------------------
    def generate_image(self, job: ImageJob, dest: Path, progress: ProgressFn) -> Output:
        model = self.models[job.mode]
        family = self.family(model)
        if family is None:
            raise unable(f"nanogen cannot tell what model {model} is (docs/engines.md lists the known ones)")
        if job.mode not in family.image_modes:
            raise unable(f"{family.label} ({model}) cannot {job.mode.value}")
        pixels = self.settings.diffusers_native_pixels or family.native_pixels
        width, height = native_size(job.width, job.height, pixels, family.multiple_of)
        steps = self.settings.diffusers_image_steps or family.steps
        kwargs: dict[str, Any] = dict(family.call_kwargs)
        used_inputs = 0
        if job.mode is ImageMode.EDIT and job.images:
            references = reference_images(job.images, family.max_input_images, pixels)
            kwargs["image"] = references
            used_inputs = len(references)
        started = time.monotonic()
        with self.runtime.session(job, model, progress) as session:
            result = session.pipe(
                prompt=job.prompt,
                width=width,
                height=height,
                num_inference_steps=steps,
                generator=session.generator,
                callback_on_step_end=session.step_callback(steps),
                output_type="pil",
                **kwargs,
            )
            picture: Image.Image = result.images[0]
            seconds = time.monotonic() - started
        self.record_gpu_seconds(job.task_id, seconds)
        progress(97)
        im.save_png(to_contract_size(picture, (job.width, job.height)), dest)
        metadata: dict[str, object] = {
            "engine": self.name,
            "model": model,
            "seed": session.seed,
            "steps": steps,
            "device": session.device,
            "native_width": width,
            "native_height": height,
            "width": job.width,
            "height": job.height,
            "inputs_used": used_inputs,
            "gpu_seconds": round(seconds, 3),
        }
        return Output(dest, "image/png", metadata)

    # -- video: video.py -----------------------------------------------------------------------------
    def _video(self) -> ModuleType:
        return importlib.import_module("nanogen.engines.diffusers.video")

    @staticmethod
    def _has_video() -> bool:
        return importlib.util.find_spec("nanogen.engines.diffusers.video") is not None

    def generate_shot(self, job: ShotJob, dest: Path, progress: ProgressFn) -> Output:
        if not self._has_video():
            raise unable("this nanogen has no diffusers video support")
        output: Output = self._video().generate_shot(self, job, dest, progress)
        return output

    # -- nanogen doctor: never loads a model -------------------------------------------------------------
    def diagnose(self, products: frozenset[Product]) -> list[Check]:
        checks = [self._check_torch(), *self._check_devices()]
        if self.settings.diffusers_attention_backend:
            checks.append(self._check_attention_backend(self.settings.diffusers_attention_backend))
        if Product.IMAGE in products:
            for mode, model in self.models.items():
                checks.append(self._check_model(f"image {mode.value} model", model, mode))
        if Product.VIDEO in products:
            hook = getattr(self._video(), "diagnose", None) if self._has_video() else None
            if hook is None:
                checks.append(Check("video", False, "this nanogen has no diffusers video support"))
            else:
                checks.extend(hook(self))
        return checks

    def _check_torch(self) -> Check:
        import diffusers

        cuda = torch.version.cuda or "none (a CPU build)"
        return Check(
            "torch", True, f"torch {torch.__version__}, CUDA {cuda}, diffusers {diffusers.__version__}"
        )

    @staticmethod
    def _check_attention_backend(backend: str) -> Check:
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = [b.value for b in AttentionBackendName]
        if backend not in names:
            return Check(
                "attention backend", False, f"{backend!r} is not one of diffusers': {', '.join(names)}"
            )
        return Check("attention backend", True, f"{backend} (NANOGEN_DIFFUSERS_ATTENTION_BACKEND)")

    def _check_devices(self) -> list[Check]:
        if self.runtime.gpu_missing:
            return [Check("gpu", False, gpu_required_message())]
        lines = self.runtime.describe_devices()
        on_gpu = any(d.is_gpu for d in self.runtime.devices)
        detail = "; ".join(lines)
        if not on_gpu:
            detail += " (NANOGEN_DIFFUSERS_DEVICE=cuda makes a GPU required)"
        return [Check("gpu" if on_gpu else "device", True, detail)]

    def _check_model(self, label: str, model: str, mode: ImageMode) -> Check:
        family = self.family(model)
        if is_local(model):
            if model_index(model) is None:
                return Check(label, False, f"weights not found at {model} (no model_index.json)")
            where = f"{model} (local directory, {_disk_gib(model):.1f} GiB of weights)"
        elif model_index(model) is not None:
            where = f"{model} (in the Hugging Face cache)"
        else:
            where = f"{model} (not downloaded yet: the first job downloads it, or `hf download {model}`)"
        if family is None:
            return Check(label, False, f"{where}: nanogen cannot tell what model this is")
        if mode not in family.image_modes:
            return Check(label, False, f"{where}: {family.label} cannot {mode.value}")
        inputs = f", uses up to {family.max_input_images} input images" if mode is ImageMode.EDIT else ""
        steps = self.settings.diffusers_image_steps
        chosen = f", {steps} steps (NANOGEN_DIFFUSERS_IMAGE_STEPS)" if steps else ""
        return Check(label, True, f"{where}: {family.label}{chosen}{inputs}")


def _disk_gib(model: str) -> float:
    from nanogen.engines.diffusers.runtime import weights_bytes

    return weights_bytes(model) / GIB
