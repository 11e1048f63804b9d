"""Google's image answers parsed without copying their base64 (engines/google/blobs.py) and the
base64 decoding beside it (nanogen.b64): the same values json.loads and the standard library give,
the long base64 strings read in place."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import httpx
import pytest

from nanogen import b64
from nanogen.engines.google import blobs
from nanogen.engines.google.images import ImagesRest
from nanogen.errors import EngineError

PNG = os.urandom(300_000)  # its base64 is well past blobs.LONG
LONG_B64 = base64.b64encode(PNG).decode()


def answer(data: str, *, text: str = "Composing the scene.") -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": text, "thought": True},
                        {"inlineData": {"mimeType": "image/png", "data": data}, "thoughtSignature": "c2ln"},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"totalTokenCount": 1132},
    }


def as_text(value: Any) -> Any:
    """``value`` with every memoryview read back as text, to compare with json.loads."""
    if isinstance(value, memoryview):
        return value.tobytes().decode()
    if isinstance(value, dict):
        return {k: as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_text(v) for v in value]
    return value


def cut_values(value: Any) -> list[memoryview]:
    if isinstance(value, memoryview):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [found for item in items for found in cut_values(item)]


@pytest.mark.parametrize(
    "raw, cut",
    [
        (json.dumps(answer(LONG_B64)).encode(), 1),
        (json.dumps(answer(LONG_B64), indent=2).encode(), 1),  # whitespace around the colon
        (json.dumps(answer(LONG_B64), separators=(",", ":")).encode(), 1),
        (json.dumps(answer("aGVsbG8=")).encode(), 0),  # short: parsed as json parses it
        (json.dumps(answer(LONG_B64.replace("/", "\\/"))).encode().replace(b"\\\\/", b"\\/"), 0),  # escapes
        (json.dumps(answer(LONG_B64, text='a "quoted" \\ thought ' + "x" * 100_000)).encode(), 1),
        (
            json.dumps({"text": LONG_B64, "note": {"data": LONG_B64}, "list": [{"data": LONG_B64}]}).encode(),
            2,
        ),
        (json.dumps({'key with \\"data\\"': "v", "data": LONG_B64}).encode(), 1),
        (json.dumps([LONG_B64, {"data": 1}]).encode(), 0),  # a long string that is not a "data" value
    ],
    ids=["compact", "indented", "no-spaces", "short", "escaped", "long-text", "nested", "odd-key", "list"],
)
def test_the_same_values_as_json_with_long_data_strings_read_in_place(raw: bytes, cut: int) -> None:
    parsed = blobs.loads(raw)
    assert as_text(parsed) == json.loads(raw)
    views = cut_values(parsed)
    assert len(views) == cut
    for view in views:
        assert view.obj is raw, "a view of the answer's own bytes, not a copy"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": "' + LONG_B64.encode(),  # cut short inside the string
        b'{"data": "' + LONG_B64.encode() + b'"',  # cut short after it
        b'{"data": "' + LONG_B64.encode() + b'" garbage}',
        b"<html>upstream connect error</html>",
        b"",
    ],
    ids=["open-string", "open-object", "garbage", "html", "empty"],
)
def test_what_is_not_json_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        blobs.loads(raw)


@pytest.mark.parametrize(
    "data",
    [
        LONG_B64,
        LONG_B64.rstrip("="),
        base64.urlsafe_b64encode(PNG).decode(),
        base64.urlsafe_b64encode(PNG).decode().rstrip("="),
    ],
    ids=["standard", "unpadded", "url-safe", "url-safe-unpadded"],
)
def test_an_image_answer_decodes_in_either_alphabet(data: str) -> None:
    body = json.dumps(answer(data)).encode()
    parsed = ImagesRest.answer(httpx.Response(200, content=body))
    assert [part.data for part in parsed.parts] == [None, PNG]
    assert parsed.finish_reason == "STOP" and parsed.parts[0].text == "Composing the scene."


def test_an_image_that_is_not_base64_is_a_malformed_answer() -> None:
    body = json.dumps(answer("*" + LONG_B64[1:])).encode()
    with pytest.raises(EngineError, match="not base64"):
        ImagesRest.answer(httpx.Response(200, content=body))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("aGk=", b"hi"),
        ("aGk", b"hi"),
        ("-_8=", b"\xfb\xff"),
        ("-_8", b"\xfb\xff"),
        ("+/8=", b"\xfb\xff"),
        ("", b""),
    ],
)
def test_b64_decode_reads_either_alphabet_padded_or_not(text: str, expected: bytes) -> None:
    assert b64.decode(text) == expected
    assert b64.decode(text.encode()) == expected
    assert b64.decode(memoryview(text.encode())) == expected


@pytest.mark.parametrize("text", ["a", "aGk=\n", "héllo==", "aGk=aGk", "*aGk"])
def test_b64_decode_refuses_what_is_not_base64(text: str) -> None:
    with pytest.raises(ValueError):
        b64.decode(text)


def test_b64_encode_is_the_standard_alphabet_padded() -> None:
    assert b64.encode(b"\xfb\xff") == "+/8=" and b64.encode(PNG) == LONG_B64
