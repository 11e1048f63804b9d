"""Where outputs and fetched inputs live, and the URLs clients fetch them from.

Keys are unguessable (``<kind>/<random token>/<name>``): knowing one output's URL tells nothing about
another's. The local backend keeps files under ``<home>/outputs`` and nanogen serves them at
``<public url>/files/<key>`` (with HTTP Range, for video players). Other backends (S3) implement the
same protocol.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Protocol

_KEY_RE = re.compile(r"^[a-z]+/[A-Za-z0-9_-]{16,64}/[A-Za-z0-9._-]{1,100}$")
CONTENT_TYPES = {".png": "image/png", ".mp4": "video/mp4", ".jpg": "image/jpeg", ".webp": "image/webp"}


class Storage(Protocol):
    def put_file(self, key: str, src: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def read_bytes(self, key: str) -> bytes: ...
    def local_path(self, key: str) -> Path | None: ...
    def url_for(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...


def new_key(kind: str, filename: str) -> str:
    return f"{kind}/{secrets.token_urlsafe(18)}/{filename}"


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and ".." not in key


def content_type_for(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


class LocalStorage:
    """Files under a directory; written atomically (temp file + rename) so a reader never sees half."""

    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put_file(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def local_path(self, key: str) -> Path | None:
        try:
            path = self._path(key)
        except ValueError:
            return None
        return path if path.is_file() else None

    def url_for(self, key: str) -> str:
        return f"{self.public_url}/files/{key}"

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other files left in the folder: keep it
            path.parent.rmdir()
