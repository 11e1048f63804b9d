"""Authentication (401 LOGIN_REQUIRED), the 100 generate requests/hour limit, the polling budget."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, Server

ENDPOINTS = [
    ("/api/nano-banana-2/generate", {"prompt": "x"}),
    ("/api/nano-banana-2/check-status", {"generationId": "gen_x"}),
    ("/api/veo-3/generate", {"shots": [{"id": "a", "prompt": "x", "generationType": "TEXT_2_VIDEO"}]}),
    ("/api/veo-3/check-status", {"taskIds": [{"shotId": "a", "taskId": "task_x"}]}),
]


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer ng_unknownkey", "Token ng_x", "bearer"],
)
def test_missing_malformed_or_unknown_keys(
    server: Server, path: str, body: dict[str, object], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.post(server.base_url + path, json=body, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": "Authentication required", "errorCode": "LOGIN_REQUIRED"}


def test_revoked_key_is_refused(server: Server) -> None:
    account = server.new_account(10)
    with account.client() as c:
        assert c.post("/api/nano-banana-2/check-status", json={"generationId": "gen_x"}).status_code == 404
    with server.client(ADMIN_TOKEN) as admin:
        key_id = next(
            k["id"] for k in admin.get("/admin/keys").json()["keys"] if k["accountId"] == account.id
        )
        assert admin.post(f"/admin/keys/{key_id}/revoke").status_code == 200
    with account.client() as c:
        r = c.post("/api/nano-banana-2/check-status", json={"generationId": "gen_x"})
    assert r.status_code == 401 and r.json()["errorCode"] == "LOGIN_REQUIRED"


def test_the_101st_generate_request_in_an_hour_gets_429(server: Server) -> None:
    # Every authenticated generate request counts (docs/api.md), so refused ones keep this cheap:
    # a key with no credits gets 402s, malformed bodies get 400s.
    account = server.new_account(0)
    with account.client() as c:
        for i in range(100):
            path = "/api/nano-banana-2/generate" if i % 2 else "/api/veo-3/generate"
            r = c.post(path, json={"prompt": "x"} if i % 2 else {"shots": []})
            assert r.status_code in (400, 402), (i, r.text)
        limited = c.post("/api/nano-banana-2/generate", json={"prompt": "x"})
        assert limited.status_code == 429
        assert limited.json()["errorCode"] == "API_KEY_RATE_LIMIT_EXCEEDED"
        retry_after = int(limited.headers["Retry-After"])
        assert 3000 < retry_after <= 3600, "the oldest request leaves the window about an hour from now"
        assert limited.json()["retryAfter"] == retry_after
        again = c.post("/api/veo-3/generate", json={"shots": []})
        assert again.status_code == 429
        # Polling has its own budget: still answered.
        status = c.post("/api/nano-banana-2/check-status", json={"generationId": "gen_x"})
        assert status.status_code == 404
    # Limits are per key: another key of the same server is unaffected.
    other = server.new_account(0)
    with other.client() as c:
        assert c.post("/api/nano-banana-2/generate", json={"prompt": "x"}).status_code == 402


def test_polling_a_21_shot_video_every_5_seconds_never_hits_the_limit(server: Server) -> None:
    # A 21-shot video polled every 5 s for the 30 minutes a slow provider may take: 360 polls.
    account = server.new_account(0)
    refs = [{"shotId": f"s{i}", "taskId": f"task_{i}"} for i in range(21)]
    with account.client() as c:
        codes = {c.post("/api/veo-3/check-status", json={"taskIds": refs}).status_code for _ in range(360)}
    assert codes == {404}


def test_budgets_of_the_same_rate_count_apart_and_429_states_the_real_budget(tmp_path: object) -> None:
    from pathlib import Path

    same = {f"NANOGEN_RATE_LIMIT_{b}": "5/minute" for b in ("GENERATE", "STATUS", "UPLOAD")}
    srv = Server(Path(str(tmp_path)), extra_env=same).start()
    try:
        account = srv.new_account(0)
        with account.client() as c:
            polls = [
                c.post("/api/nano-banana-2/check-status", json={"generationId": "g"}).status_code
                for _ in range(6)
            ]
            assert polls == [404] * 5 + [429]
            limited = c.get("/api/account")  # GET /api/account counts against the polling budget
            assert limited.status_code == 429
            assert limited.json()["error"] == "Rate limit exceeded (5 req/minute of check-status requests)"
            # The generate budget, set to the same rate, has counted none of them.
            generates = [c.post("/api/nano-banana-2/generate", json={"prompt": "x"}) for _ in range(6)]
            assert [r.status_code for r in generates] == [402] * 5 + [429]
            assert generates[-1].json()["error"] == "Rate limit exceeded (5 req/minute)"
            assert 1 <= int(generates[-1].headers["Retry-After"]) <= 60
            # Nor has the upload budget.
            r = c.post("/api/uploads", content=b"not an image", headers={"Content-Type": "image/png"})
            assert r.status_code == 400, r.text
    finally:
        srv.stop()


def test_unknown_route_and_method_use_the_envelope(server: Server) -> None:
    r = httpx.get(server.base_url + "/api/nano-banana-2/nope")
    assert r.status_code == 404 and r.json()["errorCode"] == "NOT_FOUND"
    r = httpx.get(server.base_url + "/api/nano-banana-2/generate")
    assert r.status_code == 405 and r.json()["errorCode"] == "METHOD_NOT_ALLOWED"
