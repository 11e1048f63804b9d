"""Veo: start a long-running video operation, poll it, fetch the video.

Two ways to reach Veo:

* Gemini API (API key): the SDK refuses ``generate_videos`` outside Vertex AI, so nanogen speaks REST:
  ``POST /v1beta/models/{model}:predictLongRunning``, ``GET /v1beta/{operation}``, and downloads the
  file URI (key sent only to Google's own origin; the redirect to a signed URL goes without it).
* Vertex AI: the SDK's ``generate_videos`` and ``operations.get`` (``fetchPredictOperation``). nanogen
  sets no ``storageUri``, so the video comes back inline.

Images by generation type: FIRST_AND_LAST_FRAMES sends the first image as ``image`` and a second as
``lastFrame``; REFERENCE sends 1-3 ``referenceImages`` of type ASSET.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from google import genai
from google.genai import types
from pydantic import SecretStr

from nanogen import b64
from nanogen.engines.base import InputImage, ShotJob
from nanogen.engines.google.blobs import json_object
from nanogen.engines.google.calls import checked, sdk
from nanogen.engines.google.images import input_image
from nanogen.engines.google.transport import Transport
from nanogen.errors import EngineError
from nanogen.products import GenerationType

_OPERATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class Finished:
    """A finished operation's video: a URI to download (Gemini API) or the bytes (Vertex AI)."""

    uri: str | None = None
    data: bytes | None = None


class VeoBackend(Protocol):
    def submit(self, job: ShotJob, timeout_s: float) -> str: ...

    def poll(self, operation: str, timeout_s: float) -> Finished | None:
        """None while running; the video when done; EngineError when it failed or was blocked."""
        ...

    def fetch(self, finished: Finished, dest: Path, timeout_s: float) -> None: ...


@dataclass(frozen=True)
class Frames:
    first: InputImage | None = None
    last: InputImage | None = None
    references: tuple[InputImage, ...] = ()

    @classmethod
    def of(cls, job: ShotJob) -> Frames:
        if job.generation_type is GenerationType.FIRST_AND_LAST_FRAMES_2_VIDEO:
            return cls(job.images[0], job.images[1] if len(job.images) > 1 else None)
        if job.generation_type is GenerationType.REFERENCE_2_VIDEO:
            return cls(references=job.images)
        return cls()


def _blocked(reasons: list[Any] | None) -> EngineError:
    said = "; ".join(str(r) for r in reasons or []) or "no reason given"
    return EngineError(f"Google blocked the video (responsible AI filter): {said}"[:2000])


def _check_name(operation: str) -> str:
    if not _OPERATION.match(operation) or ".." in operation:
        raise EngineError("Google returned a malformed response (an unusable operation name)")
    return operation


# -- Gemini API: REST ----------------------------------------------------------------------------------
class VeoRest:
    def __init__(self, http: Transport, base_url: str, api_key: SecretStr, model: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._model = model

    def _auth(self, url: str) -> dict[str, str]:
        """The key goes to Google's own origin only (never to a redirect target elsewhere)."""
        if urlsplit(url)[:2] != urlsplit(self._base)[:2]:
            return {}
        return {"x-goog-api-key": self._key.get_secret_value()}

    @staticmethod
    def body(job: ShotJob) -> dict[str, Any]:
        def image(picture: InputImage) -> dict[str, str]:
            data, mime_type = input_image(picture)
            return {"bytesBase64Encoded": b64.encode(data), "mimeType": mime_type}

        frames = Frames.of(job)
        instance: dict[str, Any] = {"prompt": job.prompt}
        if frames.first is not None:
            instance["image"] = image(frames.first)
        if frames.last is not None:
            instance["lastFrame"] = image(frames.last)
        if frames.references:
            instance["referenceImages"] = [
                {"image": image(r), "referenceType": "ASSET"} for r in frames.references
            ]
        parameters = {
            "aspectRatio": job.aspect_ratio.value,
            "resolution": job.resolution.value,
            "durationSeconds": job.seconds,
            "sampleCount": 1,
        }
        return {"instances": [instance], "parameters": parameters}

    def submit(self, job: ShotJob, timeout_s: float) -> str:
        url = f"{self._base}/v1beta/models/{self._model}:predictLongRunning"
        response = self._http.request(
            "POST", url, headers=self._auth(url), json=self.body(job), timeout_s=timeout_s
        )
        name = json_object(checked(response)).get("name")
        if not isinstance(name, str):
            raise EngineError("Google returned a malformed response (no operation name)")
        return _check_name(name)

    def poll(self, operation: str, timeout_s: float) -> Finished | None:
        url = f"{self._base}/v1beta/{_check_name(operation)}"
        response = self._http.request("GET", url, headers=self._auth(url), timeout_s=timeout_s)
        state = json_object(checked(response))
        error = state.get("error")
        if isinstance(error, dict):
            raise EngineError(f"Google could not make the video: {error.get('message') or error}"[:2000])
        if not state.get("done"):
            return None
        result = (state.get("response") or {}).get("generateVideoResponse") or {}
        samples = result.get("generatedSamples") or []
        uri = samples[0].get("video", {}).get("uri") if samples and isinstance(samples[0], dict) else None
        if isinstance(uri, str) and uri:
            return Finished(uri=uri)
        if result.get("raiMediaFilteredCount") or result.get("raiMediaFilteredReasons"):
            raise _blocked(result.get("raiMediaFilteredReasons"))
        raise EngineError("Google returned a malformed response (a finished operation without a video)")

    def fetch(self, finished: Finished, dest: Path, timeout_s: float) -> None:
        if finished.uri is None or urlsplit(finished.uri).scheme not in ("http", "https"):
            raise EngineError("Google returned a malformed response (no downloadable video URI)")
        url, headers = finished.uri, self._auth(finished.uri)
        for _ in range(5):  # Google answers with a redirect to a signed URL: follow it without the key
            response = self._http.download(url, headers=headers, dest=dest, timeout_s=timeout_s)
            if response.is_redirect:
                url, headers = urljoin(url, response.headers["location"]), {}
                continue
            checked(response)
            return
        raise EngineError("Google returned a malformed response (too many redirects for the video)")


# -- Vertex AI: the SDK --------------------------------------------------------------------------------
class VeoVertex:
    def __init__(self, client: genai.Client, model: str) -> None:
        self._client = client
        self._model = model

    @staticmethod
    def _image(picture: InputImage) -> types.Image:
        data, mime_type = input_image(picture)
        return types.Image(image_bytes=data, mime_type=mime_type)

    def submit(self, job: ShotJob, timeout_s: float) -> str:
        frames = Frames.of(job)
        config = types.GenerateVideosConfig(
            aspect_ratio=job.aspect_ratio.value,
            resolution=job.resolution.value,
            duration_seconds=job.seconds,
            number_of_videos=1,
            last_frame=self._image(frames.last) if frames.last else None,
            reference_images=[
                types.VideoGenerationReferenceImage(
                    image=self._image(r), reference_type=types.VideoGenerationReferenceType.ASSET
                )
                for r in frames.references
            ]
            or None,
            http_options=types.HttpOptions(timeout=int(timeout_s * 1000)),
        )
        source = types.GenerateVideosSource(
            prompt=job.prompt, image=self._image(frames.first) if frames.first else None
        )
        operation = sdk(
            lambda: self._client.models.generate_videos(model=self._model, source=source, config=config)
        )
        if not operation.name:
            raise EngineError("Google returned a malformed response (no operation name)")
        return _check_name(operation.name)

    def poll(self, operation: str, timeout_s: float) -> Finished | None:
        state = sdk(
            lambda: self._client.operations.get(
                types.GenerateVideosOperation.model_validate({"name": operation}),
                config=types.GetOperationConfig(
                    http_options=types.HttpOptions(timeout=int(timeout_s * 1000))
                ),
            )
        )
        if state.error:
            raise EngineError(f"Google could not make the video: {state.error.get('message') or state.error}")
        if not state.done:
            return None
        result = state.response or state.result
        videos = (result.generated_videos or []) if result else []
        video = videos[0].video if videos else None
        if video is not None and video.video_bytes:
            return Finished(data=video.video_bytes)
        if video is not None and video.uri:
            return Finished(uri=video.uri)
        if result is not None and (result.rai_media_filtered_count or result.rai_media_filtered_reasons):
            raise _blocked(result.rai_media_filtered_reasons)
        raise EngineError("Google returned a malformed response (a finished operation without a video)")

    def fetch(self, finished: Finished, dest: Path, timeout_s: float) -> None:
        if finished.data is None:
            raise EngineError(
                f"Vertex AI returned the video at {finished.uri}, not inline; nanogen sets no storageUri "
                "and does not read Cloud Storage"
            )
        dest.write_bytes(finished.data)
