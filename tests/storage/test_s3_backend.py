"""The S3 backend itself against a real S3-compatible server (moto): the same interface as local."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from nanogen.storage import (
    FileMissing,
    LocalFile,
    LocalStorage,
    RangeNotSatisfiable,
    Redirect,
    Storage,
    StorageUnavailable,
    Stream,
    new_key,
)
from nanogen.storage.s3 import S3Storage
from nanogen.tasks import retention
from tests.conftest import free_port
from tests.storage.conftest import ACCESS_KEY, SECRET_KEY, MotoS3

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def s3_storage(s3: MotoS3, bucket: str, **options: object) -> S3Storage:
    return S3Storage(
        bucket=bucket,
        public_url="http://nanogen.test",
        endpoint_url=s3.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "outputs", "http://nanogen.test")
    s3: MotoS3 = request.getfixturevalue("s3")
    return s3_storage(s3, s3.new_bucket())


def body(found: object) -> bytes:
    if isinstance(found, LocalFile):
        return found.path.read_bytes()
    assert isinstance(found, Stream)
    return b"".join(found.chunks)


def test_put_read_open_delete(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    src.write_bytes(PAYLOAD)
    video, image = new_key("out", "clip.mp4"), new_key("in", "input.png")
    storage.put_file(video, src)
    storage.put_bytes(image, b"\x89PNG fake")
    assert storage.read_bytes(video) == PAYLOAD
    assert storage.read_bytes(image) == b"\x89PNG fake"
    assert storage.url_for(video) == f"http://nanogen.test/files/{video}"
    assert body(storage.open(video, None)) == PAYLOAD
    storage.delete_many([video, image, new_key("out", "never-stored.png")])  # missing keys are fine
    for key in (video, image):
        with pytest.raises(FileMissing):
            storage.read_bytes(key)
        with pytest.raises(FileMissing):
            storage.open(key, None)
    storage.ping()


def test_invalid_keys_are_refused(storage: Storage) -> None:
    for key in ("../etc/passwd", "out/short/x.png", "out/" + "a" * 20 + "/../../x"):
        with pytest.raises(FileMissing):
            storage.open(key, None)
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"x")


def test_stream_passes_single_ranges_to_the_bucket(s3: MotoS3) -> None:
    storage = s3_storage(s3, s3.new_bucket())
    key = new_key("out", "clip.mp4")
    storage.put_bytes(key, PAYLOAD)
    whole = storage.open(key, None)
    assert isinstance(whole, Stream) and whole.status == 200
    assert whole.headers["Content-Type"] == "video/mp4"
    assert whole.headers["Content-Length"] == str(len(PAYLOAD))
    assert whole.headers["Cache-Control"].endswith("immutable")
    for header, (start, end) in {
        "bytes=0-99": (0, 99),
        "bytes=10000-": (10000, len(PAYLOAD) - 1),
        "bytes=-240": (len(PAYLOAD) - 240, len(PAYLOAD) - 1),
    }.items():
        part = storage.open(key, header)
        assert isinstance(part, Stream) and part.status == 206, header
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(PAYLOAD)}"
        assert b"".join(part.chunks) == PAYLOAD[start : end + 1]
    with pytest.raises(RangeNotSatisfiable) as refused:
        storage.open(key, f"bytes={len(PAYLOAD) + 10}-")
    assert refused.value.size == len(PAYLOAD)
    # Several ranges: S3 cannot, so the whole file (allowed by RFC 9110) rather than a wrong answer.
    many = storage.open(key, "bytes=0-1,5-6")
    assert isinstance(many, Stream) and many.status == 200 and body(many) == PAYLOAD


def test_presigned_mode_redirects_to_a_url_the_bucket_honours(s3: MotoS3) -> None:
    storage = s3_storage(s3, s3.new_bucket(), urls="presigned", presign_ttl_s=600)
    key = new_key("out", "image.png")
    storage.put_bytes(key, PAYLOAD)
    assert storage.url_for(key) == f"http://nanogen.test/files/{key}", "clients still get nanogen's URL"
    found = storage.open(key, None)
    assert isinstance(found, Redirect) and found.url.startswith(s3.endpoint)
    assert "X-Amz-Signature=" in found.url and "X-Amz-Expires=600" in found.url
    fetched = httpx.get(found.url)
    assert fetched.status_code == 200 and fetched.content == PAYLOAD
    assert httpx.get(found.url, headers={"Range": "bytes=5-9"}).content == PAYLOAD[5:10]
    storage.delete(key)
    with pytest.raises(FileMissing):
        storage.open(key, None)


def test_public_mode_hands_out_the_bucket_url(s3: MotoS3) -> None:
    bucket = s3.new_bucket()
    s3.make_outputs_public(bucket)
    storage = s3_storage(s3, bucket, urls="public", bucket_public_url=f"{s3.endpoint}/{bucket}/")
    key, private = new_key("out", "image.png"), new_key("in", "input.png")
    storage.put_bytes(key, PAYLOAD)
    storage.put_bytes(private, PAYLOAD)
    url = storage.url_for(key)
    assert url == f"{s3.endpoint}/{bucket}/{key}"
    fetched = httpx.get(url)  # anonymous: straight from the bucket
    assert fetched.status_code == 200 and fetched.content == PAYLOAD
    assert fetched.headers["content-type"] == "image/png"
    assert httpx.get(f"{s3.endpoint}/{bucket}/{private}").status_code == 403, "inputs stay private"


def test_an_unreachable_or_missing_bucket_is_unavailable_not_a_crash(s3: MotoS3) -> None:
    nobody = S3Storage(
        bucket="nanogen-nowhere",
        public_url="http://nanogen.test",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    with pytest.raises(StorageUnavailable) as down:
        nobody.ping()
    assert down.value.http_status == 503 and SECRET_KEY not in str(down.value)
    with pytest.raises(StorageUnavailable):
        nobody.put_bytes(new_key("in", "input.png"), b"x")
    missing_bucket = s3_storage(s3, "nanogen-no-such-bucket")
    with pytest.raises(StorageUnavailable):
        missing_bucket.ping()
    with pytest.raises(StorageUnavailable):
        missing_bucket.put_bytes(new_key("in", "input.png"), b"x")


def test_the_upload_sweep_lists_uploads_and_deletes_only_the_expired(storage: Storage) -> None:
    """What the upload sweeper does in every worker, on both backends: list the ``up`` kind, delete
    the keys whose expiry has passed, touch nothing else."""
    now = time.time()
    expired = [new_key("up", f"{int(now) - 5}.png"), new_key("up", f"{int(now)}.jpg")]
    live = new_key("up", f"{int(now) + 3600}.webp")
    others = [new_key("out", f"{int(now) - 5}.png"), new_key("in", "input.png")]
    for key in [*expired, live, *others]:
        storage.put_bytes(key, b"bytes of " + key.encode())
    assert sorted(storage.keys("up")) == sorted([*expired, live])
    assert sorted(storage.keys("out")) == [others[0]]

    assert retention.sweep_uploads(storage, now) == 2
    assert list(storage.keys("up")) == [live]
    for key in expired:
        with pytest.raises(FileMissing):
            storage.read_bytes(key)
    for key in [live, *others]:
        assert storage.read_bytes(key) == b"bytes of " + key.encode()
    assert retention.sweep_uploads(storage, now) == 0, "idempotent"
    assert retention.sweep_uploads(storage, now + 3600) == 1
    assert list(storage.keys("up")) == []
    assert list(storage.keys("nothing")) == []


def test_a_crashed_local_upload_write_is_swept_too(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "outputs", "http://nanogen.test")
    key = new_key("up", f"{int(time.time()) - 1}.png")
    leftover = tmp_path / "outputs" / key
    leftover.parent.mkdir(parents=True)
    (leftover.parent / f".{leftover.name}.0badcafe.tmp").write_bytes(b"half an upload")
    assert retention.sweep_uploads(storage, time.time()) == 1
    assert not leftover.parent.exists(), "the file and its emptied folder are gone"
