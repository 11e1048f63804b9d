"""``nanogen history``: the account's generations from a shell (a real server, the CLI as a subprocess)."""

from __future__ import annotations

from tests.conftest import Server
from tests.storage import flows
from tests.test_cli_generate import as_json, ok, run


def test_history_table_json_filters_and_pages(server: Server) -> None:
    account = server.new_account(1_000)
    done = flows.image(account, "a [bold]lighthouse[/bold] at dusk")
    failed = flows.image(account, "a storm [sandbox:fail]")
    table = ok(server, account.key, "history")
    assert done["generationId"] in table.stdout and failed["generationId"] in table.stdout
    assert table.stdout.index(failed["generationId"]) < table.stdout.index(
        done["generationId"]
    )  # newest first
    assert "[bold]lighthouse[/bold]" in table.stdout  # the user's text as it is, not rich markup

    page = as_json(ok(server, account.key, "history", "--json", "--limit", "1"))
    assert [g["generationId"] for g in page["data"]] == [failed["generationId"]]
    rest = as_json(ok(server, account.key, "history", "--json", "--cursor", page["nextCursor"]))
    assert [g["generationId"] for g in rest["data"]] == [done["generationId"]] and rest["nextCursor"] is None
    only_failed = as_json(
        ok(server, account.key, "history", "--json", "--status", "failed", "--product", "image")
    )
    assert [(g["generationId"], g["status"]) for g in only_failed["data"]] == [
        (failed["generationId"], "failed")
    ]

    refused = run(server, account.key, "history", "--status", "done")
    assert refused.returncode == 2 and "INVALID_PARAMETER" in refused.stderr
    assert run(server, "ng_not-a-key", "history").returncode == 3
