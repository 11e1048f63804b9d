"""The diffusers engine on a GPU (issue 17): per model and capability, seconds per 1K image and per 720p
8 s shot, peak GPU memory, with the settings used. One short script for a lent GPU box:

    python bench/bench_gpu.py --weights /models [--model-budget-s 240] [--json gpu.json]

``--weights`` holds one diffusers directory per model (``/models/<name>/model_index.json``, e.g. from
``hf download black-forest-labs/FLUX.2-klein-4B --local-dir /models/flux2-klein-4b``): nothing is
downloaded, so the budget goes to the work. For each model the script builds the engine exactly as a
worker does (the ``NANOGEN_DIFFUSERS_*`` settings pointed at that directory), loads the pipeline (timed
apart), runs one warm-up job, then times each case the model's family can do (``CASES``: image
generate and edit at 1K; the video rows are the shot cases) through ``generate_image`` /
``generate_shot`` -- the whole job a task pays for: steps, decoding, the resize to the contract's size,
the PNG or MP4 encoding. Each model is time-boxed: its jobs get the remaining budget as their deadline,
so a model past it stops between two steps (engines/base.py) and the next model starts.

Video models (video_models.py) get their own time box (``--video-budget-s``, 420 s: loading a 22B
LTX-2 from disk is part of it), one timed shot per case (``--video-repeat``) and no warm-up shot; each
row says what the model generated (native size, frames, rate, steps, sound). ``--video-steps``,
``--video-fps`` and ``--video-native-pixels`` are the ``NANOGEN_DIFFUSERS_VIDEO_*`` settings.

Goals on one H200: <= 2 s per 1K image, <= 60 s per 720p 8 s shot. The exit status is 0 unless the bench
itself fails; a missed goal prints MISS. ``--device cpu --native-pixels 4096 --video-fps 1
--video-native-pixels 256`` runs it on the CPU against the tests' tiny pipelines (a smoke test of the
script, not a figure).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nanogen.engines.base import ImageJob, InputImage, JobStopped, Output, ShotJob
from nanogen.engines.diffusers.engine import DiffusersEngine
from nanogen.engines.diffusers.models import ModelFamily, family_of
from nanogen.engines.diffusers.video_models import VIDEO_TRAITS, video_family_of
from nanogen.errors import EngineError
from nanogen.products import (
    GenerationType,
    ImageAspectRatio,
    ImageMode,
    ImageQuality,
    Resolution,
    VideoAspectRatio,
    image_size,
    video_size,
)
from nanogen.settings import Settings

GOALS_S = {"image": 2.0, "video": 60.0}
PROMPT = "A lighthouse on a rocky coast at dusk, waves breaking, warm light in the windows"


@dataclass
class Row:
    model: str
    family: str
    case: str
    kind: str  # "image" or "video"
    runs_s: list[float] = field(default_factory=list)
    peak_gib: float = 0.0
    error: str = ""
    detail: str = ""  # video: what the model generated (size, frames, rate, steps, sound)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.runs_s) if self.runs_s else None


@dataclass(frozen=True)
class Case:
    """One capability measured: its label, what kind of output, whether the family can do it, the job."""

    name: str
    kind: str
    applies: Callable[[ModelFamily], bool]
    run: Callable[[DiffusersEngine, str, float, Path], Output]


def _inputs(count: int) -> tuple[InputImage, ...]:
    """Synthetic 1 MP input images (gradients of different hues), as uploaded ones would arrive."""
    images = []
    for i in range(count):
        picture = Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")
        picture = Image.merge(
            "RGB", [picture.getchannel(c).point(lambda v, k=i + c: (v * (k + 1)) % 256) for c in range(3)]
        )
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        images.append(InputImage(buffer.getvalue(), "image/png", 1024, 1024))
    return tuple(images)


def _image(mode: ImageMode, aspect: ImageAspectRatio, inputs: int = 0) -> Callable[..., Output]:
    def run(engine: DiffusersEngine, task_id: str, deadline: float, out: Path) -> Output:
        width, height = image_size(aspect, ImageQuality.Q1K)
        job = ImageJob(
            task_id=task_id,
            prompt=PROMPT,
            mode=mode,
            aspect_ratio=aspect,
            quality=ImageQuality.Q1K,
            width=width,
            height=height,
            images=_inputs(inputs),
            deadline=deadline,
        )
        return engine.generate_image(job, out / f"{task_id}.png", lambda _: None)

    return run


def _shot(kind: GenerationType, inputs: int = 0) -> Callable[..., Output]:
    def run(engine: DiffusersEngine, task_id: str, deadline: float, out: Path) -> Output:
        width, height = video_size(VideoAspectRatio.LANDSCAPE, Resolution.P720)
        job = ShotJob(
            task_id=task_id,
            prompt=PROMPT,
            generation_type=kind,
            aspect_ratio=VideoAspectRatio.LANDSCAPE,
            resolution=Resolution.P720,
            width=width,
            height=height,
            images=_inputs(inputs),
            deadline=deadline,
        )
        return engine.generate_shot(job, out / f"{task_id}.mp4", lambda _: None)

    return run


# The rows. Video rows: one 720p 8 s shot per generation type the family makes.
CASES: list[Case] = [
    Case("image generate 1K 16:9", "image", lambda f: ImageMode.GENERATE in f.image_modes,
         _image(ImageMode.GENERATE, ImageAspectRatio.LANDSCAPE)),
    Case("image generate 1K 4:3", "image", lambda f: ImageMode.GENERATE in f.image_modes,
         _image(ImageMode.GENERATE, ImageAspectRatio.CLASSIC_LANDSCAPE)),
    Case("image edit 1K, 2 inputs", "image", lambda f: ImageMode.EDIT in f.image_modes,
         _image(ImageMode.EDIT, ImageAspectRatio.LANDSCAPE, inputs=2)),
    Case("video TEXT_2_VIDEO 720p 8 s", "video", lambda f: GenerationType.TEXT_2_VIDEO in f.generation_types,
         _shot(GenerationType.TEXT_2_VIDEO)),
    Case("video FIRST_AND_LAST_FRAMES_2_VIDEO 720p 8 s", "video",
         lambda f: GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO in f.generation_types,
         _shot(GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO, inputs=2)),
    Case("video REFERENCE_2_VIDEO 720p 8 s (3 refs)", "video",
         lambda f: GenerationType.REFERENCE_2_VIDEO in f.generation_types,
         _shot(GenerationType.REFERENCE_2_VIDEO, inputs=3)),
]  # fmt: skip


def model_dirs(weights: Path, names: list[str]) -> Iterator[Path]:
    for path in sorted(weights.iterdir()):
        if (path / "model_index.json").is_file() and (not names or path.name in names):
            yield path


def settings_for(model: Path, args: argparse.Namespace) -> Settings:
    """Every model setting pointed at ``model``: the engine then uses it for all it can do."""
    values: dict[str, Any] = {
        name: str(model)
        for name in Settings.model_fields
        if name.startswith("diffusers_") and name.endswith("_model")
    }
    values.update(
        home=Path(tempfile.mkdtemp(prefix="bench-gpu-")),
        diffusers_device=args.device,
        diffusers_cpu_offload=args.offload,
        diffusers_image_steps=args.steps,
        diffusers_native_pixels=args.native_pixels,
        diffusers_attention_backend=args.attention_backend,
        diffusers_compile=args.compile,
        diffusers_video_steps=args.video_steps,
        diffusers_video_fps=args.video_fps,
        diffusers_video_native_pixels=args.video_native_pixels,
    )
    return Settings(**values)


def _shot_detail(output: Output) -> str:
    """What a video model generated before nanogen's resize and retime (from the shot's metadata)."""
    meta = output.metadata
    if "native_frames" not in meta:
        return ""
    return (
        f"{meta['native_width']}x{meta['native_height']}, {meta['native_frames']} frames at "
        f"{meta['native_fps']:g} fps, {meta['steps']} steps, sound: {meta['audio']}"
    )


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0


def bench_model(model: Path, args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], list[Row]]:
    # A video family first: LTX-2's distilled and full checkpoints share a pipeline class.
    family = video_family_of(str(model)) or family_of(str(model))
    info: dict[str, Any] = {"model": model.name, "family": family.name if family else None}
    if family is None:
        info["error"] = "nanogen cannot tell this model's family (engines/diffusers/models.py)"
        return info, []
    started = time.monotonic()
    video_model = family.name in VIDEO_TRAITS
    budget_s = args.video_budget_s if video_model else args.model_budget_s
    budget_end = time.time() + budget_s
    engine = DiffusersEngine(settings_for(model, args))
    cases = [c for c in CASES if c.applies(family)]
    rows = [Row(model.name, family.name, c.name, c.kind) for c in cases]
    # Load and warm up with the first case (loading is reported on its own, not in any row).
    try:
        _peak_reset()
        load_started = time.monotonic()
        device = engine.runtime.devices[0]
        with device.lock:
            engine.runtime.pipeline(str(model), device)
        info["load_s"] = round(time.monotonic() - load_started, 2)
        warm_started = time.monotonic()
        # A video model gets no warm-up shot: a shot is about a minute, its first-run overhead seconds.
        if cases and not video_model:
            cases[0].run(engine, "task_warmup", budget_end, out)
        info["warmup_s"] = round(time.monotonic() - warm_started, 2)
    except (EngineError, JobStopped) as exc:
        info["error"] = exc.message
        return info, rows
    for case, row in zip(cases, rows, strict=True):
        _peak_reset()
        for i in range(args.video_repeat if case.kind == "video" else args.repeat):
            if time.time() >= budget_end:
                row.error = row.error or f"time box of {budget_s:.0f} s reached"
                break
            try:
                t0 = time.monotonic()
                output = case.run(engine, f"task_{i}", budget_end, out)
                row.runs_s.append(time.monotonic() - t0)
                row.detail = _shot_detail(output)
            except (EngineError, JobStopped) as exc:
                row.error = exc.message
                break
        row.peak_gib = round(_peak_gib(), 2)
    info["settings"] = {
        "dtype": str(engine.runtime.devices[0].dtype).removeprefix("torch."),
        "device": engine.runtime.devices[0].name,
        "offload": args.offload,
        "image_steps": args.steps or family.steps,
        "native_pixels": args.native_pixels or family.native_pixels,
        "call_kwargs": family.call_kwargs,
        "attention_backend": args.attention_backend or "sdpa",
        "compile": args.compile,
    }
    if video_model:
        traits = VIDEO_TRAITS[family.name]
        info["settings"].update(
            # A distilled model keeps its trained schedule whatever --video-steps says.
            video_steps=family.steps
            if family.name.endswith("distilled")
            else args.video_steps or family.steps,
            video_fps=args.video_fps or traits.fps,
            video_native_pixels=args.video_native_pixels or family.native_pixels,
        )
    info["total_s"] = round(time.monotonic() - started, 1)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info, rows


def environment() -> dict[str, Any]:
    import diffusers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "python": sys.version.split()[0],
    }
    if torch.cuda.is_available():
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", type=Path, required=True, help="a directory of diffusers model directories"
    )
    parser.add_argument("--models", nargs="*", default=[], help="only these subdirectories")
    parser.add_argument(
        "--model-budget-s", type=float, default=240.0, help="time box per model, loading included"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (after one warm-up)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="cuda")
    parser.add_argument("--offload", choices=["none", "model", "sequential"], default="none")
    parser.add_argument("--steps", type=int, default=None, help="image steps (default: the model's)")
    parser.add_argument("--native-pixels", type=int, default=None, help="image pixels (default: the model's)")
    parser.add_argument(
        "--video-budget-s", type=float, default=420.0, help="time box per video model, loading included"
    )
    parser.add_argument("--video-repeat", type=int, default=1, help="timed shots per video case")
    parser.add_argument("--video-steps", type=int, default=None, help="video steps (default: the model's)")
    parser.add_argument("--video-fps", type=float, default=None, help="frames generated per second")
    parser.add_argument("--video-native-pixels", type=int, default=None, help="video pixels per frame")
    parser.add_argument("--attention-backend", default=None, help="e.g. _native_cudnn, flash, sage")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformers' blocks")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    env = environment()
    print(json.dumps(env))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-out-") as tmp:
        for model in model_dirs(args.weights, args.models):
            print(f"-- {model.name}", flush=True)
            info, rows = bench_model(model, args, Path(tmp))
            print(json.dumps(info), flush=True)
            for row in rows:
                median = row.median_s
                goal = GOALS_S[row.kind]
                verdict = "" if median is None else ("met" if median <= goal else "MISS")
                if args.device == "cpu":
                    verdict = "(CPU smoke run: not a figure)"
                shown = "-" if median is None else f"{median:.2f} s"
                print(
                    f"{row.model:32} {row.case:48} {shown:>10}  peak {row.peak_gib:6.2f} GiB  "
                    f"goal <= {goal:.0f} s {verdict} {row.error} {row.detail}",
                    flush=True,
                )
            results.append({**info, "rows": [{**asdict(r), "median_s": r.median_s} for r in rows]})
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "models": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
