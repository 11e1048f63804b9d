"""JSON responses rendered with orjson (the hot paths return plain dicts, not models)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    """Optional fields are omitted rather than null, as in the pages' examples."""
    return {k: v for k, v in data.items() if v is not None}
