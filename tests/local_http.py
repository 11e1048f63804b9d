"""The tests' local HTTP servers (stand-ins for the web, Google, a webhook receiver): one base."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class LocalHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` that takes a client's hang-up mid-answer quietly: nanogen abandons
    answers on purpose (a refused fetch, a timed-out call), and the standard server prints a
    BrokenPipeError traceback into the test run's output for each. Any other error still prints."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
