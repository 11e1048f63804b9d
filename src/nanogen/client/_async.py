"""The asyncio client: drives the operations of ``_base`` with ``httpx.AsyncClient`` and ``asyncio.sleep``.

Local files to upload are read with plain (blocking) file reads: they are small and read once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import httpx

from nanogen import errors, schemas
from nanogen.client import _base
from nanogen.client._base import (
    IMAGE_WAIT_TIMEOUT_S,
    VIDEO_WAIT_TIMEOUT_S,
    ImageInput,
    ImageProgress,
    Op,
    ShotInput,
    T,
    VideoProgress,
)

PathArg = str | os.PathLike[str] | None


class AsyncClient:
    """``AsyncClient(api_key=None, base_url=None)``: arguments, else ``NANOGEN_API_KEY`` /
    ``NANOGEN_BASE_URL`` (default ``http://127.0.0.1:8000``). ``transport`` is httpx's seam
    (``httpx.MockTransport`` in tests)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = _base.Config.resolve(api_key, base_url)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)
        self._sleep = asyncio.sleep
        self.images = AsyncImages(self)
        self.videos = AsyncVideos(self)
        self.uploads = AsyncUploads(self)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    async def cancel(
        self, generation_id: str, shot_ids: Sequence[str] | None = None
    ) -> schemas.CancelResponse:
        """nanogen: stop a generation (or only the video shots with these client ids); what had not
        completed is refunded. ``AlreadyEnded`` (409) when nothing was left to cancel."""
        return await self._run(_base.cancel(self._config, generation_id, shot_ids))

    async def list(
        self,
        *,
        product: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> schemas.HistoryPage:
        """nanogen: a page of the account's generations, newest first; filter by ``product``
        (``"image"``/``"video"``) and ``status`` (one or several); pass ``page.nextCursor`` as ``cursor``."""
        return await self._run(
            _base.history_page(self._config, product=product, status=status, limit=limit, cursor=cursor)
        )

    async def generation(self, generation_id: str) -> schemas.HistoryGenerationDetail:
        """nanogen: one of the account's generations with its tasks, params and credits."""
        return await self._run(_base.history_item(self._config, generation_id))

    async def delete_files(self, generation_id: str) -> schemas.HistoryGenerationDetail:
        """nanogen: delete an ended generation's files (URLs then answer 410); record and credits stay."""
        return await self._run(_base.history_item(self._config, generation_id, delete=True))

    async def ledger(self, *, limit: int | None = None, cursor: str | None = None) -> schemas.LedgerPage:
        """nanogen: a page of the account's grants, debits and refunds, newest first."""
        return await self._run(_base.ledger_page(self._config, limit=limit, cursor=cursor))

    async def webhook(self) -> schemas.WebhookUrlResponse:
        """nanogen: the account's default webhook URL (``url`` None when unset)."""
        return await self._run(_base.webhook_url(self._config))

    async def set_webhook(self, url: str | None) -> schemas.WebhookUrlResponse:
        """nanogen: set the default webhook URL (used when a request names none); None removes it."""
        if url is None:
            return await self._run(_base.webhook_url(self._config, "DELETE"))
        return await self._run(_base.webhook_url(self._config, "PUT", url))

    async def webhook_secret(self, *, rotate: bool = False) -> schemas.WebhookSecretResponse:
        """nanogen: the webhook signing secret (``whsec_...``); ``rotate``: a new one (the old one
        signs too for 24 h)."""
        return await self._run(_base.webhook_secret(self._config, rotate=rotate))

    async def webhook_deliveries(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> schemas.WebhookDeliveryPage:
        """nanogen: a page of the account's webhook deliveries, newest first."""
        return await self._run(_base.webhook_deliveries(self._config, limit=limit, cursor=cursor))

    async def events(self, generation_id: str) -> AsyncIterator[dict[str, Any]]:
        """nanogen: follow a generation as it runs (``async for status in client.events(id)``): each
        status change as a dict, the terminal one last; resumed where it stopped after a dropped
        connection (``Client.events``)."""
        follower = _base.EventFollower(self._config, generation_id)
        while not follower.ended:
            try:
                response = await self._http.send(follower.request(), stream=True)
                try:
                    if response.status_code >= 400:
                        await response.aread()
                    if follower.opened(response):
                        async for line in response.aiter_lines():
                            status = follower.feed(line)
                            if status is not None:
                                yield status
                            if follower.ended:
                                return
                finally:
                    await response.aclose()
                cause = "the stream ended before the generation did"
            except httpx.TransportError as exc:
                cause = repr(exc)
            if not follower.ended:
                await self._sleep(follower.lost(cause))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, op: Op[T]) -> T:
        result: Any = None
        failure: BaseException | None = None
        while True:
            try:
                effect = op.throw(failure) if failure else op.send(result)
            except StopIteration as stop:
                return cast(T, stop.value)
            failure = None
            try:
                result = await self._perform(effect)
            except httpx.TransportError as exc:
                failure, result = errors.ConnectionFailed(f"{_target(effect)}: {exc!r}"), None

    async def _perform(self, effect: _base.Effect) -> Any:
        if isinstance(effect, _base.Sleep):
            await self._sleep(effect.seconds)
            return None
        if isinstance(effect, _base.Save):
            return await self._save(effect)
        return await self._http.send(effect)

    async def _save(self, effect: _base.Save) -> httpx.Response:
        response = await self._http.send(effect.request, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                return response
            part = _base.part_path(effect.path)
            part.parent.mkdir(parents=True, exist_ok=True)
            try:
                with part.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
                part.replace(effect.path)
            finally:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
        finally:
            await response.aclose()
        return response


def _target(effect: _base.Effect) -> str:
    request = effect.request if isinstance(effect, _base.Save) else effect
    return f"cannot reach {request.url}" if isinstance(request, httpx.Request) else "cannot reach the server"


class AsyncImageGeneration(_base.ImageGenerationBase):
    def __init__(self, client: AsyncClient, generation_id: str, **known: Any) -> None:
        super().__init__(client._config, generation_id, **known)
        self._client = client

    async def status(self, *, wait: float | None = None) -> schemas.ImageStatusResponse:
        """One check-status call. ``wait`` (nanogen, at most 60): the server answers as soon as the
        generation ends, or after that many seconds with its state then."""
        return await self._client._run(self._status_op(wait))

    async def wait(
        self,
        on_progress: ImageProgress | None = None,
        timeout: float | None = IMAGE_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> schemas.ImageStatusResponse:
        """Poll (every 3 s, the page's interval) until completed; GenerationFailed / WaitTimeout otherwise."""
        return await self._client._run(self._wait_op(on_progress, timeout, poll_interval))

    async def download(
        self,
        path: PathArg = None,
        *,
        on_progress: ImageProgress | None = None,
        timeout: float | None = IMAGE_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> Path:
        """Wait, then save the image to ``path`` (a file, a folder, or ``./<generationId>.png``)."""
        return await self._client._run(self._download_op(path, on_progress, timeout, poll_interval))


class AsyncVideoGeneration(_base.VideoGenerationBase):
    def __init__(self, client: AsyncClient, generation_id: str | None, **known: Any) -> None:
        super().__init__(client._config, generation_id, **known)
        self._client = client

    async def status(self, *, wait: float | None = None) -> schemas.VideoStatusResponse:
        """One check-status call; ``wait``: as for images."""
        return await self._client._run(self._status_op(wait))

    async def wait(
        self,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> schemas.VideoStatusResponse:
        """Poll (every 5 s, the page's interval) until every shot ended (and a multi-shot video is joined)."""
        return await self._client._run(self._wait_op(on_progress, timeout, poll_interval))

    async def download(
        self,
        path: PathArg = None,
        *,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> Path:
        """Wait, then save the whole video (the concatenation, or the single shot)."""
        return await self._client._run(self._download_op(path, on_progress, timeout, poll_interval))

    async def download_shots(
        self,
        directory: PathArg = None,
        *,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> list[Path]:
        """Wait, then save each shot's video into ``directory``."""
        return await self._client._run(
            self._download_shots_op(directory, on_progress, timeout, poll_interval)
        )


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(
        self,
        prompt: str,
        *,
        aspect_ratio: str | None = None,
        quality: str | None = None,
        google_search: bool = False,
        input_images: Sequence[ImageInput] = (),
        mode: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> AsyncImageGeneration:
        """Submit; ``input_images`` are URLs or local files (uploaded first). Returns at once.

        ``idempotency_key`` (nanogen, docs/api.md): sent as ``Idempotency-Key``; the request is then
        sent again, with the same key, when its answer is lost or the server is briefly busy, and
        the server creates (and debits) one generation however many times it arrives.

        ``webhook_url`` (nanogen): where the server POSTs the signed event when the generation ends."""
        op = _base.image_generate(
            self._client._config,
            prompt,
            aspect_ratio,
            quality,
            google_search,
            input_images,
            mode,
            idempotency_key,
            webhook_url,
        )
        accepted = await self._client._run(op)
        return AsyncImageGeneration(
            self._client, accepted.generationId, task_id=accepted.taskId, credits_used=accepted.creditsUsed
        )

    def get(self, generation_id: str) -> AsyncImageGeneration:
        """A handle on an earlier generation."""
        return AsyncImageGeneration(self._client, generation_id)


class AsyncVideos:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(
        self,
        shots: Sequence[ShotInput],
        *,
        resolution: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> AsyncVideoGeneration:
        """Submit 1-21 shots: prompts, dicts in the contract's shape or ``Shot`` models (images may be
        local files). Returns at once. ``idempotency_key``, ``webhook_url``: as for images."""
        op = _base.video_generate(self._client._config, shots, resolution, idempotency_key, webhook_url)
        accepted = await self._client._run(op)
        return AsyncVideoGeneration(
            self._client,
            accepted.generationId,
            shots=[schemas.TaskRef(shotId=s.shotId, taskId=s.taskId) for s in accepted.shots],
            credits_used=accepted.creditsUsed,
            resolution=resolution,
        )

    def get(
        self, generation_id: str | None = None, *, task_ids: Sequence[schemas.TaskRef] = ()
    ) -> AsyncVideoGeneration:
        """A handle on an earlier request: by its task ids (any server) or its generationId (nanogen)."""
        return AsyncVideoGeneration(self._client, generation_id, shots=task_ids)


class AsyncUploads:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, source: ImageInput | bytes, *, content_type: str | None = None
    ) -> schemas.UploadResponse:
        """Upload a local image (path or bytes); the URL works in input images until ``expiresAt``."""
        return await self._client._run(_base.upload(self._client._config, source, content_type))
