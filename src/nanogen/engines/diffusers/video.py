"""Shots with diffusers video pipelines: LTX-2 (with its own sound) and Wan / Wan VACE.

:func:`generate_shot` is the engine's ``generate_shot``. It picks the configured model for the
shot's generation type (video_models.py), holds a device through the runtime (one generation per
GPU, the pipeline resident, a seeded generator, a step callback that reports progress and stops a
canceled or late job between steps), and calls the model at its own size and frame rate:

* frames: ``seconds * fps + 1`` at the model's rate (LTX-2 24 fps: 193; Wan 16 fps: 129), rounded up
  to the VAE's frame multiple (``k * multiple + 1``);
* pixels: the contract's aspect ratio at about the model's native pixel count, both sides rounded up
  to the model's multiple (the VAE's downscale times the patch size).

The GPU is then free for the next job while nanogen makes the contract's shot on the CPU: 8 s at
24 fps, each output frame taken at its time (t = i / 24 s) from the generated frames (the frame
there, or a linear blend of the two around it when the model's rate is not 24 fps), centre-cropped
to the exact aspect ratio and resized (Lanczos) to the contract's size, H.264 like every nanogen
video. Every shot has an AAC track, 48 kHz stereo like Veo's: the model's sound (LTX-2) resampled
and fitted to 8 s, or silence for a model without sound, so the shots of one request always join by
stream copy with their sound (media/video.py's concatenation drops audio when the shots differ).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import av
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from nanogen.engines.base import Check, InputImage, Output, ProgressFn, ShotJob
from nanogen.engines.diffusers import video_models as vm
from nanogen.engines.diffusers.models import ModelFamily, is_local, model_index
from nanogen.engines.diffusers.runtime import Session, unable
from nanogen.media import images as im
from nanogen.media import video as vid
from nanogen.products import GenerationType
from nanogen.settings import Settings

if TYPE_CHECKING:
    from nanogen.engines.diffusers.engine import DiffusersEngine

log = logging.getLogger(__name__)

AUDIO_RATE: Final = 48_000  # Veo's, and what every shot's AAC track has
AUDIO_CHANNELS: Final = 2
AAC_FRAME: Final = 1024  # samples per AAC frame
# Progress: loading and waiting for the device 1-5 (the runtime), steps 5-85, decoding 85-90,
# writing the MP4 90-98; the workflow says 100 once the shot is stored.
STEPS_END: Final = 85
DECODED: Final = 90
WRITTEN: Final = 98
# Wan's grey for "generate here" in VACE's conditioning video (its examples' 128).
VACE_GREY: Final = (128, 128, 128)
REFERENCE_MIN_SIDE: Final = 16

RGBFrames = NDArray[np.uint8]  # (frames, height, width, 3)


@dataclass(frozen=True)
class ShotPlan:
    """What the model is asked for: its size, frame count and rate, and steps."""

    width: int
    height: int
    frames: int
    fps: float
    steps: int


@dataclass(frozen=True)
class Generated:
    frames: RGBFrames
    fps: float
    audio: NDArray[np.float32] | None  # (channels, samples), -1..1
    audio_rate: int


# -- planning ---------------------------------------------------------------------------------------


def frame_count(seconds: float, fps: float, multiple: int) -> int:
    """Frames covering ``seconds`` at ``fps`` (both ends), as ``k * multiple + 1``."""
    intervals = max(1, math.ceil(seconds * fps - 1e-9))
    return math.ceil(intervals / multiple) * multiple + 1


def generation_size(width: int, height: int, pixels: int, multiple: int) -> tuple[int, int]:
    """The contract's aspect ratio at about ``pixels`` (never above the contract's size), both sides
    rounded up to ``multiple``."""
    scale = min(1.0, math.sqrt(pixels / (width * height)))

    def side(length: int) -> int:
        return max(multiple, math.ceil(length * scale / multiple) * multiple)

    return side(width), side(height)


def plan_shot(settings: Settings, family: ModelFamily, source: str, job: ShotJob, pipe: Any) -> ShotPlan:
    traits = vm.VIDEO_TRAITS[family.name]
    # The loaded pipeline's own factors win over the table's (a checkpoint with another VAE).
    spatial, temporal = _pipeline_factors(pipe)
    multiple = max(family.multiple_of, spatial)
    fps = settings.diffusers_video_fps or traits.fps
    width, height = generation_size(
        job.width, job.height, vm.native_pixels(settings, family, source), multiple
    )
    frames = frame_count(job.seconds, fps, temporal or traits.frame_multiple)
    distilled = "sigmas" in _family_kwargs(family)
    steps = family.steps if distilled else settings.diffusers_video_steps or family.steps
    return ShotPlan(width, height, frames, fps, steps)


def _pipeline_factors(pipe: Any) -> tuple[int, int]:
    """(spatial multiple, temporal frame multiple) the loaded pipeline needs; 0 when it does not say."""
    spatial = int(
        getattr(pipe, "vae_spatial_compression_ratio", 0) or getattr(pipe, "vae_scale_factor_spatial", 0) or 0
    )
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", 1) or 1
    patch_side = int(patch[-1]) if isinstance(patch, list | tuple) else int(patch)
    temporal = int(
        getattr(pipe, "vae_temporal_compression_ratio", 0)
        or getattr(pipe, "vae_scale_factor_temporal", 0)
        or 0
    )
    return spatial * patch_side, temporal


def _family_kwargs(family: ModelFamily) -> dict[str, Any]:
    """The family's call defaults; the distilled LTX-2 schedule is added here (diffusers' constant)."""
    kwargs = dict(family.call_kwargs)
    if family.name == "ltx2-distilled":
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        kwargs["sigmas"] = list(DISTILLED_SIGMA_VALUES)
    elif family.name == "ltx2":  # guided: Lightricks' own negative prompt
        from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

        kwargs.setdefault("negative_prompt", DEFAULT_NEGATIVE_PROMPT)
    return kwargs


# -- the shot ---------------------------------------------------------------------------------------


def generate_shot(engine: DiffusersEngine, job: ShotJob, dest: Path, progress: ProgressFn) -> Output:
    """Make one 8-second shot with the model configured for its generation type; write it to ``dest``."""
    settings = engine.settings
    source = vm.video_model(settings, job.generation_type)
    reason = vm.video_unsupported(settings, job.generation_type)
    family = vm.video_family_of(source)
    if reason is not None or family is None:
        raise unable(reason or f"{source} is not a video model")
    traits = vm.VIDEO_TRAITS[family.name]
    started = time.monotonic()
    with engine.runtime.session(job, source, progress, task_id=job.task_id) as session:
        plan = plan_shot(settings, family, source, job, session.pipe)
        generated = _run(session, family, traits, plan, job)
        seed, device = session.seed, session.device
        gpu_seconds = time.monotonic() - started
    engine.record_gpu_seconds(job.task_id, gpu_seconds)
    progress(DECODED)
    write_shot(dest, generated, job.width, job.height, job.fps, job.seconds)
    progress(WRITTEN)
    metadata: dict[str, object] = {
        "engine": engine.name,
        "model": source,
        "family": family.name,
        "seed": seed,
        "device": device,
        "steps": plan.steps,
        "native_width": plan.width,
        "native_height": plan.height,
        "native_frames": plan.frames,
        "native_fps": plan.fps,
        "audio": "model" if generated.audio is not None else "silent",
        "gpu_seconds": round(gpu_seconds, 3),
    }
    log.info(
        "diffusers: shot %s by %s: %dx%d, %d frames at %g fps",
        job.task_id,
        source,
        plan.width,
        plan.height,
        plan.frames,
        plan.fps,
    )
    return Output(dest, "video/mp4", metadata)


def capabilities(engine: DiffusersEngine) -> dict[str, frozenset[str]]:
    """The generation types the configured video models make, and every resolution."""
    return vm.video_capabilities(engine.settings)


def diagnose(engine: DiffusersEngine) -> list[Check]:
    """``nanogen doctor``'s lines for the video models (never loads one)."""
    checks = []
    seen: dict[str, list[str]] = {}
    for generation_type in GenerationType:
        seen.setdefault(vm.video_model(engine.settings, generation_type), []).append(generation_type.value)
    for source, types in seen.items():
        label = f"video model ({', '.join(types)})"
        if is_local(source):
            if model_index(source) is None:
                checks.append(Check(label, False, f"weights not found at {source} (no model_index.json)"))
                continue
            where = f"{source} (local directory)"
        elif model_index(source) is not None:
            where = f"{source} (in the Hugging Face cache)"
        else:
            where = f"{source} (not downloaded yet: the first shot downloads it, or `hf download {source}`)"
        family = vm.video_family_of(source)
        refused = [t for t in types if vm.video_unsupported(engine.settings, GenerationType(t))]
        if family is None or len(refused) == len(types):
            why = "; ".join(
                filter(None, (vm.video_unsupported(engine.settings, GenerationType(t)) for t in types))
            )
            checks.append(Check(label, False, f"{where}: {why}"))
            continue
        traits = vm.VIDEO_TRAITS[family.name]
        missing = [m for m in traits.needs if importlib.util.find_spec(m) is None]
        if missing:  # Wan cleans prompts with ftfy and loads through accelerate: it fails at the first shot
            checks.append(
                Check(label, False, f"{where}: {family.label} needs `pip install {' '.join(missing)}`")
            )
            continue
        sound = "with sound" if traits.makes_audio else "no sound (a silent AAC track)"
        note = f"; refuses {', '.join(refused)} (400 at submit)" if refused else ""
        checks.append(
            Check(label, True, f"{where}: {family.label}, {traits.fps:g} fps native, {sound}{note}")
        )
    return checks


def _run(
    session: Session, family: ModelFamily, traits: vm.VideoTraits, plan: ShotPlan, job: ShotJob
) -> Generated:
    pipe = _as_pipeline(session.pipe, traits.run_pipeline)
    kwargs = _family_kwargs(family)
    kwargs.update(_inputs(traits, plan, job))
    if traits.inputs == "ltx2":
        kwargs["frame_rate"] = plan.fps
    if "sigmas" not in kwargs:
        kwargs["num_inference_steps"] = plan.steps
    kwargs.update(_sequence_length(pipe))
    pairs = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "pos_embed_seq_len", None)
    if traits.inputs == "wan-i2v" and "image" in kwargs and kwargs.get("last_image") is None and pairs:
        pipe = _first_frame_twice(pipe)
    output = pipe(
        prompt=job.prompt,
        height=plan.height,
        width=plan.width,
        num_frames=plan.frames,
        generator=session.generator,
        callback_on_step_end=session.step_callback(plan.steps, end=STEPS_END),
        output_type="np",
        **kwargs,
    )
    if pipe is not session.pipe and hasattr(session.pipe, "maybe_free_model_hooks"):
        # With CPU offload, the loaded pipeline holds the hooks that move the last modules back off
        # the GPU after a call; the pipeline object made for this call has none of them.
        session.pipe.maybe_free_model_hooks()
    frames = _to_uint8(output.frames[0])
    audio, rate = None, 0
    sound = getattr(output, "audio", None)
    if traits.makes_audio and sound is not None:
        first = sound[0]
        if hasattr(first, "detach"):  # a torch tensor (bf16 on a GPU): numpy takes float32 on the CPU
            first = first.detach().float().cpu().numpy()
        audio = np.asarray(first, dtype=np.float32)
        rate = int(pipe.vocoder.config.output_sampling_rate)
    return Generated(frames, plan.fps, audio, rate)


def _sequence_length(pipe: Any) -> dict[str, int]:
    """Prompts are padded to the pipeline's own length (LTX-2 1024 tokens, Wan 512), or to the
    tokenizer's maximum when that is shorter."""
    import inspect

    default = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    limit = getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
    if default is None or not isinstance(default.default, int) or not isinstance(limit, int):
        return {}
    return {"max_sequence_length": min(default.default, limit)} if limit < default.default else {}


def _first_frame_twice(pipe: Any) -> Any:
    """A first/last-frame Wan (Wan 2.1 FLF2V: its CLIP image tokens come in pairs) given the first
    frame only: a pipeline object of its own that encodes that frame for both places (the
    pipeline refuses precomputed embeddings beside the image it still needs for the latents)."""
    single = _as_pipeline(pipe, type(pipe).__name__, fresh=True)
    encode = single.encode_image

    def encode_twice(image: Any, device: Any = None) -> Any:
        return encode([image, image], device)

    single.encode_image = encode_twice
    return single


def _as_pipeline(pipe: Any, class_name: str, *, fresh: bool = False) -> Any:
    """``pipe``'s modules under another pipeline class of the same family (no copy, no dtype change:
    ``from_pipe`` would cast to float32), or ``pipe`` itself when it already is one (unless ``fresh``)."""
    if type(pipe).__name__ == class_name and not fresh:
        return pipe
    import diffusers

    cls = getattr(diffusers, class_name)
    expected, optional = cls._get_signature_keys(cls)
    components = {k: v for k, v in pipe.components.items() if k in expected or k in optional}
    # Options kept in the pipeline's config (Wan 2.2's boundary_ratio, expand_timesteps) come along.
    options = {k: pipe.config[k] for k in optional if k not in components and k in pipe.config}
    other = cls(**components, **options)
    other.set_progress_bar_config(disable=True)
    return other


def _inputs(traits: vm.VideoTraits, plan: ShotPlan, job: ShotJob) -> dict[str, Any]:
    """The shot's images as the family's pipeline takes them."""
    size = (plan.width, plan.height)
    if job.generation_type is GenerationType.TEXT_2_VIDEO or not job.images:
        return {}
    if traits.inputs == "ltx2":
        if job.generation_type is not GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO:
            raise unable(f"LTX-2 does not take {job.generation_type.value} images")
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        first, *rest = [_fitted(image, size) for image in job.images[:2]]
        conditions = [LTX2VideoCondition(frames=first, index=0, strength=1.0)]
        if rest:
            conditions.append(LTX2VideoCondition(frames=rest[0], index=-1, strength=1.0))
        return {"conditions": conditions}
    if traits.inputs == "wan-i2v" and job.generation_type is GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO:
        first, *rest = [_fitted(image, size) for image in job.images[:2]]
        return {"image": first, "last_image": rest[0] if rest else None}
    if traits.inputs == "wan-vace":
        if job.generation_type is GenerationType.REFERENCE_2_VIDEO:
            return {"reference_images": [_contained(image, size) for image in job.images[:3]]}
        return _vace_first_last(job.images[:2], size, plan.frames)
    raise unable(f"this Wan model makes {GenerationType.TEXT_2_VIDEO.value} only")


def _vace_first_last(images: tuple[InputImage, ...], size: tuple[int, int], frames: int) -> dict[str, Any]:
    """First (and last) frame as VACE takes them: a video with those frames and grey elsewhere, and a
    mask that is black (keep) on them and white (generate) elsewhere."""
    fitted = [_fitted(image, size) for image in images]
    grey, keep, make = Image.new("RGB", size, VACE_GREY), Image.new("L", size, 0), Image.new("L", size, 255)
    video, mask = [grey] * frames, [make] * frames
    video[0], mask[0] = fitted[0], keep
    if len(fitted) > 1:
        video[-1], mask[-1] = fitted[1], keep
    return {"video": video, "mask": mask}


def _contained(image: InputImage, size: tuple[int, int]) -> Image.Image:
    """A reference image scaled to fit ``size`` whole (VACE places it on the canvas itself), each side
    at least the pipeline's multiple (VACE rounds sides down to it)."""
    picture = ImageOps.contain(im.open_rgb(image.data, cover=size), size, Image.Resampling.LANCZOS)
    if min(picture.size) >= REFERENCE_MIN_SIDE:
        return picture
    scale = REFERENCE_MIN_SIDE / min(picture.size)
    return picture.resize(
        (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
    )


def _fitted(image: InputImage, size: tuple[int, int]) -> Image.Image:
    """The image covering ``size``, centre-cropped to it (the pipelines would stretch it)."""
    return ImageOps.fit(im.open_rgb(image.data, cover=size), size, Image.Resampling.LANCZOS)


def _to_uint8(frames: Any) -> RGBFrames:
    """0..1 floats to bytes, a frame at a time (193 float frames at 1280 x 736 are 2.2 GB already)."""
    out: RGBFrames = np.empty(np.shape(frames), np.uint8)
    for index, frame in enumerate(frames):
        scaled = np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)
        out[index] = scaled.astype(np.uint8)
    return out


# -- writing the contract's shot --------------------------------------------------------------------


class _ShotWriter(vid.H264Writer):
    """nanogen's H.264 writer with an AAC track (48 kHz stereo) interleaved with the frames."""

    def __init__(self, dest: Path, width: int, height: int, fps: int) -> None:
        super().__init__(dest, width, height, fps, threads=0)
        self._audio = self._container.add_stream("aac", rate=AUDIO_RATE)
        self._audio.layout = "stereo"
        self._audio_written = 0

    def write_audio_until(self, samples: NDArray[np.float32], end: int) -> None:
        """Encode the track's samples up to ``end`` (whole AAC frames; the rest at :meth:`close`)."""
        end = min(end, samples.shape[1])
        while self._audio_written + AAC_FRAME <= end or (
            end == samples.shape[1] and self._audio_written < end
        ):
            start = self._audio_written
            chunk = np.ascontiguousarray(samples[:, start : start + AAC_FRAME])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            self._container.mux(self._audio.encode(frame))
            self._audio_written += chunk.shape[1]

    def close_audio(self, samples: NDArray[np.float32]) -> None:
        self.write_audio_until(samples, samples.shape[1])
        self._container.mux(self._audio.encode(None))


def write_shot(dest: Path, generated: Generated, width: int, height: int, fps: int, seconds: int) -> None:
    """The contract's shot from the generated frames: ``seconds * fps`` frames at ``width x height``,
    each taken at its time from the generated ones (blended at the generated size, the smaller one),
    centre-cropped and resized, with the sound fitted to ``seconds``."""
    frames = generated.frames
    count = frames.shape[0]
    left, top, right, bottom = _crop_box(frames.shape[2], frames.shape[1], width, height)
    track = shot_audio(generated.audio, generated.audio_rate, seconds)
    per_frame = AUDIO_RATE / fps
    writer = _ShotWriter(dest, width, height, fps)
    with writer:
        for index in range(seconds * fps):
            rgb = frame_at(frames, min(index * generated.fps / fps, count - 1.0))
            picture = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(rgb[top:bottom, left:right]), format="rgb24"
            )
            yuv = picture.reformat(
                width=width,
                height=height,
                format="yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
                interpolation="LANCZOS",
            )
            vid.copy_all(writer.planes, vid.frame_planes(yuv))
            writer.write()
            writer.write_audio_until(track, int((index + 1) * per_frame))
        writer.close_audio(track)


def frame_at(frames: RGBFrames, position: float) -> NDArray[np.uint8]:
    """The frame at a fractional index: the frame itself, or a linear blend of its two neighbours
    (weights in 256ths, integer arithmetic)."""
    low = math.floor(position)
    weight = round((position - low) * 256)
    if weight == 0 or low + 1 >= frames.shape[0]:
        frame: NDArray[np.uint8] = frames[low]
        return frame
    mixed = frames[low].astype(np.uint16) * (256 - weight) + frames[low + 1].astype(np.uint16) * weight
    blended: NDArray[np.uint8] = ((mixed + 128) >> 8).astype(np.uint8)
    return blended


def _crop_box(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The centred box of the source with the target's aspect ratio (even sides)."""
    target = Fraction(width, height)
    if Fraction(src_w, src_h) > target:
        crop_w, crop_h = min(src_w, round(src_h * target)), src_h
    else:
        crop_w, crop_h = src_w, min(src_h, round(src_w / target))
    crop_w, crop_h = max(2, crop_w // 2 * 2), max(2, crop_h // 2 * 2)
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def shot_audio(audio: NDArray[np.float32] | None, rate: int, seconds: int) -> NDArray[np.float32]:
    """The shot's track: ``seconds`` of 48 kHz stereo float samples (the model's sound resampled,
    cut or padded with silence at the end; silence when there is none)."""
    total = AUDIO_RATE * seconds
    track = np.zeros((AUDIO_CHANNELS, total), np.float32)
    if audio is None or audio.size == 0 or rate <= 0:
        return track
    samples = np.clip(np.atleast_2d(audio), -1.0, 1.0).astype(np.float32)
    if samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
    samples = np.ascontiguousarray(samples[:2])
    if rate != AUDIO_RATE:
        samples = _resample(samples, rate)
    length = min(total, samples.shape[1])
    track[:, :length] = samples[:, :length]
    return track


def _resample(samples: NDArray[np.float32], rate: int) -> NDArray[np.float32]:
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
    chunks = [f.to_ndarray() for f in (*resampler.resample(frame), *resampler.resample(None))]
    if not chunks:
        return np.zeros((AUDIO_CHANNELS, 0), np.float32)
    joined: NDArray[np.float32] = np.concatenate(chunks, axis=1).astype(np.float32)
    return joined
