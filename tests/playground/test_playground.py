"""The playground in a real browser against a real server: what a person does, and what they see."""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from nanogen.products import (
    IMAGE_CREDITS,
    SHOT_CREDITS,
    ImageAspectRatio,
    ImageQuality,
    Resolution,
    image_size,
)
from tests.conftest import Account, ImageHost, Server

SLOW = 90_000  # ms: a loaded machine may render slowly; the page polls at the pages' 3 s / 5 s


def open_playground(page: Page, server: Server) -> None:
    page.goto(server.base_url + "/")  # redirects to /playground/
    expect(page).to_have_url(server.base_url + "/playground/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def use_key(page: Page, key: str) -> None:
    field = page.get_by_label("API key")
    field.fill(key)
    field.press("Enter")  # the keyboard submits the key form


def stored_key(page: Page) -> Any:
    return page.evaluate("localStorage.getItem('nanogen.apiKey')")


def image_form(page: Page) -> Locator:
    return page.get_by_role("region", name="Image")


def video_form(page: Page) -> Locator:
    return page.get_by_role("region", name="Video")


def results(page: Page) -> Locator:
    return page.get_by_role("list", name="Results")


def wait_for_image(page: Page) -> int:
    """The first result image has loaded and decoded; its natural width."""
    image = results(page).locator("img").first
    expect(image).to_be_visible(timeout=SLOW)
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=SLOW
    )
    return int(image.evaluate("img => img.naturalWidth"))


def test_enter_a_key_generate_an_image_and_see_it(page: Page, server: Server) -> None:
    account = server.new_account(100)
    open_playground(page, server)
    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("100 credits")
    assert stored_key(page) == account.key

    form = image_form(page)
    form.get_by_label("Prompt").fill("A lighthouse on a cliff at dusk")
    form.get_by_label("Aspect ratio").select_option("4:3")
    form.get_by_label("Quality").select_option("2K")
    form.get_by_label("Ground with Google Search").check()
    price = IMAGE_CREDITS[ImageQuality.Q2K]
    expect(page.locator("#image-cost")).to_have_text(f"This image costs {price} credits.")
    with page.expect_request("**/api/nano-banana-2/generate") as sent:
        form.get_by_role("button", name="Generate image").click()
    assert sent.value.post_data_json == {
        "prompt": "A lighthouse on a cliff at dusk",
        "mode": "generate",
        "aspectRatio": "4:3",
        "imageQuality": "2K",
        "googleSearch": True,
    }

    width, _ = image_size(ImageAspectRatio.CLASSIC_LANDSCAPE, ImageQuality.Q2K)
    assert wait_for_image(page) == width
    card = results(page).get_by_role("listitem").first
    expect(card).to_contain_text(f"Cost: {price} credits")
    expect(card).to_contain_text("Done")
    expect(page.get_by_role("status")).to_have_text("Image ready.")
    expect(page.locator("#account")).to_contain_text(f"{100 - price} credits")
    assert account.balance() == 100 - price

    # The viewer: opens from the thumbnail, closes with Escape, and gives focus back.
    thumbnail = card.get_by_role("button", name="View image: A lighthouse on a cliff at dusk")
    thumbnail.click()
    viewer = page.get_by_role("dialog")
    expect(viewer).to_be_visible()
    expect(viewer.get_by_role("img")).to_have_attribute("alt", "A lighthouse on a cliff at dusk")
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(thumbnail).to_be_focused()

    # A reload keeps the key and the results (browser storage only), and "Forget key" removes the key.
    page.reload()
    expect(page.locator("#account")).to_contain_text(f"{100 - price} credits")
    assert wait_for_image(page) == width
    page.get_by_role("button", name="Forget key").click()
    assert stored_key(page) is None
    expect(page.get_by_label("API key")).to_have_value("")


def test_build_a_two_shot_video_and_play_it(page: Page, server: Server, image_host: ImageHost) -> None:
    account = server.new_account(100)
    open_playground(page, server)
    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("100 credits")

    form = video_form(page)
    form.get_by_role("group", name="Shot 1").get_by_label("Prompt").fill("Wide shot of a harbour at dawn")
    form.get_by_role("button", name="Add shot").click()
    second = form.get_by_role("group", name="Shot 2")
    expect(second.get_by_label("Prompt")).to_be_focused()
    second.get_by_label("Prompt").fill("Gulls over the water, in the style of the reference")
    second.get_by_label("Type").select_option("REFERENCE_2_VIDEO")
    second.get_by_label("Or an image URL").fill(image_host.url("red.png"))
    second.get_by_role("button", name="Add URL").click()
    expect(second.get_by_role("listitem")).to_have_count(1)
    # 1080p and 4k are single-shot only: not offered for two shots.
    expect(form.get_by_label("Resolution").locator("option[value='1080p']")).to_be_disabled()
    price = 2 * SHOT_CREDITS[Resolution.P720]
    expect(page.locator("#video-cost")).to_contain_text(f"= {price} credits (16 s of video)")

    with page.expect_request("**/api/veo-3/generate") as sent:
        form.get_by_role("button", name="Generate video").click()
    body = sent.value.post_data_json
    assert body["resolution"] == "720p"
    assert [(s["id"], s["generationType"], s.get("imageUrls")) for s in body["shots"]] == [
        ("shot-1", "TEXT_2_VIDEO", None),
        ("shot-2", "REFERENCE_2_VIDEO", [image_host.url("red.png")]),
    ]

    card = results(page).get_by_role("listitem").first
    expect(card).to_contain_text(f"Cost: {price} credits")
    player = card.locator("video")
    # The joined video of the request (gen_….mp4), not one shot's.
    expect(player).to_have_attribute("src", re.compile(r"/files/.+/gen_\w+\.mp4$"), timeout=SLOW)
    expect(card).to_contain_text("Shot 2: completed")
    player.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function(
        "v => v.readyState >= 2 && v.currentTime > 0.5", arg=player.element_handle(), timeout=SLOW
    )
    assert abs(player.evaluate("v => v.duration") - 16) < 0.5  # both 8 s shots, joined
    assert player.evaluate("v => v.videoWidth") == 1280
    expect(page.get_by_role("status")).to_have_text("Video ready.")
    assert account.balance() == 100 - price


def test_upload_a_local_file_and_edit_it(page: Page, server: Server, tmp_path: Any) -> None:
    account = server.new_account(100)
    colour = (12, 201, 118)
    photo = tmp_path / "my photo.png"
    Image.new("RGB", (320, 240), colour).save(photo)
    open_playground(page, server)
    use_key(page, account.key)

    form = image_form(page)
    form.get_by_label("Prompt").fill("Put this colour on a poster")
    form.get_by_label("Mode").select_option("edit")
    form.get_by_label("Add image files").set_input_files(photo)
    expect(form.get_by_role("button", name="Remove my photo.png from the images to edit")).to_be_visible()
    with (
        page.expect_response("**/api/uploads") as uploaded,
        page.expect_request("**/api/nano-banana-2/generate") as sent,
    ):
        form.get_by_role("button", name="Generate image").click()
    assert uploaded.value.status == 201
    assert uploaded.value.request.headers["content-type"] == "image/png"
    assert sent.value.post_data_json["mode"] == "edit"
    (upload_url,) = sent.value.post_data_json["inputImageUrls"]
    assert "/files/up/" in upload_url
    assert httpx.get(upload_url).content == photo.read_bytes()  # the file itself, not a multipart body

    wait_for_image(page)
    # The sandbox composes the input into its output: the uploaded colour is in the result.
    url = results(page).locator("img").first.get_attribute("src")
    assert url
    result = Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB")
    assert colour in {c for _, c in result.getcolors(maxcolors=1 << 24) or []}
    assert account.balance() == 100 - IMAGE_CREDITS[ImageQuality.Q1K]


def test_a_bad_key_gets_a_clear_message(page: Page, server: Server) -> None:
    open_playground(page, server)
    use_key(page, "ng_" + "x" * 43)
    expect(page.locator("#key-error")).to_contain_text("This API key was not accepted (401 LOGIN_REQUIRED)")
    expect(page.locator("#account")).to_have_text("Key not accepted.")
    assert stored_key(page) is None

    form = image_form(page)
    form.get_by_label("Prompt").fill("anything")
    form.get_by_role("button", name="Generate image").click()
    expect(form.get_by_role("alert")).to_contain_text("not accepted (401 LOGIN_REQUIRED)")
    expect(results(page).get_by_role("listitem")).to_have_count(0)


def test_insufficient_credits_gets_a_clear_message(page: Page, server: Server) -> None:
    account: Account = server.new_account(3)
    open_playground(page, server)
    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("3 credits")

    form = image_form(page)
    form.get_by_label("Prompt").fill("An expensive idea")
    form.get_by_role("button", name="Generate image").click()
    need = IMAGE_CREDITS[ImageQuality.Q1K]
    expect(form.get_by_role("alert")).to_contain_text(
        f"Not enough credits (402 INSUFFICIENT_CREDITS): this request needs {need} credits "
        "and the account has 3. Nothing was charged."
    )

    video = video_form(page)
    video.get_by_label("Prompt").fill("A long film")
    video.get_by_role("button", name="Generate video").click()
    expect(video.get_by_role("alert")).to_contain_text(
        f"needs {SHOT_CREDITS[Resolution.P720]} credits and the account has 3"
    )
    expect(results(page).get_by_role("listitem")).to_have_count(0)
    assert account.balance() == 3


def test_a_file_that_is_not_an_image_is_refused_clearly(page: Page, server: Server, tmp_path: Any) -> None:
    account = server.new_account(20)
    fake = tmp_path / "notes.png"
    fake.write_text("meeting notes, not a picture")
    open_playground(page, server)
    use_key(page, account.key)

    form = image_form(page)
    form.get_by_label("Prompt").fill("Edit my notes")
    form.get_by_label("Mode").select_option("edit")
    form.get_by_label("Add image files").set_input_files(fake)
    form.get_by_role("button", name="Generate image").click()
    expect(form.get_by_role("alert")).to_contain_text("Uploading notes.png failed: ")
    expect(form.get_by_role("alert")).to_contain_text("[400 INVALID_IMAGE]")
    expect(results(page).get_by_role("listitem")).to_have_count(0)
    assert account.balance() == 20


def test_a_failed_generation_shows_its_refund(page: Page, server: Server) -> None:
    account = server.new_account(20)
    open_playground(page, server)
    use_key(page, account.key)
    form = image_form(page)
    form.get_by_label("Prompt").fill("[sandbox:fail] a picture that will not come")
    form.get_by_role("button", name="Generate image").click()

    card = results(page).get_by_role("listitem").first
    expect(card).to_contain_text("Failed", timeout=SLOW)
    price = IMAGE_CREDITS[ImageQuality.Q1K]
    expect(card).to_contain_text(f"Cost: {price} credits, refunded")
    expect(page.get_by_role("status")).to_contain_text("Image failed: ")
    expect(page.locator("#account")).to_contain_text("20 credits")
    assert account.balance() == 20


def test_an_error_shown_before_the_key_is_cleared_when_a_key_is_accepted(page: Page, server: Server) -> None:
    account = server.new_account(10)
    open_playground(page, server)
    image, video = image_form(page), video_form(page)
    image.get_by_label("Prompt").fill("A kite")
    image.get_by_role("button", name="Generate image").click()
    video.get_by_role("button", name="Generate video").click()
    for form in (image, video):
        expect(form.get_by_role("alert")).to_contain_text("Enter your API key at the top of the page first.")

    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("10 credits")
    for form in (image, video):
        expect(form.get_by_role("alert")).to_be_hidden()
        expect(form.locator(".alert")).to_have_text("")
    expect(page.locator("#key-error")).to_be_hidden()


PHONE = {"width": 390, "height": 844}


def test_the_page_fits_a_phone_screen(page: Page, server: Server) -> None:
    """Nothing wider than a 390 px screen: no sideways scrolling, every control inside the page."""
    account = server.new_account(100)
    page.set_viewport_size(PHONE)
    open_playground(page, server)
    use_key(page, account.key)
    expect(page.locator("#account")).to_contain_text("100 credits")
    image_form(page).get_by_label("Mode").select_option("edit")  # shows the picker
    video = video_form(page)
    video.get_by_role("button", name="Add shot").click()
    video.get_by_role("group", name="Shot 2").get_by_label("Type").select_option("REFERENCE_2_VIDEO")

    assert page.evaluate("window.innerWidth") == PHONE["width"]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    too_wide = page.evaluate(
        """limit => [...document.querySelectorAll('input, select, textarea, button')]
             .filter(e => e.offsetParent !== null && e.getBoundingClientRect().right > limit)
             .map(e => `${e.tagName}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`)""",
        PHONE["width"],
    )
    assert too_wide == [], f"controls past the right edge: {too_wide}"
