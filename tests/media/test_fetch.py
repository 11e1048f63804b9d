"""The SSRF-safe image fetcher, against a real HTTP server on 127.0.0.1.

Host names are answered by :class:`FakeDNS`; the only address any test connects to is 127.0.0.1.
Two guards make sure of it: :class:`GuardTransport` refuses (and records) any request aimed at a
non-loopback address before it reaches the network, and ``no_outside_sockets`` fails the test if a
socket anywhere tries to connect to, or look up, something that is not loopback.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from tests.local_http import LocalHTTPServer

from nanogen.engines.base import InputImage
from nanogen.errors import FetchError
from nanogen.media.fetch import FetchPolicy, ImageFetcher
from nanogen.settings import Settings

T = TypeVar("T")
MAX_BYTES = 64 * 1024
PUBLIC = "93.184.216.34"  # never connected to: GuardTransport stops it


def _image(fmt: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {
    "/img.png": ("image/png", _image("PNG")),
    "/img.jpg": ("image/jpeg", _image("JPEG")),
    "/img.webp": ("image/webp", _image("WEBP")),
    "/img.gif": ("image/gif", _image("GIF")),
    "/wide.png": ("image/png", _image("PNG", (100, 20))),
}


# -- the server ---------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, headers={"Location": location})

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.server.hits.append((path, self.headers.get("Host", "")))
        self.close_connection = True
        if path in IMAGES:
            mime, body = IMAGES[path]
            self._send(200, body, {"Content-Type": mime})
        elif path == "/text":
            self._send(200, b"hello, not an image", {"Content-Type": "image/png"})
        elif path == "/huge-declared":
            self._send(200, headers={"Content-Length": str(10**9)})
        elif path == "/huge":
            self._send(200, b"\0" * (MAX_BYTES + 1))
        elif path == "/no-length":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * (4 * MAX_BYTES))
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(8):
                chunk = b"\0" * (MAX_BYTES // 2)
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/short-length":
            self._send(200, IMAGES["/img.png"][1], {"Content-Length": "10"})
        elif path == "/gzip":
            self._send(200, gzip.compress(IMAGES["/img.png"][1]), {"Content-Encoding": "gzip"})
        elif path == "/slow":
            self.server.release.wait(10)
            self._send(200, IMAGES["/img.png"][1])
        elif path == "/late.png":
            self.server.release.wait(0.2)
            self._send(200, IMAGES["/img.png"][1])
        elif path == "/404":
            self._send(404, b"nope")
        elif path == "/redirect":
            self._redirect(query["to"][0])
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/chain/"):
            left = int(path.removeprefix("/chain/"))
            if left:
                self._redirect(f"/chain/{left - 1}")
            else:
                self._send(200, IMAGES["/img.gif"][1])
        elif path == "/no-location":
            self._send(302)
        else:
            self._send(404)


class LocalServer(LocalHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: list[tuple[str, str]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]


def _serve(server: LocalServer) -> Iterator[LocalServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def module_server() -> Iterator[LocalServer]:
    yield from _serve(LocalServer())


@pytest.fixture
def server(module_server: LocalServer) -> LocalServer:
    module_server.hits.clear()
    return module_server


# -- the guards ---------------------------------------------------------------------------------


def _is_loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_outside_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if anything connects to, or resolves, a name or address that is not loopback."""
    violations: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            violations.append(f"connect {address!r}")
            raise ConnectionRefusedError(f"test guard: no connecting to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name != "localhost" and not _is_loopback(name):
            violations.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"test guard: no DNS for {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    assert violations == []


class GuardTransport(httpx.AsyncBaseTransport):
    """Passes loopback requests to a real transport; records and fails any other, unsent."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self.verify = verify
        self.inner: httpx.AsyncHTTPTransport | None = None  # one per event loop, made on first use
        self.requests: list[httpx.Request] = []
        self.intercepted: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not _is_loopback(request.url.host):
            self.intercepted.append(request.url.host)
            raise httpx.ConnectError("test guard: not connecting outside loopback", request=request)
        if self.inner is None:
            limits = httpx.Limits(max_keepalive_connections=0)
            self.inner = httpx.AsyncHTTPTransport(verify=self.verify, limits=limits, retries=0)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
            self.inner = None


@dataclass
class FakeDNS:
    """Answers from a table: name -> successive answers (the last one repeats). Records lookups."""

    table: dict[str, list[list[str]]]
    calls: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


@dataclass
class Harness:
    server: LocalServer
    dns: FakeDNS
    transport: GuardTransport
    allow: set[str]

    def url(self, path: str, host: str = "images.test", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.server.port}{path}"

    def run(self, coro: Callable[[ImageFetcher], Coroutine[Any, Any, T]], **limits: Any) -> T:
        policy = FetchPolicy(
            allow_hosts=frozenset(self.allow),
            # Generous: a loopback fetch on a loaded machine (the suite's workers on 2 cores) once took
            # over 5 s. The test of the timeout sets its own.
            **{"timeout_s": 60.0, "max_bytes": MAX_BYTES, "max_pixels": 1000, **limits},
        )

        async def main() -> T:
            async with ImageFetcher(policy, resolver=self.dns, transport=self.transport) as fetcher:
                try:
                    return await coro(fetcher)
                finally:
                    await self.transport.aclose()

        return asyncio.run(main())

    def fetch(self, url: str, **limits: Any) -> Any:
        return self.run(lambda f: f.fetch(url), **limits)

    def refused(self, url: str, **limits: Any) -> FetchError:
        with pytest.raises(FetchError) as info:
            self.fetch(url, **limits)
        return info.value


@pytest.fixture
def h(server: LocalServer) -> Iterator[Harness]:
    dns = FakeDNS(
        {
            "images.test": [["127.0.0.1"]],
            "other.test": [["127.0.0.1"]],
            "evil.test": [["10.0.0.1"]],
            "public.test": [[PUBLIC]],
            "meta.test": [["169.254.169.254"]],
        }
    )
    harness = Harness(server, dns, GuardTransport(), {"images.test", "meta.test"})
    yield harness
    assert harness.transport.intercepted == []  # tests that expect one check and clear it


# -- fetching -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/img.png", "/img.jpg", "/img.webp", "/img.gif"])
def test_fetches_each_format_through_the_pinned_address(h: Harness, path: str) -> None:
    url = h.url(path)
    image = h.fetch(url)
    mime, body = IMAGES[path]
    assert (image.data, image.mime_type, image.width, image.height) == (body, mime, 8, 6)
    assert image.source_url == url
    assert h.server.hits == [(path, f"images.test:{h.server.port}")]  # the real Host header
    assert h.dns.calls == ["images.test"]
    (request,) = h.transport.requests
    assert request.url.host == "127.0.0.1"  # connected to the address it checked
    assert "sni_hostname" not in request.extensions  # plain http


def test_https_request_is_pinned_with_sni_for_the_real_name(h: Harness) -> None:
    error = h.refused("https://public.test/a.png")
    assert error.reason == "connection failed"  # the guard stopped it before any socket
    (request,) = h.transport.requests
    assert request.url.scheme == "https" and request.url.host == PUBLIC
    assert request.headers["Host"] == "public.test"
    assert request.extensions["sni_hostname"] == "public.test"
    assert h.transport.intercepted == [PUBLIC]
    h.transport.intercepted.clear()


def test_fetch_all_keeps_order(h: Harness) -> None:
    paths = ["/late.png", "/img.gif", "/img.jpg", "/img.webp"]
    images = h.run(lambda f: f.fetch_all([h.url(p) for p in paths]))
    assert [i.mime_type for i in images] == [IMAGES[p if p != "/late.png" else "/img.png"][0] for p in paths]
    assert [i.source_url for i in images] == [h.url(p) for p in paths]


def test_fetch_all_raises_the_failure(h: Harness) -> None:
    with pytest.raises(FetchError) as info:
        h.run(lambda f: f.fetch_all([h.url("/img.png"), h.url("/404")]))
    assert info.value.reason == "HTTP 404"
    assert h.run(lambda f: f.fetch_all([])) == ()


def test_tries_the_next_checked_address_when_one_refuses_connections(h: Harness) -> None:
    h.dns.table["images.test"] = [["127.0.0.2", "127.0.0.1"]]  # nothing listens on 127.0.0.2
    assert h.fetch(h.url("/img.png")).mime_type == "image/png"
    assert h.dns.calls == ["images.test"]
    assert [r.url.host for r in h.transport.requests] == ["127.0.0.2", "127.0.0.1"]


def test_default_resolver_and_transport(server: LocalServer) -> None:
    url = f"http://localhost:{server.port}/img.jpg"

    async def fetch(policy: FetchPolicy) -> InputImage:
        async with ImageFetcher(policy) as fetcher:
            return await fetcher.fetch(url)

    assert asyncio.run(fetch(FetchPolicy(allow_hosts=frozenset({"LocalHost"})))).mime_type == "image/jpeg"
    with pytest.raises(FetchError, match=r"^address (127\.0\.0\.1|::1) is loopback: "):
        asyncio.run(fetch(FetchPolicy()))
    assert server.paths == ["/img.jpg"]


def test_allow_listed_ip_literal_is_fetched_without_resolving(h: Harness) -> None:
    h.allow = {"127.0.0.1"}
    image = h.fetch(h.url("/img.png", host="127.0.0.1"))
    assert image.mime_type == "image/png"
    assert h.dns.calls == []


# -- refusals by address, proven without connecting ---------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("10.0.0.1", "is private"),
        ("192.168.1.1", "is private"),
        ("172.16.0.1", "is private"),
        ("169.254.169.254", "is a cloud metadata address"),
        ("100.100.100.200", "is a cloud metadata address"),
        ("fd00:ec2::254", "is a cloud metadata address"),
        ("169.254.1.1", "is link-local"),
        ("fe80::1", "is link-local"),
        ("127.0.0.1", "is loopback"),
        ("::1", "is loopback"),
        ("0.0.0.0", "is unspecified"),
        ("fd00::1", "is private"),
        ("100.64.0.1", "is shared (100.64.0.0/10)"),
        ("224.0.0.1", "is multicast"),
        ("240.0.0.1", "is reserved"),
        ("::ffff:10.0.0.1", "wraps 10.0.0.1, which is private"),
        ("::ffff:127.0.0.1", "wraps 127.0.0.1, which is loopback"),
        ("2002:a9fe:a9fe::", "wraps 169.254.169.254, which is a cloud metadata address"),
        ("64:ff9b::a00:1", "wraps 10.0.0.1, which is private"),
    ],
)
def test_refuses_non_public_resolution_before_connecting(h: Harness, address: str, why: str) -> None:
    h.dns.table["evil.test"] = [[address]]
    error = h.refused("http://evil.test/img.png")
    assert error.reason == f"address {ipaddress.ip_address(address)} {why}"
    assert h.dns.calls == ["evil.test"]
    assert h.transport.requests == [] and h.server.hits == []


def test_one_bad_address_among_good_ones_refuses(h: Harness) -> None:
    h.dns.table["evil.test"] = [[PUBLIC, "2606:4700::1111", "10.0.0.1"]]
    assert h.refused("http://evil.test/img.png").reason == "address 10.0.0.1 is private"
    assert h.transport.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/x.png",
        "http://[::ffff:7f00:1]/x.png",
        "https://100.64.0.1/x.png",
    ],
)
def test_refuses_ip_literals_without_resolving(h: Harness, url: str) -> None:
    assert h.refused(url).reason.startswith("address ")
    assert h.dns.calls == [] and h.transport.requests == []


def test_loopback_name_refused_unless_allow_listed(h: Harness) -> None:
    assert h.refused(h.url("/img.png", host="other.test")).reason == "address 127.0.0.1 is loopback"
    assert h.server.hits == []
    h.allow.add("other.test")
    assert h.fetch(h.url("/img.png", host="Other.Test")).mime_type == "image/png"


def test_metadata_refused_even_when_allow_listed(h: Harness) -> None:
    assert "meta.test" in h.allow
    error = h.refused("http://meta.test/latest/meta-data/")
    assert error.reason == "address 169.254.169.254 is a cloud metadata address"
    assert h.transport.requests == []


def test_dns_rebinding_cannot_cause_a_second_lookup(h: Harness) -> None:
    # Public first, loopback after: the one lookup's answer is the address used, and nothing re-resolves.
    h.dns.table["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
    error = h.refused(h.url("/img.png", host="rebind.test"))
    assert error.reason == "connection failed"
    assert h.dns.calls == ["rebind.test"]
    assert h.transport.intercepted == [PUBLIC]  # aimed at the checked address, stopped by the guard
    assert h.server.hits == []
    h.transport.intercepted.clear()


def test_unresolvable_host(h: Harness) -> None:
    assert h.refused("http://nowhere.test/x.png").reason == "could not resolve nowhere.test"


# -- refusals by URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://images.test/img.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://images.test/",
        "images.test/img.png",
    ],
)
def test_refuses_other_schemes(h: Harness, url: str) -> None:
    assert "only http and https" in h.refused(url).reason
    assert h.dns.calls == [] and h.transport.requests == []


@pytest.mark.parametrize("userinfo", ["user:s3cret@", "user@", ":s3cret@"])
def test_refuses_userinfo_without_echoing_it(h: Harness, userinfo: str) -> None:
    error = h.refused(f"http://{userinfo}images.test:{h.server.port}/img.png")
    assert error.reason == "credentials in URLs are not allowed"
    assert "s3cret" not in str(error) and "user" not in error.url
    assert h.dns.calls == [] and h.server.hits == []


def test_invalid_url(h: Harness) -> None:
    assert h.refused("http://[zz]/x.png").reason == "invalid URL"


# -- redirects ----------------------------------------------------------------------------------


def test_follows_redirects_to_an_allowed_image(h: Harness) -> None:
    target = h.url("/img.webp")
    image = h.fetch(h.url(f"/redirect?to={target}"))
    assert image.mime_type == "image/webp"
    assert h.server.paths == ["/redirect", "/img.webp"]
    assert h.dns.calls == ["images.test", "images.test"]  # once per hop
    assert image.source_url == h.url(f"/redirect?to={target}")


def test_redirect_limit_is_exact(h: Harness) -> None:
    assert h.fetch(h.url("/chain/3"), max_redirects=3).mime_type == "image/gif"
    h.server.hits.clear()
    assert h.refused(h.url("/chain/4"), max_redirects=3).reason == "too many redirects"
    assert len(h.server.hits) == 4
    assert h.refused(h.url("/chain/1"), max_redirects=0).reason == "too many redirects"


def test_redirect_loop(h: Harness) -> None:
    assert h.refused(h.url("/loop"), max_redirects=5).reason == "too many redirects"
    assert h.server.paths == ["/loop"] * 6


def test_redirect_to_refused_host_is_refused_before_connecting(h: Harness) -> None:
    error = h.refused(h.url("/redirect?to=http://evil.test/img.png"))
    assert error.reason == "address 10.0.0.1 is private (after redirect to evil.test)"
    assert h.dns.calls == ["images.test", "evil.test"]
    assert h.server.paths == ["/redirect"]
    assert [r.url.host for r in h.transport.requests] == ["127.0.0.1"]


def test_redirect_to_loopback_name_not_allow_listed(h: Harness) -> None:
    error = h.refused(h.url("/redirect?to=" + h.url("/img.png", host="other.test")))
    assert error.reason == "address 127.0.0.1 is loopback (after redirect to other.test)"
    assert h.server.paths == ["/redirect"]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is a cloud metadata address"),
        ("file:///etc/passwd", "redirect refused: scheme 'file' is not allowed, only http and https"),
        ("http://u:s3cret@images.test/img.png", "redirect refused: credentials in URLs are not allowed"),
    ],
)
def test_redirect_to_refused_url(h: Harness, location: str, reason: str) -> None:
    error = h.refused(h.url(f"/redirect?to={location}"))
    assert error.reason.startswith(reason)
    assert "s3cret" not in error.reason
    assert h.server.paths == ["/redirect"]


def test_redirect_without_location(h: Harness) -> None:
    assert h.refused(h.url("/no-location")).reason == "HTTP 302 without a Location"


# -- responses ----------------------------------------------------------------------------------


def test_http_error_status(h: Harness) -> None:
    assert h.refused(h.url("/404")).reason == "HTTP 404"


def test_not_an_image(h: Harness) -> None:
    assert h.refused(h.url("/text")).reason.startswith("not an image: ")


def test_pixel_cap(h: Harness) -> None:
    assert h.fetch(h.url("/wide.png"), max_pixels=2000).width == 100
    assert h.refused(h.url("/wide.png"), max_pixels=1999).reason.startswith("not an image: ")


@pytest.mark.parametrize("path", ["/huge-declared", "/huge", "/no-length", "/chunked"])
def test_body_size_cap(h: Harness, path: str) -> None:
    assert h.refused(h.url(path)).reason == "larger than 64 KB"


def test_body_at_the_cap_is_read(h: Harness) -> None:
    error = h.refused(h.url("/huge"), max_bytes=MAX_BYTES + 1)
    assert error.reason.startswith("not an image: ")  # read in full, then probed


def test_lying_short_content_length_truncates(h: Harness) -> None:
    assert h.refused(h.url("/short-length")).reason.startswith("not an image: ")


def test_compressed_body_refused(h: Harness) -> None:
    assert h.refused(h.url("/gzip")).reason == "unsupported Content-Encoding gzip"


def test_timeout(h: Harness) -> None:
    assert h.refused(h.url("/slow"), timeout_s=0.2).reason == "timed out"


# -- TLS: connect to the pinned address, verify the certificate for the real name ---------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, Path, list[str]]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=images.test"
    args += " -addext subjectAltName=DNS:images.test"
    subprocess.run(
        [openssl, *args.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: names.append(str(name))
    server = LocalServer()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for served in _serve(server):
        yield served, cert, names


def test_tls_verifies_the_real_name_on_the_pinned_address(
    h: Harness, tls_server: tuple[LocalServer, Path, list[str]]
) -> None:
    server, cert, names = tls_server
    names.clear()
    h.server = server
    h.transport = GuardTransport(verify=ssl.create_default_context(cafile=str(cert)))
    image = h.fetch(h.url("/img.png", scheme="https"))
    assert image.mime_type == "image/png"
    assert names == ["images.test"]  # SNI carried the name although we dialled 127.0.0.1
    assert h.transport.requests[0].url.host == "127.0.0.1"

    # Same address, a name the certificate does not cover: verification fails.
    h.allow.add("other.test")
    h.transport = GuardTransport(verify=ssl.create_default_context(cafile=str(cert)))
    error = h.refused(h.url("/img.png", host="other.test", scheme="https"))
    assert error.reason == "TLS certificate verification failed"


# -- policy -------------------------------------------------------------------------------------


def test_policy_from_settings() -> None:
    settings = Settings(
        fetch_allow_hosts="Images.Test, 127.0.0.1,[::1]",
        fetch_timeout_s=3,
        fetch_max_bytes=1024,
        fetch_max_pixels=99,
        fetch_max_redirects=1,
    )
    assert FetchPolicy.from_settings(settings) == FetchPolicy(
        allow_hosts=frozenset({"images.test", "127.0.0.1", "::1"}),
        timeout_s=3,
        max_bytes=1024,
        max_pixels=99,
        max_redirects=1,
    )
