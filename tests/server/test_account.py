"""``GET /api/account`` (nanogen addition): the caller's balance, as the playground shows it."""

from __future__ import annotations

import httpx

from tests.conftest import Server, assert_envelope, wait_for


def test_the_balance_follows_debits_and_refunds(server: Server) -> None:
    account = server.new_account(50)
    with account.client() as c:
        r = c.get("/api/account")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True
        assert body["accountId"] == account.id
        assert body["name"].startswith("acct-")
        assert body["credits"] == 50 == account.balance()

        made = c.post("/api/nano-banana-2/generate", json={"prompt": "a kite", "imageQuality": "2K"}).json()
        assert made["creditsUsed"] == 8
        assert c.get("/api/account").json()["credits"] == 42

        failed = c.post("/api/nano-banana-2/generate", json={"prompt": "[sandbox:fail] a kite"}).json()
        wait_for(
            lambda: (
                c.post(
                    "/api/nano-banana-2/check-status", json={"generationId": failed["generationId"]}
                ).json()["status"]
                == "failed"
            )
        )
        assert c.get("/api/account").json()["credits"] == 42 == account.balance()  # 4 debited, 4 refunded


def test_only_the_callers_own_account(server: Server) -> None:
    first, second = server.new_account(7), server.new_account(9)
    with second.client() as c:
        assert c.get("/api/account").json()["accountId"] == second.id != first.id


def test_refused_without_a_valid_key(server: Server) -> None:
    url = server.base_url + "/api/account"
    assert_envelope(httpx.get(url), 401, "LOGIN_REQUIRED")
    assert_envelope(httpx.get(url, headers={"Authorization": "Bearer ng_unknown"}), 401, "LOGIN_REQUIRED")
    assert_envelope(httpx.get(url, headers={"Authorization": "Basic abc"}), 401, "LOGIN_REQUIRED")
    account = server.new_account(1)
    assert_envelope(
        httpx.post(url, headers={"Authorization": f"Bearer {account.key}"}), 405, "METHOD_NOT_ALLOWED"
    )


def test_documented_in_openapi(server: Server) -> None:
    spec = httpx.get(server.base_url + "/openapi.json").json()
    operation = spec["paths"]["/api/account"]["get"]
    assert operation["security"]
    assert {"200", "401", "429"} <= set(operation["responses"])
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    model = spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")]
    assert set(model["properties"]) == {"success", "accountId", "name", "credits"}
    assert not any(path.startswith("/playground") for path in spec["paths"])
