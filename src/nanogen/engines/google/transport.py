"""Google's REST calls made on one event loop, for the job threads that wait on them.

A job keeps its thread (DBOS runs each workflow on one), but its HTTP request is made by one loop
thread with one aiohttp session; the job blocks on the answer, a wait that costs no CPU. Measured side
by side (bench/bench_http_clients.py, 2,000 generateContent calls at once against the fake Google): a
thread per call with httpx.Client cost 2.5-5 ms of the caller's CPU per call, most of it threads
handing the interpreter lock to each other at every socket operation; the same threads handing their
requests to the loop, 0.9 ms. httpx's own async client on a loop cost 2.2-4.5 ms (docs/engines.md, "At
load").

The engine's retry policy (calls.retrying) reads httpx's exception types, so aiohttp's are translated
here: a connection that was never made (refused, DNS, TLS, a connect timeout) is ``httpx.ConnectError``
or ``httpx.ConnectTimeout``, which are repeated; one that broke after the request went (a read timeout,
a reset, a server that closed it) is a ``httpx.ReadTimeout`` or ``httpx.ReadError``, which are
repeated only for calls Google does not bill.

A large answer asked to be spooled (an image's JSON: a photo-like 1K image is 1-2 MB of PNG, a third
more as base64; a 4K one tens of MB) is written to an unnamed file as it arrives and read back when
its caller reads the response: the answers of a burst come within a second and are decoded one job at
a time, and held in memory meanwhile, 2,000 of 2 MB took the worker to 5-7 GB, most of its CPU spent
by the kernel bringing that fresh memory into use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json as json_module
import shutil
import ssl
import tempfile
import threading
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import aiohttp
import httpx

from nanogen.errors import EngineError

T = TypeVar("T")
# What a connection buffers in the process before its socket is paused (aiohttp's default: 64 KB, read
# on to twice that). Thousands of large answers arrive at once and the loop writes them out one after
# another: the rest of each waits in the kernel's socket buffer rather than here. 2,000 answers of
# 2 MB through this loop peaked at 0.64-0.68 GB of memory against 1.39-1.45 GB at the default, and took
# less CPU (less fresh memory to fault in); no smaller size did better.
READ_BUFFER_BYTES = 16 * 1024
# Answer headers that describe the bytes on the wire, not the (decompressed) body handed on.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# A 2xx answer of at least this many bytes (or of no stated length) to a call with ``spool`` is
# written to a file as it arrives; a smaller one is read into memory.
SPOOL_FROM_BYTES = 256 * 1024


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (uvicorn's standard extra brings it on Linux and macOS), else
    asyncio's own loop. With 2,000 image calls answered within a second, asyncio's loop released and
    retook the interpreter lock around every socket call while thousands of job threads wanted it;
    uvloop reads and writes sockets in libuv under the lock it holds. Measured side by side in
    bench_google c, six pairs: wall 18.2-19.1 s against 18.7-19.4 s (none above its pair's), the
    tasks' end past the provider's answer (p90) 0.4-0.6 s against 0.6-3.2 s."""
    try:
        import uvloop
    except ImportError:  # Windows, or an install without uvicorn's standard extra
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# How a caller may have its 2xx answer read where the call is made: ``reader(response, new_file)``
# returns what the caller wants of the answer (picklable), and may write one file, opened with
# ``new_file()``, that the caller takes over. It is a module's function (it crosses to the HTTP
# process by name) and raises EngineError for an answer it cannot read. ``ProcessHttp`` runs it in its
# process, off the worker's interpreter lock, and the response then carries a ``Read`` in its
# extensions under ``READ`` (no body); ``LoopHttp`` does not, and its caller reads the answer itself.
AnswerReader = Callable[[httpx.Response, Callable[[], IO[bytes]]], Any]
READ = "nanogen.read"


class HandedFile:
    """A file written for the caller by the HTTP process: moved where it belongs with ``move_to``,
    or removed when dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, path)

    def move_to(self, dest: Path) -> None:
        # A rename (the spool folder is the scratch folder), or a copy across file systems.
        shutil.move(self.path, dest)
        self._finalizer.detach()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Read:
    """A 2xx answer as its call's reader read it (``AnswerReader``), and the file it wrote."""

    value: Any
    file: HandedFile | None


@dataclass(frozen=True)
class JsonCall:
    """A request whose body is ``json``, for :meth:`LoopHttp.begin`."""

    method: str
    url: str
    headers: Mapping[str, str]
    json: Any
    timeout_s: float
    spool: bool = False  # as ``LoopHttp.request``'s
    read: AnswerReader | None = None  # as ``Transport.request``'s


class Transport(Protocol):
    """How the engine makes its REST calls: ``LoopHttp`` (a loop thread in this process) or
    ``process_http.ProcessHttp`` (a loop in a child process), with the same answers and errors.
    ``read``: an ``AnswerReader`` the transport may run on a 2xx answer (the response then carries
    its ``Read`` under ``READ`` in its extensions)."""

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        json: Any = None,
        timeout_s: float,
        spool: bool = False,
        read: AnswerReader | None = None,
    ) -> httpx.Response: ...

    def begin(
        self, calls: Sequence[JsonCall], futures: Sequence[concurrent.futures.Future[httpx.Response]]
    ) -> None: ...

    def download(
        self, url: str, *, headers: Mapping[str, str], dest: Path, timeout_s: float
    ) -> httpx.Response: ...

    def start(self) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


class LoopHttp:
    """One aiohttp session on a loop thread of its own, started on first use; ``request`` and
    ``download`` block the calling thread until Google answers. ``limit``: connections open at once,
    as many as the calls that may be in flight (every job waiting on Google holds one).

    ``close`` ends the session and the loop thread; one that is dropped unclosed ends them as well.
    Either way that happens on the loop's own thread: the loop's objects are not thread-safe, and
    left to the garbage collector a session's connections would be torn down by whatever thread
    collected them, under a loop still running in another (the likeliest cause of a uvloop crash in
    the test suite, where each test dropped its client)."""

    def __init__(self, *, limit: int, ssl_context: ssl.SSLContext, spool_dir: Path | None = None) -> None:
        self._limit = limit
        self._ssl = ssl_context
        self._spool_dir = spool_dir  # None: the system's temporary directory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._starting = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None = None,
        json: Any = None,
        timeout_s: float,
        spool: bool = False,
        read: AnswerReader | None = None,
    ) -> httpx.Response:
        """The whole answer, whatever its status. ``json``: a body sent as JSON (in place of ``content``).
        ``spool``: a large 2xx answer waits in an unnamed file (in ``spool_dir``) until the caller
        calls ``Response.read()``, which reads it back and lets the file go. ``read`` is not run
        here: the caller reads the answer on its own thread (the same interpreter either way)."""
        sent = dict(headers)
        if json is not None:
            sent, content = _as_json(headers, json)
        return self._run(self._request(method, url, sent, content, timeout_s, spool))

    def begin(
        self, calls: Sequence[JsonCall], futures: Sequence[concurrent.futures.Future[httpx.Response]]
    ) -> None:
        """Start ``calls`` now without waiting for them, each ending in its future (pending): the
        whole answer, or what ``request`` would raise; a future cancelled before the loop took it up
        is not sent. The calls reach the loop in one hand-off (a wake of the loop per call costs the
        caller a write to the loop's self-pipe each)."""
        loop = self._started()
        prepared = [
            (call.method, call.url, *_as_json(call.headers, call.json), call.timeout_s, call.spool)
            for call in calls
        ]

        def start_all() -> None:
            for arguments, future in zip(prepared, futures, strict=True):
                if future.set_running_or_notify_cancel():
                    task = loop.create_task(_translated(self._request(*arguments)))
                    task.add_done_callback(functools.partial(_settle, future))

        try:
            loop.call_soon_threadsafe(start_all)
        except RuntimeError as exc:  # closed meanwhile: nothing was sent
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(httpx.ConnectError(f"the HTTP loop is closed: {exc}"))

    def download(
        self, url: str, *, headers: Mapping[str, str], dest: Path, timeout_s: float
    ) -> httpx.Response:
        """GET ``url`` without following redirects. A 2xx body is written to ``dest`` (the response
        returned then carries no content); any other answer is returned whole."""
        return self._run(self._download(url, dict(headers), dest, timeout_s))

    def start(self) -> None:
        """Start the loop thread and its session now rather than on the first call."""
        self._started()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the session (calls still in flight fail) and stop the loop thread, waiting up to
        ``timeout_s`` for it. Idempotent; the object cannot be used afterwards."""
        with self._starting:
            self._closed = True
            finalizer, thread = self._finalizer, self._thread
        if finalizer is not None and thread is not None:
            finalizer()  # runs at most once, whoever calls it first
            thread.join(timeout_s)

    # -- the loop's side ---------------------------------------------------------------------------------
    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            loop = self._started()
        except BaseException:
            call.close()  # never to be awaited
            raise
        return asyncio.run_coroutine_threadsafe(_translated(call), loop).result()

    def _started(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and not self._closed:
            return loop
        with self._starting:
            if self._closed:
                raise RuntimeError("this LoopHttp is closed")
            if self._loop is None:
                loop = _new_loop()
                thread = threading.Thread(
                    target=_serve, args=(loop,), name="nanogen-google-http", daemon=True
                )
                thread.start()
                session = asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                # Holds the loop and the session, never self: dropping self is what triggers it.
                finalizer = weakref.finalize(self, _shut_down, loop, session)
                finalizer.atexit = False  # at exit the daemon thread simply ends with the process
                self._session, self._thread, self._finalizer = session, thread, finalizer
                self._loop = loop
            return self._loop

    async def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl)
        # A proxy set in the environment (HTTPS_PROXY, NO_PROXY ...) applies, as it did with httpx.
        # Told to, aiohttp reads the environment again for every request (~5% of the loop's time
        # with 2,000 calls at once), so it is told to only when a proxy is set.
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=bool(urllib.request.getproxies()),
            read_bufsize=READ_BUFFER_BYTES,
        )

    @staticmethod
    def _timeout(seconds: float, *, whole: bool) -> aiohttp.ClientTimeout:
        """``seconds`` for the connection (a wait for a free one included) and for each read, and
        with ``whole`` for the whole call (a request stuck on its way is bounded too). A download is
        bounded per read only: a large video that keeps arriving is not cut off."""
        return aiohttp.ClientTimeout(total=seconds if whole else None, connect=seconds, sock_read=seconds)

    async def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        timeout_s: float,
        spool: bool = False,
    ) -> httpx.Response:
        assert self._session is not None
        async with self._session.request(
            method,
            url,
            headers=headers,
            data=content,
            allow_redirects=False,
            timeout=self._timeout(timeout_s, whole=True),
        ) as answer:
            length = answer.content_length
            if not (spool and 200 <= answer.status < 300 and (length is None or length >= SPOOL_FROM_BYTES)):
                return _response(answer, await answer.read())
            if self._spool_dir is not None:
                self._spool_dir.mkdir(parents=True, exist_ok=True)
            file = self._spool_file()
            try:
                await _write_body(answer, file)
            except BaseException:
                file.close()
                raise
            return _response(answer, stream=_Spooled(file))

    def _spool_file(self) -> IO[bytes]:
        # Unnamed (O_TMPFILE where the system has it): nothing to clean up after a crash.
        return tempfile.TemporaryFile(dir=self._spool_dir)  # the stream closes it

    async def _download(
        self, url: str, headers: dict[str, str], dest: Path, timeout_s: float
    ) -> httpx.Response:
        assert self._session is not None
        async with self._session.get(
            url, headers=headers, allow_redirects=False, timeout=self._timeout(timeout_s, whole=False)
        ) as answer:
            if not 200 <= answer.status < 300:
                return _response(answer, await answer.read())
            with dest.open("wb") as out:
                await _write_body(answer, out)
            return _response(answer, b"")


async def _write_body(answer: aiohttp.ClientResponse, out: IO[bytes]) -> None:
    """The answer's body into ``out``, from the loop: what has arrived, chunk by chunk, into the page
    cache. Each chunk is let go before waiting for the next: thousands of answers arrive at once,
    and a chunk held across that wait was hundreds of KB kept by each (1 GB for 2,000 of 2 MB)."""
    content = answer.content
    while chunk := await content.readany():
        out.write(chunk)
        del chunk


class _Spooled(httpx.SyncByteStream):
    """A spooled answer's body: read back whole by ``Response.read()``, which then closes the file
    (a response dropped unread closes it when it is collected)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        weakref.finalize(self, file.close)

    def __iter__(self) -> Iterator[bytes]:
        self._file.seek(0)
        yield self._file.read()

    @property
    def name(self) -> str:
        """The file's path (a named spool file's, in the HTTP process) or descriptor."""
        return str(self._file.name)

    def close(self) -> None:
        self._file.close()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: runs until ``_shut_down`` stops it, then closes the loop on this thread."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def _shut_down(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    """Close ``session`` and then stop ``loop``, both on the loop's thread; returns at once."""

    async def close_then_stop() -> None:
        try:
            await session.close()
        finally:
            asyncio.get_running_loop().stop()

    closing = close_then_stop()
    try:
        asyncio.run_coroutine_threadsafe(closing, loop)
    except RuntimeError:  # the loop is already closed
        closing.close()


def _as_json(headers: Mapping[str, str], body: Any) -> tuple[dict[str, str], bytes]:
    """The headers and bytes of a request whose body is ``body`` as JSON."""
    return {**headers, "Content-Type": "application/json"}, json_module.dumps(body).encode()


def _settle(future: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    """Hand a task's outcome to the future a thread waits on (a stopped loop's task: an error)."""
    if task.cancelled():
        future.set_exception(httpx.ReadError("the call was cancelled: its HTTP loop stopped"))
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


def _response(
    answer: aiohttp.ClientResponse,
    content: bytes | None = None,
    *,
    stream: httpx.SyncByteStream | None = None,
) -> httpx.Response:
    headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(answer.status, headers=headers, content=content, stream=stream)


async def _translated(call: Awaitable[T]) -> T:
    """aiohttp's errors as httpx's (the module's docstring says why)."""
    try:
        return await call
    except aiohttp.ConnectionTimeoutError as exc:  # no connection within the timeout: never sent
        raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unresolvable, TLS refused: never sent
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.InvalidUrlClientError as exc:
        raise EngineError(f"Google returned a malformed response (an unusable URL: {exc})") from exc
    except TimeoutError as exc:  # aiohttp's read timeout is one
        raise httpx.ReadTimeout(str(exc) or "timed out waiting for Google's answer") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "Google closed the connection") from exc
    except aiohttp.ClientError as exc:  # a reset, an answer cut short
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc
