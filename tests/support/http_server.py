"""HTTP servers on 127.0.0.1 for the download tests: a scripted one (each path answers with
the replies a test lists, in turn: status, body, headers, a cut-off body, a stall, a reset)
and a raw one that breaks a body half-way."""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field

@dataclass
class Reply:
    """One scripted answer. `declared_length` larger than the body simulates a cut-off body;
    `stall` makes the server wait (until the test ends) before answering."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None
    stall: bool = False
    reset: bool = False


class ScriptedHTTPServer:
    """Serves `routes[path]`: a list of Replies given in turn, the last one repeated."""

    def __init__(self):
        self.routes: dict[str, list[Reply]] = {}
        self.hits: dict[str, int] = {}
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                replies = outer.routes.get(self.path) or [Reply(404, b"not found")]
                count = outer.hits.get(self.path, 0)
                outer.hits[self.path] = count + 1
                reply = replies[min(count, len(replies) - 1)]
                if reply.stall:
                    outer.release.wait(30)
                    return
                if reply.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                length = reply.declared_length if reply.declared_length is not None else len(reply.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(reply.body)
                if reply.declared_length is not None:
                    self.close_connection = True

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ScriptedHTTPServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class BrokenBody:
    """Send the headers (Content-Length = len(body)) and `sent` bytes of `body`, then either
    stall until the test ends or reset the connection."""

    body: bytes
    sent: int
    then: str = "stall"  # or "reset"


class HalfBodyServer:
    """A raw HTTP/1.1 server on 127.0.0.1 answering every GET with one BrokenBody."""

    def __init__(self, reply: BrokenBody):
        self.reply = reply
        self.release = threading.Event()
        self.hits = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/booking.csv"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.release.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            self.hits += 1
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: {len(self.reply.body)}\r\n\r\n")
            conn.sendall(head.encode("ascii") + self.reply.body[: self.reply.sent])
            if self.reply.then == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            self.release.wait(30)

    def __enter__(self) -> "HalfBodyServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
