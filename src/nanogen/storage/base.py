"""The storage interface, keys and what ``/files`` answers; backends live beside it."""

from __future__ import annotations

import mimetypes
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nanogen.errors import NanogenError, ServiceUnavailable

_KEY_RE = re.compile(r"^[a-z]+/[A-Za-z0-9_-]{16,64}/[A-Za-z0-9._-]{1,100}$")
CONTENT_TYPES = {".png": "image/png", ".mp4": "video/mp4", ".jpg": "image/jpeg", ".webp": "image/webp"}
CACHE_CONTROL = "public, max-age=31536000, immutable"  # a key never changes content


class FileMissing(NanogenError):
    """No object under this key (never stored, or deleted)."""


class RangeNotSatisfiable(NanogenError):
    def __init__(self, size: int) -> None:
        super().__init__(f"range outside the {size} bytes of the file")
        self.size = size


class StorageUnavailable(ServiceUnavailable):
    """The backend could not be reached or refused: a request that needed it gets 503 (retry)."""

    default_message = "Storage temporarily unavailable, retry shortly"


@dataclass(frozen=True)
class LocalFile:
    """Serve this file (the route handles Range itself)."""

    path: Path


@dataclass(frozen=True)
class Redirect:
    """Send the client there (a presigned URL)."""

    url: str


@dataclass
class Stream:
    """Bytes relayed from the backend, with the status (200/206) and headers it answered."""

    chunks: Iterator[bytes]
    status: int
    headers: dict[str, str] = field(default_factory=dict)


Download = LocalFile | Redirect | Stream


class Storage(Protocol):
    def put_file(self, key: str, src: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileMissing when there is none."""
        ...

    def local_path(self, key: str) -> Path | None: ...
    def url_for(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def keys(self, kind: str) -> Iterator[str]:
        """Every stored key of this kind (``<kind>/<token>/<name>``), in no particular order: what
        the upload sweep lists (only ``up``: every other file is found from the database)."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete these objects (missing ones are fine); raise when the backend refused any."""
        ...

    def open(self, key: str, byte_range: str | None) -> Download:
        """What ``GET /files/<key>`` answers; FileMissing / RangeNotSatisfiable otherwise."""
        ...

    def ping(self) -> None:
        """Raise StorageUnavailable when the backend cannot be used (readiness)."""
        ...


def new_key(kind: str, filename: str) -> str:
    return f"{kind}/{secrets.token_urlsafe(18)}/{filename}"


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and ".." not in key


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"
