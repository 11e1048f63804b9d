"""JSON responses rendered with orjson (the hot paths return plain dicts, not models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse

_CONTENT_TYPE = (b"content-type", b"application/json")


class FastJSONResponse(JSONResponse):
    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if headers or media_type or background or status_code < 200 or status_code in (204, 304):
            super().__init__(content, status_code, headers, media_type, background)
            return
        # The common case, with the two headers Starlette's init_headers would write (its general
        # version was a twentieth of a check-status).
        self.status_code = status_code
        self.background = None
        self.body = orjson.dumps(content)
        self.raw_headers = [(b"content-length", b"%d" % len(self.body)), _CONTENT_TYPE]

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    """Optional fields are omitted rather than null, as in the pages' examples."""
    return {k: v for k, v in data.items() if v is not None}
