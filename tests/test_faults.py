"""The fault matrix: each stage under a real fault, on real services, bounded in time.

Where each fault is tested (test_download.py, test_export.py and tests/lambda/ already
had some; they are referenced, not repeated):

- loader SIGKILLed in the middle of COPY: test_faults_load_killed_mid_copy_changes_nothing
- PostgreSQL down between stages, then back: test_faults_postgres_restart_between_stages
- PostgreSQL restarted while a load runs: test_faults_postgres_restart_during_a_load
- two loads at once: test_faults_two_loads_are_serialised
- export while a load holds uncommitted rows: test_faults_export_during_a_load_is_one_snapshot;
  while a load commits: test_export.py::test_export_snapshot_ignores_changes_committed_during_the_run
- HTTP 500 / 503 Retry-After / 429 / reset / short body, then 200:
  test_download.py::test_download_retries_transient_failures
- HTTP HTML page, empty body, 4xx: test_download.py::test_download_failure_keeps_good_file
- HTTP faults that never stop, a stall, a body broken half-way, Retry-After honoured,
  Latin-1 bytes, CR-only line ends: test_faults_download_* below
- S3 500 / SlowDown for some PUTs: test_faults_export_retries_store_faults; a store that
  keeps failing: test_faults_export_store_keeps_failing_then_rerun (and
  test_export.py::test_export_failure_part_way_keeps_the_previous_export for AccessDenied)
- the export SIGKILLed during an upload: test_faults_export_killed_mid_upload_keeps_the_previous_export
- two exports of one day at once, a load committed between them:
  test_faults_two_exports_of_a_day_are_serialised; an export waiting for the lock reads
  what was committed while it waited: test_faults_export_snapshot_starts_once_the_lock_is_held;
  Ctrl-C while it waits: test_faults_export_waiting_for_the_lock_stops_on_ctrl_c; the lock's
  session lost mid-run: test_faults_export_that_lost_its_lock_publishes_nothing
- Lambda, a listed object missing or altered: lambda/test_lambda_failures.py::
  test_lambda_listed_object_missing_names_its_key
  and lambda/test_lambda_failures.py::test_lambda_corrupted_object_names_its_key

Waits are on real conditions (pg_stat_progress_copy, pg_locks, process exit) with
deadlines; no test sleeps to synchronise.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

import batch_transfer_data_to_cloud_storage as export_stage
import download_dataset
import transform_load_csv_data as load_stage
from support.database import apply_schema, new_database, query, with_database
from support.datasets import SAMPLE_DIR, write_csv
from support.database import EXPORT_LOCK_APPLICATION, LOADER_APPLICATION, Observer, table_fingerprint, wait_until
from support.datasets import generate_dataset
from support.exports import export_rows, read_manifest, s3_keys
from support.fault_proxy import FaultyStore, INTERNAL_ERROR, SLOW_DOWN
from support.http_server import BrokenBody, HalfBodyServer
from support.stages import run_stage_script, stage_env, start_stage_script
from local_services import EmbeddedPostgres
from support.http_server import Reply

DAY = "2024-05-01"
LOADER = "transform_load_csv_data.py"
EXPORTER = "batch_transfer_data_to_cloud_storage.py"
SAMPLE_COUNTS = {"customer": 201, "destination": 51, "booking": 203}
BOOKING_CSV = (SAMPLE_DIR / "booking.csv").read_bytes()


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def counts(url: str) -> dict[str, int]:
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in SAMPLE_COUNTS}


# ---------------------------------------------------------------------------------------
# HTTP source (stage 1). test_download.py has each transient fault followed by a 200 and
# the permanent ones (4xx, HTML, empty, wrong columns); here: the transient ones that never
# stop, the body that breaks half-way, Retry-After, and Latin-1.


def serve_booking(server, monkeypatch, replies):
    server.routes["/booking.csv"] = replies
    monkeypatch.setenv("BOOKING_CSV_URL", f"{server.base_url}/booking.csv")


@pytest.mark.parametrize(
    "reply, reason",
    [
        (Reply(500, b"down"), "HTTP 500 Internal Server Error"),
        (Reply(503, b"busy", {"Retry-After": "0"}), "HTTP 503 Service Unavailable"),
        (Reply(reset=True), "connection failed"),
        (Reply(200, BOOKING_CSV[:500], {"Content-Type": "text/csv"}, declared_length=len(BOOKING_CSV)),
         "connection broken mid-body"),
    ],
    ids=["500", "503", "reset", "short-body"],
)
def test_faults_download_persistent_fault_keeps_previous_good_file(http_server, monkeypatch, tmp_path, capsys,
                                                                    reply, reason):
    serve_booking(http_server, monkeypatch, [reply])
    monkeypatch.setenv("DOWNLOAD_RETRIES", "2")
    good = tmp_path / "booking.csv"
    good.write_bytes(BOOKING_CSV)

    assert download_dataset.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    assert good.read_bytes() == BOOKING_CSV
    assert http_server.hits["/booking.csv"] == 3
    lines = [line for line in error_lines(capsys) if "error:" in line]
    url = f"{http_server.base_url}/booking.csv"
    assert lines == [f"download_dataset: error: {url}: {reason} (gave up after 3 attempts)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["booking.csv"]


def test_faults_download_stalled_server_keeps_previous_good_file(http_server, monkeypatch, tmp_path, capsys):
    serve_booking(http_server, monkeypatch, [Reply(stall=True)])
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    (tmp_path / "booking.csv").write_bytes(BOOKING_CSV)

    started = time.monotonic()
    assert download_dataset.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    assert time.monotonic() - started < 10
    assert (tmp_path / "booking.csv").read_bytes() == BOOKING_CSV
    assert error_lines(capsys)[-1].endswith("booking.csv: timed out (gave up after 2 attempts)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["booking.csv"]


@pytest.mark.parametrize("then, reason", [("stall", "timed out"), ("reset", "connection broken mid-body")])
def test_faults_download_body_broken_half_way_keeps_previous_good_file(monkeypatch, tmp_path, capsys, then, reason):
    """Headers and half the body arrive, then the server stalls or resets the connection."""
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "0.3")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    (tmp_path / "booking.csv").write_bytes(b"previous good file")
    with HalfBodyServer(BrokenBody(BOOKING_CSV, sent=len(BOOKING_CSV) // 2, then=then)) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert download_dataset.main(["--dest", str(tmp_path), "--only", "booking"]) == 1
        assert server.hits == 2

    assert (tmp_path / "booking.csv").read_bytes() == b"previous good file"
    assert error_lines(capsys)[-1] == f"download_dataset: error: {server.url}: {reason} (gave up after 2 attempts)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["booking.csv"]


def test_faults_download_honours_retry_after(http_server, monkeypatch, tmp_path):
    serve_booking(http_server, monkeypatch, [Reply(503, b"busy", {"Retry-After": "1"}), Reply(200, BOOKING_CSV)])

    started = time.monotonic()
    assert download_dataset.main(["--dest", str(tmp_path), "--only", "booking"]) == 0

    assert time.monotonic() - started >= 1.0  # the server's 1 s, not DOWNLOAD_BACKOFF's 0.01 s
    assert (tmp_path / "booking.csv").read_bytes() == BOOKING_CSV


LATIN1_DESTINATIONS = "destination_id,destination,country,popular_season\n1,São Paulo,Brasil,Summer\n"


def test_faults_download_latin1_file_is_kept_verbatim_and_the_load_says_how_to_read_it(
    http_server, monkeypatch, tmp_path, capsys, schema_db
):
    """A Latin-1 file is the source's bytes, not a broken download: it is stored unchanged with
    a warning, the load refuses it with one line saying what to do, and --encoding loads it."""
    body = LATIN1_DESTINATIONS.encode("latin-1")
    http_server.routes["/destination.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    monkeypatch.setenv("DESTINATION_CSV_URL", f"{http_server.base_url}/destination.csv")
    data = tmp_path / "data"

    assert download_dataset.main(["--dest", str(data), "--only", "destination"]) == 0

    assert (data / "destination.csv").read_bytes() == body
    assert "destination.csv is not UTF-8" in capsys.readouterr().err
    write_csv(data / "customer.csv", "customer_id,first_name,last_name,email,phone\n1,Ana,Souza,ana@example.com,\n")
    write_csv(data / "booking.csv", "booking_id,customer_id,booking_date,destination,number_of_passengers,"
                                    "cost_per_passenger\n1,1,2024-01-01,São Paulo,1,10.00\n")

    assert load_stage.main(["--data-dir", str(data)]) == 2
    assert error_lines(capsys) == [
        "transform_load_csv_data: error: destination.csv is not utf-8 text (invalid continuation byte at byte "
        f"{body.index('ã'.encode('latin-1'))}); convert it (iconv -f latin1 -t utf-8) or pass --encoding latin-1"
    ]
    assert counts(schema_db)["destination"] == 0

    (data / "booking.csv").write_bytes((data / "booking.csv").read_text().encode("latin-1"))
    (data / "customer.csv").write_bytes((data / "customer.csv").read_text().encode("latin-1"))
    assert load_stage.main(["--data-dir", str(data), "--encoding", "latin-1"]) == 0
    assert query(schema_db, "SELECT destination, country FROM destination") == [("São Paulo", "Brasil")]
    assert query(schema_db, "SELECT destination_id FROM booking") == [(1,)]


def test_faults_download_latin1_header_is_kept_verbatim(http_server, monkeypatch, tmp_path, capsys):
    """A non-ASCII column name in Latin-1 (an extra column) does not hide the required ones."""
    body = "destination_id,destination,country,popular_season,année\n1,Paris,France,Spring,2024\n".encode("latin-1")
    http_server.routes["/destination.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    monkeypatch.setenv("DESTINATION_CSV_URL", f"{http_server.base_url}/destination.csv")

    assert download_dataset.main(["--dest", str(tmp_path), "--only", "destination"]) == 0

    assert (tmp_path / "destination.csv").read_bytes() == body
    assert "--encoding latin-1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The loader (stage 3) killed, serialised, and its database restarted


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """A clean generated dataset large enough that its COPY can be caught in flight."""
    return generate_dataset(tmp_path_factory.mktemp("big"), customers=40_000, bookings=10_000)


def loaded_sample(url: str) -> None:
    assert load_stage.main(["--data-dir", str(SAMPLE_DIR), "--rejects-dir", "rejects"]) == 0
    assert counts(url) == SAMPLE_COUNTS


def test_faults_load_killed_mid_copy_changes_nothing(schema_db, big_dataset, tmp_path):
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


def test_faults_two_loads_are_serialised(schema_db, sample_dir, tmp_path):
    """The test holds the loaders' advisory lock; two loads start and both wait; once it is
    released they run one after the other: the second finds the first's rows and changes nothing."""
    holder = psycopg2.connect(schema_db)
    observer = Observer(schema_db)
    loaders = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (load_stage.LOAD_LOCK_KEY,))
        for number in (1, 2):
            args = ["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / f"rejects{number}"), "--verbose"]
            loaders.append(start_stage_script(LOADER, args, stage_env(schema_db), tmp_path))
        wait_until(lambda: len(observer.waiting_on_advisory(load_stage.LOAD_LOCK_KEY)) == 2,
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


def test_faults_postgres_restart_between_stages(private_server, private_db, s3_bucket, capsys):
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


@contextmanager
def waiting_for_the_lock(url: str, key: int, script: str, args: list[str], application: str, tmp_path):
    """`script` started while the test holds the advisory lock `key`, once it waits for it:
    (the process, an Observer of the database, the holder's connection, to unlock early).
    The lock is let go on leaving."""
    holder = psycopg2.connect(url)
    holder.autocommit = True
    observer = Observer(url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        process = start_stage_script(script, args, stage_env(url), tmp_path)
        wait_until(lambda: observer.waiting_on_advisory(key, application), f"{script} to wait", timeout=60)
        yield process, observer, holder
    finally:
        holder.close()
        observer.close()


def loader_waiting_for_the_lock(url: str, tmp_path):
    return waiting_for_the_lock(url, load_stage.LOAD_LOCK_KEY, LOADER, ["--data-dir", str(SAMPLE_DIR)],
                                LOADER_APPLICATION, tmp_path)


def test_faults_postgres_restart_during_a_load(private_server, private_db, tmp_path):
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


def test_faults_load_waiting_for_the_lock_stops_on_ctrl_c(schema_db, tmp_path):
    """The loader waits for the load lock in its database thread, inside libpq, where no
    signal is seen: Ctrl-C cancels that wait instead of hanging until the other load ends."""
    with loader_waiting_for_the_lock(schema_db, tmp_path) as (loader, observer, _):
        loader.send_signal(signal.SIGINT)
        _, stderr = loader.communicate(timeout=30)  # the lock is still held by the test
        wait_until(lambda: not observer.backends(), "the loader's session to end")

    assert loader.returncode == 130
    assert stderr.strip().splitlines() == ["transform_load_csv_data: error: interrupted"]
    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}


# ---------------------------------------------------------------------------------------
# Export (stage 4) during a load, and against a failing store


LATER = {
    "customer.csv": "customer_id,first_name,last_name,email,phone\n500,New,Person,new.person@example.com,\n",
    "destination.csv": "destination_id,destination,country,popular_season\n60,Oslo North,Norway,winter\n",
    "booking.csv": "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"
                   "900,1,2024-01-01,Paris,2,10.00\n901,500,2024-01-02,oslo north,1,20.00\n",
}


def exported_state(bucket: str) -> tuple[dict[str, int], dict[str, set[str]]]:
    """(row counts the manifest states, the keys found in the objects) after checking that
    every object's rows and bytes agree with the manifest."""
    manifest = read_manifest(bucket, DAY)
    rows = export_rows(bucket, manifest)
    stated = {table: entry["rows"] for table, entry in manifest["tables"].items()}
    assert {table: len(found) for table, found in rows.items()} == stated
    key_of = {"customer": "customer_id", "destination": "destination_id", "booking": "booking_id"}
    return stated, {table: {row[key_of[table]] for row in found} for table, found in rows.items()}


def test_faults_export_during_a_load_is_one_snapshot(schema_db, s3_bucket, tmp_path):
    """A real load has written its rows but not committed (it waits for the audit table the
    test has locked): the export shows the state before it; after the commit, the state after."""
    loaded_sample(schema_db)
    for name, text in LATER.items():
        write_csv(tmp_path / "later" / name, text)
    holder = psycopg2.connect(schema_db)
    observer = Observer(schema_db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE load_run IN ACCESS EXCLUSIVE MODE")
        loader = start_stage_script(LOADER, ["--data-dir", str(tmp_path / "later")], stage_env(schema_db), tmp_path)
        (backend,) = wait_until(lambda: observer.waiting_on_table("load_run"), "the load to reach its audit row",
                                timeout=60)
        assert observer.rows("SELECT query FROM pg_stat_activity WHERE pid = %s", (backend,))[0][0].startswith(
            "INSERT INTO load_run")  # customers, destinations and bookings are written, not committed

        assert export_stage.main(["--date", DAY]) == 0
        during, during_keys = exported_state(s3_bucket)

        holder.rollback()  # the load goes on and commits
        _, stderr = loader.communicate(timeout=60)
        assert loader.returncode == 0, stderr
    finally:
        holder.close()
        observer.close()

    assert during == SAMPLE_COUNTS
    assert "500" not in during_keys["customer"] and "901" not in during_keys["booking"]
    assert export_stage.main(["--date", DAY]) == 0
    after, after_keys = exported_state(s3_bucket)
    assert after == {"customer": 202, "destination": 52, "booking": 205}
    assert {"500"} <= after_keys["customer"] and {"900", "901"} <= after_keys["booking"]


@pytest.fixture(scope="module")
def exported_sample_db(pg_admin_url, tmp_path_factory):
    """One database with the sample loaded, shared by the export tests: they only read it."""
    with new_database(pg_admin_url, "faults_export") as url:
        apply_schema(url)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DATABASE_URL", url)
            rejects = tmp_path_factory.mktemp("rejects")
            patch.chdir(rejects)  # no developer's .env is read
            assert load_stage.main(["--data-dir", str(SAMPLE_DIR), "--rejects-dir", str(rejects)]) == 0
        assert counts(url) == SAMPLE_COUNTS
        yield url


@pytest.fixture
def sample_db(exported_sample_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", exported_sample_db)
    return exported_sample_db


def assert_complete_export(bucket: str) -> dict:
    """The day's manifest lists intact objects holding every row, its run's folder holds
    exactly those, and the day holds nothing else but the runs the manifest keeps."""
    stated, _ = exported_state(bucket)
    assert stated == SAMPLE_COUNTS
    manifest = read_manifest(bucket, DAY)
    run_folder = f"{DAY}/{manifest['run_id']}/"
    assert [k for k in s3_keys(bucket) if k.startswith(run_folder)] == sorted(o["key"] for o in manifest["objects"])
    kept = {f"{DAY}/{k['run_id']}/" for k in manifest["kept_runs"]}
    assert all(key == f"{DAY}/_manifest.json" or key.startswith((run_folder, *kept)) for key in s3_keys(bucket))
    return manifest


def run_keys(bucket: str, run_id: str) -> list[str]:
    return [key for key in s3_keys(bucket) if key.startswith(f"{DAY}/{run_id}/")]


@pytest.mark.parametrize(
    "fail, error",
    [
        (lambda n: n <= 3, INTERNAL_ERROR),
        (lambda n: n <= 2, SLOW_DOWN),
        (lambda n: n % 3 == 0, INTERNAL_ERROR),
    ],
    ids=["first-3-puts-500", "first-2-puts-slowdown", "every-3rd-put-500"],
)
def test_faults_export_retries_store_faults(sample_db, s3_bucket, moto_endpoint, monkeypatch, fail, error):
    with FaultyStore(moto_endpoint, fail, error) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.url)
        assert export_stage.main(["--date", DAY, "--batch-size", "50"]) == 0
        assert store.failed >= 2

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert_complete_export(s3_bucket)


def test_faults_export_store_keeps_failing_then_rerun(sample_db, s3_bucket, moto_endpoint, monkeypatch, capsys):
    assert export_stage.main(["--date", DAY, "--batch-size", "50"]) == 0
    previous = read_manifest(s3_bucket, DAY)
    capsys.readouterr()

    with FaultyStore(moto_endpoint, lambda n: True) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.url)
        assert export_stage.main(["--date", DAY, "--batch-size", "40"]) == 1
        assert store.failed >= 5  # each upload is tried 5 times before the run gives up

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith(f"batch_transfer_data_to_cloud_storage: error: S3 refused uploading {DAY}/")
    assert lines[0].endswith(f"in bucket {s3_bucket} (InternalError: We encountered an internal error. "
                             "Please try again.)")
    assert read_manifest(s3_bucket, DAY) == previous  # readers still see the previous export, whole
    assert_complete_export(s3_bucket)

    assert export_stage.main(["--date", DAY, "--batch-size", "40"]) == 0
    assert [k["run_id"] for k in assert_complete_export(s3_bucket)["kept_runs"]] == [previous["run_id"]]


def test_faults_export_killed_mid_upload_keeps_the_previous_export(sample_db, s3_bucket, moto_endpoint, monkeypatch,
                                                                  tmp_path):
    """SIGKILL after 5 objects are stored, while the next uploads hang: the day still shows
    the previous export, whole; the next run publishes a complete one and deletes the killed
    run's objects (no manifest ever named them)."""
    monkeypatch.setattr(export_stage, "KEEP_REPLACED_SECONDS", 0)
    assert export_stage.main(["--date", DAY, "--batch-size", "50"]) == 0
    previous = read_manifest(s3_bucket, DAY)
    # PUTs after the 5th hang, then fail: none reaches the store after the kill.
    with FaultyStore(moto_endpoint, fail=lambda n: n > 5, hold=True, hold_after=5) as store:
        env = stage_env(sample_db, AWS_ENDPOINT_URL=store.url)
        exporter = start_stage_script(EXPORTER, ["--date", DAY, "--batch-size", "40"], env, tmp_path)
        try:
            assert store.put_arrived.wait(60), "the export never reached its 6th upload"
        finally:
            exporter.kill()
            exporter.communicate(timeout=30)
    assert exporter.returncode == -signal.SIGKILL

    assert read_manifest(s3_bucket, DAY) == previous
    assert exported_state(s3_bucket)[0] == SAMPLE_COUNTS  # readable, whole
    (killed,) = {key.split("/")[1] for key in s3_keys(s3_bucket)} - {previous["run_id"], "_manifest.json"}
    assert len(run_keys(s3_bucket, killed)) == 5

    assert export_stage.main(["--date", DAY, "--batch-size", "40"]) == 0
    manifest = assert_complete_export(s3_bucket)
    assert run_keys(s3_bucket, killed) == []
    assert [k["run_id"] for k in manifest["kept_runs"]] == [previous["run_id"]]


def test_faults_two_exports_of_a_day_are_serialised(schema_db, s3_bucket, moto_endpoint, tmp_path):
    """The case that found it: a slow export (--batch-size 1 --workers 1, its uploads hanging) has
    its snapshot; a load commits; a second export starts. The second waits for the first to
    publish, then exports a snapshot taken after the load: its manifest is the day's, every
    object matches its SHA-256, and the first run's objects are intact beside it."""
    loaded_sample(schema_db)
    for name, text in LATER.items():
        write_csv(tmp_path / "later" / name, text)
    key = export_stage.export_lock_key(s3_bucket, "", DAY)
    observer = Observer(schema_db)
    exporters = []
    try:
        with FaultyStore(moto_endpoint, hold=True) as slow_store:
            exporters.append(start_stage_script(EXPORTER, ["--date", DAY, "--batch-size", "1", "--workers", "1"],
                                         stage_env(schema_db, AWS_ENDPOINT_URL=slow_store.url), tmp_path))
            assert slow_store.put_arrived.wait(60), "the first export never started an upload"
            assert load_stage.main(["--data-dir", str(tmp_path / "later")]) == 0
            exporters.append(start_stage_script(EXPORTER, ["--date", DAY, "--verbose"], stage_env(schema_db), tmp_path))
            wait_until(lambda: observer.waiting_on_advisory(key, EXPORT_LOCK_APPLICATION),
                       "the second export to wait for the first", timeout=60)
            slow_store.gate.set()
            results = [exporter.communicate(timeout=120) for exporter in exporters]
    finally:
        for exporter in exporters:
            if exporter.poll() is None:
                exporter.kill()
        observer.close()

    assert [exporter.returncode for exporter in exporters] == [0, 0], results
    assert f"another export of {DAY} to s3://{s3_bucket}/{DAY}/ is running; waiting for it to finish" in results[1][1]
    after = {"customer": 202, "destination": 52, "booking": 205}
    stated, keys = exported_state(s3_bucket)  # checks every object's size and SHA-256
    assert stated == after and "500" in keys["customer"] and "901" in keys["booking"]
    manifest = read_manifest(s3_bucket, DAY)
    (first_run,) = [k["run_id"] for k in manifest["kept_runs"]]
    assert first_run < manifest["run_id"]
    # One row per object: the first run's snapshot, before the load, is intact beside the second's.
    assert len(run_keys(s3_bucket, first_run)) == sum(SAMPLE_COUNTS.values())


def test_faults_export_snapshot_starts_once_the_lock_is_held(schema_db, s3_bucket, tmp_path):
    """The test holds the day's export lock: the export waits (and says so); a change
    committed while it waits is in what it then exports."""
    loaded_sample(schema_db)
    key = export_stage.export_lock_key(s3_bucket, "", DAY)
    with waiting_for_the_lock(schema_db, key, EXPORTER, ["--date", DAY, "--verbose"], EXPORT_LOCK_APPLICATION,
                              tmp_path) as (exporter, _, holder):
        query(schema_db, "UPDATE destination SET destination = 'Renamed while waiting' WHERE destination_id = "
                         "(SELECT min(destination_id) FROM destination)")
        assert read_manifest(s3_bucket, DAY) is None
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
        _, stderr = exporter.communicate(timeout=120)

    assert exporter.returncode == 0, stderr
    assert "is running; waiting for it to finish" in stderr
    rows = export_rows(s3_bucket, read_manifest(s3_bucket, DAY))
    assert "Renamed while waiting" in {row["destination"] for row in rows["destination"]}


def test_faults_export_waiting_for_the_lock_stops_on_ctrl_c(schema_db, s3_bucket, tmp_path):
    """libpq's wait for a lock does not see signals: without care, Ctrl-C would be ignored
    until the other export finished."""
    key = export_stage.export_lock_key(s3_bucket, "", DAY)
    with waiting_for_the_lock(schema_db, key, EXPORTER, ["--date", DAY], EXPORT_LOCK_APPLICATION,
                              tmp_path) as (exporter, observer, _):
        exporter.send_signal(signal.SIGINT)
        _, stderr = exporter.communicate(timeout=30)  # the lock is still held by the test
        wait_until(lambda: not observer.backends(EXPORT_LOCK_APPLICATION), "the export's session to end")

    assert exporter.returncode == 130
    assert stderr.strip().splitlines() == ["batch_transfer_data_to_cloud_storage: error: interrupted"]
    assert s3_keys(s3_bucket) == []


def test_faults_export_that_lost_its_lock_publishes_nothing(sample_db, s3_bucket, moto_endpoint, tmp_path):
    """The lock's session ends while the export uploads (an administrator's
    pg_terminate_backend, a network cut): another export may now run, so this one publishes
    nothing, removes its objects and says so."""
    assert export_stage.main(["--date", DAY, "--batch-size", "50"]) == 0
    previous = read_manifest(s3_bucket, DAY)
    observer = Observer(sample_db)
    try:
        with FaultyStore(moto_endpoint, hold=True) as store:
            exporter = start_stage_script(EXPORTER, ["--date", DAY, "--batch-size", "40"],
                                   stage_env(sample_db, AWS_ENDPOINT_URL=store.url), tmp_path)
            assert store.put_arrived.wait(60), "the export never started an upload"
            (lock_backend,) = observer.backends(EXPORT_LOCK_APPLICATION)
            observer.rows("SELECT pg_terminate_backend(%s)", (lock_backend,))
            store.gate.set()
            _, stderr = exporter.communicate(timeout=120)
    finally:
        observer.close()

    assert exporter.returncode == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith("batch_transfer_data_to_cloud_storage: error: lost the export lock before publishing")
    assert read_manifest(s3_bucket, DAY) == previous
    assert_complete_export(s3_bucket)
    assert {key.split("/")[1] for key in s3_keys(s3_bucket)} == {previous["run_id"], "_manifest.json"}


def test_faults_download_cr_only_line_endings_are_a_csv(http_server, monkeypatch, tmp_path):
    """Old Mac exports end lines with CR alone: the header check still finds the columns."""
    body = b"destination_id,destination,country,popular_season\r1,Paris,France,Spring\r"
    http_server.routes["/destination.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    monkeypatch.setenv("DESTINATION_CSV_URL", f"{http_server.base_url}/destination.csv")

    assert download_dataset.main(["--dest", str(tmp_path), "--only", "destination"]) == 0

    assert (tmp_path / "destination.csv").read_bytes() == body
