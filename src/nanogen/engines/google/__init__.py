"""The Google engine: Nano Banana images (Gemini image models) and Veo videos, with a Gemini API key
or on Vertex AI. See docs/engines.md; the wire formats are those of Google's public API references.

Modules: ``engine`` (the Engine), ``backends`` (API key vs Vertex AI clients), ``images``
(generateContent request and response), ``veo`` (long-running video operations), ``calls`` (provider
errors and retries), ``models`` (what each known model can do), ``transport`` and ``process_http``
(the REST calls' event loop, here or in a child process).

``GoogleEngine`` is imported on first use: the HTTP child process imports this package for its
transport only, and the engine's imports (the google-genai SDK) cost it a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nanogen.engines.google.engine import GoogleEngine

__all__ = ["GoogleEngine"]


def __getattr__(name: str) -> Any:
    if name == "GoogleEngine":
        from nanogen.engines.google.engine import GoogleEngine

        return GoogleEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
