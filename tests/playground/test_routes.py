"""How nanogen serves the playground: where, with which headers, and the catalogue it builds from."""

from __future__ import annotations

import httpx

from nanogen.products import (
    IMAGE_CREDITS,
    MAX_INPUT_IMAGES,
    MAX_SHOTS,
    SHOT_CREDITS,
    SHOT_IMAGE_COUNT,
    SINGLE_SHOT_RESOLUTIONS,
    ImageAspectRatio,
    VideoAspectRatio,
)
from tests.conftest import Server, assert_envelope

FILES = {
    "": "text/html",
    "index.html": "text/html",
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "gallery.js": "text/javascript",
    "pickers.js": "text/javascript",
    "shots.js": "text/javascript",
    "style.css": "text/css",
}


def test_root_and_bare_path_redirect_to_the_page(server: Server) -> None:
    for path in ("/", "/playground"):
        r = httpx.get(server.base_url + path)
        assert r.status_code == 307
        assert r.headers["location"] == "playground/"  # relative: right behind a path prefix too
    page = httpx.get(server.base_url + "/", follow_redirects=True)
    assert str(page.url) == server.base_url + "/playground/"
    assert '<script type="module" src="app.js">' in page.text


def test_files_are_served_with_their_types_and_a_strict_policy(server: Server) -> None:
    for name, content_type in FILES.items():
        r = httpx.get(f"{server.base_url}/playground/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(content_type), (name, r.headers["content-type"])
        policy = r.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy, name
        assert "frame-ancestors 'none'" in policy
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["referrer-policy"] == "no-referrer"
        again = httpx.get(
            f"{server.base_url}/playground/{name}", headers={"If-None-Match": r.headers["etag"]}
        )
        assert again.status_code == 304, name


def test_unknown_files_get_the_envelope(server: Server) -> None:
    for path in ("/playground/missing.js", "/playground/../pyproject.toml", "/playground/%2e%2e/README.md"):
        assert_envelope(httpx.get(server.base_url + path), 404, "NOT_FOUND")
    assert_envelope(httpx.post(server.base_url + "/playground/app.js"), 405, "METHOD_NOT_ALLOWED")


def test_the_catalogue_is_the_servers(server: Server) -> None:
    catalogue = httpx.get(server.base_url + "/playground/catalogue.json").json()
    image, video = catalogue["image"], catalogue["video"]
    assert image["aspectRatios"] == [r.value for r in ImageAspectRatio]
    assert {q["value"]: q["credits"] for q in image["qualities"]} == {
        q.value: c for q, c in IMAGE_CREDITS.items()
    }
    assert all(q["available"] for q in image["qualities"])  # the sandbox makes every quality
    assert image["maxInputImages"] == MAX_INPUT_IMAGES
    assert (image["pollSeconds"], video["pollSeconds"]) == (3, 5)  # the pages' advice
    assert video["aspectRatios"] == [r.value for r in VideoAspectRatio]
    assert {r["value"]: (r["credits"], r["singleShotOnly"]) for r in video["resolutions"]} == {
        r.value: (c, r in SINGLE_SHOT_RESOLUTIONS) for r, c in SHOT_CREDITS.items()
    }
    assert {t["value"]: (t["minImages"], t["maxImages"]) for t in video["generationTypes"]} == {
        t.value: bounds for t, bounds in SHOT_IMAGE_COUNT.items()
    }
    assert video["maxShots"] == MAX_SHOTS


def test_the_api_docs_page_loads_its_assets_from_this_server(server: Server) -> None:
    page = httpx.get(server.base_url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "https://" not in page.text and "http://" not in page.text  # no CDN, no outside favicon
    for asset, content_type in (
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon.png", "image/png"),
    ):
        assert f'"/docs/assets/{asset}"' in page.text
        r = httpx.get(f"{server.base_url}/docs/assets/{asset}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(content_type), asset
        assert len(r.content) > 500, asset
    assert httpx.get(server.base_url + "/docs/oauth2-redirect").status_code == 200
    assert_envelope(httpx.get(server.base_url + "/docs/assets/missing.js"), 404, "NOT_FOUND")
    assert "/docs" not in httpx.get(server.base_url + "/openapi.json").json()["paths"]
