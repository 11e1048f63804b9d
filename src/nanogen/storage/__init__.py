"""Where outputs and fetched inputs live, and the URLs clients fetch them from.

Keys are unguessable (``<kind>/<random token>/<name>``): knowing one output's URL tells nothing about
another's. Two backends implement :class:`Storage`, chosen by ``NANOGEN_STORAGE`` (docs/storage.md):

* ``local`` (default, :mod:`nanogen.storage.local`): files under ``<home>/outputs``;
* ``s3`` (:mod:`nanogen.storage.s3`): any S3-compatible bucket, so that an output written by a worker
  on one machine is served by every API process.

Either way a URL ``<public url>/files/<key>`` is answered by nanogen's ``/files`` route with what
:meth:`Storage.open` returns: a local file, a stream (with HTTP Range), or a redirect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nanogen.storage.base import (
    CACHE_CONTROL,
    Download,
    FileMissing,
    LocalFile,
    RangeNotSatisfiable,
    Redirect,
    Storage,
    StorageUnavailable,
    Stream,
    content_type_for,
    is_valid_key,
    new_key,
)
from nanogen.storage.local import LocalStorage

if TYPE_CHECKING:
    from nanogen.settings import Settings

__all__ = [
    "BACKENDS",
    "CACHE_CONTROL",
    "Download",
    "FileMissing",
    "LocalFile",
    "LocalStorage",
    "RangeNotSatisfiable",
    "Redirect",
    "Storage",
    "StorageUnavailable",
    "Stream",
    "content_type_for",
    "is_valid_key",
    "make_storage",
    "new_key",
]

# Backends by NANOGEN_STORAGE value, imported on first use (boto3 only when S3 is configured).
BACKENDS = {"local": "nanogen.storage.local:LocalStorage", "s3": "nanogen.storage.s3:S3Storage"}


def make_storage(settings: Settings) -> Storage:
    module_name, _, class_name = BACKENDS[settings.storage].partition(":")
    backend: Storage = getattr(importlib.import_module(module_name), class_name).from_settings(settings)
    return backend
