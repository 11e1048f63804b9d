"""The playground's "Recent generations" list: the account's own generations, newest first, kept up to
date after a generation ends and emptied when the key is forgotten (a real browser, a real server)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.conftest import Server
from tests.playground.test_playground import SLOW, image_form, open_playground, use_key
from tests.storage import flows


def test_recent_generations_follow_the_key_and_new_results(page: Page, server: Server) -> None:
    account = server.new_account(1_000)
    older = flows.image(account, "an older <b>lighthouse</b>")  # markup from a user is shown as text
    other = server.new_account(1_000)
    flows.image(other, "someone else's picture")
    open_playground(page, server)
    recent = page.get_by_role("list", name="Recent generations")
    expect(page.get_by_text("Enter a key to see this account's generations.")).to_be_visible()

    use_key(page, account.key)
    expect(recent.get_by_role("listitem")).to_have_count(1)
    first = recent.get_by_role("listitem").first
    expect(first).to_have_attribute("data-generation-id", older["generationId"])
    expect(first).to_contain_text("Image · completed")
    expect(first).to_contain_text("an older <b>lighthouse</b>")
    expect(recent).not_to_contain_text("someone else's picture")

    form = image_form(page)
    form.get_by_label("Prompt").fill("a newer one")
    form.get_by_role("button", name="Generate image").click()
    expect(recent.get_by_role("listitem")).to_have_count(2, timeout=SLOW)
    expect(recent.get_by_role("listitem").first).to_contain_text("a newer one")
    expect(recent.get_by_role("listitem").first).to_contain_text("completed", timeout=SLOW)

    page.get_by_role("button", name="Forget key").click()
    expect(recent.get_by_role("listitem")).to_have_count(0)
