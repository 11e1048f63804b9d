"""Nano Banana through ``generateContent``: the request for an image job, the two ways to send it, and
the image in the answer.

The prompt goes first, then the input images as inline parts (edit). ``aspectRatio`` and
``imageQuality`` map to ``imageConfig`` unchanged (the contract uses Google's own values), and
``googleSearch`` adds the Google Search tool. Gemini 3 image models may answer with "thought" parts
(drafts) before the final image: the last image that is not a thought is the result.

The Gemini API is called over REST (``ImagesRest``, on the engine's event loop: transport.py): the
SDK's request conversion looks up each field of its pydantic models by iterating the model
(google.genai ``_common.get_value_by_path``), which cost ~2.5 ms of CPU per call at 2,000 calls in
flight against ~1 ms for the same call as JSON over httpx (measured side by side, docs/engines.md "At
load"). Vertex AI keeps the SDK (``ImagesSdk``), which also does its authentication. Both answers are
read by one function (``png_from``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from google import genai
from google.genai import types
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from nanogen import b64
from nanogen.engines.base import ImageJob, InputImage
from nanogen.engines.google import blobs
from nanogen.engines.google.calls import checked, json_object, sdk
from nanogen.engines.google.transport import SPOOL_FROM_BYTES, JsonCall, Transport
from nanogen.errors import EngineError
from nanogen.media.images import png_bytes

# What Google's image and video models take as input; anything else is sent as PNG.
INPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})


def input_image(image: InputImage) -> tuple[bytes, str]:
    """The bytes to send for an input image and their type. PNG, JPEG (an MPO too: its first picture
    is the JPEG) and WebP are forwarded as they are, never decoded; a GIF's first frame becomes a PNG,
    decoded within the process's decode budget."""
    if image.mime_type in INPUT_TYPES:
        return image.data, image.mime_type
    try:
        return png_bytes(image.data), "image/png"
    except ValueError as exc:
        raise EngineError(f"An input image could not be converted for Google: {exc}") from exc


@dataclass(frozen=True)
class Request:
    """One image job as Google is asked for it, input images already in a type Google takes."""

    prompt: str
    images: tuple[tuple[bytes, str], ...]  # (data, mime type)
    aspect_ratio: str
    image_size: str
    google_search: bool


def request(job: ImageJob) -> Request:
    return Request(
        prompt=job.prompt,
        images=tuple(input_image(image) for image in job.images),
        aspect_ratio=job.aspect_ratio.value,
        image_size=job.quality.value,
        google_search=job.google_search,
    )


# -- what nanogen reads of an answer -------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    data: bytes | None  # an inline image's bytes
    thought: bool
    text: str | None


@dataclass(frozen=True)
class Answer:
    """The fields of a ``GenerateContentResponse`` that decide the outcome, from either path."""

    block_reason: str | None = None
    block_message: str | None = None
    has_candidate: bool = False
    parts: tuple[Part, ...] = ()
    finish_reason: str | None = None
    finish_message: str | None = None


class ImageCaller(Protocol):
    def generate(
        self, call: Request, model: str, timeout_s: float, held: contextlib.ExitStack | None = None
    ) -> Answer:
        """Google's answer; ProviderError for an error answer, EngineError for one nanogen cannot read.
        ``held``: as ``ImagesRest.answer``'s."""
        ...


# Answers read and decoded at once. The answers of a burst come within a second and their jobs all wake
# together; each reading its answer back (a large one is spooled: transport.py) at once held every
# answer in memory again (5.2 GB for 2,000 of 2 MB). Decoding takes the interpreter lock anyway, so a
# few at a time lose nothing.
_DECODING = threading.BoundedSemaphore(max(4, 2 * (os.cpu_count() or 1)))


# -- Gemini API: REST ----------------------------------------------------------------------------------
class ImagesRest:
    def __init__(self, http: Transport, base_url: str, api_key: SecretStr) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = api_key

    @staticmethod
    def body(call: Request) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": call.prompt}]
        for data, mime_type in call.images:
            parts.append({"inlineData": {"mimeType": mime_type, "data": b64.encode(data)}})
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": call.aspect_ratio, "imageSize": call.image_size},
            },
        }
        if call.google_search:
            body["tools"] = [{"googleSearch": {}}]
        return body

    def generate(
        self, call: Request, model: str, timeout_s: float, held: contextlib.ExitStack | None = None
    ) -> Answer:
        response = self._http.request(
            "POST",
            self._url(model),
            headers=self._headers(),
            json=self.body(call),
            timeout_s=timeout_s,
            spool=True,
        )
        return self.answer(response, held)

    def begin(
        self,
        calls: Sequence[tuple[Request, str, float]],
        futures: Sequence[concurrent.futures.Future[httpx.Response]],
    ) -> None:
        """Send ``(request, model, timeout_s)`` calls without waiting, each into its future (pending);
        ``answer`` reads a future's response."""
        headers = self._headers()
        self._http.begin(
            [
                JsonCall("POST", self._url(model), headers, self.body(call), timeout, spool=True)
                for call, model, timeout in calls
            ],
            futures,
        )

    @staticmethod
    def answer(response: httpx.Response, held: contextlib.ExitStack | None = None) -> Answer:
        """The answer read (a spooled one back from its file) and decoded, a few at a time. With
        ``held``, a large answer's slot stays taken until ``held`` closes, once its caller has
        written the image: answers handed over faster than their jobs got to write them (their
        reading moved to a child process, process_http.py) held 2.2-2.4 GB of decoded images in the
        worker for 2,000 photo-sized answers at once, against 0.68-0.79 GB with the slot held so."""
        _DECODING.acquire()
        try:
            response.read()
            answer = _from_json(json_object(checked(response), blobs.loads))
        except BaseException:
            _DECODING.release()
            raise
        if held is not None and len(response.content) >= SPOOL_FROM_BYTES:
            held.callback(_DECODING.release)
        else:  # a small answer: nothing much to hold, and its slot is worth more to the next job
            _DECODING.release()
        return answer

    def _url(self, model: str) -> str:
        return f"{self._base}/v1beta/models/{quote(model, safe='')}:generateContent"

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key.get_secret_value()}


def _from_json(answer: dict[str, Any]) -> Answer:
    """Google's JSON (protobuf's mapping: camelCase, bytes in base64), fields nanogen does not read
    ignored as the SDK ignores them."""
    feedback = _object(answer.get("promptFeedback"))
    candidates = answer.get("candidates")
    candidate = _object(candidates[0]) if isinstance(candidates, list) and candidates else None
    parts = []
    content = _object(candidate.get("content")) if candidate else {}
    for part in content.get("parts") or []:
        part = _object(part)
        inline = _object(part.get("inlineData"))
        data = inline.get("data")
        text = part.get("text")
        parts.append(
            Part(
                data=_base64(data) if isinstance(data, str | memoryview) and data else None,
                thought=part.get("thought") is True,
                text=text if isinstance(text, str) else None,
            )
        )
    return Answer(
        block_reason=_text(feedback.get("blockReason")),
        block_message=_text(feedback.get("blockReasonMessage")),
        has_candidate=candidate is not None,
        parts=tuple(parts),
        finish_reason=_text(candidate.get("finishReason")) if candidate else None,
        finish_message=_text(candidate.get("finishMessage")) if candidate else None,
    )


def _object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EngineError("Google returned a malformed response (an unexpected JSON shape)")
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _base64(data: str | memoryview) -> bytes:
    """As Google's JSON carries bytes: standard or URL-safe base64, padded or not."""
    try:
        return b64.decode(data)
    except ValueError as exc:
        raise EngineError("Google returned a malformed response (an image that is not base64)") from exc


# -- Vertex AI: the SDK --------------------------------------------------------------------------------
class ImagesSdk:
    def __init__(self, client: genai.Client) -> None:
        self._client = client

    @staticmethod
    def arguments(call: Request) -> tuple[list[types.Content], types.GenerateContentConfig]:
        parts = [types.Part.from_text(text=call.prompt)]
        for data, mime_type in call.images:
            parts.append(types.Part.from_bytes(data=data, mime_type=mime_type))
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            image_config=types.ImageConfig(aspect_ratio=call.aspect_ratio, image_size=call.image_size),
            tools=[types.Tool(google_search=types.GoogleSearch())] if call.google_search else None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        return [types.Content(role="user", parts=parts)], config

    def generate(
        self, call: Request, model: str, timeout_s: float, held: contextlib.ExitStack | None = None
    ) -> Answer:
        contents, config = self.arguments(call)
        config.http_options = types.HttpOptions(timeout=int(timeout_s * 1000))
        response = sdk(
            lambda: self._client.models.generate_content(model=model, contents=contents, config=config)
        )
        return _from_sdk(response)


def _from_sdk(response: types.GenerateContentResponse) -> Answer:
    feedback = response.prompt_feedback
    candidate = response.candidates[0] if response.candidates else None
    content = candidate.content if candidate else None
    return Answer(
        block_reason=_name(feedback.block_reason) if feedback and feedback.block_reason else None,
        block_message=feedback.block_reason_message or None if feedback else None,
        has_candidate=candidate is not None,
        parts=tuple(
            Part(data=p.inline_data.data if p.inline_data else None, thought=bool(p.thought), text=p.text)
            for p in (content.parts or [] if content else [])
        ),
        finish_reason=_name(candidate.finish_reason) if candidate and candidate.finish_reason else None,
        finish_message=candidate.finish_message if candidate else None,
    )


# -- the image in an answer ----------------------------------------------------------------------------
def png_from(answer: Answer) -> bytes:
    """The PNG bytes of the answer's final image. EngineError (with Google's reason) when there is
    none: a blocked prompt, a blocked or missing image, or something that is not an image."""
    if answer.block_reason is not None:
        detail = f": {answer.block_message}" if answer.block_message else ""
        raise EngineError(f"Google blocked the prompt ({answer.block_reason}){detail}")
    if not answer.has_candidate:
        raise EngineError("Google returned a malformed response (no candidates and no block reason)")
    finals = [p.data for p in answer.parts if p.data and not p.thought]
    if finals and finals[-1] is not None:
        return _as_png(finals[-1])
    reason = answer.finish_reason or "no finish reason"
    said = answer.finish_message or " ".join(p.text for p in answer.parts if p.text and not p.thought)
    detail = f": {said.strip()[:300]}" if said and said.strip() else ""
    if reason in ("STOP", "no finish reason"):
        raise EngineError(f"Google returned no image ({reason}){detail}")
    raise EngineError(f"Google blocked or did not make the image ({reason}){detail}")


def _as_png(data: bytes) -> bytes:
    """Prove the bytes are an image; PNG as it came, any other format converted (outputs are PNG).
    A PNG is checked to its end, every chunk's checksum, without inflating its pixels: decoding a
    1K image costs milliseconds of the worker's one interpreter lock, and Google's PNG that made it
    here intact is not decoded by nanogen again."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "PNG":
                image.verify()
                return data
            image.load()
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            return buffer.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow raises SyntaxError for a PNG whose structure or checksums are broken.
        raise EngineError(f"Google returned a malformed response (the image does not decode: {exc})") from exc


def _name(value: object) -> str:
    return str(getattr(value, "value", value))
