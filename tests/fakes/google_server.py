"""A stand-in for Google's Gemini API and Vertex AI: a real HTTP server on 127.0.0.1 speaking their
wire format (shared/design/google.md, and the google-genai SDK's own request/response converters),
answering with real PNG and H.264/AAC MP4 bytes made with Pillow and PyAV.

Endpoints (``{v}`` is the API version the client uses):

* Gemini API, key in ``x-goog-api-key``: ``GET /v1beta/models/{m}``, ``POST /v1beta/models/{m}:
  generateContent``, ``POST /v1beta/models/{m}:predictLongRunning``, ``GET /v1beta/models/{m}/operations/
  {id}``, ``GET /v1beta/files/{id}:download?alt=media`` (302 to a signed URL, served without the key).
* Vertex AI, ``Authorization: Bearer`` from ``POST /token`` (an OAuth token endpoint that checks the
  service account's signed JWT): ``GET /{v}/publishers/google/models/{m}`` and ``POST /{v}/projects/
  {p}/locations/{l}/publishers/google/models/{m}:generateContent|predictLongRunning|fetchPredictOperation``
  (videos come back inline, as when no storageUri is set).

Behaviour comes from markers in the prompt, so tests running side by side never share state:

``[google:block-prompt]``  ``promptFeedback.blockReason`` and no candidates
``[google:block-image]``   a candidate with ``finishReason: IMAGE_SAFETY`` and no parts
``[google:429xN]``         the first N calls with this prompt get 429 RESOURCE_EXHAUSTED (with RetryInfo)
``[google:500xN]``         the first N calls with this prompt get 500 INTERNAL
``[google:malformed]``     an image answer that is not JSON; a video file that is not an MP4
``[google:corrupt]``       an image answer whose PNG is cut short (its last chunks missing)
``[google:poll500xN]``     the first N polls of the operation answer 500
``[google:poll429xN]``     the first N polls of the operation answer 429 RESOURCE_EXHAUSTED (with RetryInfo)
``[google:filtered]``      the operation ends with ``raiMediaFilteredReasons`` and no video
``[google:op-error]``      the operation ends with an ``error``
``[google:never]``         the operation never finishes
``[google:hold]``          the operation finishes once the test calls ``release()``
``[google:slow]``          an image answer takes SLOW_S seconds; an operation runs for SLOW_S seconds
``[google:photo]``         an image that weighs as a photo does (noise in a quarter of it: about a MB as PNG)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import av
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt
from PIL import Image

from tests.local_http import LocalHTTPServer

API_KEY = "AIzaSy-test-key-for-the-fake-google"
PROJECT = "nanogen-test"
IMAGE_MODELS = {"gemini-3.1-flash-image-preview", "gemini-3-pro-image-preview", "gemini-2.5-flash-image"}
VIDEO_MODELS = {
    "veo-3.1-generate-preview",
    "veo-3.1-fast-generate-preview",
    "veo-3.1-generate-001",
    "veo-3.1-fast-generate-001",
}
# The Gemini 3 image models' sizes (shared/design/google.md); 2.5 Flash Image only makes 1K.
IMAGE_SIZES = {
    "16:9": {"1K": (1376, 768), "2K": (2752, 1536), "4K": (5504, 3072)},
    "9:16": {"1K": (768, 1376), "2K": (1536, 2752), "4K": (3072, 5504)},
    "4:3": {"1K": (1200, 896), "2K": (2400, 1792), "4K": (4800, 3584)},
    "3:4": {"1K": (896, 1200), "2K": (1792, 2400), "4K": (3584, 4800)},
    "1:1": {"1K": (1024, 1024), "2K": (2048, 2048), "4K": (4096, 4096)},
}
VIDEO_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
SLOW_S = 2.0
COLOURS = [(200, 60, 30), (30, 140, 200), (60, 180, 60), (220, 190, 40)]
_MARKER = re.compile(r"\[google:([a-z0-9-]+?)(?:x(\d+))?\]")


def markers(prompt: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2) or 1) for m in _MARKER.finditer(prompt)}


def b64decode(data: str) -> bytes:
    """As Google's JSON parser reads ``bytes`` fields: standard or URL-safe, padded or not."""
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def inline_parts(parts: list[Any]) -> list[tuple[bytes, str]]:
    """(bytes, type) of each inlineData part. Field names as protobuf JSON accepts them: camelCase
    or snake_case (the SDK itself sends ``mime_type``)."""
    found = []
    for part in parts:
        inline = (part.get("inlineData") or part.get("inline_data")) if isinstance(part, dict) else None
        if inline:
            found.append((b64decode(inline["data"]), inline.get("mimeType") or inline.get("mime_type") or ""))
    return found


def colour_of(prompt: str) -> tuple[int, int, int]:
    return COLOURS[hashlib.sha256(prompt.encode()).digest()[0] % len(COLOURS)]


def error_body(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


# -- media ---------------------------------------------------------------------------------------------
def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def picture(size: tuple[int, int], prompt: str, inputs: list[bytes]) -> bytes:
    """The prompt's colour, with the input images pasted along the top (proof they arrived)."""
    image = Image.new("RGB", size, colour_of(prompt))
    if "photo" in markers(prompt):  # noise does not compress, as a photo's detail hardly does
        rows = size[1] // 4
        noise = random.Random(prompt).randbytes(size[0] * rows * 3)
        image.paste(Image.frombytes("RGB", (size[0], rows), noise), (0, size[1] - rows))
    cell = size[0] // 8
    for i, data in enumerate(inputs):
        with Image.open(io.BytesIO(data)) as source:
            image.paste(source.convert("RGB").resize((cell, cell)), (i * cell, 0))
    return png(image)


_mp4_cache: dict[tuple[int, int, tuple[int, int, int]], bytes] = {}
_mp4_lock = threading.Lock()


def mp4(size: tuple[int, int], colour: tuple[int, int, int], seconds: int = 8, fps: int = 24) -> bytes:
    """What Veo returns: H.264 yuv420p at 24 fps with an AAC audio track (here silent)."""
    key = (*size, colour)
    with _mp4_lock:
        if key not in _mp4_cache:
            _mp4_cache[key] = _encode(size, colour, seconds, fps)
        return _mp4_cache[key]


def _encode(size: tuple[int, int], colour: tuple[int, int, int], seconds: int, fps: int) -> bytes:
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        rgb = np.zeros((height, width, 3), np.uint8)
        rgb[:] = colour
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        for index in range(seconds * fps):
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for start in range(0, seconds * 48000, 1024):
            sound = av.AudioFrame.from_ndarray(
                np.zeros((2, 1024), np.float32), format="fltp", layout="stereo"
            )
            sound.sample_rate, sound.pts = 48000, start
            out.mux(audio.encode(sound))
        out.mux(audio.encode(None))
    return buffer.getvalue()


# -- what the fake saw and keeps -----------------------------------------------------------------------
@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any

    @property
    def prompt(self) -> str:
        body = self.body if isinstance(self.body, dict) else {}
        for content in body.get("contents") or []:
            for part in content.get("parts") or []:
                if "text" in part:
                    return str(part["text"])
        instances = body.get("instances") or [{}]
        return str(instances[0].get("prompt", ""))


@dataclass
class Operation:
    name: str
    prompt: str
    size: tuple[int, int]
    vertex: bool
    submitted_at: float = field(default_factory=time.monotonic)
    polls: int = 0
    released: bool = False


class FakeGoogle:
    def __init__(self, polls_until_done: int = 1) -> None:
        self.polls_until_done = polls_until_done
        self.received: list[Received] = []
        self.operations: dict[str, Operation] = {}
        self.files: dict[str, tuple[bytes, str]] = {}
        self.images: dict[str, bytes] = {}  # prompt -> the final image last answered
        self.tokens: set[str] = set()
        self.failures: list[str] = []  # requests the fake could not read (tests assert there are none)
        self.calls: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers for tests
    def env(self, mode: str = "gemini", **extra: str) -> dict[str, str]:
        env = {
            "NANOGEN_ENGINE_IMAGES": "google",
            "NANOGEN_ENGINE_VIDEOS": "google",
            "NANOGEN_GOOGLE_MODE": mode,
            "NANOGEN_GOOGLE_BASE_URL": self.base_url,
            "NANOGEN_GOOGLE_POLL_INTERVAL_S": "0.1",
            "NANOGEN_GOOGLE_RETRY_BASE_S": "0.05",
            "NANOGEN_GOOGLE_RETRY_MAX_S": "0.5",
        }
        if mode == "gemini":
            env["NANOGEN_GOOGLE_API_KEY"] = API_KEY
        else:
            env["NANOGEN_GOOGLE_PROJECT"] = PROJECT
        env.update(extra)
        return env

    def service_account_file(self, path: Path) -> Path:
        """Application default credentials for Vertex mode: a service account whose token_uri is here."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        info = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "fake-key-1",
            "private_key": pem.decode(),
            "client_email": f"nanogen@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": f"{self.base_url}/token",
        }
        path.write_text(json.dumps(info))
        return path

    def requests_for(self, prompt_part: str, method_suffix: str = "") -> list[Received]:
        with self.lock:
            return [r for r in self.received if prompt_part in r.prompt and r.path.endswith(method_suffix)]

    def requests_to(self, pattern: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if re.search(pattern, r.path)]

    def operations_for(self, prompt_part: str) -> list[Operation]:
        with self.lock:
            return [op for op in self.operations.values() if prompt_part in op.prompt]

    def release(self, prompt_part: str) -> None:
        with self.lock:
            for op in self.operations.values():
                if prompt_part in op.prompt:
                    op.released = True

    # -- the server
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        body: Any
        if "application/x-www-form-urlencoded" in content_type:
            body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        received = Received(
            method, url.path, parse_qs(url.query), {k.lower(): v for k, v in handler.headers.items()}, body
        )
        with self.lock:
            self.received.append(received)
        try:
            status, headers, payload = self._route(received)
        except Exception as exc:  # a request the fake cannot read: Google would say 400
            self.failures.append(f"{method} {url.path}: {exc!r}")
            status, headers, payload = self._json(
                400, error_body(400, "INVALID_ARGUMENT", f"Invalid request: {exc}")
            )
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, r: Received) -> tuple[int, dict[str, str], bytes]:
        path, m = r.path, None
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"^/token$", self._token),
            ("GET", r"^/signed/(?P<fid>[\w-]+)$", self._signed),
            ("GET", r"^/v1beta/files/(?P<fid>[\w-]+):download$", self._download),
            ("GET", r"^/v1beta/models/(?P<model>[\w.-]+)$", self._model),
            ("POST", r"^/v1beta/models/(?P<model>[\w.-]+):generateContent$", self._generate_content),
            ("POST", r"^/v1beta/models/(?P<model>[\w.-]+):predictLongRunning$", self._predict),
            ("GET", r"^/v1beta/(?P<name>models/[\w.-]+/operations/[\w-]+)$", self._get_operation),
            ("GET", r"^/v1[a-z0-9]*/publishers/google/models/(?P<model>[\w.-]+)$", self._model),
            (
                "POST",
                r"^/v1[a-z0-9]*/projects/(?P<project>[\w-]+)/locations/(?P<location>[\w-]+)/publishers/google/"
                r"models/(?P<model>[\w.-]+):(?P<method>generateContent|predictLongRunning|fetchPredictOperation)$",
                self._vertex,
            ),
        ]
        for method, pattern, handler in routes:
            m = re.match(pattern, path)
            if m and method == r.method:
                return handler(r, **m.groupdict())  # type: ignore[no-any-return]
        return self._json(404, error_body(404, "NOT_FOUND", f"no route {r.method} {path}"))

    @staticmethod
    def _json(status: int, body: Any) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(body).encode()

    def _auth(self, r: Received, vertex: bool) -> tuple[int, dict[str, str], bytes] | None:
        if vertex:
            token = r.headers.get("authorization", "").removeprefix("Bearer ")
            if token in self.tokens:
                return None
            return self._json(
                401, error_body(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            )
        key = r.headers.get("x-goog-api-key")
        if key == API_KEY:
            return None
        if key is None:
            return self._json(
                403, error_body(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
            )
        info = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        }
        return self._json(
            400,
            error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info]),
        )

    def _injected(self, r: Received, kind: str) -> tuple[int, dict[str, str], bytes] | None:
        """429/500 for the first N calls of this kind with this prompt, when the prompt asks."""
        wanted = markers(r.prompt)
        with self.lock:
            self.calls[(kind, r.prompt)] += 1
            count = self.calls[(kind, r.prompt)]
        if count <= wanted.get("429", 0):
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.2s"}
            message = "Resource has been exhausted (e.g. check quota)."
            return self._json(429, error_body(429, "RESOURCE_EXHAUSTED", message, [retry]))
        if count <= wanted.get("500", 0):
            return self._json(500, error_body(500, "INTERNAL", "An internal error has occurred."))
        return None

    # -- OAuth token endpoint (service account JWT bearer grant)
    def _token(self, r: Received) -> tuple[int, dict[str, str], bytes]:
        body = r.body if isinstance(r.body, dict) else {}
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            claims = jwt.decode(
                body.get("assertion", ""), certs=public, audience="https://oauth2.googleapis.com/token"
            )
        except ValueError as exc:
            return self._json(400, {"error": "invalid_grant", "error_description": str(exc)})
        token = f"ya29.fake-{uuid.uuid4().hex}"
        with self.lock:
            self.tokens.add(token)
        return self._json(
            200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer", "sub": claims["iss"]}
        )

    # -- models
    def _model(self, r: Received, model: str) -> tuple[int, dict[str, str], bytes]:
        denied = self._auth(r, vertex=not r.path.startswith("/v1beta/models"))
        if denied:
            return denied
        if model not in IMAGE_MODELS | VIDEO_MODELS:
            return self._json(
                404, error_body(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta")
            )
        return self._json(200, {"name": f"models/{model}", "displayName": model.replace("-", " ").title()})

    # -- images
    def _generate_content(
        self, r: Received, model: str, vertex: bool = False
    ) -> tuple[int, dict[str, str], bytes]:
        denied = self._auth(r, vertex)
        if denied:
            return denied
        if model not in IMAGE_MODELS:
            return self._json(404, error_body(404, "NOT_FOUND", f"models/{model} is not found"))
        injected = self._injected(r, "image")
        if injected:
            return injected
        body = r.body if isinstance(r.body, dict) else {}
        parts = (body.get("contents") or [{}])[0].get("parts") or []
        config = body.get("generationConfig") or {}
        image_config = config.get("imageConfig") or {}
        ratio, quality = image_config.get("aspectRatio", "1:1"), image_config.get("imageSize", "1K")
        if quality not in ("1K", "2K", "4K") or ratio not in IMAGE_SIZES:
            return self._json(400, error_body(400, "INVALID_ARGUMENT", f"Invalid imageConfig {image_config}"))
        wanted = markers(r.prompt)
        if "slow" in wanted:
            time.sleep(SLOW_S)
        usage = {"promptTokenCount": 12, "candidatesTokenCount": 1120, "totalTokenCount": 1132}
        if "malformed" in wanted:
            return 200, {"Content-Type": "text/html"}, b"<html><body>upstream connect error</body></html>"
        if "block-prompt" in wanted:
            return self._json(
                200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": usage}
            )
        if "block-image" in wanted:
            candidate = {
                "finishReason": "IMAGE_SAFETY",
                "finishMessage": "Unable to show the generated image: it may violate our policies.",
                "index": 0,
            }
            return self._json(200, {"candidates": [candidate], "usageMetadata": usage})
        inputs = [data for data, _ in inline_parts(parts)]
        final = picture(IMAGE_SIZES[ratio][quality], r.prompt, inputs)
        if "corrupt" in wanted:
            final = final[: len(final) // 2]
        with self.lock:
            self.images[r.prompt] = final
        draft = png(Image.new("RGB", (64, 64), (128, 128, 128)))
        candidate: dict[str, Any] = {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Composing the scene.", "thought": True},
                    {
                        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(draft).decode()},
                        "thought": True,
                    },
                    {
                        "inlineData": {"mimeType": "image/png", "data": base64.b64encode(final).decode()},
                        "thoughtSignature": base64.b64encode(b"signature").decode(),
                    },
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
        if any("googleSearch" in tool or "google_search" in tool for tool in body.get("tools") or []):
            candidate["groundingMetadata"] = {"webSearchQueries": [r.prompt[:60]]}
        return self._json(200, {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model})

    # -- videos
    def _predict(
        self, r: Received, model: str, vertex: bool = False, prefix: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        denied = self._auth(r, vertex)
        if denied:
            return denied
        if model not in VIDEO_MODELS:
            return self._json(404, error_body(404, "NOT_FOUND", f"models/{model} is not found"))
        injected = self._injected(r, "video")
        if injected:
            return injected
        body = r.body if isinstance(r.body, dict) else {}
        instances, parameters = body.get("instances") or [], body.get("parameters") or {}
        if len(instances) != 1 or not instances[0].get("prompt"):
            return self._json(400, error_body(400, "INVALID_ARGUMENT", "instances[0].prompt is required"))
        resolution = parameters.get("resolution", "720p")
        if resolution not in VIDEO_SIZES or parameters.get("aspectRatio", "16:9") not in ("16:9", "9:16"):
            return self._json(
                400, error_body(400, "INVALID_ARGUMENT", f"Unsupported parameters {parameters}")
            )
        if resolution != "720p" and parameters.get("durationSeconds") != 8:
            return self._json(400, error_body(400, "INVALID_ARGUMENT", "1080p and 4k need 8-second videos"))
        width, height = VIDEO_SIZES[resolution]
        size = (height, width) if parameters.get("aspectRatio") == "9:16" else (width, height)
        name = f"{prefix}models/{model}/operations/{uuid.uuid4().hex[:12]}"
        with self.lock:
            self.operations[name] = Operation(name, r.prompt, size, vertex)
        return self._json(200, {"name": name})

    def _state(self, name: str) -> dict[str, Any] | None:
        """The operation as Google reports it (proto3 JSON: no ``done`` while running)."""
        with self.lock:
            op = self.operations.get(name)
            if op is None:
                return None
            op.polls += 1
            polls, released = op.polls, op.released
        wanted = markers(op.prompt)
        if polls <= wanted.get("poll500", 0):
            return {"__status__": 500}
        if polls <= wanted.get("poll429", 0):
            return {"__status__": 429}
        running = (
            "never" in wanted
            or ("hold" in wanted and not released)
            or ("slow" in wanted and time.monotonic() - op.submitted_at < SLOW_S)
            or polls <= self.polls_until_done
        )
        if running:
            return {"name": name}
        if "op-error" in wanted:
            return {
                "name": name,
                "done": True,
                "error": {"code": 13, "message": "Video generation failed: internal error."},
            }
        if "filtered" in wanted:
            reason = "Unable to generate videos because the prompt may violate Google's usage guidelines."
            if op.vertex:
                result: dict[str, Any] = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [reason]}
            else:
                result = {
                    "generateVideoResponse": {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [reason]}
                }
            return {"name": name, "done": True, "response": result}
        data = (
            b"\x00\x00\x00\x18ftypmp42 this is not a video"
            if "malformed" in wanted
            else mp4(op.size, colour_of(op.prompt))
        )
        if op.vertex:
            video = {"bytesBase64Encoded": base64.b64encode(data).decode(), "mimeType": "video/mp4"}
            return {
                "name": name,
                "done": True,
                "response": {
                    "@type": "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse",
                    "videos": [video],
                    "raiMediaFilteredCount": 0,
                },
            }
        fid = hashlib.sha256(name.encode()).hexdigest()[:16]
        with self.lock:
            self.files[fid] = (data, "video/mp4")
        uri = f"{self.base_url}/v1beta/files/{fid}:download?alt=media"
        return {
            "name": name,
            "done": True,
            "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": [{"video": {"uri": uri}}]},
            },
        }

    def _reply_state(self, name: str) -> tuple[int, dict[str, str], bytes]:
        state = self._state(name)
        if state is None:
            return self._json(404, error_body(404, "NOT_FOUND", f"Operation {name} not found"))
        if state.get("__status__") == 500:
            return self._json(500, error_body(500, "INTERNAL", "An internal error has occurred."))
        if state.get("__status__") == 429:
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.3s"}
            return self._json(429, error_body(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", [retry]))
        return self._json(200, state)

    def _get_operation(self, r: Received, name: str) -> tuple[int, dict[str, str], bytes]:
        return self._auth(r, vertex=False) or self._reply_state(name)

    def _download(self, r: Received, fid: str) -> tuple[int, dict[str, str], bytes]:
        denied = self._auth(r, vertex=False)
        if denied:
            return denied
        if fid not in self.files or r.query.get("alt") != ["media"]:
            return self._json(404, error_body(404, "NOT_FOUND", "File not found"))
        location = f"{self.base_url}/signed/{fid}?Expires=9999999999&Signature=c2lnbmVk"
        return 302, {"Location": location, "Content-Type": "text/html"}, b""

    def _signed(self, r: Received, fid: str) -> tuple[int, dict[str, str], bytes]:
        found = self.files.get(fid)
        if found is None or "Signature" not in r.query:
            return 403, {"Content-Type": "text/plain"}, b"AccessDenied"
        return 200, {"Content-Type": found[1]}, found[0]

    # -- Vertex AI
    def _vertex(
        self, r: Received, project: str, location: str, model: str, method: str
    ) -> tuple[int, dict[str, str], bytes]:
        if project != PROJECT:
            return self._json(
                403, error_body(403, "PERMISSION_DENIED", f"Permission denied on project {project}")
            )
        if method == "generateContent":
            return self._generate_content(r, model, vertex=True)
        prefix = f"projects/{project}/locations/{location}/publishers/google/"
        if method == "predictLongRunning":
            return self._predict(r, model, vertex=True, prefix=prefix)
        denied = self._auth(r, vertex=True)
        if denied:
            return denied
        body = r.body if isinstance(r.body, dict) else {}
        return self._reply_state(str(body.get("operationName", "")))
