"""An S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), so every API process serves what any worker
wrote. How clients reach an object is ``NANOGEN_S3_URLS`` (docs/storage.md):

* ``proxy`` (default): nanogen's ``/files/<key>`` streams the object, passing HTTP Range to the bucket;
* ``presigned``: ``/files/<key>`` answers 307 to a presigned GET URL (the bucket serves the bytes);
* ``public``: output URLs are ``<NANOGEN_S3_PUBLIC_URL>/<key>`` and clients never touch nanogen.

Credentials are SecretStr settings handed only to boto3; nothing here logs or repeats them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from nanogen.storage.base import (
    CACHE_CONTROL,
    Download,
    FileMissing,
    RangeNotSatisfiable,
    Redirect,
    StorageUnavailable,
    Stream,
    content_type_for,
    is_valid_key,
    parse_range,
    range_header,
)

if TYPE_CHECKING:
    from pydantic import SecretStr

    from nanogen.settings import Settings

log = logging.getLogger(__name__)

_MISSING = {"NoSuchKey", "404", "NotFound"}
_CHUNK = 1024 * 1024
_DELETE_BATCH = 1000  # DeleteObjects' limit


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _translated(key: str = "") -> Iterator[None]:
    """The bucket's answers in nanogen's terms: a missing object is FileMissing, anything else but
    InvalidRange (left to the caller) is StorageUnavailable (503, logged without secrets)."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        if code in _MISSING:
            raise FileMissing(key) from None
        if code == "InvalidRange":
            raise
        log.warning("S3 refused an operation on %r: %s", key, code)
        raise StorageUnavailable(f"Storage refused the operation ({code or 'error'})") from None
    except BotoCoreError as exc:
        log.warning("S3 unreachable: %s", type(exc).__name__)
        raise StorageUnavailable(f"Storage unreachable ({type(exc).__name__})") from None


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        public_url: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        urls: str = "proxy",
        bucket_public_url: str | None = None,
        presign_ttl_s: int = 3600,
    ) -> None:
        if urls == "public" and not bucket_public_url:
            raise ValueError("public URLs need the bucket's public base URL")
        self.bucket = bucket
        self.public_url = public_url.rstrip("/")
        self.urls = urls
        self.bucket_public_url = (bucket_public_url or "").rstrip("/")
        self.presign_ttl_s = presign_ttl_s
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        common: dict[str, Any] = {"signature_version": "s3v4", "s3": {"addressing_style": addressing_style}}
        # Request threads share one client (boto3 clients are thread-safe); its pool must match them.
        self._client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                **common,
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=64,
            ),
        )
        # Readiness must answer quickly while the bucket is down: no retries, short timeouts.
        self._probe = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(**common, connect_timeout=2, read_timeout=2, retries={"max_attempts": 1}),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        assert settings.s3_bucket is not None  # Settings refuses storage=s3 without a bucket
        return cls(
            bucket=settings.s3_bucket,
            public_url=settings.resolved_public_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_secret(settings.s3_access_key_id),
            secret_access_key=_secret(settings.s3_secret_access_key),
            addressing_style=settings.s3_addressing_style,
            urls=settings.s3_urls,
            bucket_public_url=settings.s3_public_url,
            presign_ttl_s=settings.s3_presign_ttl_s,
        )

    def _checked(self, key: str) -> str:
        if not is_valid_key(key):
            raise ValueError(f"invalid storage key {key!r}")
        return key

    def put_file(self, key: str, src: Path) -> None:
        # upload_file switches to multipart for large files (4k shots, long concatenations).
        with _translated(key):
            self._client.upload_file(
                str(src),
                self.bucket,
                self._checked(key),
                ExtraArgs={"ContentType": content_type_for(key), "CacheControl": CACHE_CONTROL},
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        with _translated(key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._checked(key),
                Body=data,
                ContentType=content_type_for(key),
                CacheControl=CACHE_CONTROL,
            )

    def read_bytes(self, key: str) -> bytes:
        with _translated(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._checked(key))
            with response["Body"] as body:
                data: bytes = body.read()
        return data

    def local_path(self, key: str) -> Path | None:
        return None

    def url_for(self, key: str) -> str:
        if self.urls == "public":
            return f"{self.bucket_public_url}/{key}"
        return f"{self.public_url}/files/{key}"

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        checked = [self._checked(k) for k in keys]
        for start in range(0, len(checked), _DELETE_BATCH):
            batch = checked[start : start + _DELETE_BATCH]
            with _translated(batch[0]):
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            failed = response.get("Errors") or []
            if failed:
                codes = sorted({str(e.get("Code")) for e in failed})
                log.warning("S3 kept %d of %d objects to delete: %s", len(failed), len(batch), codes)
                raise StorageUnavailable(f"Storage refused to delete {len(failed)} objects")

    def keys(self, kind: str) -> Iterator[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{kind}/")
        with _translated(f"{kind}/"):
            for page in pages:
                for item in page.get("Contents", []):
                    if is_valid_key(item["Key"]):
                        yield item["Key"]

    def open(self, key: str, byte_range: str | None) -> Download:
        if not is_valid_key(key):
            raise FileMissing(key)
        if self.urls == "presigned":
            with _translated(key):  # a deleted object gets nanogen's 410, not the bucket's 404
                self._client.head_object(Bucket=self.bucket, Key=key)
                url = self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_ttl_s
                )
            return Redirect(url)
        return self._stream(key, byte_range)

    def _stream(self, key: str, byte_range: str | None) -> Stream:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        ranges = parse_range(byte_range)
        # One range only: S3 answers several with the whole object, so don't pretend. An invalid
        # header or another unit is ignored (the whole object, 200), as RFC 9110 says.
        if ranges is not None and len(ranges) == 1:
            params["Range"] = range_header(ranges)
        try:
            with _translated(key):
                response = self._client.get_object(**params)
        except ClientError:  # only InvalidRange gets through _translated
            with _translated(key):
                size = int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
            raise RangeNotSatisfiable(size) from None
        headers = {
            "Content-Type": response.get("ContentType") or content_type_for(key),
            "Content-Length": str(response["ContentLength"]),
            "Accept-Ranges": "bytes",
            "Cache-Control": CACHE_CONTROL,
        }
        if response.get("ContentRange"):
            headers["Content-Range"] = response["ContentRange"]
        if response.get("ETag"):
            headers["ETag"] = response["ETag"]
        if response.get("LastModified"):
            modified = response["LastModified"].astimezone(UTC)  # botocore's tzutc is not datetime's UTC
            headers["Last-Modified"] = format_datetime(modified, usegmt=True)
        status = int(response["ResponseMetadata"]["HTTPStatusCode"])
        return Stream(_chunks(response["Body"]), status, headers, close=response["Body"].close)

    def ping(self) -> None:
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise StorageUnavailable(f"Bucket refused ({_code(exc) or 'error'})") from None
        except BotoCoreError as exc:
            raise StorageUnavailable(f"Storage unreachable ({type(exc).__name__})") from None


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(_CHUNK)
    finally:
        body.close()
