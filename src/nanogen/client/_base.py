"""Everything the sync and async clients share, written once and free of I/O.

Each operation is a generator that *yields* effects (an :class:`httpx.Request` to send, a
:class:`Sleep`, a :class:`Save` to stream to a file) and receives their results; ``_sync.py`` and
``_async.py`` only drive those generators with blocking or awaited I/O. Request bodies are built and
checked with the server's own models (``nanogen.schemas``) and error responses become the server's
own exceptions (``nanogen.errors.from_response``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from nanogen import __version__, errors, schemas
from nanogen.products import SHOT_IMAGE_COUNT, GenerationType

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# The pages' polling strategy: images every 3-5 s, videos every 5-10 s.
IMAGE_POLL_INTERVAL_S = 3.0
VIDEO_POLL_INTERVAL_S = 5.0
# Past the server's own deadlines (images 10 min, videos 30 min), with room for the queue.
IMAGE_WAIT_TIMEOUT_S = 15 * 60.0
VIDEO_WAIT_TIMEOUT_S = 45 * 60.0
# Status polls that may fail in a row (network, restarting server) before wait() gives up.
MAX_POLL_FAILURES = 5
# A generate request with an idempotency key: attempts in all, and the wait before the next (times the
# attempt's number; a Retry-After up to SUBMIT_RETRY_MAX_S is honoured).
SUBMIT_ATTEMPTS = 4
SUBMIT_RETRY_S = 0.5
SUBMIT_RETRY_MAX_S = 5.0
# Answers that a poll waits out (Retry-After) rather than raises.
_RETRY_STATUSES = (429, 503)
# nanogen's live progress (docs/api.md): the longest Prefer: wait a server takes, the connect timeout of
# those calls and of event streams, a stream's read timeout (the server pings every 15 s: a silent
# minute is a dead connection) and the pause before reconnecting.
STATUS_WAIT_MAX_S = 60
CONNECT_TIMEOUT_S = 30.0
EVENTS_READ_TIMEOUT_S = 60.0
EVENTS_RECONNECT_S = 1.0

ImageInput = str | os.PathLike[str]
ShotInput = schemas.Shot | Mapping[str, Any] | str
ImageProgress = Callable[[schemas.ImageStatusResponse], object]
VideoProgress = Callable[[schemas.VideoStatusResponse], object]


# -- effects -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Save:
    """Stream the response to ``request`` into ``path`` (via a temporary file); answered with the
    response, whose body is read only when it is an error."""

    request: httpx.Request
    path: Path


Effect = httpx.Request | Sleep | Save
Op = Generator[Effect, Any, T]


def send(request: httpx.Request) -> Op[httpx.Response]:
    response = yield request
    assert isinstance(response, httpx.Response)
    return response


def sleep(seconds: float) -> Op[None]:
    yield Sleep(seconds)


# -- configuration and requests ------------------------------------------------------------------------
@dataclass
class Config:
    api_key: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, api_key: str | None, base_url: str | None) -> Config:
        key = api_key if api_key is not None else os.environ.get("NANOGEN_API_KEY")
        url = (base_url or os.environ.get("NANOGEN_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        return cls(key or None, url, {"User-Agent": f"nanogen-python/{__version__}"})

    def request(
        self,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        """An API request; the key goes only to the API, never to file URLs (CDNs, buckets)."""
        all_headers = dict(self.headers) | dict(headers or {})
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        if content_type:
            all_headers["Content-Type"] = content_type
        return httpx.Request(
            "POST", f"{self.base_url}{path}", json=json, content=content, headers=all_headers
        )


def raise_for_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise errors.from_response(response.status_code, _json_or_none(response), response.headers)


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def parse(model: type[M], response: httpx.Response) -> M:
    raise_for_error(response)
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise errors.UnexpectedResponse(
            f"{response.request.url.path} answered {response.status_code} with an unexpected body: {exc}"
        ) from None


def call(config: Config, path: str, model: type[M], body: dict[str, Any]) -> Op[M]:
    return parse(model, (yield from send(config.request(path, json=body))))


def submit(
    config: Config, path: str, model: type[M], body: dict[str, Any], idempotency_key: str | None
) -> Op[M]:
    """A generate request. Without an idempotency key: sent once (a lost answer cannot be told from a
    lost request, and sending it again could pay twice). With one (the ``Idempotency-Key`` header): a
    request whose answer was lost (the connection failed), that found its first attempt still being
    processed (409) or the server briefly unavailable (503) is sent again with the same key, up to
    SUBMIT_ATTEMPTS in all; the server answers the first response again and debits once."""
    if idempotency_key is None:
        return (yield from call(config, path, model, body))
    headers = {"Idempotency-Key": idempotency_key}
    attempt = 1
    while True:
        try:
            return parse(model, (yield from send(config.request(path, json=body, headers=headers))))
        except (errors.ConnectionFailed, errors.IdempotencyKeyInUse, errors.ServiceUnavailable) as exc:
            if attempt >= SUBMIT_ATTEMPTS:
                raise
            retry_after = exc.extra.get("retryAfter") if isinstance(exc, errors.APIError) else None
            delay = float(retry_after) if isinstance(retry_after, int | float) else SUBMIT_RETRY_S
            yield from sleep(min(delay, SUBMIT_RETRY_MAX_S) * attempt)
            attempt += 1


# -- uploads -------------------------------------------------------------------------------------------
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def sniff_content_type(data: bytes, name: str = "") -> str:
    """The image type from the first bytes (the name's extension when they say nothing)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def is_url(value: ImageInput) -> bool:
    """URLs (and data: strings, which the server answers for) pass through; anything else is a path."""
    return isinstance(value, str) and ("://" in value or value.lower().startswith("data:"))


def upload(
    config: Config, source: ImageInput | bytes, content_type: str | None = None
) -> Op[schemas.UploadResponse]:
    if isinstance(source, bytes):
        data, name = source, ""
    else:
        path = Path(source).expanduser()
        data, name = path.read_bytes(), path.name
    mime = content_type or sniff_content_type(data, name)
    request = config.request("/api/uploads", content=data, content_type=mime)
    return parse(schemas.UploadResponse, (yield from send(request)))


def upload_all(config: Config, sources: Sequence[ImageInput]) -> Op[list[str]]:
    """URLs for ``sources``: URLs as given, local files uploaded (each distinct path once)."""
    uploaded: dict[str, str] = {}
    urls = []
    for source in sources:
        if is_url(source):
            urls.append(str(source))
            continue
        key = os.fspath(Path(source).expanduser().resolve())
        if key not in uploaded:
            uploaded[key] = (yield from upload(config, source)).url
        urls.append(uploaded[key])
    return urls


def _placeholders(sources: Sequence[ImageInput]) -> list[str]:
    """Stand-ins for local files, so a request is checked before anything is uploaded."""
    return [str(s) if is_url(s) else f"https://upload.invalid/{i}" for i, s in enumerate(sources)]


def _check_files(sources: Sequence[ImageInput]) -> None:
    for source in sources:
        if not is_url(source) and not Path(source).expanduser().is_file():
            raise FileNotFoundError(f"no such image file: {os.fspath(source)}")


# -- images --------------------------------------------------------------------------------------------
def image_body(
    prompt: str,
    aspect_ratio: str | None,
    quality: str | None,
    google_search: bool,
    input_urls: Sequence[str],
    mode: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "mode": mode or ("edit" if input_urls else "generate")}
    if aspect_ratio is not None:
        body["aspectRatio"] = aspect_ratio
    if quality is not None:
        body["imageQuality"] = quality
    if google_search:
        body["googleSearch"] = True
    if input_urls:
        body["inputImageUrls"] = list(input_urls)
    # The server's own checks, in its order, with its error classes: refused here, no request spent.
    checked = schemas.parse_image_request(body)
    return checked.model_dump(mode="json", exclude_none=True)


def image_generate(
    config: Config,
    prompt: str,
    aspect_ratio: str | None,
    quality: str | None,
    google_search: bool,
    input_images: Sequence[ImageInput],
    mode: str | None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
) -> Op[schemas.ImageGenerateResponse]:
    image_body(prompt, aspect_ratio, quality, google_search, _placeholders(input_images), mode)
    _check_files(input_images)
    urls = yield from upload_all(config, input_images)
    body = image_body(prompt, aspect_ratio, quality, google_search, urls, mode)
    if webhook_url is not None:
        body["webhookUrl"] = webhook_url
    path = "/api/nano-banana-2/generate"
    return (yield from submit(config, path, schemas.ImageGenerateResponse, body, idempotency_key))


def cancel(config: Config, generation_id: str, shot_ids: Sequence[str] | None) -> Op[schemas.CancelResponse]:
    """nanogen: cancel a generation (or some of a video's shots by their client ids)."""
    body: dict[str, Any] = {} if shot_ids is None else {"shotIds": list(shot_ids)}
    path = f"/api/generations/{quote(generation_id, safe='')}/cancel"
    return (yield from call(config, path, schemas.CancelResponse, body))


def image_status(
    config: Config, generation_id: str, wait: float | None = None
) -> Op[schemas.ImageStatusResponse]:
    body = {"generationId": generation_id}
    path = "/api/nano-banana-2/check-status"
    return (yield from status_call(config, path, schemas.ImageStatusResponse, body, wait))


def status_call(config: Config, path: str, model: type[M], body: dict[str, Any], wait: float | None) -> Op[M]:
    """A check-status call; ``wait`` (nanogen): ``Prefer: wait=N``, the server answering as soon as the
    generation ends or after N seconds (at most STATUS_WAIT_MAX_S), with a read timeout to match."""
    if wait is None:
        return (yield from call(config, path, model, body))
    seconds = max(0, min(int(wait), STATUS_WAIT_MAX_S))
    request = config.request(path, json=body, headers={"Prefer": f"wait={seconds}"})
    request.extensions["timeout"] = httpx.Timeout(CONNECT_TIMEOUT_S, read=seconds + 30.0).as_dict()
    return parse(model, (yield from send(request)))


def image_failed(status: schemas.ImageStatusResponse) -> errors.GenerationFailed:
    return errors.GenerationFailed(status.error or "Generation failed", result=status)


# -- videos --------------------------------------------------------------------------------------------
def default_generation_type(images: int) -> GenerationType:
    """No images: text to video; 1-2: first (and last) frame; 3: references (the only type taking 3)."""
    if images == 0:
        return GenerationType.TEXT_2_VIDEO
    if images <= SHOT_IMAGE_COUNT[GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO][1]:
        return GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO
    return GenerationType.REFERENCE_2_VIDEO


def shot_dicts(shots: Sequence[ShotInput]) -> list[dict[str, Any]]:
    """Shots in the contract's shape: ids ``shot-N`` and the generation type filled in when absent."""
    out = []
    for index, shot in enumerate(shots, start=1):
        if isinstance(shot, str):
            data: dict[str, Any] = {"prompt": shot}
        elif isinstance(shot, BaseModel):
            data = shot.model_dump(mode="json")
        else:
            data = dict(shot)
        data.setdefault("id", f"shot-{index}")
        images = data.get("imageUrls") or []
        if isinstance(images, list | tuple):
            data["imageUrls"] = list(images)
            data.setdefault("generationType", default_generation_type(len(images)).value)
        out.append(data)
    return out


def video_body(shots: list[dict[str, Any]], resolution: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"shots": shots}
    if resolution is not None:
        body["resolution"] = resolution
    checked = schemas.parse_video_request(body)
    return checked.model_dump(mode="json", exclude_none=True)


def _with_urls(shot: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    return {**shot, "imageUrls": urls} if isinstance(shot.get("imageUrls"), list) else shot


def video_generate(
    config: Config,
    shots: Sequence[ShotInput],
    resolution: str | None,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
) -> Op[schemas.VideoGenerateResponse]:
    prepared = shot_dicts(shots)
    sources = [s["imageUrls"] if isinstance(s.get("imageUrls"), list) else [] for s in prepared]
    video_body(
        [_with_urls(s, _placeholders(src)) for s, src in zip(prepared, sources, strict=True)], resolution
    )
    for src in sources:
        _check_files(src)
    uploaded = []
    for shot, src in zip(prepared, sources, strict=True):
        uploaded.append(_with_urls(shot, (yield from upload_all(config, src))))
    body = video_body(uploaded, resolution)
    if webhook_url is not None:
        body["webhookUrl"] = webhook_url
    path = "/api/veo-3/generate"
    return (yield from submit(config, path, schemas.VideoGenerateResponse, body, idempotency_key))


def video_status(
    config: Config,
    task_ids: Sequence[schemas.TaskRef],
    generation_id: str | None,
    resolution: str | None,
    wait: float | None = None,
) -> Op[schemas.VideoStatusResponse]:
    # Without task ids: nanogen's lookup by generationId (docs/api.md).
    body: dict[str, Any] = (
        {"taskIds": [t.model_dump() for t in task_ids]} if task_ids else {"generationId": generation_id}
    )
    if resolution:
        body["resolution"] = resolution
    path = "/api/veo-3/check-status"
    return (yield from status_call(config, path, schemas.VideoStatusResponse, body, wait))


def video_failed(status: schemas.VideoStatusResponse) -> errors.GenerationFailed:
    failed = [s for s in status.shots if s.status == "failed"]
    detail = "; ".join(f"{s.shotId}: {s.error or 'failed'}" for s in failed)
    return errors.GenerationFailed(
        f"{len(failed)} of {len(status.shots)} shots failed ({detail})"
        if failed
        else "Video generation failed",
        result=status,
    )


def video_url(status: schemas.VideoStatusResponse) -> str | None:
    """The whole video: the concatenation, or the only shot's video."""
    if status.concatenatedVideoUrl:
        return status.concatenatedVideoUrl
    if len(status.shots) == 1:
        return status.shots[0].videoUrl
    return None


# -- waiting -------------------------------------------------------------------------------------------
def wait(
    poll: Callable[[], Op[M]],
    is_terminal: Callable[[M], bool],
    on_progress: Callable[[M], object] | None,
    timeout: float | None,
    interval: float,
) -> Op[M]:
    """Poll until ``is_terminal``: first at once, then every ``interval`` seconds. A 429/503 answer is
    waited out for its ``Retry-After``; up to MAX_POLL_FAILURES network failures in a row are retried.
    Past ``timeout`` seconds: :class:`~nanogen.errors.WaitTimeout` (the generation goes on)."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    failures = 0
    while True:
        delay = interval
        try:
            status = yield from poll()
        except errors.ConnectionFailed:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                raise
        except (errors.RateLimited, errors.ServiceUnavailable) as exc:
            if exc.status not in _RETRY_STATUSES:
                raise
            retry_after = exc.extra.get("retryAfter")
            delay = max(interval, float(retry_after)) if isinstance(retry_after, int | float) else interval
        else:
            failures = 0
            if on_progress is not None:
                on_progress(status)
            if is_terminal(status):
                return status
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (delay > remaining and delay > interval):  # Retry-After past the deadline
                raise errors.WaitTimeout(f"still not finished after {time.monotonic() - started:.0f} s")
            delay = min(delay, remaining)
        yield from sleep(delay)


# -- downloads -----------------------------------------------------------------------------------------
def destination(path: str | os.PathLike[str] | None, url: str, stem: str) -> Path:
    """Where a download goes: ``path``; inside it when it is a directory; else ``<stem><suffix>`` here."""
    suffix = PurePosixPath(urlsplit(url).path).suffix or ""
    if path is None:
        return Path.cwd() / f"{stem}{suffix}"
    target = Path(path).expanduser()
    return target / f"{stem}{suffix}" if target.is_dir() else target


def download(config: Config, url: str, path: Path) -> Op[Path]:
    request = httpx.Request("GET", url, headers=config.headers)  # no API key to file hosts
    response = yield Save(request, path)
    assert isinstance(response, httpx.Response)
    raise_for_error(response)
    return path


def part_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


# -- handles: the state and operations of one generation (the shells add run()) --------------------------
class ImageGenerationBase:
    """One image generation: ``id`` is its generationId."""

    def __init__(
        self, config: Config, generation_id: str, task_id: str | None = None, credits_used: int | None = None
    ) -> None:
        self._config = config
        self.id = generation_id
        self.task_id = task_id
        self.credits_used = credits_used
        self.last_status: schemas.ImageStatusResponse | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

    def _status_op(self, wait: float | None = None) -> Op[schemas.ImageStatusResponse]:
        self.last_status = yield from image_status(self._config, self.id, wait)
        return self.last_status

    def _wait_op(
        self, on_progress: ImageProgress | None, timeout: float | None, poll_interval: float | None
    ) -> Op[schemas.ImageStatusResponse]:
        status = yield from wait(
            self._status_op,
            lambda s: s.status in ("completed", "failed"),
            on_progress,
            timeout,
            IMAGE_POLL_INTERVAL_S if poll_interval is None else poll_interval,
        )
        if status.status == "failed":
            raise image_failed(status)
        return status

    def _download_op(
        self,
        path: str | os.PathLike[str] | None,
        on_progress: ImageProgress | None,
        timeout: float | None,
        poll_interval: float | None,
    ) -> Op[Path]:
        status = yield from self._wait_op(on_progress, timeout, poll_interval)
        if not status.imageUrl:
            raise errors.UnexpectedResponse(f"{self.id} completed without an imageUrl")
        return (
            yield from download(self._config, status.imageUrl, destination(path, status.imageUrl, self.id))
        )


class VideoGenerationBase:
    """One video request: its shots' task ids (the contract's handle) and, from nanogen, its generationId."""

    def __init__(
        self,
        config: Config,
        generation_id: str | None,
        shots: Sequence[schemas.TaskRef] = (),
        credits_used: int | None = None,
        resolution: str | None = None,
    ) -> None:
        if not generation_id and not shots:
            raise ValueError("a video generation needs its generationId or its task ids")
        self._config = config
        self.id = generation_id
        self.shots = list(shots)
        self.credits_used = credits_used
        self.resolution = resolution
        self.last_status: schemas.VideoStatusResponse | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id or ','.join(t.taskId for t in self.shots)}>"

    @property
    def task_ids(self) -> list[str]:
        return [t.taskId for t in self.shots]

    def _status_op(self, wait: float | None = None) -> Op[schemas.VideoStatusResponse]:
        status = yield from video_status(self._config, self.shots, self.id, self.resolution, wait)
        if not self.shots:  # looked up by generationId: remember the tasks
            self.shots = [schemas.TaskRef(shotId=s.shotId, taskId=s.taskId) for s in status.shots]
        self.id = self.id or status.generationId
        self.last_status = status
        return status

    def _wait_op(
        self, on_progress: VideoProgress | None, timeout: float | None, poll_interval: float | None
    ) -> Op[schemas.VideoStatusResponse]:
        status = yield from wait(
            self._status_op,
            lambda s: s.status in ("completed", "failed"),
            on_progress,
            timeout,
            VIDEO_POLL_INTERVAL_S if poll_interval is None else poll_interval,
        )
        if status.status == "failed":
            raise video_failed(status)
        return status

    def _download_op(
        self,
        path: str | os.PathLike[str] | None,
        on_progress: VideoProgress | None,
        timeout: float | None,
        poll_interval: float | None,
    ) -> Op[Path]:
        status = yield from self._wait_op(on_progress, timeout, poll_interval)
        url = video_url(status)
        if url is None:
            raise errors.UnexpectedResponse(
                "no single video to download (the server sent no concatenatedVideoUrl): use download_shots()"
            )
        stem = self.id or status.shots[0].taskId
        return (yield from download(self._config, url, destination(path, url, stem)))

    def _download_shots_op(
        self,
        directory: str | os.PathLike[str] | None,
        on_progress: VideoProgress | None,
        timeout: float | None,
        poll_interval: float | None,
    ) -> Op[list[Path]]:
        status = yield from self._wait_op(on_progress, timeout, poll_interval)
        folder = Path.cwd() if directory is None else Path(directory).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for shot in status.shots:
            if shot.videoUrl:
                safe = re.sub(r"[^A-Za-z0-9._-]", "_", shot.shotId)
                target = destination(folder, shot.videoUrl, f"{self.id or 'video'}-{safe}")
                paths.append((yield from download(self._config, shot.videoUrl, target)))
        return paths


# -- history and the ledger (nanogen additions: docs/api.md, "History and ledger") --------------------
def _api_request(config: Config, method: str, path: str, params: Mapping[str, Any]) -> httpx.Request:
    headers = dict(config.headers)
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    query = {k: str(v) for k, v in params.items() if v is not None}
    return httpx.Request(method, f"{config.base_url}{path}", params=query, headers=headers)


def history_page(
    config: Config,
    *,
    product: str | None = None,
    status: str | Sequence[str] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Op[schemas.HistoryPage]:
    """A page of the account's generations, newest first (``nextCursor`` for the next one)."""
    statuses = status if status is None or isinstance(status, str) else ",".join(status)
    params = {"product": product, "status": statuses, "limit": limit, "cursor": cursor}
    request = _api_request(config, "GET", "/api/generations", params)
    return parse(schemas.HistoryPage, (yield from send(request)))


def history_item(
    config: Config, generation_id: str, *, delete: bool = False
) -> Op[schemas.HistoryGenerationDetail]:
    """One generation with its tasks; ``delete``: delete its files first (the record stays)."""
    path = f"/api/generations/{quote(generation_id, safe='')}"
    request = _api_request(config, "DELETE" if delete else "GET", path, {})
    return parse(schemas.HistoryGenerationDetail, (yield from send(request)))


def ledger_page(
    config: Config, *, limit: int | None = None, cursor: str | None = None
) -> Op[schemas.LedgerPage]:
    """A page of the account's ledger, newest first."""
    request = _api_request(config, "GET", "/api/account/ledger", {"limit": limit, "cursor": cursor})
    return parse(schemas.LedgerPage, (yield from send(request)))


# -- webhooks (nanogen; docs/api.md, "Webhooks") -------------------------------------------------------
def webhook_url(
    config: Config, method: str = "GET", url: str | None = None
) -> Op[schemas.WebhookUrlResponse]:
    """The account's default webhook URL: read (GET), set (PUT ``url``) or removed (DELETE)."""
    request = _api_request(config, method, "/api/account/webhook", {})
    if method == "PUT":
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        request = httpx.Request("PUT", request.url, headers=headers, json={"url": url})
    return parse(schemas.WebhookUrlResponse, (yield from send(request)))


def webhook_secret(config: Config, *, rotate: bool = False) -> Op[schemas.WebhookSecretResponse]:
    """The account's signing secret (made on first use), or a new one (``rotate``)."""
    path = "/api/account/webhook-secret" + ("/rotate" if rotate else "")
    request = _api_request(config, "POST" if rotate else "GET", path, {})
    return parse(schemas.WebhookSecretResponse, (yield from send(request)))


def webhook_deliveries(
    config: Config, *, limit: int | None = None, cursor: str | None = None
) -> Op[schemas.WebhookDeliveryPage]:
    """A page of the account's webhook deliveries, newest first."""
    params = {"limit": limit, "cursor": cursor}
    request = _api_request(config, "GET", "/api/account/webhook-deliveries", params)
    return parse(schemas.WebhookDeliveryPage, (yield from send(request)))


# -- live progress (nanogen; docs/api.md, "Live progress") ------------------------------------------------
TERMINAL_STATUSES = ("completed", "failed")


class EventFollower:
    """Following one generation's server-sent events, across reconnections, free of I/O: the shells
    send ``request()``, hand the response to ``opened()`` and each line to ``feed()``, and call
    ``lost()`` when the connection failed or ended early. A reconnection sends ``Last-Event-ID``, so
    the server resumes after the last event received: no terminal event is missed."""

    def __init__(self, config: Config, generation_id: str) -> None:
        self._config = config
        self.generation_id = generation_id
        self.last_event_id: str | None = None
        self.ended = False
        self._failures = 0
        self._event: str = "message"
        self._id: str | None = None
        self._data: list[str] = []

    def request(self) -> httpx.Request:
        headers = dict(self._config.headers) | {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        path = f"/api/generations/{quote(self.generation_id, safe='')}/events"
        request = httpx.Request("GET", f"{self._config.base_url}{path}", headers=headers)
        request.extensions["timeout"] = httpx.Timeout(CONNECT_TIMEOUT_S, read=EVENTS_READ_TIMEOUT_S).as_dict()
        return request

    def opened(self, response: httpx.Response) -> bool:
        """Whether to read the response's events (its body must have been read when it is an error).
        204: the last event received was the terminal one; 503: reconnect later; other errors raise."""
        self._event, self._id, self._data = "message", None, []
        if response.status_code == 204:
            self.ended = True
            return False
        if response.status_code == 503:
            return False
        raise_for_error(response)
        return True

    def feed(self, line: str) -> dict[str, Any] | None:
        """One line of the stream; a status dict when it completed a ``status`` event."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> dict[str, Any] | None:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = "message", []
        if self._id is not None:
            self.last_event_id = self._id
        if event != "status" or not data:
            return None
        try:
            status = json.loads(data)
        except ValueError:
            message = f"an event stream sent data that is not JSON: {data[:200]!r}"
            raise errors.UnexpectedResponse(message) from None
        if not isinstance(status, dict):
            raise errors.UnexpectedResponse("an event stream sent a status that is not a JSON object")
        self._failures = 0
        self.ended = status.get("status") in TERMINAL_STATUSES
        return status

    def lost(self, cause: str) -> float:
        """The connection failed or closed before the terminal event: the seconds to wait before
        reconnecting; ConnectionFailed after MAX_POLL_FAILURES in a row without an event."""
        self._failures += 1
        if self._failures >= MAX_POLL_FAILURES:
            raise errors.ConnectionFailed(f"events of {self.generation_id}: {cause}")
        return EVENTS_RECONNECT_S
