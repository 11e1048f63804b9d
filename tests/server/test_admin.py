"""The admin API (``/admin/*``) on a running server: ``nanogen keys`` and ``credits`` over HTTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nanogen.settings import Settings
from tests.conftest import ADMIN_TOKEN, Server, assert_envelope, free_port, nanogen_cli


def _name(prefix: str = "admin") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    with server.client(ADMIN_TOKEN) as c:
        yield c


def _create(admin: httpx.Client, credits: int = 0, **extra: Any) -> dict[str, Any]:
    r = admin.post("/admin/accounts", json={"name": _name(), "credits": credits, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _check_status(server: Server, key: str) -> httpx.Response:
    with server.client(key) as c:
        return c.post("/api/nano-banana-2/check-status", json={"generationId": "gen_unknown_to_anyone"})


# -- the token --------------------------------------------------------------------------------------
ADMIN_ROUTES = [
    ("GET", "/admin/accounts", None),
    ("POST", "/admin/accounts", {"name": "never-created", "credits": 5}),
    ("GET", "/admin/accounts/never-created", None),
    ("POST", "/admin/accounts/never-created/credits", {"credits": 5}),
    ("POST", "/admin/accounts/never-created/keys", {}),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys/key_x/revoke", None),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
    ],
    ids=["missing", "wrong", "longer", "shorter", "basic-scheme", "no-scheme"],
)
def test_wrong_or_missing_admin_token_is_403(server: Server, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as c:
        for method, path, body in ADMIN_ROUTES:
            r = c.request(method, path, json=body)
            assert_envelope(r, 403, "ADMIN_TOKEN_INVALID")
            assert set(r.json()) == {"error", "errorCode"}
        assert c.get("/admin/accounts/never-created").status_code == 403
    with server.client(ADMIN_TOKEN) as c:
        # Nothing the refused requests asked for happened.
        assert_envelope(c.get("/admin/accounts/never-created"), 404, "NOT_FOUND")


def test_an_api_key_is_not_an_admin_token(server: Server, admin: httpx.Client) -> None:
    key = _create(admin, 5)["apiKey"]
    with server.client(key) as c:
        assert_envelope(c.get("/admin/accounts"), 403, "ADMIN_TOKEN_INVALID")


def test_admin_token_is_not_an_api_key(server: Server) -> None:
    assert_envelope(_check_status(server, ADMIN_TOKEN), 401, "LOGIN_REQUIRED")


# -- accounts ---------------------------------------------------------------------------------------
def test_create_account_returns_a_working_key(server: Server, admin: httpx.Client) -> None:
    name = _name("alice")
    r = admin.post("/admin/accounts", json={"name": name, "credits": 40, "keyName": "laptop"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"account", "keyId", "apiKey"}
    account = body["account"]
    assert account["name"] == name and account["id"].startswith("acct_")
    assert (account["balance"], account["granted"], account["debited"], account["refunded"]) == (40, 40, 0, 0)
    assert body["keyId"].startswith("key_") and body["apiKey"].startswith("ng_")

    # The key authenticates: an unknown generation is 404 NOT_FOUND, not 401.
    assert_envelope(_check_status(server, body["apiKey"]), 404, "NOT_FOUND")

    shown = admin.get(f"/admin/accounts/{name}")
    assert shown.status_code == 200
    assert shown.json() == account
    assert admin.get(f"/admin/accounts/{account['id']}").json() == account
    listed = admin.get("/admin/accounts").json()["accounts"]
    assert account in listed


def test_create_account_without_credits(admin: httpx.Client) -> None:
    r = admin.post("/admin/accounts", json={"name": _name()})
    assert r.status_code == 201, r.text
    assert r.json()["account"]["balance"] == 0
    assert r.json()["account"]["granted"] == 0


def test_duplicate_account_name_is_400(admin: httpx.Client) -> None:
    first = _create(admin, 10)
    name = first["account"]["name"]
    r = admin.post("/admin/accounts", json={"name": name, "credits": 99})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert r.json().get("field") == "name"
    # The original account is untouched (no second grant).
    assert admin.get(f"/admin/accounts/{name}").json()["balance"] == 10


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": 42},
        {"name": None},
        {"name": "neg-credits", "credits": -1},
        {"name": "str-credits", "credits": "lots"},
        {"name": "frac-credits", "credits": 1.5},
        {"name": "long-key-name", "keyName": "k" * 201},
    ],
    ids=[
        "empty",
        "empty-name",
        "long-name",
        "int-name",
        "null-name",
        "negative",
        "string",
        "fraction",
        "long-key",
    ],
)
def test_invalid_new_account_is_400(admin: httpx.Client, body: dict[str, Any]) -> None:
    assert_envelope(admin.post("/admin/accounts", json=body), 400, "INVALID_PARAMETER")
    if isinstance(body.get("name"), str) and body["name"]:
        assert_envelope(admin.get(f"/admin/accounts/{body['name']}"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[1, 2]", b'"a string"', b"{"],
    ids=["empty", "garbage", "array", "string", "truncated"],
)
def test_body_that_is_not_a_json_object_is_400(admin: httpx.Client, content: bytes) -> None:
    r = admin.post("/admin/accounts", content=content, headers={"Content-Type": "application/json"})
    assert_envelope(r, 400, "INVALID_JSON")


def test_unknown_account_is_404(admin: httpx.Client) -> None:
    missing = _name("missing")
    assert_envelope(admin.get(f"/admin/accounts/{missing}"), 404, "NOT_FOUND")
    assert_envelope(admin.post(f"/admin/accounts/{missing}/credits", json={"credits": 5}), 404, "NOT_FOUND")
    assert_envelope(admin.post(f"/admin/accounts/{missing}/keys", json={}), 404, "NOT_FOUND")


# -- credits ----------------------------------------------------------------------------------------
def test_grant_adds_to_the_balance(server: Server, admin: httpx.Client) -> None:
    created = _create(admin, 10)
    name, account_id = created["account"]["name"], created["account"]["id"]
    r = admin.post(f"/admin/accounts/{name}/credits", json={"credits": 15, "memo": "top-up"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": account_id,
        "name": name,
        "balance": 25,
        "granted": 25,
        "debited": 0,
        "refunded": 0,
        "providerCostUsd": "0.000000",
    }
    r = admin.post(f"/admin/accounts/{account_id}/credits", json={"credits": 5})
    assert r.json()["balance"] == 30
    assert admin.get(f"/admin/accounts/{name}").json()["balance"] == 30
    with server.db() as db:
        rows = db.execute(
            "SELECT kind, amount, memo FROM nanogen_ledger WHERE account_id=? ORDER BY id", (account_id,)
        ).fetchall()
    assert rows == [("grant", 10, "initial credits"), ("grant", 15, "top-up"), ("grant", 5, "")]


@pytest.mark.parametrize(
    "body",
    [
        {"credits": 0},
        {"credits": -5},
        {"credits": "abc"},
        {"credits": ""},
        {"credits": None},
        {"credits": 2.5},
        {"credits": [5]},
        {"credits": {"n": 5}},
        {},
        {"credits": 5, "memo": "m" * 501},
    ],
    ids=[
        "zero",
        "negative",
        "string",
        "empty-string",
        "null",
        "fraction",
        "list",
        "object",
        "missing",
        "long-memo",
    ],
)
def test_invalid_grant_is_400_never_500(admin: httpx.Client, body: dict[str, Any]) -> None:
    created = _create(admin, 10)
    name = created["account"]["name"]
    r = admin.post(f"/admin/accounts/{name}/credits", json=body)
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert admin.get(f"/admin/accounts/{name}").json()["balance"] == 10


@pytest.mark.parametrize("amount", [2**63, 10**30], ids=["2^63", "1e30"])
def test_grant_too_large_for_the_database_is_400_never_500(admin: httpx.Client, amount: int) -> None:
    created = _create(admin, 10)
    name = created["account"]["name"]
    r = admin.post(f"/admin/accounts/{name}/credits", json={"credits": amount})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert admin.get(f"/admin/accounts/{name}").json()["balance"] == 10


def test_new_account_credits_too_large_for_the_database_is_400_never_500(admin: httpx.Client) -> None:
    name = _name("huge")
    r = admin.post("/admin/accounts", json={"name": name, "credits": 2**63})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert_envelope(admin.get(f"/admin/accounts/{name}"), 404, "NOT_FOUND")


def test_grant_that_would_overflow_the_balance_is_400(admin: httpx.Client) -> None:
    """A balance at the column's maximum: one more credit cannot be stored, and retrying won't help."""
    r = admin.post("/admin/accounts", json={"name": _name("full"), "credits": 2**63 - 1})
    if r.status_code == 400:  # a cap on credits below the column's range also keeps this from happening
        assert_envelope(r, 400, "INVALID_PARAMETER")
        return
    assert r.status_code == 201, r.text
    name = r.json()["account"]["name"]
    assert_envelope(
        admin.post(f"/admin/accounts/{name}/credits", json={"credits": 1}), 400, "INVALID_PARAMETER"
    )
    assert admin.get(f"/admin/accounts/{name}").json()["balance"] == 2**63 - 1


@pytest.mark.parametrize("value", ["10", True], ids=["numeric-string", "boolean"])
def test_credits_must_be_a_json_integer(admin: httpx.Client, value: object) -> None:
    """Money amounts are JSON integers: no coercion of "10" or true into credits."""
    name = _name("strict")
    assert_envelope(
        admin.post("/admin/accounts", json={"name": name, "credits": value}), 400, "INVALID_PARAMETER"
    )
    created = _create(admin, 10)["account"]["name"]
    r = admin.post(f"/admin/accounts/{created}/credits", json={"credits": value})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert admin.get(f"/admin/accounts/{created}").json()["balance"] == 10


# -- keys -------------------------------------------------------------------------------------------
def test_list_keys_never_shows_a_key(admin: httpx.Client) -> None:
    created = _create(admin, 1, keyName="ci")
    extra = admin.post(f"/admin/accounts/{created['account']['name']}/keys", json={"name": "second"})
    assert extra.status_code == 201, extra.text
    assert set(extra.json()) == {"keyId", "apiKey"}
    secrets = {created["keyId"]: created["apiKey"], extra.json()["keyId"]: extra.json()["apiKey"]}

    r = admin.get("/admin/keys")
    assert r.status_code == 200
    for secret in secrets.values():
        assert secret not in r.text
        assert secret[10:] not in r.text
    mine = {k["id"]: k for k in r.json()["keys"] if k["id"] in secrets}
    assert set(mine) == set(secrets)
    for key_id, key in mine.items():
        assert set(key) == {"id", "accountId", "account", "name", "prefix", "createdAt", "revokedAt"}
        assert key["prefix"] == secrets[key_id][:10]
        assert key["accountId"] == created["account"]["id"]
        assert key["account"] == created["account"]["name"]
        assert key["revokedAt"] is None
    assert mine[created["keyId"]]["name"] == "ci"
    assert mine[extra.json()["keyId"]]["name"] == "second"


def test_invalid_key_name_is_400(admin: httpx.Client) -> None:
    name = _create(admin)["account"]["name"]
    for body in ({"name": 5}, {"name": "n" * 201}, {"name": None}):
        assert_envelope(admin.post(f"/admin/accounts/{name}/keys", json=body), 400, "INVALID_PARAMETER")


def test_revoke_makes_the_key_401(server: Server, admin: httpx.Client) -> None:
    created = _create(admin, 5)
    key, key_id = created["apiKey"], created["keyId"]
    other = admin.post(f"/admin/accounts/{created['account']['id']}/keys", json={}).json()
    assert_envelope(_check_status(server, key), 404, "NOT_FOUND")

    r = admin.post(f"/admin/keys/{key_id}/revoke")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": key_id, "revoked": True}
    assert_envelope(_check_status(server, key), 401, "LOGIN_REQUIRED")
    assert_envelope(_check_status(server, other["apiKey"]), 404, "NOT_FOUND")  # the other key still works

    listed = {k["id"]: k for k in admin.get("/admin/keys").json()["keys"]}
    assert listed[key_id]["revokedAt"] is not None
    assert listed[other["keyId"]]["revokedAt"] is None

    assert_envelope(admin.post(f"/admin/keys/{key_id}/revoke"), 404, "NOT_FOUND")
    assert_envelope(admin.post("/admin/keys/key_does_not_exist/revoke"), 404, "NOT_FOUND")


# -- no admin token configured: the routes do not exist ---------------------------------------------
class ServerWithEmptyAdminToken(Server):
    """``NANOGEN_ADMIN_TOKEN=`` (what a compose file's ``${VAR}`` gives for an unset variable)."""

    @property
    def env(self) -> dict[str, str]:
        return super().env | {"NANOGEN_ADMIN_TOKEN": ""}


@pytest.fixture(scope="module")
def server_without_admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("nanogen-no-admin")
    srv = ServerWithEmptyAdminToken(home).start()
    yield srv
    srv.stop()


def test_admin_routes_are_404_with_an_empty_admin_token(server_without_admin: Server) -> None:
    assert server_without_admin.env["NANOGEN_ADMIN_TOKEN"] == ""
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer x"},
    ):
        with httpx.Client(base_url=server_without_admin.base_url, headers=headers, timeout=30) as c:
            for method, path, body in ADMIN_ROUTES:
                r = c.request(method, path, json=body)
                assert_envelope(r, 404, "NOT_FOUND")
    with server_without_admin.db() as db:
        assert db.execute("SELECT count(*) FROM nanogen_accounts").fetchone() == (0,)


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_or_blank_admin_token_counts_as_unset(value: str) -> None:
    assert Settings(admin_token=value).admin_token is None


def test_the_admin_token_is_stripped_and_kept_secret() -> None:
    token = Settings(admin_token=f"  {ADMIN_TOKEN}  ").admin_token
    assert token is not None and token.get_secret_value() == ADMIN_TOKEN
    assert ADMIN_TOKEN not in repr(Settings(admin_token=ADMIN_TOKEN))


def test_serve_refuses_a_short_admin_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOGEN_")}
    env |= {"NANOGEN_HOME": str(tmp_path), "NANOGEN_ADMIN_TOKEN": "tooshort", "COLUMNS": "200"}
    result = nanogen_cli("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    assert "invalid setting NANOGEN_ADMIN_TOKEN" in result.stderr
    assert "at least 16 characters" in result.stderr
    assert "tooshort" not in result.stderr + result.stdout  # the rejected secret is not echoed
    assert not (tmp_path / "nanogen.sqlite").exists()  # refused before touching anything
