"""The catalogue: every product, option, pixel size, credit price and limit, in one place.

Values marked *contract* come from NanoPhoto's public API pages and must not change.
Everything else is nanogen's documented choice (see ``docs/api.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Final


class Product(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class ImageMode(StrEnum):
    GENERATE = "generate"
    EDIT = "edit"


class ImageAspectRatio(StrEnum):
    LANDSCAPE = "16:9"
    PORTRAIT = "9:16"
    CLASSIC_LANDSCAPE = "4:3"
    CLASSIC_PORTRAIT = "3:4"


class ImageQuality(StrEnum):
    Q1K = "1K"
    Q2K = "2K"
    Q4K = "4K"


class GenerationType(StrEnum):
    TEXT_2_VIDEO = "TEXT_2_VIDEO"
    FIRST_AND_LAST_FRAMES_2_VIDEO = "FIRST_AND_LAST_FRAMES_2_VIDEO"
    REFERENCE_2_VIDEO = "REFERENCE_2_VIDEO"


class VideoAspectRatio(StrEnum):
    LANDSCAPE = "16:9"
    PORTRAIT = "9:16"


class Resolution(StrEnum):
    P720 = "720p"
    P1080 = "1080p"
    K4 = "4k"

    @classmethod
    def parse(cls, value: str) -> Resolution:
        """The documented spellings, case-sensitive like every enum value, plus "4K": the pages'
        credits table prints it so."""
        return cls("4k" if value == "4K" else value)


# -- contract: credits ------------------------------------------------------------------------------
IMAGE_CREDITS: Final[dict[ImageQuality, int]] = {
    ImageQuality.Q1K: 4,
    ImageQuality.Q2K: 8,
    ImageQuality.Q4K: 16,
}
SHOT_CREDITS: Final[dict[Resolution, int]] = {
    Resolution.P720: 10,
    Resolution.P1080: 14,
    Resolution.K4: 30,
}

# -- contract: limits -------------------------------------------------------------------------------
MAX_SHOTS: Final = 21
MAX_INPUT_IMAGES: Final = 14
SINGLE_SHOT_RESOLUTIONS: Final = frozenset({Resolution.P1080, Resolution.K4})
SHOT_SECONDS: Final = 8
SHOT_FPS: Final = 24
GENERATE_REQUESTS_PER_HOUR: Final = 100

# (min, max) images per generation type (contract).
SHOT_IMAGE_COUNT: Final[dict[GenerationType, tuple[int, int]]] = {
    GenerationType.TEXT_2_VIDEO: (0, 0),
    GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO: (1, 2),
    GenerationType.REFERENCE_2_VIDEO: (1, 3),
}

# -- nanogen's choices ------------------------------------------------------------------------------
MAX_GRANT: Final = 10**12  # credits in one grant
MAX_BALANCE: Final = 10**15  # far inside a 64-bit column, so no sum of grants can overflow it
DEFAULT_IMAGE_ASPECT_RATIO: Final = ImageAspectRatio.LANDSCAPE
DEFAULT_IMAGE_QUALITY: Final = ImageQuality.Q1K
DEFAULT_RESOLUTION: Final = Resolution.P720
MAX_PROMPT_CHARS: Final = 10_000
MAX_SHOT_ID_CHARS: Final = 128
MAX_URL_CHARS: Final = 4_096

# Pixel sizes of the Gemini 3 image models (Google's documented sizes): what a Nano Banana 2 client expects.
IMAGE_SIZES: Final[dict[tuple[ImageAspectRatio, ImageQuality], tuple[int, int]]] = {
    (ImageAspectRatio.LANDSCAPE, ImageQuality.Q1K): (1376, 768),
    (ImageAspectRatio.LANDSCAPE, ImageQuality.Q2K): (2752, 1536),
    (ImageAspectRatio.LANDSCAPE, ImageQuality.Q4K): (5504, 3072),
    (ImageAspectRatio.PORTRAIT, ImageQuality.Q1K): (768, 1376),
    (ImageAspectRatio.PORTRAIT, ImageQuality.Q2K): (1536, 2752),
    (ImageAspectRatio.PORTRAIT, ImageQuality.Q4K): (3072, 5504),
    (ImageAspectRatio.CLASSIC_LANDSCAPE, ImageQuality.Q1K): (1200, 896),
    (ImageAspectRatio.CLASSIC_LANDSCAPE, ImageQuality.Q2K): (2400, 1792),
    (ImageAspectRatio.CLASSIC_LANDSCAPE, ImageQuality.Q4K): (4800, 3584),
    (ImageAspectRatio.CLASSIC_PORTRAIT, ImageQuality.Q1K): (896, 1200),
    (ImageAspectRatio.CLASSIC_PORTRAIT, ImageQuality.Q2K): (1792, 2400),
    (ImageAspectRatio.CLASSIC_PORTRAIT, ImageQuality.Q4K): (3584, 4800),
}

# Veo 3.1's frame sizes: 16:9 is landscape, 9:16 the same size turned.
VIDEO_SIZES: Final[dict[tuple[VideoAspectRatio, Resolution], tuple[int, int]]] = {
    (VideoAspectRatio.LANDSCAPE, Resolution.P720): (1280, 720),
    (VideoAspectRatio.LANDSCAPE, Resolution.P1080): (1920, 1080),
    (VideoAspectRatio.LANDSCAPE, Resolution.K4): (3840, 2160),
    (VideoAspectRatio.PORTRAIT, Resolution.P720): (720, 1280),
    (VideoAspectRatio.PORTRAIT, Resolution.P1080): (1080, 1920),
    (VideoAspectRatio.PORTRAIT, Resolution.K4): (2160, 3840),
}


@dataclass(frozen=True)
class Price:
    """What one request costs: credits per unit times the number of units."""

    per_unit: int
    units: int

    @property
    def total(self) -> int:
        return self.per_unit * self.units


def image_price(quality: ImageQuality) -> Price:
    return Price(IMAGE_CREDITS[quality], 1)


def video_price(resolution: Resolution, shots: int) -> Price:
    return Price(SHOT_CREDITS[resolution], shots)


def image_size(aspect_ratio: ImageAspectRatio, quality: ImageQuality) -> tuple[int, int]:
    return IMAGE_SIZES[(aspect_ratio, quality)]


def video_size(aspect_ratio: VideoAspectRatio, resolution: Resolution) -> tuple[int, int]:
    return VIDEO_SIZES[(aspect_ratio, resolution)]


# -- provider list prices: what a task costs the operator at the provider --------------------------
# Public list prices in USD (paid tier, standard processing, audio on for Veo) as published on
# ai.google.dev/gemini-api/docs/pricing and the Vertex AI pricing page, last checked on PRICES_CHECKED.
# They give each task an estimate to set beside the credits charged; the provider's invoice is the truth.
# Only output is priced: input image tokens, thinking tokens and Search grounding queries are not.
PRICES_CHECKED: Final = "2026-11-22"
_NANO_BANANA_2 = {ImageQuality.Q1K: "0.067", ImageQuality.Q2K: "0.101", ImageQuality.Q4K: "0.151"}
_NANO_BANANA_PRO = {ImageQuality.Q1K: "0.134", ImageQuality.Q2K: "0.134", ImageQuality.Q4K: "0.24"}
_VEO_31 = {Resolution.P720: "0.40", Resolution.P1080: "0.40", Resolution.K4: "0.60"}
_VEO_31_FAST = {Resolution.P720: "0.15", Resolution.P1080: "0.15", Resolution.K4: "0.35"}

# model id -> USD per output image
IMAGE_LIST_PRICES: Final[dict[str, dict[ImageQuality, Decimal]]] = {
    model: {quality: Decimal(usd) for quality, usd in table.items()}
    for model, table in {
        "gemini-3.1-flash-image-preview": _NANO_BANANA_2,
        "gemini-3-pro-image-preview": _NANO_BANANA_PRO,
        "gemini-2.5-flash-image": {ImageQuality.Q1K: "0.039"},
    }.items()
}
# model id -> USD per second of video
VIDEO_LIST_PRICES: Final[dict[str, dict[Resolution, Decimal]]] = {
    model: {resolution: Decimal(usd) for resolution, usd in table.items()}
    for model, table in {
        "veo-3.1-generate-preview": _VEO_31,
        "veo-3.1-generate-001": _VEO_31,
        "veo-3.1-fast-generate-preview": _VEO_31_FAST,
        "veo-3.1-fast-generate-001": _VEO_31_FAST,
    }.items()
}
MICROS_PER_USD: Final = 1_000_000


def image_list_price(model: str, quality: ImageQuality) -> Decimal | None:
    """USD for one output image of ``model``, or None when the table has no price for it."""
    return IMAGE_LIST_PRICES.get(model, {}).get(quality)


def video_list_price(model: str, resolution: Resolution, seconds: int = SHOT_SECONDS) -> Decimal | None:
    per_second = VIDEO_LIST_PRICES.get(model, {}).get(resolution)
    return None if per_second is None else per_second * seconds


def to_micros(usd: Decimal) -> int:
    """Millionths of a dollar: how costs are stored (integers, exact)."""
    return int((usd * MICROS_PER_USD).to_integral_value())


def format_usd(micros: int) -> str:
    return f"{Decimal(micros) / MICROS_PER_USD:.6f}"
