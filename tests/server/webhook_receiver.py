"""A webhook receiver for the tests: a real HTTP server on loopback that records every delivery and
answers as each path's plan says (a status code, or a hang longer than the server's timeout).
Signatures are verified by the tests with the ``standardwebhooks`` package, as a user's receiver would."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
from standardwebhooks import Webhook

from tests.local_http import LocalHTTPServer

HANG = "hang"  # answer only after the server's webhook timeout has passed
REFUSE_UNTIL_RELEASED = "refuse-until-released"  # 500 until ``release(path)``


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # wall clock, when the request was read
    answered: int | str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = orjson.loads(self.body)
        return found

    def verify(self, secret: str) -> dict[str, Any]:
        """The body, once ``secret`` verified its signature (raises WebhookVerificationError)."""
        found: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return found


class Receiver:
    def __init__(self, hang_s: float) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, list[int | str]] = {}
        self._released: set[str] = set()
        self.received: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = receiver._answer(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, time.time(), answer))
                if answer == HANG:
                    time.sleep(hang_s)
                    answer = 200
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = LocalHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _answer(self, path: str) -> int | str:
        with self._lock:
            plan = self._plans.get(path, [])
            if plan and plan[0] == REFUSE_UNTIL_RELEASED:
                return 200 if path in self._released else 500
            return plan.pop(0) if plan else 200

    def url(self, *plan: int | str) -> str:
        """A fresh path answering ``plan`` in order, then 200."""
        path = f"/hook/{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._plans[path] = list(plan)
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def release(self, url: str) -> None:
        with self._lock:
            self._released.add(url.split(str(self.httpd.server_port), 1)[1])

    def at(self, url: str) -> list[Received]:
        path = url.split(str(self.httpd.server_port), 1)[1]
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
