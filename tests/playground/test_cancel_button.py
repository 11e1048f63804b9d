"""The playground's Cancel button: a running generation stops and its credits come back."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from nanogen.products import IMAGE_CREDITS, ImageQuality
from tests.conftest import Server
from tests.playground.test_playground import image_form, open_playground, results, use_key


def test_cancel_a_running_image(page: Page, server: Server) -> None:
    account = server.new_account(100)
    open_playground(page, server)
    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("100 credits")

    form = image_form(page)
    form.get_by_label("Prompt").fill("A very slow picture [sandbox:slow=600]")
    form.get_by_label("Quality").select_option("1K")
    form.get_by_role("button", name="Generate image").click()
    price = IMAGE_CREDITS[ImageQuality.Q1K]
    expect(page.locator("#account")).to_contain_text(f"{100 - price} credits")

    card = results(page).get_by_role("listitem").first
    cancel = card.get_by_role("button", name="Cancel Image")
    expect(cancel).to_be_visible()
    with page.expect_response("**/api/generations/*/cancel") as answered:
        cancel.click()
    assert answered.value.request.method == "POST" and answered.value.status == 200
    assert answered.value.json()["creditsRefunded"] == price
    expect(page.locator("#account")).to_contain_text("100 credits")
    # The next poll (the page's 3 s) sees the task failed with "Canceled"; the button is gone.
    expect(card).to_contain_text("Failed", timeout=30_000)
    expect(card).to_contain_text("Canceled")
    expect(cancel).to_be_hidden()
    assert account.balance() == 100
    account.assert_books_balance()
