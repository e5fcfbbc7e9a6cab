"""A fault-injecting HTTP proxy in front of moto's S3 server: some object PUTs fail with
S3's own error answers (SlowDown, AccessDenied, InternalError), or hang until the test lets
them go. Everything here talks only to 127.0.0.1."""

from __future__ import annotations

import http.client
import http.server
import sys
import threading
from typing import Callable
from urllib.parse import urlparse

SLOW_DOWN = (503, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                  b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (403, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
                 b"<Message>Access Denied</Message></Error>")
INTERNAL_ERROR = (500, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>"
                       b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class QuietServer(http.server.ThreadingHTTPServer):
    """Says nothing when a client went away before its answer (a killed export)."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ForwardingHandler(http.server.BaseHTTPRequestHandler):
    """Relays a request to `upstream` (moto's server) and its answer back: the part every S3
    proxy of the tests shares; a subclass decides what to do before forwarding."""

    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" before the body
    upstream = None  # urlparse() of moto's endpoint, set by the subclass

    def read_body(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def upstream_reply(self, body: bytes | None) -> tuple[int, bytes, list[tuple[str, str]]]:
        headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            answer = conn.getresponse()
            data = answer.read()
            hop = ("connection", "transfer-encoding", "content-length", "server", "date")
            passed = [(k, v) for k, v in answer.getheaders() if k.lower() not in hop]
            if self.command == "HEAD":
                passed.append(("Content-Length", answer.getheader("Content-Length", "0")))
            return answer.status, data, passed
        finally:
            conn.close()

    def reply(self, status: int, data: bytes, headers, head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


class FaultyStore:
    """An HTTP proxy on 127.0.0.1 that forwards to moto and fails some object PUTs.

    `fail(n)` says whether the n-th object PUT (1-based, counting retries) gets `error`
    instead of being forwarded. Counts: `puts` seen, `failed` answered with the error.
    With `hold=True` every object PUT after the first `hold_after` waits for `gate` (set
    `put_arrived` first): the upload hangs as long as the test wants. `on_first_put()` runs
    once, before the first object PUT is answered (to change the database in the middle of
    an export, say).
    """

    def __init__(self, upstream: str, fail: Callable[[int], bool] = lambda n: False,
                 error: tuple[int, bytes] = INTERNAL_ERROR, hold: bool = False, hold_after: int = 0,
                 on_first_put: Callable[[], object] | None = None):
        self.upstream = urlparse(upstream)
        self.on_first_put = on_first_put
        self.fail = fail
        self.error = error
        self.hold = hold
        self.hold_after = hold_after
        self.arrived = 0
        self.put_arrived = threading.Event()
        self.gate = threading.Event()
        self.puts = 0
        self.failed = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(ForwardingHandler):
            upstream = outer.upstream

            def forward(self):
                body = self.read_body()
                if self.command == "PUT" and outer.is_object(self.path) and outer.holds():
                    outer.put_arrived.set()
                    outer.gate.wait(30)
                if self.command == "PUT" and outer.is_object(self.path) and outer.should_fail():
                    status, data = outer.error
                    return self.reply(status, data, [("Content-Type", "application/xml")])
                self.reply(*self.upstream_reply(body), head=self.command == "HEAD")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def holds(self) -> bool:
        with self.lock:
            self.arrived += 1
            return self.hold and self.arrived > self.hold_after

    @staticmethod
    def is_object(path: str) -> bool:
        return "/" in urlparse(path).path.strip("/")

    def should_fail(self) -> bool:
        with self.lock:
            self.puts += 1
            failing = bool(self.fail(self.puts))
            self.failed += failing
            first = self.puts == 1
        if first and self.on_first_put:
            self.on_first_put()
        return failing

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FaultyStore":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
