"""What each diffusers model family can do, so a request it cannot serve is refused before any debit.

One entry per family: the pipeline class its ``model_index.json`` names, what it makes, its native
pixel count (nanogen generates there and resizes to the contract's size), how many input images it
really uses, and the call's defaults (steps, guidance). The video families are added by
``video.py``'s author in the same table (``FAMILIES``); image code never looks at their fields.

A configured model is matched to a family without loading it: a local directory by its
``model_index.json`` (``_class_name``, and ``is_distilled`` for FLUX.2 [klein]), a hub id by the
known ids below or by the ``model_index.json`` in the Hugging Face cache. A model nanogen cannot
place is refused at submit, and ``nanogen doctor`` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nanogen.products import GenerationType, ImageMode, Resolution


@dataclass(frozen=True)
class ModelFamily:
    name: str
    label: str
    pipeline: str  # the diffusers pipeline class (``_class_name`` in model_index.json)
    image_modes: frozenset[ImageMode] = frozenset()
    generation_types: frozenset[GenerationType] = frozenset()
    resolutions: frozenset[Resolution] = frozenset()
    # Images: pixels generated natively (then resized to the contract's size), and the multiple
    # both sides are rounded to (the VAE's downscale times the transformer's patch size).
    native_pixels: int = 1024 * 1024
    multiple_of: int = 16
    # How many input images the model really uses; nanogen tiles the rest into the last one.
    max_input_images: int = 0
    steps: int = 28
    # Keyword arguments every call gets (guidance and the like), as the model's authors recommend.
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    # Video: frames per second the model is trained at, native size (video.py's business).
    extra: dict[str, Any] = field(default_factory=dict)


_GENERATE = frozenset({ImageMode.GENERATE})
_EDIT = frozenset({ImageMode.EDIT})
_BOTH = frozenset(ImageMode)

FAMILIES: Final[dict[str, ModelFamily]] = {
    # FLUX.2 [klein] 4B/9B, step-distilled: text-to-image and multi-reference editing in one pipeline,
    # 4 steps without guidance. The pipeline takes any number of references (each up to 1 MP of
    # tokens in every step); nanogen passes up to 4.
    "flux2-klein": ModelFamily(
        name="flux2-klein",
        label="FLUX.2 [klein] (distilled, 4 steps)",
        pipeline="Flux2KleinPipeline",
        image_modes=_BOTH,
        max_input_images=4,
        steps=4,
        call_kwargs={"guidance_scale": 1.0},
    ),
    # The undistilled [klein] base checkpoints: the same pipeline with guidance, 50 steps.
    "flux2-klein-base": ModelFamily(
        name="flux2-klein-base",
        label="FLUX.2 [klein] base (50 steps)",
        pipeline="Flux2KleinPipeline",
        image_modes=_BOTH,
        max_input_images=4,
        steps=50,
        call_kwargs={"guidance_scale": 4.0},
    ),
    # Z-Image-Turbo: 6B, 8 function evaluations (9 steps), no guidance; text-to-image only.
    "z-image": ModelFamily(
        name="z-image",
        label="Z-Image-Turbo",
        pipeline="ZImagePipeline",
        image_modes=_GENERATE,
        steps=9,
        call_kwargs={"guidance_scale": 0.0},
    ),
    # Qwen-Image: 20B MMDiT, strong text rendering; 50 steps with true CFG. Text-to-image only.
    "qwen-image": ModelFamily(
        name="qwen-image",
        label="Qwen-Image",
        pipeline="QwenImagePipeline",
        image_modes=_GENERATE,
        steps=50,
        call_kwargs={"true_cfg_scale": 4.0, "negative_prompt": " "},
    ),
    # Qwen-Image-Edit-Plus (2509, 2511): editing with 1-3 input images, 40 steps with true CFG.
    "qwen-image-edit-plus": ModelFamily(
        name="qwen-image-edit-plus",
        label="Qwen-Image-Edit-Plus",
        pipeline="QwenImageEditPlusPipeline",
        image_modes=_EDIT,
        max_input_images=3,
        steps=40,
        call_kwargs={"true_cfg_scale": 4.0, "negative_prompt": " "},
    ),
    # -- video (video.py; the frame rates, frame counts and audio are in video_models.py) -------------
    # LTX-2.3 / LTX-2.5 full checkpoints (first: an LTX-2 directory nanogen cannot tell apart gets the
    # schedule that works for both): the LTX-2 pipeline with the pipeline's own guidance
    # (CFG, spatio-temporal and modality guidance: three transformer passes a step), 30 steps.
    "ltx2": ModelFamily(
        name="ltx2",
        label="LTX-2.x (30 steps, audio)",
        pipeline="LTX2Pipeline",
        generation_types=frozenset(
            {GenerationType.TEXT_2_VIDEO, GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO}
        ),
        resolutions=frozenset(Resolution),
        native_pixels=1280 * 720,
        multiple_of=32,
        max_input_images=2,
        steps=30,
    ),
    # LTX-2.3 distilled (its hub id, or a directory whose name says 'distilled': video_models.py):
    # 22B audio+video DiT, 8 trained sigmas without guidance (one transformer call per step);
    # text-to-video and first/last frames (frame conditions) in one pipeline, with sound.
    "ltx2-distilled": ModelFamily(
        name="ltx2-distilled",
        label="LTX-2.3 distilled (8 steps, audio)",
        pipeline="LTX2Pipeline",
        generation_types=frozenset(
            {GenerationType.TEXT_2_VIDEO, GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO}
        ),
        resolutions=frozenset(Resolution),
        native_pixels=1280 * 720,
        multiple_of=32,
        max_input_images=2,
        steps=8,
        call_kwargs={
            "guidance_scale": 1.0,
            "stg_scale": 0.0,
            "modality_scale": 1.0,
            "guidance_rescale": 0.0,
            "audio_guidance_scale": 1.0,
            "audio_stg_scale": 0.0,
            "audio_modality_scale": 1.0,
            "audio_guidance_rescale": 0.0,
            "spatio_temporal_guidance_blocks": None,
        },
    ),
    # Wan 2.1 / 2.2 text-to-video (no sound), 16 fps; 1.3B at 480p, 14B at 720p.
    "wan": ModelFamily(
        name="wan",
        label="Wan text-to-video",
        pipeline="WanPipeline",
        generation_types=frozenset({GenerationType.TEXT_2_VIDEO}),
        resolutions=frozenset(Resolution),
        native_pixels=832 * 480,
        multiple_of=16,
        steps=30,
        call_kwargs={"guidance_scale": 5.0},
    ),
    # Wan 2.1 FLF2V 14B: image-to-video trained on a first and a last frame, 720p, 16 fps, no sound.
    "wan-i2v": ModelFamily(
        name="wan-i2v",
        label="Wan first/last frames",
        pipeline="WanImageToVideoPipeline",
        generation_types=frozenset({GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO}),
        resolutions=frozenset(Resolution),
        native_pixels=1280 * 720,
        multiple_of=16,
        max_input_images=2,
        steps=30,
        call_kwargs={"guidance_scale": 5.0},
    ),
    # Wan 2.1 VACE: one model for text, first/last frames (a masked video) and reference images
    # (subjects to keep: all three of the contract's are used), 16 fps, no sound.
    "wan-vace": ModelFamily(
        name="wan-vace",
        label="Wan VACE",
        pipeline="WanVACEPipeline",
        generation_types=frozenset(GenerationType),
        resolutions=frozenset(Resolution),
        native_pixels=832 * 480,
        multiple_of=16,
        max_input_images=3,
        steps=30,
        call_kwargs={"guidance_scale": 5.0},
    ),
}

# Hub ids nanogen knows, so a model not yet downloaded is placed (and checked at submit) anyway.
KNOWN_MODELS: Final[dict[str, str]] = {
    "black-forest-labs/FLUX.2-klein-4B": "flux2-klein",
    "black-forest-labs/FLUX.2-klein-9B": "flux2-klein",
    "black-forest-labs/FLUX.2-klein-base-4B": "flux2-klein-base",
    "black-forest-labs/FLUX.2-klein-base-9B": "flux2-klein-base",
    "Tongyi-MAI/Z-Image-Turbo": "z-image",
    "Qwen/Qwen-Image": "qwen-image",
    "Qwen/Qwen-Image-2512": "qwen-image",
    "Qwen/Qwen-Image-Edit-2509": "qwen-image-edit-plus",
    "Qwen/Qwen-Image-Edit-2511": "qwen-image-edit-plus",
    # video
    "diffusers/LTX-2.3-Distilled-Diffusers": "ltx2-distilled",
    "diffusers/LTX-2.3-Diffusers": "ltx2",
    "Lightricks/LTX-2.5-Diffusers": "ltx2",
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": "wan",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": "wan",
    "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers": "wan-i2v",
    "Wan-AI/Wan2.1-VACE-1.3B-diffusers": "wan-vace",
    "Wan-AI/Wan2.1-VACE-14B-diffusers": "wan-vace",
}


def is_local(source: str) -> bool:
    """A setting value naming a directory rather than a hub id ("owner/name")."""
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().is_dir()


def model_index(source: str) -> dict[str, Any] | None:
    """The pipeline's ``model_index.json`` without loading it: from the directory, or from the
    Hugging Face cache for a hub id (None when not there)."""
    if is_local(source):
        path = Path(source).expanduser() / "model_index.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "model_index.json")
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def family_of_index(index: dict[str, Any]) -> ModelFamily | None:
    """The family a ``model_index.json`` describes (the first whose pipeline class it names)."""
    class_name = index.get("_class_name")
    if class_name == "Flux2KleinPipeline":
        return FAMILIES["flux2-klein" if index.get("is_distilled") else "flux2-klein-base"]
    return next((f for f in FAMILIES.values() if f.pipeline == class_name), None)


def family_of(source: str) -> ModelFamily | None:
    """The family of a configured model (hub id or directory), or None when nanogen cannot tell."""
    index = model_index(source)
    if index is not None:
        return family_of_index(index)
    known = KNOWN_MODELS.get(source)
    return FAMILIES[known] if known else None
