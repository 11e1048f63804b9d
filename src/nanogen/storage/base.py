"""The storage interface, keys and what ``/files`` answers; backends live beside it."""

from __future__ import annotations

import mimetypes
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
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
    """Bytes relayed from the backend, with the status (200/206) and headers it answered; ``close``
    lets the backend's response go unread (HEAD)."""

    chunks: Iterator[bytes]
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


Download = LocalFile | Redirect | Stream


class Storage(Protocol):
    def put_file(self, key: str, src: Path) -> None:
        """Store the file at ``src`` under ``key``. The caller does not change ``src`` afterwards
        (it may be linked rather than copied: local storage on the same file system)."""
        ...

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


# One range-spec of RFC 9110 14.1.1: first-last, first-, or -suffix length (digits bounded: no file
# is 10^30 bytes, and int() of a huge string is slow).
_RANGE_SPEC = re.compile(r"(\d{1,30})-(\d{0,30})|-(\d{1,30})")

ByteRange = tuple[int | None, int | None]


def parse_range(header: str | None) -> list[ByteRange] | None:
    """A ``Range`` header's byte ranges, as written: ``(first, last)``, ``(first, None)`` for
    ``first-``, ``(None, length)`` for a suffix ``-length``. None when the header must be ignored and
    the whole file answered (200), as RFC 9110 14.2 says: absent, a unit other than bytes, or not a
    valid range set (``bytes=5-3``, ``bytes=x``, ``bytes=``)."""
    if header is None:
        return None
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    for spec in specs.split(","):
        spec = spec.strip(" \t")
        if not spec:  # empty list elements are allowed (RFC 9110 5.6.1)
            continue
        found = _RANGE_SPEC.fullmatch(spec)
        if found is None:
            return None
        first, last, suffix = found.groups()
        if suffix is not None:
            ranges.append((None, int(suffix)))
        elif last:
            if int(last) < int(first):
                return None
            ranges.append((int(first), int(last)))
        else:
            ranges.append((int(first), None))
    return ranges or None


def range_header(ranges: Sequence[ByteRange]) -> str:
    """The ``Range`` header of these ranges (``parse_range``'s or ``satisfiable``'s)."""
    specs = (
        f"-{last}" if first is None else f"{first}-{'' if last is None else last}" for first, last in ranges
    )
    return "bytes=" + ",".join(specs)


def satisfiable(ranges: Sequence[ByteRange], size: int) -> list[ByteRange]:
    """The ranges that select bytes of a file of ``size`` bytes, as ``(first, last)`` offsets (last
    included); none: the request is answered 416."""
    selected: list[ByteRange] = []
    for first, last in ranges:
        if first is None:  # the last ``last`` bytes
            if last and size:
                selected.append((max(size - last, 0), size - 1))
        elif first < size:
            selected.append((first, size - 1 if last is None else min(last, size - 1)))
    return selected


def new_key(kind: str, filename: str) -> str:
    return f"{kind}/{secrets.token_urlsafe(18)}/{filename}"


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and ".." not in key


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"
