"""A GPU worker box joining a deployment (docs/deploy.md): an API process that runs nothing
(``nanogen serve --no-worker``) and ``nanogen worker --engines diffusers`` on one PostgreSQL database,
the worker running a tiny random FLUX.2 [klein] pipeline from a local directory on the CPU."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tests.conftest import Server, wait_for
from tests.databases import postgres_database
from tests.engines import diffusers_support as support

pytest.importorskip("torch")
pytest.importorskip("diffusers")


def test_a_worker_with_engines_diffusers_makes_the_api_processes_images(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = support.tiny_flux2_klein(tmp_path_factory.mktemp("flux2-klein"))
    settings = {
        "HF_HUB_OFFLINE": "1",
        **support.SINGLE_THREAD_ENV,
        "NANOGEN_ENGINE_IMAGES": "diffusers",
        "NANOGEN_DIFFUSERS_IMAGE_MODEL": str(model),
        "NANOGEN_DIFFUSERS_NATIVE_PIXELS": "4096",
        "NANOGEN_DIFFUSERS_DEVICE": "cpu",
    }
    with postgres_database("diffusers_worker") as url:
        api = Server(tmp_path / "api", extra_env=settings, database_url=url, args=("--no-worker",)).start()
        worker: subprocess.Popen[bytes] | None = None
        try:
            # The URLs a worker writes are the API's (a deployment sets NANOGEN_PUBLIC_URL everywhere).
            env = api.env | {"NANOGEN_EXECUTOR_ID": "test-gpu-worker", "NANOGEN_PUBLIC_URL": api.base_url}
            with open(tmp_path / "worker.log", "ab") as log:
                worker = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "nanogen",
                        "worker",
                        "--engines",
                        "diffusers",
                        "--concurrency",
                        "1",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            account = api.new_account(100)
            with account.client() as client:
                r = client.post(
                    "/api/nano-banana-2/generate",
                    json={"prompt": "a lighthouse at dusk", "aspectRatio": "9:16", "imageQuality": "1K"},
                )
                assert r.status_code == 200, r.text

                def ended() -> dict[str, object] | None:
                    body = client.post(
                        "/api/nano-banana-2/check-status", json={"generationId": r.json()["generationId"]}
                    ).json()
                    return body if body["status"] in {"completed", "failed"} else None

                status = wait_for(ended)
                assert status["status"] == "completed", (
                    status,
                    (tmp_path / "worker.log").read_text()[-3000:],
                )
                picture = Image.open(io.BytesIO(client.get(status["imageUrl"]).content))
                assert picture.size == (768, 1376)
            assert account.balance() == 96
            with api.db() as db:
                (raw,) = db.execute(
                    "SELECT params FROM nanogen_tasks WHERE id=?", (r.json()["taskId"],)
                ).fetchone()
            params = raw if isinstance(raw, dict) else json.loads(raw)
            assert isinstance(params["seed"], int)
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            api.stop()
