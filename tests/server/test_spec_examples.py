"""The pages' own examples, run as printed: every curl command (with curl) and both TypeScript programs
(with node), with only the base URL and the API key changed.

The pages live in ``shared/spec`` beside the checkout. The one public image URL they use is pointed at
the local image host (tests never leave loopback).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OUTCOME_WAIT_S, ROOT, Account, ImageHost, Server, wait_for

SPEC = ROOT.parent / "shared" / "spec"
VEO_PAGE = SPEC / "000_0300923c144608de.txt"
IMAGE_PAGE = SPEC / "004_b1181ea2e50d5557.txt"
HOSTED = "https://nanophoto.ai"
DEMO_IMAGE = "https://static.nanophoto.ai/demo/nano-banana-pro.webp"

pytestmark = pytest.mark.skipif(not SPEC.is_dir(), reason="shared/spec is not beside this checkout")


def curl_examples(page: Path) -> list[str]:
    text = page.read_text()
    return re.findall(r"curl -X POST .*?--data-raw '.*?'", text, flags=re.S)


def localize(text: str, server: Server, account: Account, image_host: ImageHost) -> str:
    return (
        text.replace(HOSTED, server.base_url)
        .replace("YOUR_API_KEY", account.key)
        .replace(DEMO_IMAGE, image_host.url("demo.webp"))
    )


def run_curl(command: str) -> dict[str, object]:
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    body: dict[str, object] = json.loads(result.stdout)
    return body


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(1000)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_every_curl_example_of_both_pages(server: Server, account: Account, image_host: ImageHost) -> None:
    examples = curl_examples(IMAGE_PAGE) + curl_examples(VEO_PAGE)
    assert len(examples) == 8
    generation_ids: list[str] = []
    task_refs: list[dict[str, str]] = []
    for example in examples:
        command = localize(example, server, account, image_host)
        if "check-status" in command:
            continue
        body = run_curl(command)
        assert "errorCode" not in body, (example, body)
        if "nano-banana-2" in command:
            assert body["success"] is True and body["status"] == "pending"
            generation_ids.append(str(body["generationId"]))
        else:
            assert body["status"] == "processing"
            shots = body["shots"]
            assert isinstance(shots, list)
            task_refs.extend({"shotId": s["shotId"], "taskId": s["taskId"]} for s in shots)
    assert len(generation_ids) == 3 and len(task_refs) == 1 + 1 + 3
    # The check-status examples, with the ids the generate examples returned.
    image_status, video_status = (
        localize(e, server, account, image_host) for e in examples if "check-status" in e
    )
    for generation_id in generation_ids:
        command = image_status.replace("abc123xyz", generation_id)
        final = wait_for(lambda c=command: (b := run_curl(c))["status"] == "completed" and b)
        assert str(final["imageUrl"]).startswith(server.base_url)
    refs = json.dumps(task_refs)
    command = re.sub(r'"taskIds": \[.*?\]', f'"taskIds": {refs}', video_status, flags=re.S)
    final = wait_for(lambda: (b := run_curl(command))["status"] == "completed" and b)
    shots = final["shots"]
    assert isinstance(shots, list) and all(s["videoUrl"] for s in shots)


def typescript(page: Path, start: str, end: str) -> str:
    text = page.read_text()
    begin = text.index(start) + len(start)
    return text[begin : text.index(end, begin) + len(end)]


def as_javascript(source: str) -> str:
    """The examples' only TypeScript syntax is parameter annotations; node 20 runs the rest as is."""
    return re.sub(r"(\w+): (?:any|string)\b", r"\1", source)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("which", ["image", "video"])
def test_typescript_examples_run_unchanged(
    server: Server, account: Account, image_host: ImageHost, tmp_path: Path, which: str
) -> None:
    if which == "image":
        code = typescript(IMAGE_PAGE, "generate-image.ts\n", "\n    }\n  }\n}")
        code += '\ngenerateImage("YOUR_API_KEY").then((url) => console.log("RESULT " + url));\n'
        expected = "Image URL: " + server.base_url
    else:
        code = typescript(VEO_PAGE, "veo-3-api-example.ts\n", "generateVideo();")
        expected = "Shot shot-1 Video URL: " + server.base_url
    script = tmp_path / f"{which}.mjs"
    script.write_text(as_javascript(localize(code, server, account, image_host)))
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=OUTCOME_WAIT_S)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
