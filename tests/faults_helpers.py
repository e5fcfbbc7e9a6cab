"""Helpers of the fault-matrix and bad-input tests: condition waits, stage subprocesses,
a fault-injecting proxy in front of moto's S3 server, a raw HTTP server that breaks a body
half-way, and readers of a day's export.

Everything here talks only to 127.0.0.1. Waits are polls of a real condition (a row in
pg_stat_activity or pg_locks, a server event) with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import http.server
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import boto3
import psycopg2

from conftest import REPO, libpq_env

POLL_SECONDS = 0.002  # between two looks at a condition; the deadline bounds the wait
LOADER_APPLICATION = "data-waddle transform_load"  # set by waddle_common.connect_db
EXPORT_LOCK_APPLICATION = "data-waddle export lock"  # the export's session holding its advisory lock


# ---------------------------------------------------------------------------------------
# Waiting on conditions


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0, poll: float = POLL_SECONDS):
    """Poll `condition()` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


class Observer:
    """An autocommit connection that looks at another session's state (activity, locks)."""

    def __init__(self, url: str):
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def rows(self, sql: str, params=None) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def backends(self, application: str = LOADER_APPLICATION) -> list[int]:
        return [r[0] for r in self.rows(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            (application,),
        )]

    def copying(self, application: str = LOADER_APPLICATION) -> list[int]:
        """Backends of `application` that are in the middle of a COPY right now."""
        return [r[0] for r in self.rows(
            "SELECT a.pid FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = %s AND a.datname = current_database()",
            (application,),
        )]

    def waiting_on_advisory(self, key: int, application: str = LOADER_APPLICATION) -> list[int]:
        """Backends of `application` waiting for the advisory lock `key` (bigint form)."""
        return [r[0] for r in self.rows(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s "
            "AND a.datname = current_database() "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            (application, key),
        )]

    def waiting_on_table(self, table: str, application: str = LOADER_APPLICATION) -> list[int]:
        """Backends of `application` waiting for a lock on `table`."""
        return [r[0] for r in self.rows(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'relation' AND NOT l.granted AND l.relation = %s::regclass "
            "AND a.application_name = %s AND a.datname = current_database()",
            (table, application),
        )]

    def close(self) -> None:
        self.conn.close()


def table_fingerprint(url: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row with its row version) per table: equal only if untouched."""
    out = {}
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for table in ("customer", "destination", "booking", "load_run", "load_run_table"):
                cur.execute(
                    f"SELECT count(*), coalesce(md5(string_agg(t.xmin::text || ':' || t::text, '|' "
                    f"ORDER BY t::text)), '') FROM {table} AS t"
                )
                out[table] = cur.fetchone()
    finally:
        conn.close()
    return out


# ---------------------------------------------------------------------------------------
# Stage scripts as real processes


def stage_env(database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: the test's (already cleaned of pipeline
    variables by conftest), the database as libpq variables (no password on a command line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DATABASE_URL", None)
    if database_url:
        env.update(libpq_env(database_url))
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_stage(script: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / script), *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_stage(script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], env=env, cwd=cwd,
        capture_output=True, text=True, timeout=timeout,
    )


def generate_dataset(out: Path, customers: int, bookings: int, seed: int = 7) -> Path:
    result = subprocess.run(
        [sys.executable, str(REPO / "sample_data" / "generate.py"), "--customers", str(customers),
         "--bookings", str(bookings), "--seed", str(seed), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------------------------------
# S3: a fault-injecting proxy in front of moto


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

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" before the body

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "PUT" and outer.is_object(self.path) and outer.holds():
                    outer.put_arrived.set()
                    outer.gate.wait(30)
                if self.command == "PUT" and outer.is_object(self.path) and outer.should_fail():
                    status, data = outer.error
                    return self.reply(status, data, [("Content-Type", "application/xml")])
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn = http.client.HTTPConnection(outer.upstream.hostname, outer.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    hop = ("connection", "transfer-encoding", "content-length", "server", "date")
                    passed = [(k, v) for k, v in answer.getheaders() if k.lower() not in hop]
                    if self.command == "HEAD":
                        passed.append(("Content-Length", answer.getheader("Content-Length", "0")))
                    self.reply(answer.status, data, passed, head=self.command == "HEAD")
                finally:
                    conn.close()

            def reply(self, status, data, headers, head=False):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args):
                pass

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


# ---------------------------------------------------------------------------------------
# Reading a day's export back


def s3_keys(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def read_manifest(bucket: str, day: str, prefix: str = "") -> dict | None:
    key = f"{prefix}{day}/_manifest.json"
    if key not in s3_keys(bucket):
        return None
    return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())


def export_csv_bytes(bucket: str, manifest: dict) -> dict[str, list[bytes]]:
    """table -> the CSV bytes of each listed object, after checking its size and SHA-256."""
    s3 = boto3.client("s3")
    out: dict[str, list[bytes]] = {}
    for entry in manifest["objects"]:
        body = s3.get_object(Bucket=bucket, Key=entry["key"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"]), entry["key"]
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            (member,) = archive.namelist()
            out.setdefault(entry["table"], []).append(archive.read(member))
    return out


def export_rows(bucket: str, manifest: dict) -> dict[str, list[dict[str, str]]]:
    """table -> every exported row as a dict; each object's row count checked against the manifest."""
    out: dict[str, list[dict[str, str]]] = {}
    objects = iter(manifest["objects"])
    for table, bodies in export_csv_bytes(bucket, manifest).items():
        rows = out.setdefault(table, [])
        for body in bodies:
            entry = next(objects)
            batch = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
            assert len(batch) == entry["rows"], entry["key"]
            rows.extend(batch)
    return out


# ---------------------------------------------------------------------------------------
# HTTP: a server that breaks the body half-way


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
