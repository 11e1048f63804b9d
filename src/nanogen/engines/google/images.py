"""Nano Banana through ``generateContent``: the request for an image job and the two ways to send it
(the answer and its image: image_answer.py).

The prompt goes first, then the input images as inline parts (edit). ``aspectRatio`` and
``imageQuality`` map to ``imageConfig`` unchanged (the contract uses Google's own values), and
``googleSearch`` adds the Google Search tool.

The Gemini API is called over REST (``ImagesRest``, on the engine's event loop: transport.py): the
SDK's request conversion looks up each field of its pydantic models by iterating the model
(google.genai ``_common.get_value_by_path``), which cost ~2.5 ms of CPU per call at 2,000 calls in
flight against ~1 ms for the same call as JSON over httpx (measured side by side, docs/engines.md "At
load"). Vertex AI keeps the SDK (``ImagesSdk``), which also does its authentication.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from google import genai
from google.genai import types
from pydantic import SecretStr

from nanogen import b64
from nanogen.engines.base import ImageJob, InputImage
from nanogen.engines.google.calls import checked, sdk
from nanogen.engines.google.image_answer import Answer, Part, from_rest, read_in_http_process
from nanogen.engines.google.transport import READ, JsonCall, Read, Transport
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


class ImageCaller(Protocol):
    def generate(self, call: Request, model: str, timeout_s: float) -> Answer:
        """Google's answer; ProviderError for an error answer, EngineError for one nanogen cannot read."""
        ...


# Answers read and decoded at once in this process (where the HTTP process has not read them). The
# answers of a burst come within a second and their jobs all wake together; each reading its answer
# back (a large one is spooled: transport.py) at once held every answer in memory again (5.2 GB for
# 2,000 of 2 MB). Decoding takes the interpreter lock anyway, so a few at a time lose nothing.
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

    def generate(self, call: Request, model: str, timeout_s: float) -> Answer:
        response = self._http.request(
            "POST",
            self._url(model),
            headers=self._headers(),
            json=self.body(call),
            timeout_s=timeout_s,
            spool=True,
            read=read_in_http_process,
        )
        return self.answer(response)

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
                JsonCall(
                    "POST",
                    self._url(model),
                    headers,
                    self.body(call),
                    timeout,
                    spool=True,
                    read=read_in_http_process,
                )
                for call, model, timeout in calls
            ],
            futures,
        )

    @staticmethod
    def answer(response: httpx.Response) -> Answer:
        """The answer as the HTTP process read it, or else read here (a spooled one back from its
        file) and decoded, a few at a time."""
        checked(response)
        read = response.extensions.get(READ)
        if isinstance(read, Read) and isinstance(read.value, Answer):
            return read.value if read.file is None else dataclasses.replace(read.value, final_png=read.file)
        with _DECODING:
            response.read()
            return from_rest(response)

    def _url(self, model: str) -> str:
        return f"{self._base}/v1beta/models/{quote(model, safe='')}:generateContent"

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._key.get_secret_value()}


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

    def generate(self, call: Request, model: str, timeout_s: float) -> Answer:
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


def _name(value: object) -> str:
    return str(getattr(value, "value", value))
