"""Input images: fetched (SSRF-safe) and proven to be images before any credit moves, then stored
so the task's worker reads them from storage, not from the network.

nanogen's own file URLs (``<public url>/files/<key>``: uploads from ``POST /api/uploads`` and earlier
outputs) are read straight from storage instead of over the network, so they work even where the
fetcher refuses loopback addresses. An upload's key carries its expiry
(``up/<token>/<unix seconds>.<ext>``), so no table is needed to refuse an expired one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from nanogen import errors
from nanogen.engines.base import InputImage
from nanogen.media.images import probe_image_async
from nanogen.server.services import Services
from nanogen.storage import FileMissing, is_valid_key, new_key
from nanogen.tasks.jobs import stored_input

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
UPLOAD_KIND = "up"


def upload_key(expires_at: float, mime_type: str) -> str:
    return new_key(UPLOAD_KIND, f"{int(expires_at)}.{EXTENSIONS[mime_type]}")


def upload_expires_at(key: str) -> float | None:
    """The expiry written in an upload's key; None for any other key."""
    kind, _, rest = key.partition("/")
    stem = rest.rpartition("/")[2].partition(".")[0]
    return float(stem) if kind == UPLOAD_KIND and stem.isdigit() else None


def upload_expired(key: str, now: float | None = None) -> bool:
    expires_at = upload_expires_at(key)
    return expires_at is not None and expires_at <= (time.time() if now is None else now)


def files_url(svc: Services, key: str) -> str:
    return f"{svc.settings.resolved_public_url}/files/{key}"


def own_file_key(svc: Services, url: str) -> str | None:
    """The storage key behind one of nanogen's own file URLs, or None for any other URL."""
    prefix = files_url(svc, "")
    if not url.startswith(prefix):
        return None
    key = url[len(prefix) :]
    return key if is_valid_key(key) else ""


async def fetch_inputs(svc: Services, urls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Fetch each distinct URL once; map URL -> stored-input record. 400 INVALID_IMAGE_URL on failure."""
    unique = list(dict.fromkeys(urls))
    if not unique:
        return {}
    own = {url: key for url in unique if (key := own_file_key(svc, url)) is not None}
    remote = [url for url in unique if url not in own]
    images: dict[str, InputImage] = {}
    if own:
        images.update(await _prove_own(svc, await run_in_threadpool(_read_own, svc, own)))
    if remote:
        try:
            fetched = await svc.fetcher.fetch_all(remote)
        except errors.FetchError as exc:
            raise errors.InvalidImageUrl(
                f"Could not use image URL: {exc.reason}", url=exc.url[:500]
            ) from None
        images.update(zip(remote, fetched, strict=True))
    return await run_in_threadpool(_store, svc, {url: images[url] for url in unique})


def _read_own(svc: Services, own: dict[str, str]) -> dict[str, bytes]:
    storage = svc.runtime.storage
    found = {}
    for url, key in own.items():
        if upload_expired(key):
            with contextlib.suppress(OSError, ValueError):
                storage.delete(key)
            raise errors.InvalidImageUrl("Could not use image URL: the upload has expired", url=url[:500])
        try:
            found[url] = storage.read_bytes(key)
        except (FileMissing, OSError, ValueError, LookupError):
            raise errors.InvalidImageUrl("Could not use image URL: no such file", url=url[:500]) from None
    return found


async def _prove_own(svc: Services, found: dict[str, bytes]) -> dict[str, InputImage]:
    """Each file proven an image (on the decode threads, within the decode budget); the first
    failure in the request's order is the one reported."""
    max_pixels = svc.settings.fetch_max_pixels
    infos = await asyncio.gather(
        *(probe_image_async(data, max_pixels) for data in found.values()), return_exceptions=True
    )
    images = {}
    for (url, data), info in zip(found.items(), infos, strict=True):
        if isinstance(info, ValueError):
            raise errors.InvalidImageUrl(
                f"Could not use image URL: not an image: {info}", url=url[:500]
            ) from None
        if isinstance(info, BaseException):
            raise info
        images[url] = InputImage(data, info.mime_type, info.width, info.height, source_url=url)
    return images


def _store(svc: Services, images: dict[str, InputImage]) -> dict[str, dict[str, Any]]:
    # Own files are copied too: an upload may expire (and be deleted) before a queued task runs.
    stored = {}
    for url, image in images.items():
        key = new_key("in", f"input.{EXTENSIONS.get(image.mime_type, 'bin')}")
        svc.runtime.storage.put_bytes(key, image.data)
        stored[url] = stored_input(key, image)
    return stored


async def discard_inputs(svc: Services, stored: dict[str, dict[str, Any]]) -> None:
    """A request that was refused after its inputs were stored leaves nothing behind."""
    for record in stored.values():
        await run_in_threadpool(svc.runtime.storage.delete, record["key"])
