"""Which video model serves each generation type, and what its family makes (frames, rate, sound).

The families' common facts (pipeline class, generation types, native pixels, steps, call defaults)
are rows of ``models.FAMILIES``; this module adds what only video needs, and never imports torch or
diffusers, so the submit route can refuse a generation type before any credit moves.

A shot is always 8 s at 24 fps at the contract's size (docs/engines.md, "Videos"): the model makes
``seconds * fps + 1`` frames (rounded up to its VAE's frame multiple) at its own rate and about its
own pixel count, and video.py retimes and resizes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from nanogen.engines.diffusers.models import FAMILIES, KNOWN_MODELS, ModelFamily, family_of
from nanogen.products import GenerationType, Resolution
from nanogen.settings import Settings

# How a family's pipeline takes the shot's images.
Inputs = Literal["ltx2", "wan", "wan-i2v", "wan-vace"]


@dataclass(frozen=True)
class VideoTraits:
    inputs: Inputs
    run_pipeline: str  # the class video.py calls (it shares the loaded pipeline's modules)
    fps: float  # the frame rate the model was trained at
    frame_multiple: int  # frame counts are k * frame_multiple + 1 (the VAE's temporal compression)
    makes_audio: bool
    needs: tuple[str, ...] = ()  # modules its pipeline imports only when it runs


VIDEO_TRAITS: Final[dict[str, VideoTraits]] = {
    # LTX-2 makes 24 fps natively (frame_rate conditions its RoPE time), up to 20 s, with sound; the
    # condition pipeline takes the first/last frames and runs plain text-to-video without them.
    "ltx2": VideoTraits("ltx2", "LTX2ConditionPipeline", 24.0, 8, makes_audio=True),
    "ltx2-distilled": VideoTraits("ltx2", "LTX2ConditionPipeline", 24.0, 8, makes_audio=True),
    # Wan's pipelines clean prompts with ftfy, and its transformer loads through accelerate.
    "wan": VideoTraits("wan", "WanPipeline", 16.0, 4, makes_audio=False, needs=("ftfy", "accelerate")),
    "wan-i2v": VideoTraits(
        "wan-i2v", "WanImageToVideoPipeline", 16.0, 4, makes_audio=False, needs=("ftfy", "accelerate")
    ),
    "wan-vace": VideoTraits(
        "wan-vace", "WanVACEPipeline", 16.0, 4, makes_audio=False, needs=("ftfy", "accelerate")
    ),
}

# Wan checkpoints of 14B parameters are trained at 720p; the 1.3B ones at 480p (the family's default).
WAN_720P_MARKERS: Final = ("14b",)
WAN_720P_PIXELS: Final = 1280 * 720


def video_model(settings: Settings, generation_type: GenerationType) -> str:
    """The configured model (hub id or directory) that makes shots of this generation type."""
    if generation_type is GenerationType.REFERENCE_2_VIDEO:
        return settings.diffusers_reference_video_model
    if generation_type is GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO:
        return settings.diffusers_flf2v_model or settings.diffusers_video_model
    return settings.diffusers_video_model


def video_family_of(source: str) -> ModelFamily | None:
    """The video family of a configured model, or None when it is not a video model nanogen knows.

    LTX-2's full and distilled checkpoints share one pipeline class; the distilled one is told by
    its hub id or by a directory name that says so (its 8-sigma schedule ruins a full model).
    """
    family = family_of(source)
    if family is None or family.name not in VIDEO_TRAITS:
        return None
    if family.name == "ltx2" and (
        KNOWN_MODELS.get(source) == "ltx2-distilled" or "distill" in Path(source).name.lower()
    ):
        return FAMILIES["ltx2-distilled"]
    return family


def native_pixels(settings: Settings, family: ModelFamily, source: str) -> int:
    """Pixels per frame the model generates (the setting, else the model's training size)."""
    if settings.diffusers_video_native_pixels is not None:
        return settings.diffusers_video_native_pixels
    if family.name.startswith("wan") and any(m in source.lower() for m in WAN_720P_MARKERS):
        return WAN_720P_PIXELS
    return family.native_pixels


def video_capabilities(settings: Settings) -> dict[str, frozenset[str]]:
    """The generation types the configured models make, and the resolutions (all: nanogen resizes)."""
    types = frozenset(
        t.value
        for t in GenerationType
        if (family := video_family_of(video_model(settings, t))) is not None and t in family.generation_types
    )
    return {"generation_type": types, "resolution": frozenset(r.value for r in Resolution)}


def video_unsupported(settings: Settings, generation_type: GenerationType) -> str | None:
    """Why the configured model cannot make this generation type (for a failed task), or None."""
    source = video_model(settings, generation_type)
    family = video_family_of(source)
    if family is None:
        return (
            f"{source} is not a video model nanogen knows (LTX-2 or Wan pipelines: "
            "diffusers/LTX-2.3-Distilled-Diffusers, Wan-AI/Wan2.1-VACE-1.3B-diffusers, ...)"
        )
    if generation_type not in family.generation_types:
        return f"{family.label} ({source}) does not make {generation_type.value}"
    return None
