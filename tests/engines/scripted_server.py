"""A loopback HTTP/1.1 server that answers each request as a test scripts it: well, compressed, late,
not at all, or by hanging up (the Google transports' tests; tests/engines/conftest.py's ``scripted``
fixture makes them and closes them)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Reply = Callable[[socket.socket], None]


def answer(status: int, body: bytes, *headers: str) -> Reply:
    def reply(conn: socket.socket) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return reply


def hang_up(conn: socket.socket) -> None:
    conn.close()


class ScriptedServer:
    """Answers the n-th request with the n-th reply; records what was asked."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                while self.replies:
                    request = self._read(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    reply = self.replies.pop(0)
                    reply(conn)
                    if reply is hang_up:
                        break

    @staticmethod
    def _read(conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                while len(body) < int(line.split(b":")[1]):
                    body += conn.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.listener.close()
