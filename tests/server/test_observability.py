"""What an operator sees: Prometheus metrics at /metrics, JSON log lines, request ids, and no secret in
any log line. Real servers over HTTP; /metrics parsed with prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, Account, Server, wait_for
from tests.databases import postgres_database
from tests.engines.google_support import google_server
from tests.fakes.google_server import API_KEY, FakeGoogle

METRICS_TOKEN = "metrics-token-for-the-observability-tests"
IMAGE = "/api/nano-banana-2"
VIDEO = "/api/veo-3"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    with server.client(METRICS_TOKEN) as c:
        r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def log_lines(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines (the console lines before logging starts are not JSON)."""
    lines = (server.home / "server.log").read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def observed_env(**extra: str) -> dict[str, str]:
    return {
        "NANOGEN_METRICS_TOKEN": METRICS_TOKEN,
        "NANOGEN_LOG_FORMAT": "json",
        "NANOGEN_LOG_LEVEL": "info",
        **extra,
    }


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory, database_url: str | None) -> Iterator[Server]:
    """A server whose counters are its own: on PostgreSQL a database of its own too (on the session
    server's database the other process would take some of its work, and a second process may not
    share the executor id)."""
    home = tmp_path_factory.mktemp("observed")
    with contextlib.ExitStack() as stack:
        url = None if database_url is None else stack.enter_context(postgres_database("observed"))
        server = Server(home, extra_env=observed_env(), database_url=url).start()
        yield server
        server.stop()


def finished(account: Account, path: str, body: dict[str, Any]) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with account.client() as c:
            answer: dict[str, Any] = c.post(path, json=body).json()
        return answer if answer["status"] in ("completed", "failed") else None

    result: dict[str, Any] = wait_for(check)
    return result


def test_tasks_credits_and_requests_are_counted_by_label(observed: Server) -> None:
    account = observed.new_account(100)
    before = scrape(observed)
    with account.client() as c:
        ok = c.post(f"{IMAGE}/generate", json={"prompt": "a lighthouse", "mode": "generate"}).json()
        bad = c.post(f"{IMAGE}/generate", json={"prompt": "[sandbox:fail] no", "mode": "generate"}).json()
        shots = [{"id": f"s{i}", "prompt": f"shot {i}", "generationType": "TEXT_2_VIDEO"} for i in (1, 2)]
        video = c.post(f"{VIDEO}/generate", json={"shots": shots, "resolution": "720p"}).json()
        assert c.post(f"{IMAGE}/check-status", json={}).status_code == 400
    assert finished(account, f"{IMAGE}/check-status", {"generationId": ok["generationId"]})["status"] == (
        "completed"
    )
    assert finished(account, f"{IMAGE}/check-status", {"generationId": bad["generationId"]})["status"] == (
        "failed"
    )
    ids = [{"shotId": s["shotId"], "taskId": s["taskId"]} for s in video["shots"]]
    assert finished(account, f"{VIDEO}/check-status", {"taskIds": ids})["status"] == "completed"
    with httpx.Client(base_url=observed.base_url) as anonymous:
        assert anonymous.post(f"{IMAGE}/generate", json={}).status_code == 401
        assert anonymous.get("/files/out/no-such/task_123.png").status_code == 404
        assert anonymous.get("/no/such/path/gen_123").status_code == 404

    after = scrape(observed)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    image, shot = {"product": "image", "engine": "sandbox"}, {"product": "video", "engine": "sandbox"}
    assert delta("nanogen_tasks_submitted_total", **image) == 2
    assert delta("nanogen_tasks_completed_total", **image) == 1
    assert delta("nanogen_tasks_failed_total", **image, cause="engine") == 1
    assert delta("nanogen_tasks_refunded_total", **image) == 1
    assert delta("nanogen_credits_debited_total", **image) == 8  # two 1K images at 4 credits
    assert delta("nanogen_credits_refunded_total", **image) == 4
    assert delta("nanogen_tasks_submitted_total", **shot) == 2
    assert delta("nanogen_tasks_completed_total", **shot) == 2
    assert delta("nanogen_credits_debited_total", **shot) == 20  # two 720p shots at 10 credits
    assert delta("nanogen_tasks_failed_total", **shot, cause="engine") == 0
    assert account.balance() == 100 - 8 - 20 + 4

    generate = {"route": f"{IMAGE}/generate", "method": "POST"}
    assert delta("nanogen_http_requests_total", **generate, status="200") == 2
    assert delta("nanogen_http_requests_total", **generate, status="401") == 1
    assert (
        delta("nanogen_http_requests_total", route=f"{IMAGE}/check-status", method="POST", status="400") == 1
    )
    assert delta("nanogen_http_requests_total", route=f"{VIDEO}/generate", method="POST", status="200") == 1
    assert delta("nanogen_http_request_duration_seconds_count", **generate) == 3
    assert delta("nanogen_http_request_duration_seconds_bucket", **generate, le="+Inf") == 3
    assert delta("nanogen_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    files = "/files/{key:path}"
    assert delta("nanogen_http_requests_total", route=files, method="GET", status="404") == 1
    routes = {dict(labels).get("route", "") for _, labels in after}
    assert not [r for r in routes if "gen_123" in r or "task_123" in r], "routes are templates, never paths"
    assert value(after, "nanogen_jobs_running", **image) == 0


def test_queue_depth_and_running_jobs_at_scrape_time(tmp_path: Path) -> None:
    env = observed_env(NANOGEN_IMAGE_CONCURRENCY="1", NANOGEN_SANDBOX_LATENCY_S="120")
    server = Server(tmp_path / "queued", extra_env=env).start()
    try:
        account = server.new_account(100)
        with account.client() as c:
            for i in range(3):
                r = c.post(f"{IMAGE}/generate", json={"prompt": f"slow {i}", "mode": "generate"})
                assert r.status_code == 200, r.text
        queue = {"queue": "nanogen.image.sandbox", "product": "image", "engine": "sandbox"}
        running = {"product": "image", "engine": "sandbox"}

        def settled() -> Samples | None:
            samples = scrape(server)
            waiting = value(samples, "nanogen_queue_depth", **queue)
            return (
                samples if waiting == 2 and value(samples, "nanogen_jobs_running", **running) == 1 else None
            )

        samples = wait_for(settled)
        assert value(samples, "nanogen_tasks_submitted_total", **running) == 3
    finally:
        server.stop()


def raw_request(server: Server, header_value: bytes) -> bytes:
    """A check-status request with this X-Request-Id, sent as raw bytes (httpx refuses odd values)."""
    request = (
        b"POST " + IMAGE.encode() + b"/check-status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"X-Request-Id: " + header_value + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def response_request_id(answer: bytes) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        name, _, found = line.partition(":")
        if name.lower() == "x-request-id":
            return found.strip()
    return None


def test_every_response_has_a_request_id_and_one_json_log_line(observed: Server) -> None:
    account = observed.new_account(10)
    given = f"client-{observed.port}-req"
    answers = {}
    with account.client() as c, httpx.Client(base_url=observed.base_url) as anonymous:
        answers["poll"] = c.post(f"{IMAGE}/check-status", json={"generationId": "gen_nope"}, headers={})
        answers["echoed"] = c.post(f"{IMAGE}/check-status", json={}, headers={"X-Request-Id": given})
        answers["unauthenticated"] = anonymous.post(f"{VIDEO}/check-status", json={})
        answers["health"] = anonymous.get("/healthz")
        answers["unmatched"] = anonymous.get("/nope")
        answers["not allowed"] = anonymous.delete("/healthz")
        answers["metrics forbidden"] = anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"})
        answers["huge"] = anonymous.get("/healthz", headers={"X-Request-Id": "x" * 10_000})
    for what, r in answers.items():
        assert r.headers.get("x-request-id"), f"{what}: {r.status_code} without X-Request-Id"
    assert answers["echoed"].headers["x-request-id"] == given
    assert answers["echoed"].status_code == 400
    assert len(answers["huge"].headers["x-request-id"]) == 16, "a 10 KB id is replaced by a new one"
    ids = [r.headers["x-request-id"] for r in answers.values()]
    assert len(set(ids)) == len(ids), "each request has its own id"

    # (Other control characters and line breaks never reach the application: the HTTP parser refuses
    # the request.)
    for hostile in (b"caf\xc3\xa9", b"a\tb", b"a" * 129):
        answer = raw_request(observed, hostile)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        replaced = response_request_id(answer)
        assert replaced and len(replaced) == 16, (hostile, replaced)
        ids.append(replaced)

    def logged() -> dict[str, list[dict[str, Any]]] | None:
        lines = [line for line in log_lines(observed) if line.get("logger") == "nanogen.access"]
        by_id = {i: [line for line in lines if line.get("request_id") == i] for i in ids}
        return by_id if all(by_id.values()) else None

    by_id = wait_for(logged)
    for lines in by_id.values():
        assert len(lines) == 1, f"one access line per request: {lines}"
    echoed = by_id[given][0]
    assert echoed["method"] == "POST" and echoed["route"] == f"{IMAGE}/check-status"
    assert echoed["status"] == 400 and echoed["account_id"] == account.id
    assert isinstance(echoed["duration_ms"], float) and echoed["duration_ms"] >= 0
    assert by_id[answers["unmatched"].headers["x-request-id"]][0]["route"] == "<unmatched>"
    assert by_id[answers["unauthenticated"].headers["x-request-id"]][0]["account_id"] is None


def test_task_transitions_are_logged_as_json(observed: Server) -> None:
    account = observed.new_account(10)
    with account.client() as c:
        accepted = c.post(f"{IMAGE}/generate", json={"prompt": "[sandbox:fail] logged", "mode": "generate"})
    task_id = accepted.json()["taskId"]
    finished(account, f"{IMAGE}/check-status", {"generationId": accepted.json()["generationId"]})

    def transitions() -> list[dict[str, Any]] | None:
        lines = [line for line in log_lines(observed) if line.get("task_id") == task_id]
        return lines if any(line["to"] == "failed" for line in lines) else None

    lines = wait_for(transitions)
    assert [(line["from"], line["to"]) for line in lines] == [
        (None, "pending"),
        ("pending", "generating"),
        ("generating", "failed"),
    ]
    for line in lines:
        assert line["generation_id"] == accepted.json()["generationId"]
        assert (line["product"], line["engine"], line["logger"]) == ("image", "sandbox", "nanogen.tasks")
    assert [line["credits"] for line in lines] == [4, 0, 4]  # debited, -, refunded
    assert lines[-1]["cause"] == "engine"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGoogle]:
    fake = FakeGoogle()
    yield fake
    fake.close()


def test_no_key_in_any_log_line_and_provider_metrics(fake: FakeGoogle, tmp_path: Path) -> None:
    env = observed_env(NANOGEN_LOG_LEVEL="debug")
    with google_server(tmp_path / "google", fake, **env) as server:
        account = server.new_account(100)
        key = account.key
        with httpx.Client(base_url=server.base_url) as c:
            bearer = {"Authorization": f"Bearer {key}"}
            assert c.get("/metrics", headers=bearer).status_code == 403  # a real API key, not the token
            assert c.get("/admin/accounts", headers=bearer).status_code in (401, 403)
            assert c.post(f"{IMAGE}/generate", headers=bearer, content=b"{nope").status_code == 400
            r = c.post(f"{IMAGE}/generate", headers={"Authorization": f"Bearer {key}x"}, json={})
            assert r.status_code == 401  # a key one character off
        with account.client() as c:
            ok = c.post(f"{IMAGE}/generate", json={"prompt": "a cat [google:429x1]", "mode": "generate"})
            blocked = c.post(
                f"{IMAGE}/generate", json={"prompt": "[google:block-prompt]", "mode": "generate"}
            )
        done = finished(account, f"{IMAGE}/check-status", {"generationId": ok.json()["generationId"]})
        assert done["status"] == "completed"
        failed = finished(account, f"{IMAGE}/check-status", {"generationId": blocked.json()["generationId"]})
        assert failed["status"] == "failed"

        samples = scrape(server)
        call = {"engine": "google", "call": "generate_image"}
        assert value(samples, "nanogen_provider_errors_total", **call, kind="429") == 1
        assert value(samples, "nanogen_provider_errors_total", **call, kind="safety") == 1
        assert (
            value(samples, "nanogen_provider_request_duration_seconds_count", **call) == 3
        )  # 429, ok, blocked
        # Both calls were sent as their requests were accepted (tasks/early.py): the 429 one's retry
        # was its job's own.
        assert value(samples, "nanogen_provider_calls_begun_at_acceptance_total", **call) == 2
        assert (
            value(samples, "nanogen_tasks_failed_total", product="image", engine="google", cause="engine")
            == 1
        )
        server.stop()

    log = (server.home / "server.log").read_text(errors="replace")
    assert '"logger":"nanogen.access"' in log and '"logger":"nanogen.tasks"' in log, "the run was logged"
    for secret in (key, API_KEY, ADMIN_TOKEN, METRICS_TOKEN):
        assert secret not in log, f"a secret ({secret[:6]}...) is in the log"
    assert key[3:20] not in log, "nor any recognisable part of an API key"
