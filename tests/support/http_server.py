"""A scripted HTTP server on 127.0.0.1 for the download tests: each path answers with the
replies a test lists, in turn (status, body, headers, a cut-off body, a stall, a reset)."""

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
