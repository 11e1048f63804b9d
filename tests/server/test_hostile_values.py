"""Values no client should send, on both databases: control characters in ids, NUL in prompts,
strings where JSON booleans belong, odd spellings of enums. Each gets the contract's 400 code for its
field (or 401 first, without a valid key), never a 500 and never a debit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nanogen.products import MAX_PROMPT_CHARS
from tests.conftest import ADMIN_TOKEN, Account, Server, assert_envelope

IMAGE_GENERATE = "/api/nano-banana-2/generate"
IMAGE_STATUS = "/api/nano-banana-2/check-status"
VIDEO_GENERATE = "/api/veo-3/generate"
VIDEO_STATUS = "/api/veo-3/check-status"
CONTROL = ["\u0000", "\u0001", "\n", "\u007f"]


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(100)


def _shot(shot_id: str = "s1", prompt: str = "a calm sea") -> dict[str, Any]:
    return {"id": shot_id, "prompt": prompt, "generationType": "TEXT_2_VIDEO", "aspectRatio": "16:9"}


def _post(server: Server, key: str | None, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.client(key) as c:
        return c.post(path, json=body)


@pytest.mark.parametrize("char", CONTROL, ids=["nul", "soh", "newline", "del"])
def test_control_characters_in_ids_are_400_with_a_key_and_401_without(
    server: Server, account: Account, char: str
) -> None:
    cases = [
        (VIDEO_GENERATE, {"shots": [_shot(f"s{char}")]}, "INVALID_PARAMETER"),
        (IMAGE_STATUS, {"generationId": f"gen_{char}"}, "INVALID_PARAMETER"),
        (VIDEO_STATUS, {"taskIds": [{"shotId": "s1", "taskId": char}]}, "INVALID_PARAMETER"),
        (VIDEO_STATUS, {"taskIds": [{"shotId": f"s{char}", "taskId": "task_x"}]}, "INVALID_PARAMETER"),
        (VIDEO_STATUS, {"generationId": f"gen_{char}"}, "INVALID_PARAMETER"),
        (IMAGE_GENERATE, {"prompt": "x", "mode": "edit", "inputImageUrls": [f"http://a{char}b/"]}, None),
    ]
    logged = server.log_size()
    for path, body, code in cases:
        assert_envelope(_post(server, "ng_notarealkey", path, body), 401, "LOGIN_REQUIRED")
        r = _post(server, account.key, path, body)
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["errorCode"] == (code or "INVALID_IMAGE_URL"), r.text
    assert account.balance() == 100
    assert "Traceback" not in server.log_since(logged)


def test_nul_in_a_prompt_is_the_prompts_error(server: Server, account: Account) -> None:
    r = _post(server, account.key, IMAGE_GENERATE, {"prompt": "a\u0000b"})
    assert_envelope(r, 400, "INVALID_PROMPT")
    r = _post(server, account.key, VIDEO_GENERATE, {"shots": [_shot(prompt="a\u0000b")]})
    assert_envelope(r, 400, "PROMPT_REQUIRED")
    assert "shots[0]" in r.json()["error"]
    # Tabs and newlines are prompt text.
    r = _post(server, account.key, IMAGE_GENERATE, {"prompt": "line one\n\tline two", "imageQuality": "1K"})
    assert r.status_code == 200, r.text
    assert account.balance() == 100 - 4


def test_nul_in_admin_path_parameters_is_never_500(server: Server) -> None:
    logged = server.log_size()
    with server.client(ADMIN_TOKEN) as admin:
        for path in ("/admin/accounts/a%00b", "/admin/tasks/task_%00", "/admin/accounts/%00/credits"):
            method = "POST" if path.endswith("credits") else "GET"
            r = admin.request(method, path, json={"credits": 1} if method == "POST" else None)
            assert r.status_code in (400, 404), (path, r.text)
            assert set(r.json()) >= {"error", "errorCode"}
        r = admin.post("/admin/accounts", json={"name": "nul\u0000name"})
        assert r.status_code == 400, r.text
    assert "Traceback" not in server.log_since(logged)


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "false", None])
def test_google_search_must_be_a_json_boolean(server: Server, account: Account, value: object) -> None:
    r = _post(server, account.key, IMAGE_GENERATE, {"prompt": "x", "googleSearch": value})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert r.json()["field"] == "googleSearch"
    assert account.balance() == 100


@pytest.mark.parametrize("resolution", ["1080P", "720P", "4 k", "720"])
def test_resolutions_are_case_sensitive_except_the_credits_tables_4K(
    server: Server, account: Account, resolution: str
) -> None:
    r = _post(server, account.key, VIDEO_GENERATE, {"shots": [_shot()], "resolution": resolution})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    r = _post(server, account.key, VIDEO_STATUS, {"taskIds": [{"taskId": "t"}], "resolution": resolution})
    assert_envelope(r, 400, "INVALID_PARAMETER")
    assert account.balance() == 100


def test_4K_is_accepted_as_the_credits_table_spells_it(server: Server) -> None:
    rich = server.new_account(30)
    r = _post(server, rich.key, VIDEO_GENERATE, {"shots": [_shot()], "resolution": "4K"})
    assert r.status_code == 200, r.text
    assert r.json()["creditsUsed"] == 30


def test_the_prompt_limit_counts_the_trimmed_prompt(server: Server, account: Account) -> None:
    padded = "  " + "p" * MAX_PROMPT_CHARS + " \n "
    r = _post(server, account.key, IMAGE_GENERATE, {"prompt": padded, "imageQuality": "1K"})
    assert r.status_code == 200, r.text
    r = _post(
        server, account.key, IMAGE_GENERATE, {"prompt": "p" * (MAX_PROMPT_CHARS + 1), "imageQuality": "1K"}
    )
    assert_envelope(r, 400, "INVALID_PROMPT")
    r = _post(server, account.key, VIDEO_GENERATE, {"shots": [_shot(prompt=padded)]})
    assert r.status_code == 200, r.text


def test_null_task_ids_read_as_absent_beside_a_generation_id(server: Server, account: Account) -> None:
    accepted = _post(server, account.key, VIDEO_GENERATE, {"shots": [_shot()]}).json()
    r = _post(server, account.key, VIDEO_STATUS, {"generationId": accepted["generationId"], "taskIds": None})
    assert r.status_code == 200, r.text
    assert [s["taskId"] for s in r.json()["shots"]] == [accepted["shots"][0]["taskId"]]
    assert_envelope(_post(server, account.key, VIDEO_STATUS, {"taskIds": None}), 400, "TASK_IDS_REQUIRED")
