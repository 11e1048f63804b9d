"""Request and response models of the contract (shared by the server, its OpenAPI schema and the SDK).

Parsing goes through :func:`parse_image_request` / :func:`parse_video_request`, which check what the
pages give an error code for in the pages' order (prompt, images, shots...) and map every other
type or enum problem to ``INVALID_PARAMETER`` naming the field, so no client input yields a 422/500.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError

from nanogen import errors
from nanogen.products import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_QUALITY,
    DEFAULT_RESOLUTION,
    MAX_INPUT_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SHOT_ID_CHARS,
    MAX_SHOTS,
    MAX_URL_CHARS,
    SHOT_IMAGE_COUNT,
    SINGLE_SHOT_RESOLUTIONS,
    GenerationType,
    ImageAspectRatio,
    ImageMode,
    ImageQuality,
    Resolution,
    VideoAspectRatio,
)

Model = TypeVar("Model", bound=BaseModel)


def has_control_characters(text: str) -> bool:
    """C0 controls and DEL: nothing an identifier or URL holds (PostgreSQL cannot even store NUL)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _identifier(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters")
    return value


def _text(value: str) -> str:
    if "\x00" in value:  # tabs and newlines are fine in free text; NUL is nothing a database stores
        raise ValueError("must not contain NUL characters")
    return value


# Ids and names: no control characters. Free text (prompts, memos): no NUL.
Identifier = Annotated[str, AfterValidator(_identifier)]
Text = Annotated[str, AfterValidator(_text)]
# Both generate bodies take it (nanogen's addition to the pages).
WebhookUrl = Annotated[
    Identifier | None,
    Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="nanogen addition: where to POST the signed event when the generation ends "
        "(docs/api.md, Webhooks); default: the account's webhook URL, if set",
    ),
]


class _Request(BaseModel):
    # Unknown fields are ignored (the hosted service's clients may send more); known ones are typed.
    model_config = ConfigDict(extra="ignore", use_enum_values=False)


# -- images --------------------------------------------------------------------------------------------
class ImageGenerateRequest(_Request):
    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Image generation prompt")
    mode: ImageMode | None = Field(
        default=None,
        description="generate (text-to-image) or edit (image-to-image). nanogen: when omitted, "
        "edit if inputImageUrls is non-empty, else generate.",
    )
    aspectRatio: ImageAspectRatio = DEFAULT_IMAGE_ASPECT_RATIO
    imageQuality: ImageQuality = DEFAULT_IMAGE_QUALITY
    googleSearch: StrictBool = False  # a JSON boolean: "yes" or 1 is refused, not read as true
    inputImageUrls: list[str] = Field(
        default_factory=list, description="Public image URLs for edit mode (max 14). Required in edit."
    )
    webhookUrl: WebhookUrl = None

    @property
    def effective_mode(self) -> ImageMode:
        if self.mode is not None:
            return self.mode
        return ImageMode.EDIT if self.inputImageUrls else ImageMode.GENERATE


class ImageGenerateResponse(BaseModel):
    success: bool = True
    generationId: str
    taskId: str
    status: Literal["pending"] = "pending"
    # nanogen additions are optional here: the SDK reads the hosted service's answers with these models.
    creditsUsed: int | None = Field(
        default=None, description="nanogen addition: credits debited for this request"
    )


class ImageStatusRequest(_Request):
    generationId: Identifier = Field(min_length=1, max_length=100)


class ImageStatusResponse(BaseModel):
    success: bool
    status: Literal["pending", "generating", "completed", "failed"]
    generationId: str
    progress: int
    imageUrl: str | None = None
    error: str | None = None


# -- video ---------------------------------------------------------------------------------------------
class Shot(_Request):
    id: Identifier = Field(
        min_length=1, max_length=MAX_SHOT_ID_CHARS, description="Unique identifier for the shot"
    )
    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    generationType: GenerationType
    aspectRatio: VideoAspectRatio = Field(
        default=VideoAspectRatio.LANDSCAPE, description="16:9 or 9:16 (nanogen: 16:9 when omitted)"
    )
    imageUrls: list[str] = Field(default_factory=list)


class VideoGenerateRequest(_Request):
    shots: list[Shot] = Field(min_length=1, max_length=MAX_SHOTS)
    resolution: str = Field(default=DEFAULT_RESOLUTION.value, description="720p (default), 1080p or 4k (4K)")
    webhookUrl: WebhookUrl = None

    @property
    def parsed_resolution(self) -> Resolution:
        return Resolution.parse(self.resolution)


class ShotAccepted(BaseModel):
    shotId: str
    taskId: str
    status: Literal["processing"] = "processing"


class VideoGenerateResponse(BaseModel):
    status: Literal["processing"] = "processing"
    shots: list[ShotAccepted]
    creditsUsed: int | None = None
    generationId: str | None = Field(default=None, description="nanogen addition: the request's id")


class TaskRef(_Request):
    shotId: Identifier = Field(default="", max_length=MAX_SHOT_ID_CHARS)
    taskId: Identifier = Field(min_length=1, max_length=100)


class VideoStatusRequest(_Request):
    taskIds: list[TaskRef] = Field(
        default_factory=list, max_length=MAX_SHOTS * 10, description="Required unless generationId is given"
    )
    resolution: str | None = Field(
        default=None, description="Accepted and validated for compatibility; answers are the same."
    )
    generationId: Identifier | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="nanogen addition: instead of taskIds, every shot of the request with this generationId "
        "(from the generate response); taskIds win when both are given",
    )


class ShotStatus(BaseModel):
    shotId: str
    taskId: str
    status: Literal["processing", "completed", "failed"]
    videoUrl: str | None = None
    generationTime: int | None = None
    error: str | None = None
    progress: int | None = Field(default=None, description="nanogen addition: 0-100")
    resolution: str | None = Field(default=None, description="nanogen addition: as generated")


class VideoStatusResponse(BaseModel):
    status: Literal["processing", "completed", "failed"]
    shots: list[ShotStatus]
    concatenatedVideoUrl: str | None = Field(
        default=None,
        description="nanogen addition: the shots joined in order, once every shot of a multi-shot "
        "request completed",
    )
    concatenationError: str | None = None
    generationId: str | None = Field(
        default=None, description="nanogen addition: when the taskIds are exactly one request's shots"
    )


# -- uploads (nanogen) ---------------------------------------------------------------------------------
class UploadResponse(BaseModel):
    success: bool = True
    url: str = Field(
        description="nanogen's own file URL; usable in inputImageUrls / imageUrls until expiresAt"
    )
    expiresAt: datetime = Field(description="ISO 8601, UTC")
    contentType: str = Field(description="The format found by decoding (image/png, image/jpeg...)")
    width: int
    height: int
    bytes: int


class AccountResponse(BaseModel):
    """nanogen addition: ``GET /api/account``, the caller's account and balance."""

    success: bool = True
    accountId: str
    name: str
    credits: int = Field(description="The balance, in credits")


class CancelRequest(_Request):
    """nanogen addition: ``POST /api/generations/{generationId}/cancel``'s optional body."""

    shotIds: list[Identifier] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SHOTS,
        description="A video's shot ids (as submitted) to cancel; every unfinished task when omitted",
    )


class CancelResponse(BaseModel):
    """nanogen addition: the generation's state after a cancel."""

    generationId: str
    product: Literal["image", "video"]
    status: Literal["pending", "generating", "processing", "completed", "failed"] = Field(
        description="As check-status answers it now (an image: its task's status; a video: overall)"
    )
    creditsRefunded: int = Field(description="Credits this cancel refunded (what had not completed)")
    canceledTaskIds: list[str] = Field(description="The tasks this cancel stopped, failed and refunded")
    shots: list[ShotStatus] | None = Field(default=None, description="A video's shots, as check-status")


class ErrorResponse(BaseModel):
    error: str
    errorCode: str
    requiredCredits: int | None = None


# -- parsing -------------------------------------------------------------------------------------------
def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validate(model: type[Model], data: dict[str, Any], prefix: str = "") -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = prefix + _field_path(tuple(first["loc"]))
        raise errors.InvalidParameter(f"{field}: {first['msg']}", field=field) from None


def _is_inline_image(value: object) -> bool:
    """True for what the pages say the API refuses: base64 / data: URLs instead of public URLs."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return text.lower().startswith("data:") or (len(text) > 256 and "://" not in text[:16])


def _check_urls(urls: list[str]) -> None:
    for url in urls:
        if _is_inline_image(url):
            raise errors.ImageUrlsRequired()
        lowered = url.strip().lower()
        if (
            len(url) > MAX_URL_CHARS
            or not lowered.startswith(("http://", "https://"))
            or has_control_characters(url.strip())
        ):
            raise errors.InvalidImageUrl("Image URLs must be public http(s) URLs", url=url[:200])


def _require_prompt(data: dict[str, Any], error: type[errors.BadRequest], where: str = "") -> dict[str, Any]:
    """``data`` with its prompt trimmed, once the prompt is proven present, short enough and storable.
    The length counts what is kept: surrounding whitespace is not the prompt."""
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise error(f"{error.default_message}{where}")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise error(f"Prompt longer than {MAX_PROMPT_CHARS} characters{where}")
    if "\x00" in prompt:
        raise error(f"Prompt must not contain NUL characters{where}")
    return {**data, "prompt": prompt}


def parse_image_request(data: dict[str, Any]) -> ImageGenerateRequest:
    if data.get("inputImages"):
        raise errors.ImageUrlsRequired(
            "API calls only accept inputImageUrls (base64 inputImages is not supported)"
        )
    data = _require_prompt(data, errors.InvalidPrompt)
    urls = data.get("inputImageUrls")
    if isinstance(urls, list):
        if len(urls) > MAX_INPUT_IMAGES:
            raise errors.TooManyImages()
        if any(_is_inline_image(u) for u in urls):
            raise errors.ImageUrlsRequired()
    request = validate(ImageGenerateRequest, data)
    mode = request.effective_mode
    if mode is ImageMode.EDIT and not request.inputImageUrls:
        raise errors.MissingInputImage()
    if mode is ImageMode.GENERATE and request.inputImageUrls:
        raise errors.InvalidParameter(
            'inputImageUrls is only used in edit mode: send "mode": "edit" to edit images',
            field="inputImageUrls",
        )
    _check_urls(request.inputImageUrls)
    return request


def parse_video_request(data: dict[str, Any]) -> VideoGenerateRequest:
    shots = data.get("shots")
    if shots is None or shots == []:
        raise errors.ShotsRequired()
    if not isinstance(shots, list):
        raise errors.InvalidParameter("shots must be an array of shot objects", field="shots")
    if len(shots) > MAX_SHOTS:
        raise errors.TooManyShots(f"At most {MAX_SHOTS} shots per request (got {len(shots)})")
    shots = list(shots)
    for index, shot in enumerate(shots):
        if not isinstance(shot, dict):
            raise errors.InvalidParameter(f"shots[{index}] must be an object", field=f"shots[{index}]")
        shots[index] = shot = _require_prompt(shot, errors.PromptRequired, f" (shots[{index}])")
        urls = shot.get("imageUrls")
        if isinstance(urls, list) and any(_is_inline_image(u) for u in urls):
            raise errors.ImageUrlsRequired()
    request = validate(VideoGenerateRequest, {**data, "shots": shots})
    _check_shots(request)
    try:
        resolution = request.parsed_resolution
    except ValueError:
        raise errors.InvalidParameter(
            "resolution must be one of 720p, 1080p, 4k", field="resolution"
        ) from None
    if resolution in SINGLE_SHOT_RESOLUTIONS and len(request.shots) > 1:
        raise errors.ResolutionNotAvailable()
    return request


def _check_shots(request: VideoGenerateRequest) -> None:
    seen: set[str] = set()
    for index, shot in enumerate(request.shots):
        if shot.id in seen:
            raise errors.DuplicateShotId(f"Shot id {shot.id!r} is used twice", field=f"shots[{index}].id")
        seen.add(shot.id)
        low, high = SHOT_IMAGE_COUNT[shot.generationType]
        if not low <= len(shot.imageUrls) <= high:
            wanted = "no images" if high == 0 else f"{low}-{high} images"
            raise errors.InvalidImageCount(
                f"{shot.generationType.value} takes {wanted}; shot {shot.id!r} has {len(shot.imageUrls)}",
                field=f"shots[{index}].imageUrls",
            )
        _check_urls(shot.imageUrls)


def parse_video_status_request(data: dict[str, Any]) -> VideoStatusRequest:
    if data.get("taskIds", []) is None:  # beside a generationId, a client's "no task ids" may be null
        data = {k: v for k, v in data.items() if k != "taskIds"}
    task_ids = data.get("taskIds")
    generation_id = data.get("generationId")
    if (task_ids is None or task_ids == []) and not (
        isinstance(generation_id, str) and generation_id.strip()
    ):
        raise errors.TaskIdsRequired()
    if task_ids is not None and not isinstance(task_ids, list):
        raise errors.InvalidParameter("taskIds must be an array of {shotId, taskId}", field="taskIds")
    request = validate(VideoStatusRequest, data)
    if request.resolution is not None:
        try:
            Resolution.parse(request.resolution)
        except ValueError:
            raise errors.InvalidParameter(
                "resolution must be one of 720p, 1080p, 4k", field="resolution"
            ) from None
    return request


def parse_image_status_request(data: dict[str, Any]) -> ImageStatusRequest:
    value = data.get("generationId")
    if not isinstance(value, str) or not value.strip():
        raise errors.GenerationIdRequired()
    return validate(ImageStatusRequest, data)


# -- history and the ledger (nanogen additions; docs/api.md, "History and ledger") --------------------
HistoryStatus = Literal["pending", "generating", "completed", "failed", "canceled"]


class HistoryTask(BaseModel):
    taskId: str
    shotId: str | None = Field(default=None, description="A video shot's id, as submitted")
    position: int
    status: HistoryStatus
    progress: int
    credits: int
    outputUrl: str | None = Field(default=None, description="The image or shot video, once completed")
    error: str | None = None
    createdAt: datetime
    startedAt: datetime | None = None
    finishedAt: datetime | None = None


class HistoryGeneration(BaseModel):
    generationId: str
    product: Literal["image", "video"]
    status: HistoryStatus = Field(description="Read from the tasks (docs/api.md lists the rules)")
    prompt: str | None = Field(default=None, description="The image's prompt, or a video's first shot's")
    credits: int = Field(description="Credits debited at submission")
    taskCount: int
    createdAt: datetime
    filesDeletedAt: datetime | None = Field(
        default=None, description="When the files were deleted (DELETE or retention): their URLs answer 410"
    )


class HistoryGenerationDetail(HistoryGeneration):
    params: dict[str, Any] = Field(description="The request's parameters, as accepted")
    creditsRefunded: int = Field(description="Credits refunded for tasks that failed or were canceled")
    concatenatedVideoUrl: str | None = None
    tasks: list[HistoryTask]


class HistoryPage(BaseModel):
    data: list[HistoryGeneration]
    nextCursor: str | None = Field(description="Pass as cursor for the next (older) page; null on the last")


class LedgerEntry(BaseModel):
    kind: Literal["grant", "debit", "refund"]
    amount: int = Field(description="Signed: grants and refunds positive, debits negative")
    balanceAfter: int = Field(description="The balance once this entry and every older one counted")
    generationId: str | None = Field(default=None, description="null for grants")
    createdAt: datetime


class LedgerPage(BaseModel):
    data: list[LedgerEntry]
    nextCursor: str | None = Field(description="Pass as cursor for the next (older) page; null on the last")


# -- webhooks (nanogen additions; docs/api.md, "Webhooks") --------------------------------------------
class WebhookUrlRequest(_Request):
    url: Identifier = Field(min_length=1, max_length=MAX_URL_CHARS, description="http(s) URL of the receiver")


class WebhookUrlResponse(BaseModel):
    success: bool = True
    url: str | None = Field(description="The account's default webhook URL; null when none is set")


class WebhookSecretResponse(BaseModel):
    secret: str = Field(description="The signing secret (whsec_...), for the standardwebhooks libraries")
    previousSecretValidUntil: datetime | None = Field(
        default=None, description="Until then the secret before the last rotation signs too"
    )


WebhookEventType = Literal["image.completed", "image.failed", "video.completed", "video.failed"]


class WebhookDelivery(BaseModel):
    id: str = Field(description="The event's id: the webhook-id header of every attempt")
    type: WebhookEventType
    generationId: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    lastStatusCode: int | None = Field(default=None, description="The receiver's status at the last attempt")
    lastError: str | None = Field(default=None, description="Why the last attempt failed")
    createdAt: datetime = Field(description="When the generation ended (the event's timestamp)")
    lastAttemptAt: datetime | None = None
    nextAttemptAt: datetime | None = Field(default=None, description="While pending: the next retry")
    endedAt: datetime | None = Field(default=None, description="When it was delivered or given up")


class WebhookDeliveryPage(BaseModel):
    data: list[WebhookDelivery]
    nextCursor: str | None = Field(description="Pass as cursor for the next (older) page; null on the last")


class WebhookEvent(BaseModel):
    """The body POSTed to a webhook URL (signed: webhook-id, webhook-timestamp, webhook-signature)."""

    type: WebhookEventType
    timestamp: datetime = Field(description="When the generation ended")
    data: dict[str, Any] = Field(description="The generation's check-status answer at that moment")
