"""Task parameters as stored (plain JSON) and the engine jobs they turn into.

Input images are stored once at submission (fetched and proven to be images before any debit) and
referenced by storage key, so a worker on another machine needs no network access to the source URL.
"""

from __future__ import annotations

from typing import Any

from nanogen.engines.base import ImageJob, InputImage, ShotJob
from nanogen.products import (
    GenerationType,
    ImageAspectRatio,
    ImageMode,
    ImageQuality,
    Resolution,
    VideoAspectRatio,
)
from nanogen.storage import Storage


def stored_input(key: str, image: InputImage) -> dict[str, Any]:
    return {
        "key": key,
        "mimeType": image.mime_type,
        "width": image.width,
        "height": image.height,
        "url": image.source_url,
    }


def load_inputs(storage: Storage, params: dict[str, Any]) -> tuple[InputImage, ...]:
    """The task's input images in order. A file named more than once (the same URL in several
    positions) is read once and the same :class:`InputImage` repeated, so engines can decode it once."""
    loaded: dict[str, InputImage] = {}
    images = []
    for item in params.get("inputs", []):
        image = loaded.get(item["key"])
        if image is None:
            image = loaded[item["key"]] = InputImage(
                data=storage.read_bytes(item["key"]),
                mime_type=item["mimeType"],
                width=item["width"],
                height=item["height"],
                source_url=item.get("url", ""),
            )
        images.append(image)
    return tuple(images)


def image_job(task_id: str, params: dict[str, Any], images: tuple[InputImage, ...]) -> ImageJob:
    return ImageJob(
        task_id=task_id,
        prompt=params["prompt"],
        mode=ImageMode(params["mode"]),
        aspect_ratio=ImageAspectRatio(params["aspectRatio"]),
        quality=ImageQuality(params["imageQuality"]),
        width=params["width"],
        height=params["height"],
        google_search=params["googleSearch"],
        images=images,
    )


def shot_job(task_id: str, params: dict[str, Any], images: tuple[InputImage, ...]) -> ShotJob:
    return ShotJob(
        task_id=task_id,
        prompt=params["prompt"],
        generation_type=GenerationType(params["generationType"]),
        aspect_ratio=VideoAspectRatio(params["aspectRatio"]),
        resolution=Resolution(params["resolution"]),
        width=params["width"],
        height=params["height"],
        images=images,
    )
