"""The HTTP/1.1 protocol ``nanogen serve`` runs: uvicorn's httptools protocol with read deadlines.

uvicorn closes an idle keep-alive connection only once a request has completed on it: a connection
that sends nothing, half a request header or half a body stays open for ever (a socket, a task and
the buffered half-body each). This subclass adds two deadlines, both settings:

* **header** (``NANOGEN_HEADER_TIMEOUT_S``): a request's header must be complete within this many
  seconds of the connection opening, or of the first byte after the previous request (a total, so
  sending a byte now and then does not extend it). Past it, a connection that sent nothing of a
  request is closed silently (as an idle keep-alive connection is); one in the middle of a header is
  answered 408 ``REQUEST_TIMEOUT`` and closed.
* **body** (``NANOGEN_BODY_TIMEOUT_S``): while a request body is incomplete, more of it must arrive
  at least this often. Time during which the server itself is not reading (the application has not
  yet taken what arrived, or has not yet asked for a ``100-continue`` body) does not count. Past it:
  408 when no response has started, and the connection is closed; the application's ``receive()``
  sees ``http.disconnect``.

One timer per connection, re-armed lazily from deadlines kept as numbers: a request on a busy
keep-alive connection costs a clock read, not a timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from nanogen import errors

log = logging.getLogger(__name__)

# Set in a request's scope when its body timed out: the application then sees http.disconnect, and
# its error handler leaves the logging to the line written here (server/errors.py).
TIMED_OUT = "nanogen.body_timed_out"


class _FlowControl(FlowControl):
    """uvicorn's flow control, remembering when reading last resumed (time paused is not the client's)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(transport)
        self._loop = loop
        self.resumed_at = 0.0

    def resume_reading(self) -> None:
        if self.read_paused:
            self.resumed_at = self._loop.time()
        super().resume_reading()


class TimedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the header and body deadlines above (set by ``configured``)."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._watch: asyncio.TimerHandle | None = None
        self._flow: _FlowControl | None = None
        self._now = 0.0  # the loop's clock at the last data_received (the parser's callbacks use it)
        self._header_since: float | None = None  # waiting for a request header since
        self._body_since: float | None = None  # a request body is incomplete; its last progress
        self._in_message = False  # the parser is inside a request (its first byte came, not its end)

    @classmethod
    def configured(cls, header_timeout_s: float, body_timeout_s: float) -> type[TimedHttpProtocol]:
        """The class to pass to uvicorn as ``http=``, with these deadlines."""
        attributes = {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s}
        return type("NanogenHttpProtocol", (cls,), attributes)

    # -- uvicorn's protocol, with the deadlines kept up to date
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = self._flow = _FlowControl(transport, self.loop)  # no request holds the old one yet
        self._now = self._header_since = self.loop.time()
        self._arm(self._header_since + self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._now = self.loop.time()
        if self._header_since is None and not self._in_message:
            self._header_since = self._now  # the first byte of the next request
        super().data_received(data)
        pending = self._header_since is not None or self._body_since is not None
        if pending and self._watch is None and not self.transport.is_closing():
            self._arm(self._now + min(self.header_timeout_s, self.body_timeout_s))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._header_since = None
        self._body_since = self._now  # until on_message_complete (at once when there is no body)

    def on_body(self, body: bytes) -> None:
        self._body_since = self._now
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_message = False
        self._body_since = None

    # -- the deadlines
    def _arm(self, when: float) -> None:
        self._watch = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        pending = []
        if self._header_since is not None:
            deadline = self._header_since + self.header_timeout_s
            if now >= deadline:
                self._header_timed_out()
                return
            pending.append(deadline)
        if self._body_since is not None:
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                progress = now  # the server is not reading: the client cannot be late
            else:
                progress = max(self._body_since, self._flow.resumed_at if self._flow else 0.0)
            deadline = progress + self.body_timeout_s
            if now >= deadline:
                self._body_timed_out()
                return
            pending.append(deadline)
        if pending:
            self._arm(min(pending))

    def _header_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request's header stalled while the previous response is being made: close
            # after that response rather than write into it.
            cycle.keep_alive = False
            return
        if self._in_message:
            log.warning(
                "closed a connection from %s: request header incomplete after %g s",
                self._peer(),
                self.header_timeout_s,
            )
            self._reply_408()
        self.transport.close()

    def _body_timed_out(self) -> None:
        log.warning(
            "closed a connection from %s: no request body received for %g s (%s %s)",
            self._peer(),
            self.body_timeout_s,
            self.scope.get("method", "?") if self.scope else "?",
            self.scope.get("path", "?") if self.scope else "?",
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                self._reply_408()
            cycle.scope[TIMED_OUT] = True  # type: ignore[literal-required]
            cycle.disconnected = True  # the application's receive() answers http.disconnect
            cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refused (malformed header, bad Content-Length...): the contract's
        envelope rather than uvicorn's plain text, then the connection is closed."""
        self._reply(errors.InvalidHTTPRequest(f"{msg.rstrip('.')}: the request is not valid HTTP/1.1"))
        self.transport.close()

    def _reply_408(self) -> None:
        self._reply(errors.RequestTimeout())

    def _reply(self, error: errors.APIError) -> None:
        body = orjson.dumps(error.body())
        content = [STATUS_LINE[error.http_status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        content.extend([b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"
