"""The Gemini-compatible dialect (``/v1beta``): Google's wire format onto nanogen's products, and back.

Pure mapping, no I/O: the routes (server/routes/gemini.py) authenticate, store inputs, submit through
the native submit path and wait. Requests are read as proto3 JSON is by Google: every field in
lowerCamel or snake_case, ``bytes`` fields in the standard or URL-safe base64 alphabet, padded or not.
Errors leave in Google's shape ``{"error": {"code", "message", "status", "details"}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nanogen import b64, errors
from nanogen.products import (
    DEFAULT_IMAGE_ASPECT_RATIO,
    DEFAULT_IMAGE_QUALITY,
    DEFAULT_RESOLUTION,
    MAX_INPUT_IMAGES,
    SHOT_SECONDS,
    GenerationType,
    ImageAspectRatio,
    ImageQuality,
    Resolution,
    VideoAspectRatio,
)

# Google's model names this dialect answers to; each is nanogen's one image or video product.
IMAGE_MODELS: Final = ("gemini-3.1-flash-image-preview", "gemini-3-pro-image-preview")
VIDEO_MODELS: Final = (
    "veo-3.1-generate-preview",
    "veo-3.1-fast-generate-preview",
    "veo-3.1-generate-001",
    "veo-3.1-fast-generate-001",
)
# usageMetadata.candidatesTokenCount: the output tokens Google publishes for one image of the model
# at each size (what the same image is billed as there). Input tokens are not counted.
OUTPUT_TOKENS: Final[dict[str, dict[ImageQuality, int]]] = {
    "gemini-3.1-flash-image-preview": {
        ImageQuality.Q1K: 1120,
        ImageQuality.Q2K: 1680,
        ImageQuality.Q4K: 2520,
    },
    "gemini-3-pro-image-preview": {ImageQuality.Q1K: 1120, ImageQuality.Q2K: 1120, ImageQuality.Q4K: 2000},
}
OPERATION_RESPONSE_TYPE: Final = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
)
ERROR_INFO_TYPE: Final = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
DOMAIN: Final = "nanogen"

# google.rpc.Code names by HTTP status (Google's own mapping).
STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class GoogleError(Exception):
    """An error answer in Google's shape."""

    def __init__(
        self,
        code: int,
        message: str,
        details: Sequence[dict[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = STATUS_NAMES.get(code, "INVALID_ARGUMENT" if code < 500 else "INTERNAL")
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid(message: str) -> GoogleError:
    return GoogleError(400, message)


def error_info(reason: str, domain: str = DOMAIN, **metadata: str) -> dict[str, Any]:
    info: dict[str, Any] = {"@type": ERROR_INFO_TYPE, "reason": reason, "domain": domain}
    if metadata:
        info["metadata"] = metadata
    return info


def from_api_error(exc: errors.APIError) -> GoogleError:
    """A nanogen error as Google would say it; its errorCode is the ErrorInfo reason."""
    if isinstance(exc, errors.InsufficientCredits):
        required = exc.required_credits
        return GoogleError(
            429,
            f"Insufficient credits: this request costs {required} credits",
            [error_info("INSUFFICIENT_CREDITS", requiredCredits=str(required))],
        )
    if isinstance(exc, errors.RateLimited):
        retry = exc.retry_after or 1
        return GoogleError(
            429,
            exc.message,
            [error_info("RATE_LIMIT_EXCEEDED"), {"@type": RETRY_INFO_TYPE, "retryDelay": f"{retry}s"}],
            exc.headers(),
        )
    code = 400 if exc.status == 413 else exc.status  # Google: an oversized payload is a 400
    return GoogleError(code, exc.message, [error_info(exc.code)], exc.headers())


# -- proto3 JSON ---------------------------------------------------------------------------------------
_UPPER = re.compile(r"([A-Z])")


def _snake(name: str) -> str:
    return _UPPER.sub(r"_\1", name).lower()


def get(obj: Mapping[str, Any], name: str) -> Any:
    """A field by its lowerCamel ``name`` or the snake_case spelling."""
    if name in obj:
        return obj[name]
    return obj.get(_snake(name))


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"Invalid value at '{where}': expected an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid value at '{where}': expected an array")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"Invalid value at '{where}' (TYPE_STRING)")
    return value


def b64decode(value: Any, where: str) -> bytes:
    """A proto3 ``bytes`` field: the standard or URL-safe alphabet, padded or not."""
    text = _string(value, where).strip()
    try:
        return b64.decode(text)
    except ValueError:
        raise invalid(f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed") from None


# -- generateContent -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inline:
    """An image sent in the request body (bytes as decoded; the routes prove them an image)."""

    data: bytes
    where: str  # the field it came from, for error messages


@dataclass(frozen=True)
class ImageAsk:
    """A generateContent request as the native image request: ``native`` is the body that
    ``schemas.parse_image_request`` validates; ``inputs`` the images in order (inline bytes, or a
    ``fileData.fileUri`` fetched like ``inputImageUrls``)."""

    native: dict[str, Any]
    inputs: list[Inline | str] = field(default_factory=list)

    @property
    def quality(self) -> ImageQuality:
        return ImageQuality(self.native["imageQuality"])


def _choice(value: Any, allowed: Sequence[str], where: str, default: str) -> str:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise invalid(f"Invalid value at '{where}': {value!r} (nanogen takes {', '.join(allowed)})")
    return str(value)


def parse_generate_content(body: dict[str, Any]) -> ImageAsk:
    texts: list[str] = []
    inputs: list[Inline | str] = []
    contents = _list(get(body, "contents"), "contents")
    if not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified")
    for c, content in enumerate(contents):
        content = _object(content, f"contents[{c}]")
        if get(content, "role") not in (None, "", "user"):
            continue  # earlier model turns: only the user's words and images make the request
        for p, part in enumerate(_list(get(content, "parts"), f"contents[{c}].parts")):
            where = f"contents[{c}].parts[{p}]"
            part = _object(part, where)
            if get(part, "thought"):
                continue
            text, inline, file = get(part, "text"), get(part, "inlineData"), get(part, "fileData")
            if text is not None:
                texts.append(_string(text, f"{where}.text"))
            elif inline is not None:
                inline = _object(inline, f"{where}.inline_data")
                inputs.append(Inline(b64decode(get(inline, "data"), f"{where}.inline_data.data"), where))
            elif file is not None:
                uri = _string(
                    get(_object(file, f"{where}.file_data"), "fileUri"), f"{where}.file_data.file_uri"
                )
                inputs.append(uri)
            else:
                raise invalid(
                    f"Invalid value at '{where}': nanogen takes text, inlineData and fileData parts"
                )
    if len(inputs) > MAX_INPUT_IMAGES:
        raise invalid(f"At most {MAX_INPUT_IMAGES} input images (got {len(inputs)})")
    config = _object(get(body, "generationConfig") or {}, "generation_config")
    modalities = _list(get(config, "responseModalities"), "generation_config.response_modalities")
    if modalities and "IMAGE" not in [str(m).upper() for m in modalities]:
        raise invalid("generation_config.response_modalities must include IMAGE: these models make images")
    if get(config, "candidateCount") not in (None, 1):
        raise invalid("generation_config.candidate_count: nanogen makes one candidate")
    image_config = _object(get(config, "imageConfig") or {}, "generation_config.image_config")
    aspect_ratio = _choice(
        get(image_config, "aspectRatio"),
        [r.value for r in ImageAspectRatio],
        "generation_config.image_config.aspect_ratio",
        DEFAULT_IMAGE_ASPECT_RATIO.value,
    )
    quality = _choice(
        get(image_config, "imageSize"),
        [q.value for q in ImageQuality],
        "generation_config.image_config.image_size",
        DEFAULT_IMAGE_QUALITY.value,
    )
    search = False
    for t, tool in enumerate(_list(get(body, "tools"), "tools")):
        tool = _object(tool, f"tools[{t}]")
        if get(tool, "googleSearch") is None or len(tool) != 1:
            raise invalid(f"Invalid value at 'tools[{t}]': nanogen takes the googleSearch tool only")
        search = True
    native = {
        "prompt": "\n".join(texts),
        "aspectRatio": aspect_ratio,
        "imageQuality": quality,
        "googleSearch": search,
    }
    return ImageAsk(native, inputs)


def content_response(png_b64: str, model: str, quality: ImageQuality, response_id: str) -> dict[str, Any]:
    tokens = OUTPUT_TOKENS.get(model, {}).get(quality, 0)
    return {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": png_b64}}],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"candidatesTokenCount": tokens, "totalTokenCount": tokens},
        "modelVersion": model,
        "responseId": response_id,
    }


def unmade_response(message: str, model: str, response_id: str) -> dict[str, Any]:
    """The image was not made (the task failed and was refunded): a candidate without content, as
    Google answers an image it did not make."""
    return {
        "candidates": [{"finishReason": "IMAGE_OTHER", "finishMessage": message, "index": 0}],
        "usageMetadata": {},
        "modelVersion": model,
        "responseId": response_id,
    }


# -- predictLongRunning (Veo) --------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoAsk:
    """A predictLongRunning request as one native shot (``shot``: the fields ``schemas.Shot``
    validates) and its images in the shot's order."""

    shot: dict[str, Any]
    resolution: Resolution
    images: list[Inline]


def _veo_image(value: Any, where: str) -> Inline:
    """Veo's Image: ``bytesBase64Encoded`` (as the REST reference and the SDK send it) or ``inlineData``."""
    image = _object(value, where)
    if get(image, "gcsUri"):
        raise invalid(
            f"Invalid value at '{where}.gcs_uri': nanogen does not read Cloud Storage; send the bytes"
        )
    inline = get(image, "inlineData")
    if inline is not None:
        return Inline(b64decode(get(_object(inline, where), "data"), f"{where}.inline_data.data"), where)
    return Inline(b64decode(get(image, "bytesBase64Encoded"), f"{where}.bytes_base64_encoded"), where)


def parse_predict(body: dict[str, Any]) -> VideoAsk:
    instances = _list(get(body, "instances"), "instances")
    if len(instances) != 1:
        raise invalid("instances: nanogen takes exactly one instance")
    instance = _object(instances[0], "instances[0]")
    if get(instance, "video") is not None:
        raise invalid("instances[0].video: video extension is not available on nanogen")
    first, last = get(instance, "image"), get(instance, "lastFrame")
    references = _list(get(instance, "referenceImages"), "instances[0].reference_images")
    images: list[Inline] = []
    if references:
        if first is not None or last is not None:
            raise invalid("instances[0]: referenceImages cannot be combined with image or lastFrame")
        kind = GenerationType.REFERENCE_2_VIDEO
        for r, reference in enumerate(references):
            where = f"instances[0].reference_images[{r}]"
            reference = _object(reference, where)
            if str(get(reference, "referenceType") or "ASSET").upper() not in (
                "ASSET",
                "REFERENCE_TYPE_ASSET",
            ):
                raise invalid(f"Invalid value at '{where}.reference_type': nanogen takes asset references")
            images.append(_veo_image(get(reference, "image"), f"{where}.image"))
    elif first is not None:
        kind = GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO
        images.append(_veo_image(first, "instances[0].image"))
        if last is not None:
            images.append(_veo_image(last, "instances[0].last_frame"))
    elif last is not None:
        raise invalid("instances[0].last_frame needs instances[0].image (the first frame)")
    else:
        kind = GenerationType.TEXT_2_VIDEO
    parameters = _object(get(body, "parameters") or {}, "parameters")
    aspect_ratio = _choice(
        get(parameters, "aspectRatio"),
        [r.value for r in VideoAspectRatio],
        "parameters.aspect_ratio",
        VideoAspectRatio.LANDSCAPE.value,
    )
    resolution = _choice(
        get(parameters, "resolution"),
        ["720p", "1080p", "4k", "4K"],
        "parameters.resolution",
        DEFAULT_RESOLUTION,
    )
    duration = get(parameters, "durationSeconds")
    if duration is not None and str(duration) != str(SHOT_SECONDS):
        raise invalid(f"parameters.duration_seconds: nanogen makes {SHOT_SECONDS}-second videos")
    for name in ("sampleCount", "numberOfVideos"):
        if get(parameters, name) not in (None, 1):
            raise invalid(f"parameters.{_snake(name)}: nanogen makes one video per operation")
    if get(parameters, "storageUri"):
        raise invalid("parameters.storage_uri: nanogen keeps the video itself (the operation gives its URL)")
    shot = {
        "id": "shot-1",
        "prompt": get(instance, "prompt") if get(instance, "prompt") is not None else "",
        "generationType": kind.value,
        "aspectRatio": aspect_ratio,
    }
    return VideoAsk(shot, Resolution.parse(resolution), images)


def operation_name(model: str, generation_id: str) -> str:
    return f"models/{model}/operations/{generation_id}"


def operation_state(name: str, done: bool, video_url: str | None, error: str | None) -> dict[str, Any]:
    """A Veo operation as Google reports it: ``done`` absent while running (proto3 JSON), then the
    video's URL, or an ``error`` (the shot failed and was refunded)."""
    if not done:
        return {"name": name}
    if video_url is None:
        return {
            "name": name,
            "done": True,
            "error": {"code": 13, "message": error or "Video generation failed"},
        }
    return {
        "name": name,
        "done": True,
        "response": {
            "@type": OPERATION_RESPONSE_TYPE,
            "generateVideoResponse": {"generatedSamples": [{"video": {"uri": video_url}}]},
        },
    }
