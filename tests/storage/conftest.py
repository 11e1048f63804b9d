"""A real S3-compatible server for the storage tests: moto in server mode, a subprocess on 127.0.0.1.

Each test makes its own bucket, so tests share one server without seeing each other's objects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.conftest import free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-never-logged"


@dataclass
class MotoS3:
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        log = open(self.log_dir / f"moto-{self.port}.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto server exited early")
            try:
                httpx.get(self.endpoint, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"nanogen-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def make_outputs_public(self, bucket: str) -> None:
        """What docs/storage.md asks for public URLs: anyone may GET out/*, nothing else."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/out/*",
                }
            ],
        }
        self.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def keys(self, bucket: str) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def env(self, bucket: str, **extra: str) -> dict[str, str]:
        """Settings for a nanogen server that keeps its files in ``bucket``."""
        return {
            "NANOGEN_STORAGE": "s3",
            "NANOGEN_S3_BUCKET": bucket,
            "NANOGEN_S3_ENDPOINT_URL": self.endpoint,
            "NANOGEN_S3_REGION": "us-east-1",
            "NANOGEN_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "NANOGEN_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            **extra,
        }


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()
