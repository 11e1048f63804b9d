"""What the known Google models can do, so a request they cannot serve is refused before any debit.

A model id that is not listed here is passed to Google unchecked (Google then decides, and a refusal
fails the task with a refund); ``nanogen doctor`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from nanogen.products import GenerationType, ImageQuality, Product, Resolution


@dataclass(frozen=True)
class ModelInfo:
    label: str
    qualities: frozenset[ImageQuality] = field(default_factory=lambda: frozenset(ImageQuality))
    resolutions: frozenset[Resolution] = field(default_factory=lambda: frozenset(Resolution))
    generation_types: frozenset[GenerationType] = field(default_factory=lambda: frozenset(GenerationType))


# Veo 3.0: no 4k and no reference images (a last frame is Google's call).
_VEO_3_RESOLUTIONS = frozenset({Resolution.P720, Resolution.P1080})
_VEO_3_TYPES = frozenset({GenerationType.TEXT_2_VIDEO, GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO})

MODELS: Final[dict[Product, dict[str, ModelInfo]]] = {
    Product.IMAGE: {
        "gemini-3.1-flash-image-preview": ModelInfo("Nano Banana 2"),
        "gemini-3-pro-image-preview": ModelInfo("Nano Banana Pro"),
        "gemini-2.5-flash-image": ModelInfo("Nano Banana", qualities=frozenset({ImageQuality.Q1K})),
    },
    Product.VIDEO: {
        "veo-3.1-generate-preview": ModelInfo("Veo 3.1"),
        "veo-3.1-fast-generate-preview": ModelInfo("Veo 3.1 Fast"),
        "veo-3.1-generate-001": ModelInfo("Veo 3.1"),
        "veo-3.1-fast-generate-001": ModelInfo("Veo 3.1 Fast"),
        "veo-3.0-generate-001": ModelInfo(
            "Veo 3", resolutions=_VEO_3_RESOLUTIONS, generation_types=_VEO_3_TYPES
        ),
        "veo-3.0-fast-generate-001": ModelInfo(
            "Veo 3 Fast", resolutions=_VEO_3_RESOLUTIONS, generation_types=_VEO_3_TYPES
        ),
    },
}

DEFAULT_VIDEO_MODEL: Final = {"gemini": "veo-3.1-generate-preview", "vertex": "veo-3.1-generate-001"}


def model_info(product: Product, model: str) -> ModelInfo | None:
    return MODELS[product].get(model)
