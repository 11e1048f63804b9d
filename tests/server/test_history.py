"""History (``GET/DELETE /api/generations``) and the account's ledger (``GET /api/account/ledger``),
over HTTP on the session server, on both databases."""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN, Account, Server, assert_envelope, wait_for
from tests.storage import flows


def submit_image(c: httpx.Client, prompt: str) -> str:
    r = c.post("/api/nano-banana-2/generate", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["generationId"]
    return generation_id


def pages(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a listing, following nextCursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = c.get(path, params=params | ({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"data", "nextCursor"}, body
        found += body["data"]
        cursor = body["nextCursor"]
        if cursor is None:
            return found


def ended(account: Account, generation_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        with account.client() as c:
            body: dict[str, Any] = c.get(f"/api/generations/{generation_id}").json()
        return body if body["status"] not in ("pending", "generating") else None

    result: dict[str, Any] = wait_for(check)
    return result


def test_listing_newest_first_filters_and_detail(server: Server) -> None:
    account = server.new_account(100_000)
    done = flows.image(account, "a lighthouse")
    failed = flows.image(account, "a storm [sandbox:fail]")
    _, video = flows.video(account, ["first shot", "second shot"])
    assert done["status"] == "completed" and failed["status"] == "failed"
    ids = [done["generationId"], failed["generationId"], video["generationId"]]
    with account.client() as c:
        everything = pages(c, "/api/generations")
        assert [g["generationId"] for g in everything] == ids[::-1]  # newest first
        images = pages(c, "/api/generations", product="image")
        assert [g["generationId"] for g in images] == ids[1::-1]
        assert [g["generationId"] for g in pages(c, "/api/generations", product="video")] == ids[2:]
        assert [g["generationId"] for g in pages(c, "/api/generations", status="failed")] == ids[1:2]
        completed = pages(c, "/api/generations", status="completed")
        assert [g["generationId"] for g in completed] == [ids[2], ids[0]]
        assert pages(c, "/api/generations", status="processing") == []
        summary = everything[-1]
        assert summary["prompt"] == "a lighthouse" and summary["product"] == "image"
        assert summary["taskCount"] == 1 and summary["credits"] > 0 and summary["filesDeletedAt"] is None

        r = c.get(f"/api/generations/{video['generationId']}")
        assert r.status_code == 200, r.text
        detail = r.json()
        assert detail["status"] == "completed" and detail["prompt"] == "first shot"
        assert detail["concatenatedVideoUrl"] == video["concatenatedVideoUrl"]
        assert [t["shotId"] for t in detail["tasks"]] == ["shot-0", "shot-1"]
        assert all(t["status"] == "completed" and t["outputUrl"] for t in detail["tasks"])
        assert sum(t["credits"] for t in detail["tasks"]) == detail["credits"]
        assert detail["params"]["shots"][1]["prompt"] == "second shot"
        assert detail["creditsRefunded"] == 0

        failed_detail = c.get(f"/api/generations/{failed['generationId']}").json()
        assert failed_detail["tasks"][0]["status"] == "failed" and failed_detail["tasks"][0]["error"]
        assert failed_detail["creditsRefunded"] == failed_detail["credits"] > 0


def test_pages_have_no_duplicates_or_gaps_while_generations_are_added(server: Server) -> None:
    account = server.new_account(100_000)
    with account.client() as c:
        before = [submit_image(c, f"picture {i}") for i in range(7)]
        seen: list[str] = []
        added: list[str] = []
        cursor = None
        while True:
            r = c.get("/api/generations", params={"limit": 3} | ({"cursor": cursor} if cursor else {}))
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["data"]) <= 3
            seen += [g["generationId"] for g in body["data"]]
            added.append(submit_image(c, f"added after page {len(added)}"))  # newer than every page
            cursor = body["nextCursor"]
            if cursor is None:
                break
        assert seen == before[::-1]  # every one once, in order: the inserts never shifted a page
        fresh = [g["generationId"] for g in pages(c, "/api/generations", limit=100)]
        assert fresh == (before + added)[::-1]


def test_another_accounts_generation_is_not_found_and_bad_queries_are_refused(server: Server) -> None:
    owner, other = server.new_account(10_000), server.new_account(10_000)
    with owner.client() as c:
        generation_id = submit_image(c, "mine")
    with other.client() as c:
        assert_envelope(c.get(f"/api/generations/{generation_id}"), 404, "NOT_FOUND")
        assert_envelope(c.delete(f"/api/generations/{generation_id}"), 404, "NOT_FOUND")
        assert pages(c, "/api/generations") == []
        for params in (
            {"limit": "0"},
            {"limit": "101"},
            {"limit": "x"},
            {"status": "done"},
            {"product": "gif"},
        ):
            assert_envelope(c.get("/api/generations", params=params), 400, "INVALID_PARAMETER")
        assert_envelope(
            c.get("/api/generations", params={"cursor": "not-a-cursor"}), 400, "INVALID_PARAMETER"
        )
        assert_envelope(c.get("/api/account/ledger", params={"cursor": "%%%"}), 400, "INVALID_PARAMETER")
    with server.client() as anonymous:
        assert_envelope(anonymous.get("/api/generations"), 401, "LOGIN_REQUIRED")
        assert_envelope(anonymous.get("/api/account/ledger"), 401, "LOGIN_REQUIRED")
        assert_envelope(anonymous.delete(f"/api/generations/{generation_id}"), 401, "LOGIN_REQUIRED")
    ended(owner, generation_id)


def test_delete_removes_the_files_keeps_the_record_and_the_credits(server: Server) -> None:
    account = server.new_account(10_000)
    with account.client() as c:
        running = submit_image(c, "a slow one [sandbox:slow=8]")
        assert_envelope(c.delete(f"/api/generations/{running}"), 409, "GENERATION_RUNNING")
    result = flows.image(account, "to be deleted")
    generation_id, url = result["generationId"], result["imageUrl"]
    assert flows.download(url).status_code == 200
    balance, sums = account.balance(), account.ledger_sums()
    with account.client() as c:
        r = c.delete(f"/api/generations/{generation_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["filesDeletedAt"] and body["status"] == "completed" and body["credits"] > 0
        assert_envelope(flows.download(url), 410, "GONE")
        again = c.delete(f"/api/generations/{generation_id}")  # already deleted: the same answer
        assert again.status_code == 200 and again.json()["filesDeletedAt"] == body["filesDeletedAt"]
        assert c.get(f"/api/generations/{generation_id}").json()["tasks"][0]["outputUrl"] == url
    assert flows.image_status(account, generation_id)["status"] == "completed"  # the record stays
    assert account.balance() == balance and account.ledger_sums() == sums  # and the credits
    account.assert_books_balance()
    ended(account, running)


def test_ledger_kinds_signs_and_balance_after(server: Server) -> None:
    account = server.new_account(5_000)
    done = flows.image(account, "kept")
    failed = flows.image(account, "refunded [sandbox:fail]")
    with server.client(ADMIN_TOKEN) as admin:
        r = admin.post(f"/admin/accounts/{account.id}/credits", json={"credits": 700})
        assert r.status_code in (200, 201), r.text
    with account.client() as c:
        entries = pages(c, "/api/account/ledger")
        assert entries == pages(c, "/api/account/ledger", limit=2)  # the same, a page at a time
        assert entries == pages(c, "/api/account/ledger", limit=1)
    kinds = [(e["kind"], e["generationId"]) for e in entries]
    assert kinds == [
        ("grant", None),
        ("refund", failed["generationId"]),
        ("debit", failed["generationId"]),
        ("debit", done["generationId"]),
        ("grant", None),
    ]
    assert entries[0]["amount"] == 700 and entries[-1]["amount"] == 5_000
    assert entries[1]["amount"] == -entries[2]["amount"] > 0 and entries[3]["amount"] < 0
    # balanceAfter: the newest is the balance; each is the one before it plus its own amount.
    assert entries[0]["balanceAfter"] == account.balance()
    for newer, older in itertools.pairwise(entries):
        assert newer["balanceAfter"] == older["balanceAfter"] + newer["amount"]
    assert entries[-1]["balanceAfter"] == 5_000
    assert sum(e["amount"] for e in entries) == account.balance()
    account.assert_books_balance()


def test_ledger_pages_stay_consistent_while_entries_are_added(server: Server) -> None:
    account = server.new_account(1_000)
    for i in range(3):
        flows.image(account, f"entry {i}")
    with account.client() as c:
        first = c.get("/api/account/ledger", params={"limit": 2}).json()
        submit_image(c, "debited between the pages")  # a newer entry: before the first page
        rest = pages(c, "/api/account/ledger", cursor=first["nextCursor"])
        now = pages(c, "/api/account/ledger")
    seen = first["data"] + rest
    assert [e["kind"] for e in seen] == ["debit", "debit", "debit", "grant"]
    for newer, older in itertools.pairwise(seen):  # the chain runs on across the pages
        assert newer["balanceAfter"] == older["balanceAfter"] + newer["amount"]
    assert now[1:] == seen and now[0]["kind"] == "debit"
    assert now[0]["balanceAfter"] == seen[0]["balanceAfter"] + now[0]["amount"] == account.balance()
    account.assert_books_balance()


def test_a_canceled_generation_reads_canceled_and_its_refund_is_in_the_ledger(server: Server) -> None:
    account = server.new_account(1_000)
    with account.client() as c:
        generation_id = submit_image(c, "never finished [sandbox:slow=60]")
        r = c.post(f"/api/generations/{generation_id}/cancel")
        assert r.status_code == 200, r.text
        detail = c.get(f"/api/generations/{generation_id}").json()
        assert detail["status"] == "canceled" and detail["tasks"][0]["status"] == "canceled"
        assert detail["creditsRefunded"] == detail["credits"] > 0
        canceled = pages(c, "/api/generations", status="canceled")
        assert [g["generationId"] for g in canceled] == [generation_id]
        assert pages(c, "/api/generations", status="failed") == []
        entries = pages(c, "/api/account/ledger")
    assert [(e["kind"], e["generationId"]) for e in entries] == [
        ("refund", generation_id),
        ("debit", generation_id),
        ("grant", None),
    ]
    assert [e["balanceAfter"] for e in entries] == [1_000, 1_000 - detail["credits"], 1_000]
    account.assert_books_balance()
