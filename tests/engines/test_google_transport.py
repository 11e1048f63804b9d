"""The Google engine's event-loop transport on its own, against a loopback server that answers each
request as the test scripts it (well, compressed, late, not at all, or by hanging up): the answers
arrive as httpx responses and the network's failures as the httpx errors the retry policy reads.
Both forms, the loop in this process (``LoopHttp``) and in a child process (``ProcessHttp``), run
every test that does not look at the loop itself (tests/engines/test_google_process_http.py has
the child's own)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import gzip
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import free_port
from tests.engines.scripted_server import ScriptedServer, answer, hang_up

from nanogen.engines.google.calls import UNSENT, Backoff, retrying
from nanogen.engines.google.process_http import ProcessHttp
from nanogen.engines.google.transport import LoopHttp, Transport
from nanogen.errors import EngineError
from nanogen.tls import ssl_context

MakeHttp = Callable[..., Transport]


@pytest.fixture(params=["loop", "process"])
def make_http(request: pytest.FixtureRequest) -> Iterator[MakeHttp]:
    """A transport of either form: ``make_http(limit, spool_dir=None)``; closed after the test."""
    made: list[Transport] = []

    def make(limit: int, spool_dir: Path | None = None) -> Transport:
        client: Transport
        if request.param == "loop":
            client = LoopHttp(limit=limit, ssl_context=ssl_context(), spool_dir=spool_dir)
        else:
            client = ProcessHttp(limit=limit, spool_dir=spool_dir)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def http(make_http: MakeHttp) -> Transport:
    return make_http(8)


def test_an_answer_arrives_whole_with_the_request_as_sent(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    body = json.dumps({"name": "models/veo/operations/1"}).encode()
    server = scripted(answer(200, body, "Content-Type: application/json"))
    response = http.request(
        "POST",
        f"{server.url}/v1beta/models/veo:predictLongRunning",
        headers={"x-goog-api-key": "k", "Content-Type": "application/json"},
        content=b'{"instances": []}',
        timeout_s=10,
    )
    assert response.status_code == 200 and response.json() == {"name": "models/veo/operations/1"}
    [request] = server.requests
    assert request.startswith(b"POST /v1beta/models/veo:predictLongRunning HTTP/1.1\r\n")
    assert b"\r\nx-goog-api-key: k\r\n" in request.replace(b"X-Goog-Api-Key", b"x-goog-api-key")
    assert request.endswith(b'\r\n\r\n{"instances": []}')


def test_a_compressed_answer_is_handed_on_decompressed(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    """Google compresses its JSON; the response handed on carries the plain bytes (and no
    Content-Encoding that would make httpx decode them a second time)."""
    plain = json.dumps({"done": False, "padding": "x" * 5000}).encode()
    server = scripted(
        answer(200, gzip.compress(plain), "Content-Encoding: gzip", "Content-Type: application/json")
    )
    response = http.request("GET", f"{server.url}/v1beta/op", headers={}, timeout_s=10)
    assert response.content == plain and response.json()["done"] is False
    assert "content-encoding" not in response.headers


def test_error_answers_are_answers(http: Transport, scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(answer(429, b'{"error": {"code": 429}}'), answer(503, b"<html>busy</html>"))
    first = http.request("GET", f"{server.url}/a", headers={}, timeout_s=10)
    second = http.request("GET", f"{server.url}/b", headers={}, timeout_s=10)
    assert (first.status_code, first.json()) == (429, {"error": {"code": 429}})
    assert (second.status_code, second.text) == (503, "<html>busy</html>")


def test_a_refused_connection_is_unsent_and_retried(http: Transport) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/v1beta/op"
    with pytest.raises(httpx.ConnectError) as raised:
        http.request("GET", nobody, headers={}, timeout_s=10)
    assert isinstance(raised.value, UNSENT), "never reached Google: safe to send again, even a paid call"


def test_a_connection_closed_without_an_answer_may_have_been_billed(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted(hang_up, answer(200, b"{}"))
    calls: list[int] = []

    def generate() -> httpx.Response:
        calls.append(1)
        return http.request("POST", f"{server.url}/gen", headers={}, content=b"{}", timeout_s=10)

    with pytest.raises(EngineError, match="not repeated, as Google may have billed it"):
        retrying(
            generate,
            what="image generation",
            deadline=time.time() + 30,
            backoff=Backoff(0.01, 0.01),
            idempotent=False,
        )
    assert len(calls) == 1 and len(server.requests) == 1
    # A poll that meets the same is asked again, on a new connection.
    polled = retrying(
        lambda: http.request("GET", f"{server.url}/op", headers={}, timeout_s=10),
        what="polling the video operation",
        deadline=time.time() + 30,
        backoff=Backoff(0.01, 0.01),
        idempotent=True,
        sleep=lambda _s: None,
    )
    assert polled.status_code == 200 and len(server.requests) == 2


def test_an_answer_later_than_the_timeout_is_a_read_timeout(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    def late(conn: socket.socket) -> None:
        time.sleep(3)
        answer(200, b"{}")(conn)

    server = scripted(late)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.request("GET", f"{server.url}/slow", headers={}, timeout_s=1)
    assert time.monotonic() - started < 2.9, "given up at the timeout, not when the answer came"


def test_a_download_is_written_and_a_redirect_is_handed_back(
    http: Transport, scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    video = bytes(range(256)) * 8192  # 2 MiB: more than one chunk
    server = scripted(
        answer(302, b"", "Location: /signed/1"),
        answer(200, video, "Content-Type: video/mp4"),
        answer(404, b'{"error": {"code": 404}}'),
    )
    dest = tmp_path / "shot.mp4"
    redirect = http.download(f"{server.url}/file", headers={"x-goog-api-key": "k"}, dest=dest, timeout_s=10)
    assert redirect.is_redirect and redirect.headers["location"] == "/signed/1"
    assert not dest.exists(), "a redirect's body is not the video"
    done = http.download(f"{server.url}/signed/1", headers={}, dest=dest, timeout_s=10)
    assert done.status_code == 200 and dest.read_bytes() == video
    missing = http.download(f"{server.url}/gone", headers={}, dest=tmp_path / "gone.mp4", timeout_s=10)
    assert missing.status_code == 404 and missing.json() == {"error": {"code": 404}}
    assert not (tmp_path / "gone.mp4").exists()


def test_many_threads_calls_are_in_flight_together_up_to_the_limit(http: Transport) -> None:
    """Twenty job threads call at once through a transport of 8 connections: the server holds the
    first answers until 8 requests are open together (the loop has them all in flight), and half a
    second more, and never sees more than 8 at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
    lock = threading.Lock()
    in_flight: list[int] = [0, 0]  # now, peak
    eight = threading.Barrier(8, timeout=20)
    met = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while ScriptedServer._read(conn) is not None:
                with lock:
                    in_flight[0] += 1
                    in_flight[1] = max(in_flight)
                if not met.is_set():
                    try:
                        eight.wait()
                        met.set()
                        time.sleep(0.5)  # the time a ninth connection would have to show up
                    except threading.BrokenBarrierError:
                        pass
                with lock:
                    in_flight[0] -= 1
                answer(200, b"{}")(conn)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    answers: list[int] = []
    go = threading.Event()

    def call() -> None:
        go.wait()
        answers.append(http.request("GET", url, headers={}, timeout_s=30).status_code)

    threads = [threading.Thread(target=call) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(60)
    finally:
        listener.close()
    assert answers == [200] * 20
    assert met.is_set(), "8 requests were in flight at once"
    assert in_flight[1] <= 8, "no more connections than the limit"


def test_a_proxy_set_in_the_environment_is_used(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch, make_http: MakeHttp
) -> None:
    """HTTP_PROXY applies as it did with httpx: the request reaches the proxy in absolute form. The
    destination is a loopback port nobody listens on: only the proxy can answer for it."""
    proxy = scripted(answer(200, b'{"via": "proxy"}'))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    http = make_http(2)  # a child process starts on first use, and inherits the environment then
    nobody = f"http://127.0.0.1:{free_port()}/v1beta/op"
    response = http.request("GET", nobody, headers={}, timeout_s=10)
    assert response.json() == {"via": "proxy"}
    [request] = proxy.requests
    assert request.startswith(f"GET {nobody} HTTP/1.1\r\n".encode())


def trickle(conn: socket.socket) -> None:
    """An answer of 10 bytes, one every 0.25 s: each read is quick, the whole takes 2.5 s."""
    conn.sendall(b"HTTP/1.1 200 X\r\nContent-Length: 10\r\n\r\n")
    for byte in b"0123456789":
        time.sleep(0.25)
        try:
            conn.sendall(bytes([byte]))
        except OSError:  # the client gave up
            return


def test_a_call_is_bounded_as_a_whole_and_a_download_per_read(
    http: Transport, scripted: Callable[..., ScriptedServer], tmp_path: Path
) -> None:
    server = scripted(trickle, trickle)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.request("GET", f"{server.url}/op", headers={}, timeout_s=1)
    assert time.monotonic() - started < 2.4, "the call ended at its timeout, not with the answer"
    dest = tmp_path / "video.mp4"
    done = http.download(f"{server.url}/video", headers={}, dest=dest, timeout_s=2)
    assert done.status_code == 200 and dest.read_bytes() == b"0123456789", "a download that keeps coming"


def test_a_json_body_is_sent_as_json(http: Transport, scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(answer(200, b"{}"))
    http.request("POST", f"{server.url}/gen", headers={"x-goog-api-key": "k"}, json={"a": [1]}, timeout_s=10)
    [request] = server.requests
    head = request.lower()
    assert b"\r\ncontent-type: application/json\r\n" in head and b"\r\nx-goog-api-key: k\r\n" in head
    assert request.endswith(b'\r\n\r\n{"a": [1]}')


def test_calls_run_on_uvloop_where_installed_and_asyncio_without_it(
    monkeypatch: pytest.MonkeyPatch, scripted: Callable[..., ScriptedServer]
) -> None:
    import uvloop

    for installed in (True, False):
        if not installed:
            monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
        server = scripted(answer(200, b"answered"))  # one client each: it keeps its connection
        http = LoopHttp(limit=2, ssl_context=ssl_context())
        try:
            r = http.request("GET", f"{server.url}/x", headers={}, timeout_s=5)
            assert (r.status_code, r.content) == (200, b"answered")
            assert isinstance(http._loop, asyncio.AbstractEventLoop)
            assert isinstance(http._loop, uvloop.Loop) is installed
        finally:
            http.close()


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nanogen-google-http"]


def test_close_ends_the_loop_thread_and_the_connections(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(answer(200, b"kept open"))
    before = set(_loop_threads())
    http = LoopHttp(limit=2, ssl_context=ssl_context())
    assert http.request("GET", f"{server.url}/x", headers={}, timeout_s=5).content == b"kept open"
    [thread] = set(_loop_threads()) - before
    loop = http._loop
    assert loop is not None
    http.close()
    assert not thread.is_alive() and loop.is_closed()
    assert http._session is not None and http._session.closed
    http.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        http.request("GET", f"{server.url}/x", headers={}, timeout_s=5)


def test_a_client_dropped_unclosed_ends_its_loop_on_the_loop_thread(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """Dropped with a connection kept alive, the client's session is closed by the loop's own thread
    (the loop is not thread-safe: a collector in another thread tearing the connections down under
    the running loop is the likeliest cause of a crash of the test process), and the thread ends."""
    server = scripted(answer(200, b"kept open"))
    before = set(_loop_threads())
    http = LoopHttp(limit=2, ssl_context=ssl_context())
    assert http.request("GET", f"{server.url}/x", headers={}, timeout_s=5).content == b"kept open"
    [thread] = set(_loop_threads()) - before
    del http
    gc.collect()  # the client is gone now, whatever cycles held it
    thread.join(5)
    assert not thread.is_alive()


def test_calls_begun_together_each_end_in_their_future(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    """``begin`` sends without waiting; each future holds its answer or the error ``request`` raises."""
    from nanogen.engines.google.transport import JsonCall

    ok, busy = scripted(answer(200, b'{"n": 1}')), scripted(answer(503, b"busy"))
    nobody = f"http://127.0.0.1:{free_port()}/gen"
    first, second, refused = futures = [concurrent.futures.Future[httpx.Response]() for _ in range(3)]
    http.begin(
        [
            JsonCall("POST", f"{ok.url}/gen", {"x-goog-api-key": "k"}, {"a": 1}, 10),
            JsonCall("POST", f"{busy.url}/gen", {"x-goog-api-key": "k"}, {"a": 2}, 10),
            JsonCall("POST", nobody, {}, {"a": 3}, 10),
        ],
        futures,
    )
    assert (first.result(timeout=10).status_code, first.result().content) == (200, b'{"n": 1}')
    assert (second.result(timeout=10).status_code, second.result().content) == (503, b"busy")
    for server, body in ((ok, b'{"a": 1}'), (busy, b'{"a": 2}')):
        [request] = server.requests
        assert request.endswith(b"\r\n\r\n" + body)
        assert b"\r\ncontent-type: application/json\r\n" in request.lower()
    with pytest.raises(httpx.ConnectError):
        refused.result(timeout=10)


def test_calls_begun_on_a_closed_client_fail_unsent(make_http: MakeHttp) -> None:
    from nanogen.engines.google.transport import JsonCall

    client = make_http(2)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.begin([JsonCall("POST", "http://127.0.0.1:9/gen", {}, {}, 10)], [concurrent.futures.Future()])


LARGE = b'{"data": "' + b"A" * (1 << 20) + b'"}'  # a megabyte, as an image's answer


def files_open_in(folder: Path) -> int:
    """This process's descriptors on files in ``folder`` (an unnamed file's link reads
    ``<folder>/#<inode> (deleted)``)."""
    found = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        found += target.startswith(f"{folder}/")
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_large_answer_waits_in_a_file_until_read(
    scripted: Callable[..., ScriptedServer], tmp_path: Path, make_http: MakeHttp
) -> None:
    server = scripted(answer(200, LARGE, "Content-Type: application/json"), answer(200, LARGE))
    client = make_http(2, tmp_path / "spool")
    spooled = client.request("POST", f"{server.url}/gen", headers={}, timeout_s=10, spool=True)
    assert spooled.status_code == 200 and files_open_in(tmp_path / "spool") == 1
    with pytest.raises(httpx.ResponseNotRead):
        spooled.content  # noqa: B018 - the access is the check
    assert spooled.read() == LARGE and spooled.json()["data"] == "A" * (1 << 20)
    assert files_open_in(tmp_path / "spool") == 0, "read back, the file is let go"
    unread = client.request("POST", f"{server.url}/gen", headers={}, timeout_s=10, spool=True)
    assert files_open_in(tmp_path / "spool") == 1
    del unread
    gc.collect()
    assert files_open_in(tmp_path / "spool") == 0, "dropped unread, the file is let go too"
    assert list((tmp_path / "spool").iterdir()) == [], "no name was left behind"


@pytest.mark.parametrize("status, body", [(200, b'{"small": true}'), (500, LARGE)], ids=["small", "error"])
def test_small_and_error_answers_are_read_at_once_even_when_spooled(
    http: Transport, scripted: Callable[..., ScriptedServer], status: int, body: bytes
) -> None:
    server = scripted(answer(status, body))
    response = http.request("POST", f"{server.url}/gen", headers={}, timeout_s=10, spool=True)
    assert (response.status_code, response.content) == (status, body)


def test_a_large_answer_begun_spooled_is_read_from_its_future(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    from nanogen.engines.google.transport import JsonCall

    server = scripted(answer(200, LARGE))
    future = concurrent.futures.Future[httpx.Response]()
    http.begin([JsonCall("POST", f"{server.url}/gen", {}, {"a": 1}, 10, spool=True)], [future])
    assert future.result(timeout=10).read() == LARGE


def test_a_large_answer_arriving_in_pieces_is_spooled_whole_and_in_order(
    http: Transport, scripted: Callable[..., ScriptedServer]
) -> None:
    """The loop writes what has arrived each time (the connection's small read buffer pauses the
    socket in between): every piece, in order, whatever the pieces' sizes."""
    body = os.urandom(600_000)

    def in_pieces(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        sizes = [1, 7, 4096, 16_384, 16_385, 65_536, 100_000]
        offset = 0
        for i in itertools.count():
            if offset >= len(body):
                return
            piece = body[offset : offset + sizes[i % len(sizes)]]
            conn.sendall(piece)
            offset += len(piece)
            if i % 5 == 0:
                time.sleep(0.002)  # the reader catches up and waits for more

    server = scripted(in_pieces)
    response = http.request("POST", f"{server.url}/gen", headers={}, timeout_s=10, spool=True)
    assert response.read() == body
