"""The blocking client: drives the operations of ``_base`` with ``httpx.Client`` and ``time.sleep``."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
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


class Client:
    """``Client(api_key=None, base_url=None)``: arguments, else ``NANOGEN_API_KEY`` / ``NANOGEN_BASE_URL``
    (default ``http://127.0.0.1:8000``). ``transport`` is httpx's seam (``httpx.MockTransport`` in tests)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._config = _base.Config.resolve(api_key, base_url)
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)
        self._sleep = time.sleep
        self.images = Images(self)
        self.videos = Videos(self)
        self.uploads = Uploads(self)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def cancel(self, generation_id: str, shot_ids: Sequence[str] | None = None) -> schemas.CancelResponse:
        """nanogen: stop a generation (or only the video shots with these client ids); what had not
        completed is refunded. ``AlreadyEnded`` (409) when nothing was left to cancel."""
        return self._run(_base.cancel(self._config, generation_id, shot_ids))

    def list(
        self,
        *,
        product: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> schemas.HistoryPage:
        """nanogen: a page of the account's generations, newest first; filter by ``product``
        (``"image"``/``"video"``) and ``status`` (one or several); pass ``page.nextCursor`` as ``cursor``."""
        return self._run(
            _base.history_page(self._config, product=product, status=status, limit=limit, cursor=cursor)
        )

    def generation(self, generation_id: str) -> schemas.HistoryGenerationDetail:
        """nanogen: one of the account's generations with its tasks, params and credits."""
        return self._run(_base.history_item(self._config, generation_id))

    def delete_files(self, generation_id: str) -> schemas.HistoryGenerationDetail:
        """nanogen: delete an ended generation's files (URLs then answer 410); record and credits stay."""
        return self._run(_base.history_item(self._config, generation_id, delete=True))

    def ledger(self, *, limit: int | None = None, cursor: str | None = None) -> schemas.LedgerPage:
        """nanogen: a page of the account's grants, debits and refunds, newest first."""
        return self._run(_base.ledger_page(self._config, limit=limit, cursor=cursor))

    def webhook(self) -> schemas.WebhookUrlResponse:
        """nanogen: the account's default webhook URL (``url`` None when unset)."""
        return self._run(_base.webhook_url(self._config))

    def set_webhook(self, url: str | None) -> schemas.WebhookUrlResponse:
        """nanogen: set the default webhook URL (used when a request names none); None removes it."""
        if url is None:
            return self._run(_base.webhook_url(self._config, "DELETE"))
        return self._run(_base.webhook_url(self._config, "PUT", url))

    def webhook_secret(self, *, rotate: bool = False) -> schemas.WebhookSecretResponse:
        """nanogen: the webhook signing secret (``whsec_...``); ``rotate``: a new one (the old one
        signs too for 24 h)."""
        return self._run(_base.webhook_secret(self._config, rotate=rotate))

    def webhook_deliveries(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> schemas.WebhookDeliveryPage:
        """nanogen: a page of the account's webhook deliveries, newest first."""
        return self._run(_base.webhook_deliveries(self._config, limit=limit, cursor=cursor))

    def events(self, generation_id: str) -> Iterator[dict[str, Any]]:
        """nanogen: follow a generation (image or video) as it runs: each status change as a dict
        (the check-status answer plus ``generationStatus``), the terminal one last. A dropped
        connection is resumed where it stopped (``Last-Event-ID``); ``ConnectionFailed`` after
        several failures in a row. Break out of the loop to stop following."""
        follower = _base.EventFollower(self._config, generation_id)
        while not follower.ended:
            try:
                response = self._http.send(follower.request(), stream=True)
                try:
                    if response.status_code >= 400:
                        response.read()
                    if follower.opened(response):
                        for line in response.iter_lines():
                            status = follower.feed(line)
                            if status is not None:
                                yield status
                            if follower.ended:
                                return
                finally:
                    response.close()
                cause = "the stream ended before the generation did"
            except httpx.TransportError as exc:
                cause = repr(exc)
            if not follower.ended:
                self._sleep(follower.lost(cause))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, op: Op[T]) -> T:
        result: Any = None
        failure: BaseException | None = None
        while True:
            try:
                effect = op.throw(failure) if failure else op.send(result)
            except StopIteration as stop:
                return cast(T, stop.value)
            failure = None
            try:
                result = self._perform(effect)
            except httpx.TransportError as exc:
                failure, result = errors.ConnectionFailed(f"{_target(effect)}: {exc!r}"), None

    def _perform(self, effect: _base.Effect) -> Any:
        if isinstance(effect, _base.Sleep):
            self._sleep(effect.seconds)
            return None
        if isinstance(effect, _base.Save):
            return self._save(effect)
        return self._http.send(effect)

    def _save(self, effect: _base.Save) -> httpx.Response:
        response = self._http.send(effect.request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                return response
            part = _base.part_path(effect.path)
            part.parent.mkdir(parents=True, exist_ok=True)
            try:
                with part.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                part.replace(effect.path)
            finally:
                with contextlib.suppress(OSError):
                    part.unlink(missing_ok=True)
        finally:
            response.close()
        return response


def _target(effect: _base.Effect) -> str:
    request = effect.request if isinstance(effect, _base.Save) else effect
    return f"cannot reach {request.url}" if isinstance(request, httpx.Request) else "cannot reach the server"


class ImageGeneration(_base.ImageGenerationBase):
    def __init__(self, client: Client, generation_id: str, **known: Any) -> None:
        super().__init__(client._config, generation_id, **known)
        self._client = client

    def status(self, *, wait: float | None = None) -> schemas.ImageStatusResponse:
        """One check-status call. ``wait`` (nanogen, at most 60): the server answers as soon as the
        generation ends, or after that many seconds with its state then."""
        return self._client._run(self._status_op(wait))

    def wait(
        self,
        on_progress: ImageProgress | None = None,
        timeout: float | None = IMAGE_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> schemas.ImageStatusResponse:
        """Poll (every 3 s, the page's interval) until completed; GenerationFailed / WaitTimeout otherwise."""
        return self._client._run(self._wait_op(on_progress, timeout, poll_interval))

    def download(
        self,
        path: PathArg = None,
        *,
        on_progress: ImageProgress | None = None,
        timeout: float | None = IMAGE_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> Path:
        """Wait, then save the image to ``path`` (a file, a folder, or ``./<generationId>.png``)."""
        return self._client._run(self._download_op(path, on_progress, timeout, poll_interval))


class VideoGeneration(_base.VideoGenerationBase):
    def __init__(self, client: Client, generation_id: str | None, **known: Any) -> None:
        super().__init__(client._config, generation_id, **known)
        self._client = client

    def status(self, *, wait: float | None = None) -> schemas.VideoStatusResponse:
        """One check-status call; ``wait``: as for images."""
        return self._client._run(self._status_op(wait))

    def wait(
        self,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> schemas.VideoStatusResponse:
        """Poll (every 5 s, the page's interval) until every shot ended (and a multi-shot video is joined)."""
        return self._client._run(self._wait_op(on_progress, timeout, poll_interval))

    def download(
        self,
        path: PathArg = None,
        *,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> Path:
        """Wait, then save the whole video (the concatenation, or the single shot)."""
        return self._client._run(self._download_op(path, on_progress, timeout, poll_interval))

    def download_shots(
        self,
        directory: PathArg = None,
        *,
        on_progress: VideoProgress | None = None,
        timeout: float | None = VIDEO_WAIT_TIMEOUT_S,
        poll_interval: float | None = None,
    ) -> list[Path]:
        """Wait, then save each shot's video into ``directory``."""
        return self._client._run(self._download_shots_op(directory, on_progress, timeout, poll_interval))


class Images:
    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(
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
    ) -> ImageGeneration:
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
        accepted = self._client._run(op)
        return ImageGeneration(
            self._client, accepted.generationId, task_id=accepted.taskId, credits_used=accepted.creditsUsed
        )

    def get(self, generation_id: str) -> ImageGeneration:
        """A handle on an earlier generation."""
        return ImageGeneration(self._client, generation_id)


class Videos:
    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(
        self,
        shots: Sequence[ShotInput],
        *,
        resolution: str | None = None,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> VideoGeneration:
        """Submit 1-21 shots: prompts, dicts in the contract's shape or ``Shot`` models (images may be
        local files). Returns at once. ``idempotency_key``, ``webhook_url``: as for images."""
        op = _base.video_generate(self._client._config, shots, resolution, idempotency_key, webhook_url)
        accepted = self._client._run(op)
        return VideoGeneration(
            self._client,
            accepted.generationId,
            shots=[schemas.TaskRef(shotId=s.shotId, taskId=s.taskId) for s in accepted.shots],
            credits_used=accepted.creditsUsed,
            resolution=resolution,
        )

    def get(
        self, generation_id: str | None = None, *, task_ids: Sequence[schemas.TaskRef] = ()
    ) -> VideoGeneration:
        """A handle on an earlier request: by its task ids (any server) or its generationId (nanogen)."""
        return VideoGeneration(self._client, generation_id, shots=task_ids)


class Uploads:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self, source: ImageInput | bytes, *, content_type: str | None = None
    ) -> schemas.UploadResponse:
        """Upload a local image (path or bytes); the URL works in input images until ``expiresAt``."""
        return self._client._run(_base.upload(self._client._config, source, content_type))
