"""Input images: fetched (SSRF-safe) and proven to be images before any credit moves, then stored
so the task's worker reads them from storage, not from the network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from nanogen import errors
from nanogen.engines.base import InputImage
from nanogen.server.services import Services
from nanogen.storage import new_key
from nanogen.tasks.jobs import stored_input

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


async def fetch_inputs(svc: Services, urls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Fetch each distinct URL once; map URL -> stored-input record. 400 INVALID_IMAGE_URL on failure."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}
    try:
        images = await svc.fetcher.fetch_all(unique)
    except errors.FetchError as exc:
        raise errors.InvalidImageUrl(f"Could not use image URL: {exc.reason}", url=exc.url[:500]) from None
    return await run_in_threadpool(_store, svc, dict(zip(unique, images, strict=True)))


def _store(svc: Services, images: dict[str, InputImage]) -> dict[str, dict[str, Any]]:
    stored = {}
    for url, image in images.items():
        key = new_key("in", f"input.{_EXTENSIONS.get(image.mime_type, 'bin')}")
        svc.runtime.storage.put_bytes(key, image.data)
        stored[url] = stored_input(key, image)
    return stored


async def discard_inputs(svc: Services, stored: dict[str, dict[str, Any]]) -> None:
    """A request that was refused after its inputs were stored leaves nothing behind."""
    for record in stored.values():
        await run_in_threadpool(svc.runtime.storage.delete, record["key"])
