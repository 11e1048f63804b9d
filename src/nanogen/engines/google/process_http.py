"""Google's REST calls made by a child process, for the job threads that wait on them.

``ProcessHttp`` is ``transport.LoopHttp`` moved out of the worker's interpreter: the same calls, the
same answers and the same errors (httpx's types), but the event loop that sends the requests and reads
the answers runs in a child process, on whichever core is free. In the worker, every job already
shares one interpreter lock with the API and thousands of other jobs; reading 2,000 answers that come
within a second (aiohttp's parsing, the loop's wake-ups) was work on that lock, and the loop's thread
got a small share of it, so the answers waited for it, and the API's acceptances of a burst shared
the lock with that work. The child also reads the image answers (a call's ``read``: JSON, base64, the
PNG's check): a small image comes back with its answer, a large one in a file that its job only
moves into place. Measured side by
side (bench_google c: 2,000 image calls at 15 s on a 2-core machine, alternating with the loop in the
worker), on a slow day: all done in 17.3-18.2 s in eleven runs against 17.6-19.6 s in seventeen (seven
over the 18.75 s goal); on a fast one 16.4-16.7 s against 16.9-17.2 s; with photo-sized answers
the same time and 0.77-0.99 GB against 0.86 GB. The default where the worker may run
on two CPUs or more (engine.calls_from_a_child): on one it has no core to gain.

How: the calls go to the child over a pipe in batches: one thread here sends whatever the jobs have
asked since its last send, as one message. The child makes them with a ``LoopHttp`` of its own and
sends the answers back in batches, which one thread here reads to settle the futures the jobs wait on.
A large answer asked to be spooled is written by the child to a file in the spool folder as it
arrives; the reading thread opens it and unlinks it at once, and the job reads it back as LoopHttp's.
A call with a reader (``transport.AnswerReader``) has its 2xx answer read by the child on its loop
instead, and the worker gets what the reader returned and the file it wrote (``transport.Read``).
The requests' JSON is encoded in the child too.

The child starts on ``start`` (a worker calls it as it launches) or else on first use, from a fresh
interpreter (``spawn``: never a fork of a process with thousands of threads), and ends when the pipe
closes: on ``close``, when this object is dropped, and when this process dies (``kill -9`` included:
the child reads the end of the pipe and exits). A child that dies fails the calls it held with
``httpx.ReadError`` (sent, and perhaps billed: the engine's retry policy repeats them only where
Google does not bill), and the next call starts another.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import itertools
import multiprocessing
import multiprocessing.util  # its exit handler is registered before this module's (below)
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import IO, Any

import httpx

from nanogen.engines.google.transport import (
    READ,
    AnswerReader,
    HandedFile,
    JsonCall,
    LoopHttp,
    Read,
    _as_json,
    _Spooled,
    _translated,
)
from nanogen.errors import EngineError

# The child's name in ``ps``, ``top`` and /proc/<pid>/comm (the benchmark counts its CPU by it).
CHILD_NAME = "nanogen-http"
# The errors a call may end in, by name: the child sends the name and the message, not the object.
_ERRORS: dict[str, type[Exception]] = {
    kind.__name__: kind
    for kind in (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
        EngineError,
    )
}
# A call as it crosses the pipe: (kind, arguments); kind "request": (method, url, headers, content,
# json, timeout_s, spool, read); kind "download": (url, headers, dest, timeout_s).
_Call = tuple[str, tuple[Any, ...]]
Future = concurrent.futures.Future[httpx.Response]


# Every link with a child, for the exit handler below.
_LINKS: weakref.WeakSet[_Link] = weakref.WeakSet()


def _hang_up_all() -> None:
    """At this interpreter's exit: end every child's pipe. multiprocessing's own exit handler, which
    runs after this one, then waits for its children, and a child exits only when its pipe ends."""
    for link in list(_LINKS):
        link.hang_up()


atexit.register(_hang_up_all)


class ProcessHttp:
    """``LoopHttp``'s interface (``request``, ``begin``, ``download``, ``close``), its loop in a child
    process. ``limit``: connections open at once in the child. ``spool_dir``: where the child writes
    spooled answers (None: the system's temporary directory)."""

    def __init__(self, *, limit: int, spool_dir: Path | None = None) -> None:
        self._link = _Link(limit, spool_dir)
        # Dropped unclosed, the pipe is closed and the child exits (without waiting for it).
        self._finalizer = weakref.finalize(self, self._link.close, None)
        self._finalizer.atexit = False  # at exit the child reads the pipe's end and exits

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
        """As ``LoopHttp.request``, except that ``read`` is run on a 2xx answer in the child (as
        ``transport.AnswerReader`` says)."""
        return self._one(_request(method, url, headers, content, json, timeout_s, spool, read))

    def begin(self, calls: Sequence[JsonCall], futures: Sequence[Future]) -> None:
        """As ``LoopHttp.begin``: the calls whose futures were not cancelled go in one message."""
        if self._link.closed:
            raise RuntimeError("this ProcessHttp is closed")
        sent: list[_Call] = []
        waiting: list[Future] = []
        for c, future in zip(calls, futures, strict=True):
            if future.set_running_or_notify_cancel():
                sent.append(_request(c.method, c.url, c.headers, None, c.json, c.timeout_s, c.spool, c.read))
                waiting.append(future)
        if sent and not self._link.send(sent, waiting):
            unsent = httpx.ConnectError("the HTTP process is closed")
            for future in waiting:
                future.set_exception(unsent)

    def download(
        self, url: str, *, headers: Mapping[str, str], dest: Path, timeout_s: float
    ) -> httpx.Response:
        """As ``LoopHttp.download``: the child writes a 2xx body to ``dest``."""
        return self._one(("download", (url, dict(headers), str(dest), timeout_s)))

    def start(self) -> None:
        """Start the child now rather than on the first call (it takes ~0.5 s to be ready, and the
        calls of a burst would wait for it); returns at once. Nothing once closed."""
        self._link.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Close the pipe (calls still in flight fail) and wait up to ``timeout_s`` for the child to
        exit. Idempotent; the object cannot be used afterwards."""
        self._finalizer.detach()
        self._link.close(timeout_s)

    def _one(self, call: _Call) -> httpx.Response:
        future: Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        if not self._link.send([call], [future]):
            raise RuntimeError("this ProcessHttp is closed")
        return future.result()


class _Link:
    """The pipe to the child, its two threads here, and the calls waiting on it. Kept apart from
    ``ProcessHttp`` so that the threads do not keep that object alive (dropping it closes this)."""

    def __init__(self, limit: int, spool_dir: Path | None) -> None:
        self.limit = limit
        self.spool_dir = spool_dir
        self.lock = threading.Lock()
        self.closed = False
        self.outbox: queue.SimpleQueue[tuple[list[_Call], list[Future]] | None] = queue.SimpleQueue()
        self.pending: dict[int, Future] = {}
        self.ids = itertools.count()
        self.conn: Connection | None = None
        self.process: BaseProcess | None = None
        self.sender: threading.Thread | None = None
        self.receiver: threading.Thread | None = None
        # Pipes whose child has gone, closed by the sending thread: the one thread that writes to a
        # pipe is the one that closes it, so a descriptor is never closed under a write in progress
        # (nor its number reused by another file while that write still holds it).
        self.dead: list[Connection] = []

    def send(self, calls: list[_Call], futures: list[Future]) -> bool:
        """Queue the calls for the sending thread; False once closed (nothing queued)."""
        with self.lock:
            if self.closed:
                return False
            self._sending()
            self.outbox.put((calls, futures))
        return True

    def start(self) -> None:
        with self.lock:
            if not self.closed and self.conn is None:
                self._sending()  # the thread that will also hang up on the child at close
                self._start_child()

    def _sending(self) -> None:
        """The sending thread, started once (under ``lock``)."""
        if self.sender is None:
            self.sender = threading.Thread(target=self._send_all, name=f"{CHILD_NAME}-send", daemon=True)
            self.sender.start()

    def hang_up(self) -> None:
        """End the child's pipe now (at exit: no thread is waited for)."""
        with self.lock:
            if self.conn is not None:
                _shut_down(self.conn)

    def close(self, timeout_s: float | None) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            sender, process = self.sender, self.process
            self.outbox.put(None)
        if timeout_s is None:
            return
        if sender is not None:
            sender.join(timeout_s)
        if process is not None:
            process.join(timeout_s)

    # -- the sending thread -------------------------------------------------------------------------
    def _send_all(self) -> None:
        """Each round, everything queued since the last, as one message (the jobs of a burst ask
        within microseconds of each other: one write for dozens of calls)."""
        while self._send_round():
            pass
        with self.lock:
            conn, self.conn, receiver = self.conn, None, self.receiver
        if conn is not None and receiver is not None:
            _shut_down(conn)  # the child reads the end and exits; the reading thread sweeps
            receiver.join(10.0)
            if not receiver.is_alive():
                conn.close()
        self._close_dead()

    def _close_dead(self) -> None:
        with self.lock:
            dead, self.dead = self.dead, []
        for conn in dead:
            conn.close()

    def _send_round(self) -> bool:
        """One round; False once closing. A function of its own so that nothing of a round (its
        futures hold their answers, a spooled one its file) stays referenced while the next waits."""
        calls: list[_Call] = []
        futures: list[Future] = []
        item = self.outbox.get()
        while item is not None:
            calls.extend(item[0])
            futures.extend(item[1])
            try:
                item = self.outbox.get_nowait()
            except queue.Empty:
                break
        if calls:
            self._send_batch(calls, futures)
        return item is not None

    def _send_batch(self, calls: list[_Call], futures: list[Future]) -> None:
        self._close_dead()
        try:
            with self.lock:
                conn = self.conn if self.conn is not None else self._start_child()
                ids = [next(self.ids) for _ in calls]
                self.pending.update(zip(ids, futures, strict=True))
        except Exception as exc:
            _fail(futures, httpx.ConnectError(f"the HTTP process did not start: {exc}"))
            return
        try:
            conn.send([(i, *call) for i, call in zip(ids, calls, strict=True)])
        except (OSError, ValueError) as exc:  # the child is gone: nothing of this message was read
            with self.lock:
                unsent = [f for i in ids if (f := self.pending.pop(i, None)) is not None]
            _fail(unsent, httpx.ConnectError(f"the HTTP process is gone: {exc}"))

    def _start_child(self) -> Connection:
        here, there = multiprocessing.Pipe(duplex=True)
        process = multiprocessing.get_context("spawn").Process(
            target=_child, args=(there, self.limit, self.spool_dir), name=CHILD_NAME, daemon=True
        )
        try:
            process.start()
        finally:
            there.close()  # the child's end: only the child holds it now, so its exit closes the pipe
        self.conn, self.process = here, process
        _LINKS.add(self)
        self.receiver = threading.Thread(
            target=self._receive_all, args=(here, process), name=f"{CHILD_NAME}-answers", daemon=True
        )
        self.receiver.start()
        return here

    # -- the reading thread (one per child) ---------------------------------------------------------
    def _settle_all(self, batch: list[tuple[int, tuple[Any, ...]]]) -> None:
        with self.lock:
            settled = [(self.pending.pop(call_id, None), outcome) for call_id, outcome in batch]
        for future, outcome in settled:
            if future is None:  # no call waits for it any more: its file goes
                _discard(outcome)
                continue
            # An answer not rebuilt here fails its call, not this thread.
            try:
                _settle(future, outcome)
            except Exception as exc:
                _fail([future], EngineError(f"Google returned a malformed response ({exc})"))

    def _receive_all(self, conn: Connection, process: BaseProcess) -> None:
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                break
            self._settle_all(batch)
            del batch  # nothing of it kept while waiting for the next: a response holds its file
        with self.lock:
            if self.conn is conn:  # the child died (else the sending thread took it to close it)
                self.conn = None
                self.dead.append(conn)
            swept, self.pending = list(self.pending.values()), {}
        _fail(swept, httpx.ReadError("the HTTP process exited with the call in flight"))
        process.join(5.0)


def _request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    content: bytes | None,
    json: Any,
    timeout_s: float,
    spool: bool,
    read: AnswerReader | None,
) -> _Call:
    return ("request", (method, url, dict(headers), content, json, timeout_s, spool, read))


def _settle(future: Future, outcome: tuple[Any, ...]) -> None:
    if outcome[0] == "error":
        _, name, message = outcome
        future.set_exception(_ERRORS.get(name, EngineError)(message))
        return
    if outcome[0] == "read":
        _, status, headers, value, written = outcome
        read = Read(value, HandedFile(Path(written)) if written is not None else None)
        future.set_result(httpx.Response(status, headers=headers, extensions={READ: read}))
        return
    _, status, headers, content, spooled = outcome
    if spooled is None:
        future.set_result(httpx.Response(status, headers=headers, content=content))
        return
    try:
        file: IO[bytes] = open(spooled, "rb")  # noqa: SIM115 - the response's stream closes it
        os.unlink(spooled)  # open here only: nothing to clean up after a crash of either process
    except OSError as exc:
        future.set_exception(httpx.ReadError(f"the spooled answer is gone: {exc}"))
        return
    future.set_result(httpx.Response(status, headers=headers, stream=_Spooled(file)))


def _discard(outcome: tuple[Any, ...]) -> None:
    """Remove the file an answer left for the worker (a spooled answer's, or one its reader wrote)."""
    name = outcome[4] if outcome[0] in ("ok", "read") else None
    if name is not None:
        Path(name).unlink(missing_ok=True)


def _shut_down(conn: Connection) -> None:
    """End the pipe for both ends now. Closing the descriptor would not: the reading thread, blocked
    in ``recv`` on it, keeps the socket open until it returns, and it would not return."""
    with (
        contextlib.suppress(OSError),
        socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as dup,
    ):
        dup.shutdown(socket.SHUT_RDWR)


def _fail(futures: Sequence[Future], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


# -- the child -------------------------------------------------------------------------------------------
def _child(conn: Connection, limit: int, spool_dir: Path | None) -> None:
    """The child's main thread: reads batches of calls and starts them on the loop; one more thread
    writes the answers back, as many as are ready each time."""
    from nanogen.tls import ssl_context

    # The worker decides when this ends, by ending the pipe: Ctrl-C in a terminal (SIGINT to the
    # process group) or a service manager's SIGTERM to every process of the unit would otherwise end
    # the calls of a worker still finishing its jobs within its shutdown grace.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _name_process(CHILD_NAME)
    http = _ChildHttp(limit=limit, ssl_context=ssl_context(), spool_dir=spool_dir)
    http.remove_orphans()
    answers: queue.SimpleQueue[tuple[int, tuple[Any, ...]]] = queue.SimpleQueue()

    def write_answers() -> None:
        while True:
            batch = [answers.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(answers.get_nowait())
            try:
                conn.send(batch)
            except (OSError, ValueError):
                os._exit(0)  # the worker is gone
            except Exception:  # an answer that cannot be sent: the worker sees the pipe end, fails the calls
                os._exit(1)

    threading.Thread(target=write_answers, name="answers", daemon=True).start()
    while True:
        try:
            calls = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the worker closed the pipe or died: calls in flight go with this process
        http.start_all(calls, answers)


class _ChildHttp(LoopHttp):
    """The child's LoopHttp: calls started from a batch, answers put on a queue as they end, and
    spooled answers written to named files (the worker opens each by name and unlinks it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._prefix = f"{CHILD_NAME}-{os.getpid()}-"
        self._names = itertools.count()

    def start_all(
        self, calls: list[tuple[Any, ...]], answers: queue.SimpleQueue[tuple[int, tuple[Any, ...]]]
    ) -> None:
        loop = self._started()

        def start() -> None:
            for call_id, kind, args in calls:
                loop.create_task(self._answer(call_id, kind, args, answers))

        loop.call_soon_threadsafe(start)

    async def _answer(
        self,
        call_id: int,
        kind: str,
        args: tuple[Any, ...],
        answers: queue.SimpleQueue[tuple[int, tuple[Any, ...]]],
    ) -> None:
        read: AnswerReader | None = None
        try:
            if kind == "request":
                method, url, headers, content, json, timeout_s, spool, read = args
                if json is not None:
                    headers, content = _as_json(headers, json)
                response = await _translated(self._request(method, url, headers, content, timeout_s, spool))
            else:
                url, headers, dest, timeout_s = args
                response = await _translated(self._download(url, headers, Path(dest), timeout_s))
            headers_out = list(response.headers.multi_items())
            if read is not None and response.is_success:
                value, written = self._read(read, response)
                answers.put((call_id, ("read", response.status_code, headers_out, value, written)))
                return
        except Exception as exc:
            answers.put((call_id, ("error", type(exc).__name__, str(exc) or type(exc).__name__)))
            return
        stream = response.stream
        if isinstance(stream, _Spooled):
            stream.close()  # the file stays, by name, for the worker
            spooled: str | None = stream.name
            content_out = None
        else:
            spooled, content_out = None, response.content
        answers.put((call_id, ("ok", response.status_code, headers_out, content_out, spooled)))

    def _read(self, read: AnswerReader, response: httpx.Response) -> tuple[Any, str | None]:
        """``read`` run on the answer, and the name of the file it wrote (None: none); a spooled
        answer's file is removed. On the loop, which waits meanwhile (a few milliseconds for a 2 MB
        answer): the answers not yet read wait in the kernel's socket buffers. Read on two threads
        of this process instead, while the loop went on reading sockets, 2,000 photo-sized answers at
        once took this process to 0.8-1.0 GB against 0.7 GB, in no less time (bench_google c,
        ``--image-kb 1500``)."""
        written: list[IO[bytes]] = []

        def new_file() -> IO[bytes]:
            if written:
                raise RuntimeError("a reader writes one file")
            self._spool_folder().mkdir(parents=True, exist_ok=True)
            written.append(self._spool_file())
            return written[0]

        try:
            value = read(response, new_file)
        except BaseException:
            for file in written:
                file.close()
                Path(file.name).unlink(missing_ok=True)
            raise
        finally:
            if isinstance(response.stream, _Spooled):
                response.stream.close()
                Path(response.stream.name).unlink(missing_ok=True)
        for file in written:
            file.close()  # the reader may have left it open
        return value, str(written[0].name) if written else None

    def _spool_file(self) -> IO[bytes]:
        # LoopHttp._request has made the folder.
        return open(self._spool_folder() / f"{self._prefix}{next(self._names)}", "w+b")

    def _spool_folder(self) -> Path:
        return self._spool_dir if self._spool_dir is not None else Path(tempfile.gettempdir())

    def remove_orphans(self) -> None:
        """Spooled answers left by a child that died before the worker took them (none where the
        folder is not there yet)."""
        with contextlib.suppress(OSError):
            for path in self._spool_folder().glob(f"{CHILD_NAME}-*-*"):
                pid = path.name.split("-")[2]
                if pid.isdigit() and not _alive(int(pid)):
                    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _name_process(name: str) -> None:
    """Linux: the name ``ps`` and /proc/<pid>/comm show (prctl PR_SET_NAME); elsewhere nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)
