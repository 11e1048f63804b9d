"""Base64 as JSON carries bytes (proto3's JSON mapping, which Google's APIs and the Gemini dialect use).

pybase64 (SIMD) rather than the standard library: an image's base64 is megabytes (a 1K PNG from Google
is 1-2 MB, a 4K one tens of MB), and on a 2 MB image the standard library's decoder took 3.5-4 ms of
the interpreter lock where pybase64 takes 0.1 ms without it (measured on the 2-core machine the
benchmarks run on).
"""

from __future__ import annotations

import pybase64


def decode(text: str | bytes | memoryview) -> bytes:
    """The standard or the URL-safe alphabet, padded or not; text or its ASCII bytes. ValueError
    (``binascii.Error``, ``UnicodeError``) when ``text`` is not base64."""
    try:
        return pybase64.b64decode(text, validate=True)  # as Google sends it: standard, padded
    except ValueError:
        data = text.encode("ascii") if isinstance(text, str) else bytes(text)
        padded = data.replace(b"-", b"+").replace(b"_", b"/") + b"=" * (-len(data) % 4)
        return pybase64.b64decode(padded, validate=True)


def encode(data: bytes) -> str:
    """The standard alphabet, padded."""
    return pybase64.b64encode_as_string(data)
