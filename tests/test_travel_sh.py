"""travel.sh end to end: local mode on a copy of the repository, a configured run against
the test services, a failing stage, Ctrl-C, and the command line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest
from support import REPO
from support.database import apply_schema, query

from waddle_common import local_services

RUN_TIMEOUT = 240


def repository_copy(target: Path) -> Path:
    """The tracked files of the working tree (as a fresh clone would have them)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def travel(repo: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(repo / "travel.sh"), *args], cwd=cwd or repo, env=travel_env(env),
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


def travel_env(extra: dict | None = None) -> dict:
    return {**os.environ, "PYTHON": sys.executable, **(extra or {})}


def metrics_table(stdout: str) -> dict[int, tuple[int, Decimal, int]]:
    """destination_id -> (bookings, value, passengers) from the Lambda's printed table."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"\s*(\d+)\s{2}.*?\s(\d+)\s+(\d+\.\d\d)\s+(\d+)\s*$", line)
        if match:
            rows[int(match[1])] = (int(match[2]), Decimal(match[3]), int(match[4]))
    return rows


def database_metrics(url: str) -> dict[int, tuple[int, Decimal, int]]:
    rows = query(url, """
        SELECT d.destination_id, count(b.booking_id), coalesce(sum(b.total_booking_value), 0),
               coalesce(sum(b.number_of_passengers), 0)
        FROM destination d LEFT JOIN booking b USING (destination_id)
        GROUP BY d.destination_id""")
    return {r[0]: (r[1], Decimal(r[2]).quantize(Decimal("0.01")), r[3]) for r in rows}


def row_versions(url: str) -> dict[str, list]:
    return {
        table: query(url, f"SELECT {key}, xmin::text FROM {table} ORDER BY {key}")
        for table, key in (("customer", "customer_id"), ("destination", "destination_id"), ("booking", "booking_id"))
    }


def exported_rows(mirror: Path, manifest: dict, table: str) -> int:
    rows = 0
    for path in sorted((mirror / manifest["date"] / manifest["run_id"] / table).glob("*.csv.zip")):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                rows += archive.read(member).decode().count("\n") - 1  # minus the header
    return rows


@pytest.fixture
def local_repo():
    # Not under pytest's basetemp: a concurrent pytest session makes that folder private
    # again, and the embedded server (an unprivileged user when we are root) must reach it.
    folder = Path(tempfile.mkdtemp(prefix="waddle-travel-"))
    repo = repository_copy(folder / "repo")
    try:
        yield repo
    finally:
        local_services.EmbeddedPostgres(repo / ".local" / "postgres").stop_leftover()  # after a failed test
        shutil.rmtree(folder, ignore_errors=True)


def test_travel_sh_local_mode_runs_everything_and_a_rerun_changes_nothing(local_repo, tmp_path):
    day = "2026-01-15"
    first = travel(local_repo, "--date", day, cwd=tmp_path)  # from another folder on purpose
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("travel.sh: local mode")
    for stage in ("download", "schema", "load", "export", "metrics"):
        assert re.search(rf"\] {stage}: done in \d+\.\d s", first.stderr), stage

    cluster = local_services.EmbeddedPostgres(local_repo / ".local" / "postgres").start()
    try:
        url = cluster.url("travel")
        counts = {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in ("customer", "destination", "booking")}
        assert counts == {"customer": 201, "destination": 51, "booking": 203}
        assert metrics_table(first.stdout) == database_metrics(url)
        before = row_versions(url)
    finally:
        cluster.stop()

    mirror = local_repo / ".local" / "s3"
    manifest = json.loads((mirror / day / "_manifest.json").read_text())
    assert {t: manifest["tables"][t]["rows"] for t in counts} == counts
    assert {t: exported_rows(mirror, manifest, t) for t in counts} == counts
    assert sorted(o["key"] for o in manifest["objects"]) == sorted(
        p.relative_to(mirror).as_posix() for p in mirror.rglob("*.csv.zip")
    )

    second = travel(local_repo, "--date", day)
    assert second.returncode == 0, second.stderr
    assert metrics_table(second.stdout) == metrics_table(first.stdout)
    cluster.start()
    try:
        assert row_versions(url) == before  # no row rewritten
        assert query(url, """SELECT table_name, rows_inserted, rows_updated FROM load_run_table
                              WHERE run_id = (SELECT max(run_id) FROM load_run) ORDER BY 1""") == [
            ("booking", 0, 0), ("customer", 0, 0), ("destination", 0, 0)]
    finally:
        cluster.stop()
    again = json.loads((mirror / day / "_manifest.json").read_text())
    assert again["run_id"] > manifest["run_id"]  # a new run, beside the one it replaced
    assert sorted(o["key"] for o in again["objects"]) == sorted(
        o["key"].replace(manifest["run_id"], again["run_id"]) for o in manifest["objects"])
    assert again["tables"] == manifest["tables"]
    assert sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*.csv.zip")) == sorted(
        o["key"] for o in manifest["objects"] + again["objects"])


def test_travel_sh_stops_its_services_on_ctrl_c(local_repo):
    process = subprocess.Popen(
        [str(local_repo / "travel.sh")], cwd=local_repo, env=travel_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        for line in process.stderr:
            if "load: started" in line:
                os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
                break
        process.stderr.read()
        assert process.wait(timeout=60) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (local_repo / ".local" / "postgres" / "postmaster.pid").exists()
    assert not (local_repo / ".local" / "services.env").exists()


def start_local_run(repo: Path, *args: str) -> subprocess.Popen:
    """A local-mode travel.sh in its own session; its stderr is read line by line."""
    return subprocess.Popen(
        [str(repo / "travel.sh"), *args], cwd=repo, env=travel_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """The stderr lines of `process` up to the one containing `text`."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came:\n{''.join(lines)}")


def stop_run(process: subprocess.Popen) -> None:
    """After a failed test: nothing of the run keeps going."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def local_services_pid(repo: Path) -> int:
    """The pid of the `python -m waddle_common.local_services serve` of the local run in
    `repo` (travel.sh runs it from there)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"waddle_common.local_services" in argv and b"serve" in argv and Path(cwd) == repo.resolve():
            found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def test_travel_sh_local_mode_runs_where_pythonsafepath_keeps_script_folders_off_sys_path(local_repo):
    result = travel(local_repo, env={"PYTHONSAFEPATH": "1"})
    assert result.returncode == 0, result.stderr
    assert metrics_table(result.stdout)


def test_travel_sh_second_local_run_is_refused_and_the_first_completes(local_repo):
    first = start_local_run(local_repo)
    try:
        read_until(first, "] load: started")  # its services are up and a stage is running
        os.kill(first.pid, signal.SIGSTOP)  # held there, whatever the speed of the machine
        second = travel(local_repo)
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=RUN_TIMEOUT)
    finally:
        stop_run(first)

    assert second.returncode == 1
    assert second.stderr == (
        f"travel.sh: error: another travel.sh run is using {local_repo}/.local (pid {first.pid});"
        " local mode runs one at a time: wait for it to finish\n")
    assert second.stdout == ""
    assert first.returncode == 0, err
    assert re.search(r"all 5 stages done in \d+\.\d s", err)
    assert "Bad file descriptor" not in err
    assert len(metrics_table(out)) == 51
    assert travel(local_repo, "--only", "download").returncode == 0  # the lock ended with the run


def test_travel_sh_lock_of_a_killed_run_ends_once_its_services_have_stopped(local_repo):
    first = start_local_run(local_repo)
    try:
        read_until(first, "] load: started")
        os.kill(first.pid, signal.SIGKILL)  # travel.sh alone: no trap runs
        # Blocks until no process of the killed run holds the lock any more.
        subprocess.run([sys.executable, "-c", "import fcntl, sys; fcntl.flock(open(sys.argv[1]), fcntl.LOCK_EX)",
                        str(local_repo / ".local" / "travel.lock")], check=True, timeout=120)
        first.communicate(timeout=RUN_TIMEOUT)
    finally:
        stop_run(first)

    assert not (local_repo / ".local" / "postgres" / "postmaster.pid").exists()  # stopped before the lock ended
    again = travel(local_repo, "--only", "download")
    assert again.returncode == 0, again.stderr


def test_travel_sh_services_killed_mid_run_is_one_line_not_a_bad_descriptor(local_repo):
    first = start_local_run(local_repo)
    try:
        read_until(first, "] download: started")
        os.kill(local_services_pid(local_repo), signal.SIGKILL)  # PostgreSQL runs on; S3 is gone
        _, err = first.communicate(timeout=RUN_TIMEOUT)
    finally:
        stop_run(first)

    assert first.returncode == 1  # the export: no S3 any more
    lines = err.splitlines()
    assert lines[-2].startswith("travel.sh: error: stage export failed with exit status 1")
    assert lines[-1] == ("travel.sh: error: the local services were killed (signal 9) before the run ended;"
                         " the next run stops what they left running")
    assert "Bad file descriptor" not in err
    assert (local_repo / ".local" / "postgres" / "postmaster.pid").exists()  # left running ...
    again = travel(local_repo, "--only", "download")
    assert again.returncode == 0, again.stderr
    assert not (local_repo / ".local" / "postgres" / "postmaster.pid").exists()  # ... and stopped by the next run


@pytest.fixture
def configured(database_url, s3_bucket, sample_dir, monkeypatch, tmp_path):
    """A configured run: the test's PostgreSQL, moto bucket and sample files."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    for table in ("customer", "destination", "booking"):
        monkeypatch.setenv(f"{table.upper()}_CSV_URL", (sample_dir / f"{table}.csv").as_uri())
    monkeypatch.setenv("DOWNLOAD_DIR", str(tmp_path / "downloads"))
    monkeypatch.setenv("REJECTS_DIR", str(tmp_path / "rejects"))
    return database_url


def test_travel_sh_configured_run_uses_the_given_services(configured, s3_bucket, tmp_path):
    import boto3

    repo = repository_copy(tmp_path / "repo")
    result = travel(repo, "--date", "2026-02-01")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("travel.sh: configured mode")
    assert not (repo / ".local").exists()  # nothing embedded started
    assert query(configured, "SELECT count(*) FROM booking")[0][0] == 203
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "2026-02-01/_manifest.json" in keys
    assert metrics_table(result.stdout) == database_metrics(configured)


def test_travel_sh_failing_stage_stops_the_run_and_leaves_the_database(configured, tmp_path, monkeypatch):
    apply_schema(configured)
    repo = repository_copy(tmp_path / "repo")
    assert travel(repo, "--only", "download").returncode == 0
    assert travel(repo, "--from", "load").returncode == 0
    before = row_versions(configured)
    monkeypatch.setenv("BOOKING_CSV_URL", f"http://127.0.0.1:{local_services.free_port()}/booking.csv")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "0")

    result = travel(repo)
    assert result.returncode == 1
    assert "travel.sh: error: stage download failed with exit status 1" in result.stderr
    assert "[2/5] schema" not in result.stderr  # nothing ran after the failure
    assert row_versions(configured) == before


def test_travel_sh_gives_psql_the_password_through_the_environment_only(configured, tmp_path):
    """A psql shim first on PATH records the command line travel.sh gives psql."""
    repo = repository_copy(tmp_path / "repo")
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    record = tmp_path / "psql-argv"
    shim = shim_dir / "psql"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\nexec "{local_services.psql_path()}" "$@"\n')
    shim.chmod(0o755)
    password = re.search(r":([^:@/]+)@", configured)[1]

    result = travel(repo, "--only", "schema", "--verbose", env={"PATH": f"{shim_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    argv = record.read_text().splitlines()
    assert argv == ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "travel.sql"]
    assert password not in result.stdout + result.stderr
    assert query(configured, "SELECT to_regclass('booking') IS NOT NULL")[0][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--from", "nowhere"], "unknown stage for --from: nowhere (stages: download schema load export metrics)"),
        (["--only", "upload"], "unknown stage for --only: upload (stages: download schema load export metrics)"),
        (["--rows", "ten"], "--rows needs a positive whole number, got: ten"),
        (["--env-file", "missing.env"], "env file missing.env does not exist"),
        (["--bogus"], "unknown argument: --bogus"),
    ],
)
def test_travel_sh_rejects_bad_usage_with_exit_2(args, message):
    result = travel(REPO, *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"travel.sh: error: {message}"


def test_travel_sh_help_lists_stages_and_options():
    result = travel(REPO, "--help")
    assert result.returncode == 0
    for word in ("--from", "--only", "--env-file", "--rows", "download schema load export metrics"):
        assert word in result.stdout


def test_schema_stage_falls_back_to_the_embedded_psql(monkeypatch, tmp_path):
    import waddle_common

    monkeypatch.setenv("PATH", str(tmp_path))  # no psql here
    assert waddle_common.find_psql() == local_services.psql_path()


def test_travel_sh_refuses_rows_in_configured_mode(tmp_path):
    result = travel(REPO, "--rows", "10", env={"BOOKING_CSV_URL": (tmp_path / "b.csv").as_uri()})
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith("travel.sh: error: --rows generates data for local mode")
