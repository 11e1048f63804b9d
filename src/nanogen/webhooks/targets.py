"""A webhook URL a client names (``webhookUrl``, ``PUT /api/account/webhook``): checked with the SSRF
rules and allow-list of input images (media/fetch.py) before it is accepted."""

from __future__ import annotations

from nanogen import errors
from nanogen.errors import FetchError
from nanogen.media.fetch import FetchPolicy, check_target
from nanogen.products import MAX_URL_CHARS
from nanogen.schemas import has_control_characters


async def checked_url(policy: FetchPolicy, url: str | None, field: str) -> str | None:
    """``url`` when it may be delivered to (None stays None); else 400 INVALID_PARAMETER naming ``field``."""
    if url is None:
        return None
    if not url or len(url) > MAX_URL_CHARS or has_control_characters(url):
        raise errors.InvalidParameter(f"{field}: must be an http(s) URL", field=field)
    try:
        await check_target(url, policy)
    except FetchError as exc:
        raise errors.InvalidParameter(f"{field}: webhook URL refused: {exc.reason}", field=field) from None
    return url
