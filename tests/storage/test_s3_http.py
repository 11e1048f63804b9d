"""``/files`` over S3 (moto on 127.0.0.1, proxy mode) as over local files: HEAD answers the headers
without the bytes, a malformed or foreign ``Range`` is ignored (200, the whole file: RFC 9110), a valid
one is served, and one outside the file is 416 in the error envelope."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from nanogen.storage import RangeNotSatisfiable, Stream, new_key
from tests.conftest import Server, assert_envelope, image_bytes
from tests.storage import flows
from tests.storage.conftest import MotoS3
from tests.storage.test_s3_backend import PAYLOAD, s3_storage


def test_files_on_s3_answer_head_and_ranges_like_local_files(s3: MotoS3, tmp_path: Path) -> None:
    server = Server(flows.new_home(tmp_path, "home"), extra_env=s3.env(s3.new_bucket())).start()
    try:
        with server.new_account(0).client() as c:
            r = c.post("/api/uploads", content=image_bytes((1, 2, 3)), headers={"Content-Type": "image/png"})
            assert r.status_code == 201, r.text
            url = r.json()["url"]
        got = httpx.get(url)
        assert got.status_code == 200
        content, size = got.content, len(got.content)

        head = httpx.head(url)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == size
        assert head.headers["content-type"] == "image/png"

        for ignored in ("bytes=abc", "items=0-5", "bytes=5-3", "bytes=", "bytes=0-1,x"):
            r = httpx.get(url, headers={"Range": ignored})
            assert r.status_code == 200 and r.content == content, (ignored, r.status_code, r.text[:200])
        part = httpx.get(url, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == content[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{size}"
        for outside in (f"bytes={size}-", "bytes=-0"):
            r = httpx.get(url, headers={"Range": outside})
            assert_envelope(r, 416, "RANGE_NOT_SATISFIABLE")
            assert r.headers["content-range"] == f"bytes */{size}"
    finally:
        server.stop()


def test_the_backend_passes_only_a_valid_single_range_to_the_bucket(s3: MotoS3) -> None:
    storage = s3_storage(s3, s3.new_bucket())
    key = new_key("out", "clip.mp4")
    storage.put_bytes(key, PAYLOAD)
    for ignored in ("bytes=abc", "items=0-5", "bytes=5-3", "bytes=1-2-3", "bytes=0-1,4-5"):
        found = storage.open(key, ignored)
        assert isinstance(found, Stream) and found.status == 200, ignored
        assert b"".join(found.chunks) == PAYLOAD
    spaced = storage.open(key, "bytes= 5-9 ")
    assert isinstance(spaced, Stream) and spaced.status == 206 and b"".join(spaced.chunks) == PAYLOAD[5:10]
    with pytest.raises(RangeNotSatisfiable):
        storage.open(key, "bytes=-0")
    unread = storage.open(key, None)
    assert isinstance(unread, Stream)
    unread.close()  # what HEAD does: the bucket's answer let go without reading it
