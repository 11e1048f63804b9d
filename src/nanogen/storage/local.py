"""The default backend: files under ``<home>/outputs``, served by nanogen at ``/files/<key>``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nanogen.storage.base import Download, FileMissing, LocalFile, StorageUnavailable, is_valid_key

if TYPE_CHECKING:
    from nanogen.settings import Settings


class LocalStorage:
    """Files under a directory; written atomically (temp file + rename) so a reader never sees half."""

    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStorage:
        return cls(settings.outputs_dir, settings.resolved_public_url)

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put_file(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # The file itself, not a copy: one system call instead of reading and writing it all (a
        # job's output is in the scratch folder under the same home, deleted right after). A link
        # appears whole, so a new key (every output's is) is linked under its own name; each system
        # call gives the interpreter lock away, which thousands of job threads then queue for.
        with contextlib.suppress(OSError):
            os.link(src, dest)
            return
        # The key exists already (replaced atomically), or the file cannot be linked there.
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def read_bytes(self, key: str) -> bytes:
        path = self.local_path(key)
        if path is None:
            raise FileMissing(key)
        return path.read_bytes()

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

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def keys(self, kind: str) -> Iterator[str]:
        # Only <kind>/<token>/<name> files; temporary files of writes in progress are listed too
        # (``.<name>.<hex>.tmp``), so that one left by a crash is found like any other.
        if not kind.isalpha():
            raise ValueError(f"invalid storage kind {kind!r}")
        base = self.root / kind
        with contextlib.suppress(FileNotFoundError):
            for folder in base.iterdir():
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    for path in folder.iterdir():
                        key = f"{kind}/{folder.name}/{path.name}"
                        if is_valid_key(key) and path.is_file():
                            yield key

    def open(self, key: str, byte_range: str | None) -> Download:
        path = self.local_path(key)
        if path is None:
            raise FileMissing(key)
        return LocalFile(path)  # the route's FileResponse answers Range itself

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"output directory unusable: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable("output directory not writable")
