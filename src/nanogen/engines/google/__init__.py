"""The Google engine: Nano Banana images (Gemini image models) and Veo videos, with a Gemini API key
or on Vertex AI. See docs/engines.md; the wire formats are those of Google's public API references.

Modules: ``engine`` (the Engine), ``backends`` (API key vs Vertex AI clients), ``images``
(generateContent request and response), ``veo`` (long-running video operations), ``calls`` (provider
errors and retries), ``models`` (what each known model can do).
"""

from nanogen.engines.google.engine import GoogleEngine

__all__ = ["GoogleEngine"]
