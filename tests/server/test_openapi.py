"""The OpenAPI schema at /openapi.json documents what the server does."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Server


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def test_the_four_contract_endpoints_are_documented(server: Server) -> None:
    spec = httpx.get(server.base_url + "/openapi.json", timeout=60).json()
    expected = {
        "/api/nano-banana-2/generate": {
            "prompt",
            "mode",
            "aspectRatio",
            "imageQuality",
            "googleSearch",
            "inputImageUrls",
            "webhookUrl",  # nanogen
        },
        "/api/nano-banana-2/check-status": {"generationId"},
        "/api/veo-3/generate": {"shots", "resolution", "webhookUrl"},  # webhookUrl: nanogen
        "/api/veo-3/check-status": {"taskIds", "resolution", "generationId"},  # generationId: nanogen
    }
    for path, fields in expected.items():
        operation = spec["paths"][path]["post"]
        body = _resolve(spec, operation["requestBody"]["content"]["application/json"]["schema"])
        assert set(body["properties"]) == fields, path
        assert {"200", "400", "401"} <= set(operation["responses"]), path
        assert operation["security"], f"{path} documents the Bearer key"


def test_every_ref_resolves_and_enums_match_the_pages(server: Server) -> None:
    spec = httpx.get(server.base_url + "/openapi.json", timeout=60).json()
    text = httpx.get(server.base_url + "/openapi.json", timeout=60).text
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in spec["components"]["schemas"], name
    schemas = spec["components"]["schemas"]
    assert schemas["Shot"]["required"] == ["id", "prompt", "generationType"]
    assert set(schemas["GenerationType"]["enum"]) == {
        "TEXT_2_VIDEO",
        "FIRST_AND_LAST_FRAMES_2_VIDEO",
        "REFERENCE_2_VIDEO",
    }
    assert set(schemas["ImageQuality"]["enum"]) == {"1K", "2K", "4K"}
    assert set(schemas["ImageAspectRatio"]["enum"]) == {"16:9", "9:16", "4:3", "3:4"}
    status = schemas["ImageStatusResponse"]["properties"]["status"]
    assert set(status["enum"]) == {"pending", "generating", "completed", "failed"}
    assert "concatenatedVideoUrl" in schemas["VideoStatusResponse"]["properties"]
