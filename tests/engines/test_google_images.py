"""Nano Banana 2 through the Google engine (API key mode), end to end: a real nanogen server calls the
fake Google over HTTP with the google-genai SDK; what Google received is asserted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import ADMIN_TOKEN, Account, ImageHost, Server, image_bytes
from tests.engines.google_support import (
    admin_task,
    download,
    fake_google,
    generate_image,
    google_server,
    open_png,
    wait_image,
)
from tests.fakes.google_server import API_KEY, FakeGoogle, b64decode

MODEL_PATH = "/v1beta/models/gemini-3.1-flash-image-preview:generateContent"


@pytest.fixture(scope="module", params=["false", "true"], ids=["loop", "http-process"])
def http_process(request: pytest.FixtureRequest) -> str:
    """Each test against both ways of calling Google: the loop in the worker, which reads the
    answers there, and the HTTP process, which reads them itself (the same outcomes)."""
    value: str = request.param
    return value


@pytest.fixture(scope="module")
def fake(http_process: str) -> Iterator[FakeGoogle]:
    """A fake Google for each way (the tests count the calls it received)."""
    with fake_google() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(fake: FakeGoogle, http_process: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("google-images")
    with google_server(home, fake, NANOGEN_GOOGLE_HTTP_PROCESS=http_process) as server:
        yield server


@pytest.fixture
def account(server: Server) -> Account:
    return server.new_account(1000)


def test_text_to_image_maps_options_and_stores_the_image(
    fake: FakeGoogle, server: Server, account: Account
) -> None:
    prompt = "A futuristic cityscape at sunset with flying cars [google:slow]"
    accepted = generate_image(
        account, {"prompt": prompt, "mode": "generate", "aspectRatio": "16:9", "imageQuality": "2K"}
    )
    assert account.balance() == 1000 - 8
    final, seen = wait_image(account, accepted["generationId"])

    assert final["status"] == "completed" and final["progress"] == 100
    assert ("generating", 10) in seen, f"the request to Google in flight shows as generating 10%: {seen}"
    image = open_png(download(account, final["imageUrl"], server))
    assert image.size == (2752, 1536), "the 2K 16:9 size, not the 64x64 'thought' draft before it"

    [sent] = fake.requests_for(prompt, ":generateContent")
    assert sent.path == MODEL_PATH
    assert sent.headers["x-goog-api-key"] == API_KEY and "key" not in sent.query, (
        "key in a header, never a URL"
    )
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": prompt}]}]
    assert sent.body["generationConfig"] == {
        "responseModalities": ["IMAGE"],
        "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
    }
    assert "tools" not in sent.body

    task = admin_task(server, accepted["taskId"])
    assert task["engine"] == "google" and task["attempts"] == 1
    assert task["providerCostUsd"] == "0.101000", "Nano Banana 2's 2K list price"
    assert task["providerOperation"] is None, "an image is one call: no operation"
    with server.client(ADMIN_TOKEN) as admin:
        shown = admin.get(f"/admin/accounts/{account.id}").json()
    assert (shown["debited"], shown["providerCostUsd"]) == (8, "0.101000"), (
        "credits charged beside money spent"
    )


def test_google_search_turns_on_grounding(fake: FakeGoogle, server: Server, account: Account) -> None:
    prompt = "The latest Tesla Cybertruck in a desert landscape"
    accepted = generate_image(account, {"prompt": prompt, "aspectRatio": "9:16", "googleSearch": True})
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "completed"
    assert open_png(download(account, final["imageUrl"], server)).size == (768, 1376)
    [sent] = fake.requests_for(prompt, ":generateContent")
    assert sent.body["tools"] == [{"googleSearch": {}}]
    assert sent.body["generationConfig"]["imageConfig"] == {"aspectRatio": "9:16", "imageSize": "1K"}
    assert admin_task(server, accepted["taskId"])["providerCostUsd"] == "0.067000"


def test_edit_sends_every_input_image_as_a_part(
    fake: FakeGoogle, server: Server, account: Account, image_host: ImageHost
) -> None:
    image_host.files["/frame.gif"] = (image_bytes((250, 250, 250), "GIF"), "image/gif")
    names = ["red.png", "green.jpg", "demo.webp", "frame.gif"]
    prompt = "Transform these into one watercolor collage"
    accepted = generate_image(
        account,
        {
            "prompt": prompt,
            "mode": "edit",
            "aspectRatio": "4:3",
            "imageQuality": "1K",
            "inputImageUrls": [image_host.url(n) for n in names],
        },
    )
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "completed", final

    [sent] = fake.requests_for(prompt, ":generateContent")
    parts = sent.body["contents"][0]["parts"]
    assert parts[0] == {"text": prompt}, "the prompt first, then the images in request order"
    inline = [p["inlineData"] for p in parts[1:]]
    types = [p.get("mimeType") or p.get("mime_type") for p in inline]
    assert types == ["image/png", "image/jpeg", "image/webp", "image/png"], "a GIF goes as PNG"
    for name, part in zip(names[:3], inline, strict=False):
        assert b64decode(part["data"]) == image_host.files[f"/{name}"][0], f"{name} sent byte for byte"

    # The fake pastes what it received along the top of its answer: red, then green.
    image = open_png(download(account, final["imageUrl"], server)).convert("RGB")
    assert image.size == (1200, 896)
    cell = image.width // 8
    red, green = image.getpixel((cell // 2, cell // 2)), image.getpixel((cell + cell // 2, cell // 2))
    assert red[0] > 200 and red[1] < 60, red
    assert green[1] > 170 and green[0] < 60, green


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("[google:block-prompt]", "Google blocked the prompt (PROHIBITED_CONTENT)"),
        ("[google:block-image]", "Google blocked or did not make the image (IMAGE_SAFETY)"),
    ],
)
def test_a_safety_block_fails_with_googles_reason_and_refunds(
    fake: FakeGoogle, server: Server, account: Account, marker: str, expected: str
) -> None:
    prompt = f"Something Google refuses {marker}"
    accepted = generate_image(account, {"prompt": prompt, "imageQuality": "4K"})
    # No balance check here: the fake refuses at once, and the refund may land before any read.
    # The ledger's sums below show the debit and the one refund.
    final, _ = wait_image(account, accepted["generationId"])
    assert final["success"] is False and final["status"] == "failed" and final["progress"] == 0
    assert expected in final["error"], final
    assert account.balance() == 1000
    assert account.ledger_sums() == {"grant": 1000, "debit": 16, "refund": 16}
    assert len(fake.requests_for(prompt, ":generateContent")) == 1, "a refusal is not asked again"
    assert admin_task(server, accepted["taskId"])["providerCostUsd"] is None


@pytest.mark.parametrize("marker", ["[google:429x2]", "[google:500x3]"])
def test_429_and_500_are_retried_until_google_answers(
    fake: FakeGoogle, account: Account, marker: str
) -> None:
    prompt = f"A lighthouse in a storm {marker}"
    accepted = generate_image(account, {"prompt": prompt})
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "completed", final
    calls = 3 if "429" in marker else 4
    assert len(fake.requests_for(prompt, ":generateContent")) == calls
    assert account.balance() == 1000 - 4


def test_a_malformed_answer_fails_once_and_refunds(fake: FakeGoogle, account: Account) -> None:
    prompt = "A garbled answer [google:malformed]"
    accepted = generate_image(account, {"prompt": prompt})
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "failed"
    assert final["error"] == "Google returned a malformed response (not JSON)"
    assert len(fake.requests_for(prompt, ":generateContent")) == 1, "a paid call is not repeated"
    assert account.balance() == 1000
    account.assert_books_balance()


def test_a_png_cut_short_fails_once_and_refunds(fake: FakeGoogle, account: Account) -> None:
    """nanogen checks Google's PNG to its end (every chunk's checksum) before storing it."""
    prompt = "A kite over the dunes [google:corrupt]"
    accepted = generate_image(account, {"prompt": prompt})
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "failed"
    assert final["error"].startswith("Google returned a malformed response (the image does not decode")
    assert len(fake.requests_for(prompt, ":generateContent")) == 1, "a paid call is not repeated"
    assert account.balance() == 1000
    account.assert_books_balance()


@pytest.mark.parametrize("marker", ["", " [google:photo]"], ids=["small", "photo-sized"])
def test_the_output_is_what_google_returned(
    fake: FakeGoogle, server: Server, account: Account, marker: str
) -> None:
    """Byte for byte: nanogen stores Google's PNG (the final part, not the thought parts before it),
    also from an answer as large as a photo's."""
    prompt = "A bowl of ramen, top view" + marker
    accepted = generate_image(account, {"prompt": prompt, "aspectRatio": "3:4"})
    final, _ = wait_image(account, accepted["generationId"])
    assert final["status"] == "completed"
    stored = download(account, final["imageUrl"], server)
    assert stored == fake.images[prompt]
    assert open_png(stored).size == (896, 1200)
    if marker:
        assert len(stored) > 500_000, "as large as a photo's PNG"
    left = [p.name for p in (server.home / "scratch").glob("*") if p.is_file()]
    assert left == [], "no spooled answer or image is left behind"
