"""What nanogen reads of a Nano Banana answer (``GenerateContentResponse``), and the image in it.

Gemini 3 image models may answer with "thought" parts (drafts) before the final image: the last image
that is not a thought is the result. An answer is read from Google's REST JSON (``from_rest``) or from
the SDK's objects (images.py), and its final image written as PNG by ``write_png``.

Where the Gemini API's calls are made by the HTTP process (process_http.py), that process also reads
the answer (``read_in_http_process``): it parses the JSON, decodes the image and checks it, and writes
a large one to a file, which the job then only moves to its place (a small one comes back with the
answer). That is most of the CPU an image job spends in the worker, and all of its memory: 2,000
photo-sized answers handed over by the HTTP process faster than their jobs read and wrote them held
2.0-2.9 GB in the worker.

This module imports no part of the google-genai SDK: the HTTP process imports it to read answers.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from PIL import Image, UnidentifiedImageError

from nanogen import b64
from nanogen.engines.google import blobs
from nanogen.engines.google.transport import SPOOL_FROM_BYTES, HandedFile
from nanogen.errors import EngineError


@dataclass(frozen=True)
class Part:
    data: bytes | None  # an inline image's bytes
    thought: bool
    text: str | None


@dataclass(frozen=True)
class Answer:
    """The fields of an answer that decide the outcome, from either path.

    Read by the HTTP process, the parts carry no image: the final one, made PNG, is in ``final_png``
    (a small one as bytes, a large one in a file; None where there is none), or ``final_error`` says
    why it is not an image."""

    block_reason: str | None = None
    block_message: str | None = None
    has_candidate: bool = False
    parts: tuple[Part, ...] = ()
    finish_reason: str | None = None
    finish_message: str | None = None
    final_png: HandedFile | bytes | None = None
    final_error: str | None = None


def from_rest(response: httpx.Response) -> Answer:
    """A successful REST answer, read."""
    return _from_json(blobs.json_object(response, blobs.loads))


def read_in_http_process(response: httpx.Response, new_file: Callable[[], IO[bytes]]) -> Answer:
    """The HTTP process's reading of a successful answer (a ``transport.AnswerReader``): the answer
    without its images, and its final image checked and made PNG: in ``final_png`` when it is small,
    else written to ``new_file()``."""
    response.read()
    answer = from_rest(response)
    final = _final_image(answer) if answer.block_reason is None and answer.has_candidate else None
    error = None
    small: bytes | None = None
    if final is not None:
        try:
            png = _as_png(final)
        except EngineError as exc:  # said when the job writes the image, as for an answer read there
            error = exc.message
        else:
            if len(png) < SPOOL_FROM_BYTES:  # sent back with the answer: a file would cost more
                small = png
            else:
                with new_file() as out:
                    out.write(png)
    return dataclasses.replace(
        answer,
        parts=tuple(dataclasses.replace(part, data=None) for part in answer.parts),
        final_png=small,
        final_error=error,
    )


def write_png(answer: Answer, dest: Path) -> None:
    """Write the answer's final image to ``dest`` as PNG. EngineError (with Google's reason) when
    there is none: a blocked prompt, a blocked or missing image, or something that is not an image."""
    if answer.block_reason is not None:
        detail = f": {answer.block_message}" if answer.block_message else ""
        raise EngineError(f"Google blocked the prompt ({answer.block_reason}){detail}")
    if not answer.has_candidate:
        raise EngineError("Google returned a malformed response (no candidates and no block reason)")
    if answer.final_error is not None:
        raise EngineError(answer.final_error)
    if isinstance(answer.final_png, bytes):
        dest.write_bytes(answer.final_png)
        return
    if answer.final_png is not None:
        answer.final_png.move_to(dest)
        return
    final = _final_image(answer)
    if final is not None:
        dest.write_bytes(_as_png(final))
        return
    reason = answer.finish_reason or "no finish reason"
    said = answer.finish_message or " ".join(p.text for p in answer.parts if p.text and not p.thought)
    detail = f": {said.strip()[:300]}" if said and said.strip() else ""
    if reason in ("STOP", "no finish reason"):
        raise EngineError(f"Google returned no image ({reason}){detail}")
    raise EngineError(f"Google blocked or did not make the image ({reason}){detail}")


def _final_image(answer: Answer) -> bytes | None:
    finals = [p.data for p in answer.parts if p.data and not p.thought]
    return finals[-1] if finals else None


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


def _as_png(data: bytes) -> bytes:
    """Prove the bytes are an image; PNG as it came, any other format converted (outputs are PNG).
    A PNG is checked to its end, every chunk's checksum, without inflating its pixels: decoding a
    1K image costs milliseconds of the interpreter lock, and Google's PNG that made it here intact
    is not decoded by nanogen again."""
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
