"""Nano Banana through ``generateContent``: the request for an image job, and the image in the answer.

The prompt goes first, then the input images as inline parts (edit). ``aspectRatio`` and
``imageQuality`` map to ``imageConfig`` unchanged (the contract uses Google's own values), and
``googleSearch`` adds the Google Search tool. Gemini 3 image models may answer with "thought" parts
(drafts) before the final image: the last image that is not a thought is the result.
"""

from __future__ import annotations

import io

from google.genai import types
from PIL import Image, UnidentifiedImageError

from nanogen.engines.base import ImageJob, InputImage
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


def request(job: ImageJob) -> tuple[list[types.Content], types.GenerateContentConfig]:
    parts = [types.Part.from_text(text=job.prompt)]
    for image in job.images:
        data, mime_type = input_image(image)
        parts.append(types.Part.from_bytes(data=data, mime_type=mime_type))
    config = types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        image_config=types.ImageConfig(aspect_ratio=job.aspect_ratio.value, image_size=job.quality.value),
        tools=[types.Tool(google_search=types.GoogleSearch())] if job.google_search else None,
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    return [types.Content(role="user", parts=parts)], config


def png_from(response: types.GenerateContentResponse) -> bytes:
    """The PNG bytes of the answer's final image. EngineError (with Google's reason) when there is
    none: a blocked prompt, a blocked or missing image, or something that is not an image."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        raise EngineError(f"Google blocked the prompt ({_name(feedback.block_reason)}){detail}")
    if not response.candidates:
        raise EngineError("Google returned a malformed response (no candidates and no block reason)")
    candidate = response.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    finals = [p.inline_data for p in parts if p.inline_data and p.inline_data.data and not p.thought]
    if finals and finals[-1] is not None and finals[-1].data is not None:
        return _as_png(finals[-1].data)
    reason = _name(candidate.finish_reason) if candidate.finish_reason else "no finish reason"
    said = candidate.finish_message or " ".join(p.text for p in parts if p.text and not p.thought)
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
