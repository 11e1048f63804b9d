"""The API docs page (/docs, Swagger UI) in a real browser with no internet: every request that would
leave the machine is aborted, and the page must still render the API from the server's own files."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, Route, expect

from tests.conftest import Server

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def test_the_docs_page_works_without_internet(page: Page, server: Server) -> None:
    requested: list[str] = []
    blocked: list[str] = []

    def offline(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname not in LOOPBACK:
            blocked.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.context.route("**/*", offline)
    page.goto(server.base_url + "/docs")

    # Swagger UI rendered the server's OpenAPI document: its title and the API's operations.
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("nanogen", timeout=30_000)
    for path in ("/api/nano-banana-2/generate", "/api/veo-3/check-status"):
        expect(page.locator(".opblock-summary-path", has_text=path).first).to_be_visible()
    # An operation opens and shows its request body schema.
    page.locator(".opblock-summary-path", has_text="/api/nano-banana-2/generate").first.click()
    expect(page.locator(".opblock-body").first).to_contain_text("prompt")

    assert blocked == [], f"the docs page reached outside the machine: {blocked}"
    served = {urlsplit(url).path for url in requested}
    assert {"/docs", "/openapi.json"} <= served and any(p.startswith("/docs/assets/") for p in served)
