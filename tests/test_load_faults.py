"""Stage 3 under faults: the loader killed mid-COPY, two loads at once, PostgreSQL restarted
between stages or during a load, Ctrl-C while a load waits for the lock.

Each fault runs on real services (PostgreSQL, moto's S3 server, a local HTTP server), bounded
in time; waits are on real conditions (pg_stat_progress_copy, pg_locks, process exit) with
deadlines, never sleeps. docs/faults.md has the whole fault matrix.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import psycopg2
import pytest
from support.database import (
    LOADER_APPLICATION,
    Observer,
    apply_schema,
    query,
    table_fingerprint,
    wait_until,
    with_database,
)
from support.datasets import SAMPLE_DIR, generate_dataset
from support.exports import read_manifest
from support.faults import LOADER, SAMPLE_COUNTS, counts, error_lines, loaded_sample, waiting_for_the_lock
from support.stages import run_stage_script, stage_env, start_stage_script

import batch_transfer_data_to_cloud_storage as export_stage
import transform_load_csv_data as load_stage
from waddle_common import load_database
from waddle_common.local_services import EmbeddedPostgres

DAY = "2024-05-01"


# ---------------------------------------------------------------------------------------
# The loader (stage 3) killed, serialised, and its database restarted


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """A clean generated dataset large enough that its COPY can be caught in flight."""
    return generate_dataset(tmp_path_factory.mktemp("big"), customers=40_000, bookings=10_000)


def test_load_faults_killed_mid_copy_changes_nothing(schema_db, big_dataset, tmp_path):
    loaded_sample(schema_db)
    before = table_fingerprint(schema_db)
    observer = Observer(schema_db)
    args = ["--data-dir", str(big_dataset), "--rejects-dir", str(tmp_path / "rejects")]
    try:
        loader = start_stage_script(LOADER, args, stage_env(schema_db), tmp_path)

        def copy_in_flight():
            if loader.poll() is not None:
                raise AssertionError(f"the loader ended (exit {loader.returncode}) before its COPY was seen")
            return observer.copying()

        (backend,) = wait_until(copy_in_flight, "the loader's COPY in pg_stat_progress_copy", timeout=120)
        loader.kill()  # SIGKILL: no handler, no rollback from the client side
        loader.communicate(timeout=30)
        assert loader.returncode == -signal.SIGKILL
        wait_until(lambda: backend not in observer.backends(), "the killed loader's backend to end")

        assert table_fingerprint(schema_db) == before
        assert observer.rows("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                             "(SELECT oid FROM pg_database WHERE datname = current_database())") == [(0,)]
    finally:
        observer.close()

    rerun = run_stage_script(LOADER, args, stage_env(schema_db), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert query(schema_db, "SELECT count(*) FROM load_run") == [(2,)]  # the sample's and the rerun's
    latest = query(schema_db, "SELECT table_name, rows_read, rows_loaded FROM load_run_table "
                              "WHERE run_id = (SELECT max(run_id) FROM load_run) ORDER BY 1")
    assert latest == [("booking", 10_000, 10_000), ("customer", 40_000, 40_000), ("destination", 50, 50)]
    assert query(schema_db, "SELECT count(*) FROM customer WHERE customer_id <= 40000") == [(40_000,)]


def test_load_faults_two_loads_are_serialised(schema_db, sample_dir, tmp_path):
    """The test holds the loaders' advisory lock; two loads start and both wait; once it is
    released they run one after the other: the second finds the first's rows and changes nothing."""
    holder = psycopg2.connect(schema_db)
    observer = Observer(schema_db)
    loaders = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (load_database.LOAD_LOCK_KEY,))
        for number in (1, 2):
            args = ["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / f"rejects{number}"), "--verbose"]
            loaders.append(start_stage_script(LOADER, args, stage_env(schema_db), tmp_path))
        wait_until(lambda: len(observer.waiting_on_advisory(load_database.LOAD_LOCK_KEY)) == 2,
                   "both loaders to wait for the load lock", timeout=60)
        assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}
        holder.rollback()  # releases the lock
        results = [loader.communicate(timeout=120) for loader in loaders]
    finally:
        for loader in loaders:
            if loader.poll() is None:
                loader.kill()
        holder.close()
        observer.close()

    assert [loader.returncode for loader in loaders] == [0, 0], results
    for _, stderr in results:
        assert "another load is running; waiting for it to finish" in stderr
    runs = query(schema_db, "SELECT run_id, sum(rows_inserted), sum(rows_updated), min(r.finished_at) "
                            "FROM load_run r JOIN load_run_table USING (run_id) GROUP BY run_id ORDER BY run_id")
    assert [(run[1], run[2]) for run in runs] == [(sum(SAMPLE_COUNTS.values()), 0), (0, 0)]
    assert runs[0][3] < runs[1][3]
    assert counts(schema_db) == SAMPLE_COUNTS


# ---------------------------------------------------------------------------------------
# PostgreSQL stopped and restarted: a private cluster, so the shared one is never disturbed


@pytest.fixture(scope="module")
def private_server():
    folder = Path(tempfile.mkdtemp(prefix="waddle-faults-pg-"))
    server = EmbeddedPostgres(folder / "data").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_db(private_server, monkeypatch, request):
    """A new database with the schema on the private cluster; DATABASE_URL points at it."""
    dbname = f"faults_{request.node.name.split('[')[0][-40:]}"
    admin = psycopg2.connect(private_server.url())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
            cur.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        admin.close()
    url = with_database(private_server.url(), dbname)
    apply_schema(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    return url


def test_load_faults_postgres_restart_between_stages(private_server, private_db, s3_bucket, capsys):
    loaded_sample(private_db)
    assert export_stage.main(["--date", DAY]) == 0
    manifest = read_manifest(s3_bucket, DAY)
    capsys.readouterr()

    private_server.stop()
    try:
        assert load_stage.main(["--data-dir", str(SAMPLE_DIR)]) == 1
        assert export_stage.main(["--date", DAY]) == 1
        lines = error_lines(capsys)
    finally:
        private_server.start()

    target = f"postgres@127.0.0.1:{private_server.port}/{private_db.rsplit('/', 1)[1]}"
    assert len(lines) == 2
    assert lines[0].startswith(f"transform_load_csv_data: error: cannot connect to PostgreSQL {target}: ")
    assert lines[1].startswith(f"batch_transfer_data_to_cloud_storage: error: cannot connect to PostgreSQL {target}: ")
    assert not any(private_server.password in line for line in lines)
    assert read_manifest(s3_bucket, DAY) == manifest  # the failed export touched nothing

    assert load_stage.main(["--data-dir", str(SAMPLE_DIR)]) == 0
    assert export_stage.main(["--date", DAY]) == 0
    assert counts(private_db) == SAMPLE_COUNTS
    assert {t: v["rows"] for t, v in read_manifest(s3_bucket, DAY)["tables"].items()} == SAMPLE_COUNTS



def loader_waiting_for_the_lock(url: str, tmp_path):
    return waiting_for_the_lock(url, load_database.LOAD_LOCK_KEY, LOADER, ["--data-dir", str(SAMPLE_DIR)],
                                LOADER_APPLICATION, tmp_path)


def test_load_faults_postgres_restart_during_a_load(private_server, private_db, tmp_path):
    """The server restarts (fast shutdown) while a load is inside its transaction, waiting
    for the lock: the load fails with one line, nothing is half-written, the rerun loads."""
    with loader_waiting_for_the_lock(private_db, tmp_path) as (loader, observer, _):
        observer.close()
        private_server.restart()
        _, stderr = loader.communicate(timeout=60)

    assert loader.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("transform_load_csv_data: error: load failed and was rolled back, no table changed: ")
    assert counts(private_db) == {"customer": 0, "destination": 0, "booking": 0}

    assert load_stage.main(["--data-dir", str(SAMPLE_DIR)]) == 0
    assert counts(private_db) == SAMPLE_COUNTS


def test_load_faults_waiting_for_the_lock_stops_on_ctrl_c(schema_db, tmp_path):
    """The loader waits for the load lock in its database thread, inside libpq, where no
    signal is seen: Ctrl-C cancels that wait instead of hanging until the other load ends."""
    with loader_waiting_for_the_lock(schema_db, tmp_path) as (loader, observer, _):
        loader.send_signal(signal.SIGINT)
        _, stderr = loader.communicate(timeout=30)  # the lock is still held by the test
        wait_until(lambda: not observer.backends(), "the loader's session to end")

    assert loader.returncode == 130
    assert stderr.strip().splitlines() == ["transform_load_csv_data: error: interrupted"]
    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}


def test_load_rejects_file_that_fails_half_way_leaves_the_old_one_and_no_stray_file(tmp_path):
    """A rejects file whose writing fails after its header (here a row that UTF-8 cannot
    encode) leaves the previous rejects file as it was, and no temporary file beside it."""
    import pandas as pd

    previous = tmp_path / "customer_rejects.csv"
    previous.write_text("the previous load's rejects\n")
    rejects = load_stage.Rejects("customer", ["customer_id"])
    try:
        rejects.add_later(pd.DataFrame({"source_row": [1, 2], "customer_id": pd.Series(["7", "\ud800"], dtype=object),
                                        "reject_reason": ["a", "b"], "raw_record": [None, None]}))
        with pytest.raises(UnicodeEncodeError):
            rejects.write(tmp_path)
    finally:
        rejects.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customer_rejects.csv"]
    assert previous.read_text() == "the previous load's rejects\n"
