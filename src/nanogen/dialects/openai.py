"""The OpenAI-compatible dialect's pure mapping (docs/api.md, "OpenAI-compatible API (/v1)"): OpenAI's
sizes and qualities onto the catalogue's options, the Video object built from a generation's tasks,
and nanogen's error envelope rewritten in OpenAI's error shape. No I/O here; the routes are in
server/routes/openai.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from nanogen import errors
from nanogen.products import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_QUALITY,
    IMAGE_SIZES,
    SHOT_SECONDS,
    ImageAspectRatio,
    ImageQuality,
    Resolution,
    VideoAspectRatio,
    video_size,
)
from nanogen.tasks.status import TaskStatus

IMAGE_MODEL: Final = "nano-banana-2"
VIDEO_MODEL: Final = "veo-3.1"
RESPONSE_FORMATS: Final = ("b64_json", "url")

# OpenAI's `quality` onto the catalogue's (and so onto its credits). Omitted, "auto" and "standard": 1K.
IMAGE_QUALITIES: Final[dict[str, ImageQuality]] = {
    "auto": DEFAULT_IMAGE_QUALITY,
    "standard": ImageQuality.Q1K,
    "low": ImageQuality.Q1K,
    "medium": ImageQuality.Q2K,
    "hd": ImageQuality.Q2K,
    "high": ImageQuality.Q4K,
    "1K": ImageQuality.Q1K,
    "2K": ImageQuality.Q2K,
    "4K": ImageQuality.Q4K,
}
# OpenAI's landscape and portrait sizes (gpt-image's 3:2 and 2:3) onto the nearest shapes nanogen makes.
_NAMED_IMAGE_SIZES: Final[dict[str, ImageAspectRatio]] = {
    "auto": DEFAULT_IMAGE_ASPECT_RATIO,
    "1536x1024": ImageAspectRatio.LANDSCAPE,
    "1792x1024": ImageAspectRatio.LANDSCAPE,
    "1024x1536": ImageAspectRatio.PORTRAIT,
    "1024x1792": ImageAspectRatio.PORTRAIT,
}
# Any other WIDTHxHEIGHT whose ratio is within this of an aspect ratio's is that aspect ratio.
_RATIO_TOLERANCE: Final = 0.02
_RATIOS: Final[dict[ImageAspectRatio, float]] = {
    ImageAspectRatio.LANDSCAPE: 16 / 9,
    ImageAspectRatio.PORTRAIT: 9 / 16,
    ImageAspectRatio.CLASSIC_LANDSCAPE: 4 / 3,
    ImageAspectRatio.CLASSIC_PORTRAIT: 3 / 4,
}
_EXACT_IMAGE_SIZES: Final[dict[str, tuple[ImageAspectRatio, ImageQuality]]] = {
    f"{w}x{h}": key for key, (w, h) in IMAGE_SIZES.items()
}

VIDEO_SIZES: Final[dict[str, tuple[VideoAspectRatio, Resolution]]] = {
    f"{w}x{h}": (aspect, resolution)
    for aspect in VideoAspectRatio
    for resolution in Resolution
    for w, h in [video_size(aspect, resolution)]
}
DEFAULT_VIDEO_SIZE: Final = "1280x720"
VIDEO_SECONDS: Final = str(SHOT_SECONDS)


def _bad(message: str, param: str) -> errors.InvalidParameter:
    return errors.InvalidParameter(message, field=param)


def image_options(size: str | None, quality: str | None) -> tuple[ImageAspectRatio, ImageQuality]:
    """``size`` and ``quality`` as the catalogue's aspect ratio and quality (400 for what has no match).

    One of the catalogue's own pixel sizes (``2752x1536``) fixes the quality too; any other accepted
    size takes it from ``quality``."""
    if quality is not None and quality not in IMAGE_QUALITIES:
        raise _bad(f"quality must be one of {', '.join(IMAGE_QUALITIES)}", "quality")
    wanted = IMAGE_QUALITIES[quality] if quality is not None else None
    size = size or "auto"
    if size in _EXACT_IMAGE_SIZES:
        aspect, exact = _EXACT_IMAGE_SIZES[size]
        if wanted is not None and quality not in ("auto", None) and wanted is not exact:
            raise _bad(f"size {size} is quality {exact.value}, not {quality}", "size")
        return aspect, exact
    aspect_ratio = _NAMED_IMAGE_SIZES.get(size) or _ratio_of(size)
    if aspect_ratio is None:
        accepted = ", ".join([*_NAMED_IMAGE_SIZES, "a 16:9, 9:16, 4:3 or 3:4 WIDTHxHEIGHT"])
        raise _bad(f"size {size[:40]!r} cannot be made (no square images): use {accepted}", "size")
    return aspect_ratio, wanted or DEFAULT_IMAGE_QUALITY


def _ratio_of(size: str) -> ImageAspectRatio | None:
    width, x, height = size.partition("x")
    if not (x and width.isdigit() and height.isdigit() and 0 < int(width) <= 10_000 and int(height) > 0):
        return None
    ratio = int(width) / int(height)
    for aspect_ratio, target in _RATIOS.items():
        if abs(ratio / target - 1) <= _RATIO_TOLERANCE:
            return aspect_ratio
    return None


def video_options(size: str | None, seconds: str | None) -> tuple[VideoAspectRatio, Resolution]:
    if seconds is not None and seconds != VIDEO_SECONDS:
        raise _bad(f"seconds must be {VIDEO_SECONDS!r} (a Veo shot is {SHOT_SECONDS} s)", "seconds")
    found = VIDEO_SIZES.get(size or DEFAULT_VIDEO_SIZE)
    if found is None:
        raise _bad(f"size must be one of {', '.join(VIDEO_SIZES)}", "size")
    return found


# -- the Video object --------------------------------------------------------------------------------
def video_object(
    generation_id: str,
    created_at: float,
    params: Mapping[str, Any],
    concat_status: str | None,
    concat_error: str | None,
    shots: Sequence[Any],
) -> dict[str, Any]:
    """OpenAI's Video object for a video generation (store.TaskRecord shots, in position order): a
    multi-shot one (made natively) is one video of all its seconds, complete once concatenated."""
    statuses = [t.status for t in shots]
    if any(s is TaskStatus.FAILED for s in statuses) or concat_status == "failed":
        status = "failed"
    elif all(s is TaskStatus.COMPLETED for s in statuses) and concat_status in (None, "completed"):
        status = "completed"
    elif all(s is TaskStatus.PENDING for s in statuses):
        status = "queued"
    else:
        status = "in_progress"
    first = shots[0].params if shots else {}
    failed = next((t for t in shots if t.status is TaskStatus.FAILED), None)
    error = None
    if status == "failed":
        message = (failed.error if failed else concat_error) or "Video generation failed"
        error = {"code": "generation_failed", "message": message}
    finished = [t.finished_at for t in shots if t.finished_at is not None]
    progress = 100 if status == "completed" else sum(t.progress for t in shots) // max(1, len(shots))
    return {
        "id": generation_id,
        "object": "video",
        "created_at": int(created_at),
        "completed_at": int(max(finished)) if status in ("completed", "failed") and finished else None,
        "expires_at": None,
        "status": status,
        "progress": min(99, progress) if status != "completed" else 100,
        "model": params.get("model", VIDEO_MODEL),
        "prompt": first.get("prompt"),
        "seconds": str(SHOT_SECONDS * len(shots)),
        "size": f"{first.get('width')}x{first.get('height')}",
        "remixed_from_video_id": None,
        "error": error,
    }


# -- errors --------------------------------------------------------------------------------------------
def error_response(status: int, body: Mapping[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """nanogen's envelope (``{"error", "errorCode", ...}``) and status as OpenAI's error: the status,
    ``{"error": {"message", "type", "param", "code"}}`` and headers to add."""
    native = str(body.get("errorCode", "")) or "INTERNAL_ERROR"
    message = str(body.get("error", "")) or "Error"
    param = body.get("field")
    param = str(param) if param else None
    headers: dict[str, str] = {}
    kind, code = "invalid_request_error", native.lower()
    if status == 401:
        message, code = "Incorrect API key provided", "invalid_api_key"
    elif status == 402:
        # OpenAI's "out of credits": 429 insufficient_quota, which its SDKs must not retry.
        status, kind, code = 429, "insufficient_quota", "insufficient_quota"
        headers["x-should-retry"] = "false"
    elif status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return status, {"error": error}, headers
