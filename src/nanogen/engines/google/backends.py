"""The two ways to reach Google, chosen by ``NANOGEN_GOOGLE_MODE``:

* ``gemini``: the Gemini API with an API key (``NANOGEN_GOOGLE_API_KEY``), sent as the
  ``x-goog-api-key`` header by the SDK and by nanogen's REST calls, never in a URL.
* ``vertex``: Vertex AI in ``NANOGEN_GOOGLE_PROJECT``, authenticated with application default
  credentials (``gcloud auth application-default login``, a service account key in
  ``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server); images in ``NANOGEN_GOOGLE_LOCATION``,
  videos in ``NANOGEN_GOOGLE_VIDEO_LOCATION``.

``NANOGEN_GOOGLE_BASE_URL`` sends every call (SDK and REST) to another endpoint. The SDK's calls go
through the engine's ``httpx.Client``s; the Gemini API's REST calls (its jobs: images and Veo) through
the engine's event loop (transport.py; or in a child process, process_http.py), whose errors
read as httpx's, so timeouts and transport errors are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from google import genai
from google.genai import types

from nanogen.engines.base import Check, EngineConfigError
from nanogen.engines.google.images import ImageCaller, ImagesRest, ImagesSdk
from nanogen.engines.google.transport import Transport
from nanogen.engines.google.veo import VeoBackend, VeoRest, VeoVertex
from nanogen.settings import Settings
from nanogen.tls import ssl_context

GEMINI_API = "https://generativelanguage.googleapis.com"
CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class Backend:
    description: str
    images: genai.Client  # models.get for the image model
    image_calls: ImageCaller  # generateContent
    videos: genai.Client  # models.get for the video model (and generate_videos on Vertex AI)
    veo: VeoBackend
    check_credentials: Callable[[], Check]
    # The jobs' calls go through the SDK and its httpx client (Vertex AI), not the shared loop: the
    # engine spreads such clients over pools (engine.POOL_CONNECTIONS).
    jobs_use_sdk: bool


def _options(settings: Settings, http: httpx.Client, api_version: str | None) -> types.HttpOptions:
    return types.HttpOptions(
        base_url=settings.google_base_url,
        api_version=api_version,
        httpx_client=http,
        timeout=int(settings.google_request_timeout_s * 1000),
        client_args={"verify": ssl_context()},
        async_client_args={"verify": ssl_context(), "ssl": ssl_context()},
    )


def gemini(settings: Settings, http: httpx.Client, rest: Transport, video_model: str) -> Backend:
    key = settings.google_api_key
    if key is None or not key.get_secret_value().strip():
        raise EngineConfigError(
            "the google engine (gemini mode) needs NANOGEN_GOOGLE_API_KEY: a Gemini API key from "
            "https://aistudio.google.com/apikey (or set NANOGEN_GOOGLE_MODE=vertex)"
        )
    client = genai.Client(api_key=key.get_secret_value(), http_options=_options(settings, http, "v1beta"))
    base = settings.google_base_url or GEMINI_API
    return Backend(
        description=f"Gemini API with an API key at {base}",
        images=client,
        image_calls=ImagesRest(rest, base, key),
        videos=client,
        veo=VeoRest(rest, base, key, video_model),
        check_credentials=lambda: Check("credentials", True, "API key set (Google checks it below)"),
        jobs_use_sdk=False,
    )


def vertex(settings: Settings, http: httpx.Client, rest: Transport, video_model: str) -> Backend:
    project = settings.google_project
    if not project:
        raise EngineConfigError(
            "the google engine (vertex mode) needs NANOGEN_GOOGLE_PROJECT, the Google Cloud project "
            "that runs Vertex AI"
        )

    def client(location: str) -> genai.Client:
        return genai.Client(
            vertexai=True, project=project, location=location, http_options=_options(settings, http, None)
        )

    videos = client(settings.google_video_location)
    images = client(settings.google_location)
    return Backend(
        description=(
            f"Vertex AI, project {project}, images in {settings.google_location}, videos in "
            f"{settings.google_video_location}"
            + (f", at {settings.google_base_url}" if settings.google_base_url else "")
        ),
        images=images,
        image_calls=ImagesSdk(images),
        videos=videos,
        veo=VeoVertex(videos, video_model),
        check_credentials=_application_default_credentials,
        jobs_use_sdk=True,
    )


def _application_default_credentials() -> Check:
    import google.auth
    from google.auth.transport.requests import Request

    try:
        credentials, _project = google.auth.default(scopes=[CLOUD_SCOPE])
        credentials.refresh(Request())  # type: ignore[no-untyped-call]
    except Exception as exc:  # google.auth raises several unrelated types
        return Check(
            "credentials",
            False,
            f"no usable application default credentials ({type(exc).__name__}: {exc}); run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
        )
    who = getattr(credentials, "service_account_email", None) or type(credentials).__name__
    return Check("credentials", True, f"application default credentials work ({who})")


BACKENDS: dict[str, Callable[[Settings, httpx.Client, Transport, str], Backend]] = {
    "gemini": gemini,
    "vertex": vertex,
}
