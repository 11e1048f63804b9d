"""Google's JSON answers with an image's base64 in them, parsed without copying the base64.

An image answer is mostly one string: the PNG as base64 (``inlineData.data``: 1-2 MB for a 1K
photo, tens of MB at 4K). ``json.loads`` copies it twice before it can be decoded (the document
decoded to text, then the string cut out of it): with 2 MB answers that was 1.2 ms of the
interpreter lock and 4 MB of fresh memory an answer, which the kernel zeroes page by page. Here each
long ``"data"`` string without escapes (base64 needs none) is cut out of the raw bytes first; the
rest, a few hundred bytes, is parsed with ``json``, and the cut strings come back as memoryviews of
the raw bytes, which base64 decoding (``nanogen.b64``) reads in place.

``json_object`` reads any of Google's successful REST answers as a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from nanogen.errors import EngineError

# Shorter strings are parsed as json parses them: cutting them out would save nothing.
LONG = 64 * 1024
_KEY = b'"data"'
_MARK = "\x00nanogen-cut:"  # what stands in for a cut string until it is put back


def loads(raw: bytes) -> Any:
    """``json.loads(raw)``, except that the value of a ``"data"`` key that is a string of at least
    ``LONG`` bytes with no escape in it is a memoryview of those bytes in ``raw``. ValueError when
    ``raw`` is not JSON."""
    cuts: list[tuple[int, int]] = []
    kept: list[bytes] = []
    start = 0  # raw[start:] is not in ``kept`` yet
    opening = raw.find(b'"')
    while opening != -1:
        closing = _closing_quote(raw, opening)
        if closing == -1:
            break  # not JSON: json.loads says so below
        long = closing - opening > LONG
        if long and _is_data_value(raw, opening) and raw.find(b"\\", opening, closing) == -1:
            kept += (raw[start:opening], json.dumps(f"{_MARK}{len(cuts)}").encode())
            cuts.append((opening + 1, closing))
            start = closing + 1
        opening = raw.find(b'"', closing + 1)
    if not cuts:
        return json.loads(raw)
    kept.append(raw[start:])
    view = memoryview(raw)
    return _put_back(json.loads(b"".join(kept)), {f"{_MARK}{n}": view[a:b] for n, (a, b) in enumerate(cuts)})


def _closing_quote(raw: bytes, opening: int) -> int:
    """The quote that ends the string opening at ``opening`` (one not escaped), or -1."""
    quote = raw.find(b'"', opening + 1)
    while quote != -1:
        before = quote
        while before > opening + 1 and raw[before - 1] == 0x5C:  # backslashes before it
            before -= 1
        if (quote - before) % 2 == 0:
            return quote
        quote = raw.find(b'"', quote + 1)
    return -1


def _is_data_value(raw: bytes, opening: int) -> bool:
    """Whether the string opening at ``opening`` is the value of a ``"data"`` key."""
    head = raw[max(0, opening - 64) : opening].rstrip()
    return head.endswith(b":") and head[:-1].rstrip().endswith(_KEY)


def _put_back(value: Any, cut: dict[str, memoryview]) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "data" and isinstance(item, str) and item in cut:
                value[key] = cut[item]
            elif isinstance(item, dict | list):
                _put_back(item, cut)
    elif isinstance(value, list):
        for item in value:
            _put_back(item, cut)
    return value


def json_object(response: httpx.Response, loads: Callable[[bytes], Any] = json.loads) -> dict[str, Any]:
    """A successful REST answer's JSON object (parsed with ``loads``); EngineError when it is not one."""
    try:
        data = loads(response.content)
    except ValueError as exc:
        raise EngineError("Google returned a malformed response (not JSON)") from exc
    if not isinstance(data, dict):
        raise EngineError("Google returned a malformed response (not a JSON object)")
    return data
