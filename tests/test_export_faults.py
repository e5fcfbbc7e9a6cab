"""Stage 4 under faults: an export during a load, a failing or slow store, the export killed
mid-upload, two exports of a day, a lost lock, Ctrl-C while it waits.

Each fault runs on real services (PostgreSQL, moto's S3 server, a local HTTP server), bounded
in time; waits are on real conditions (pg_stat_progress_copy, pg_locks, process exit) with
deadlines, never sleeps. docs/faults.md has the whole fault matrix.
"""

from __future__ import annotations

import signal

import psycopg2
import pytest
from support.database import (
    EXPORT_LOCK_APPLICATION,
    Observer,
    apply_schema,
    new_database,
    query,
    wait_until,
)
from support.datasets import SAMPLE_DIR, write_csv
from support.exports import export_rows, read_manifest, s3_keys
from support.fault_proxy import INTERNAL_ERROR, SLOW_DOWN, FaultyStore
from support.faults import EXPORTER, LOADER, SAMPLE_COUNTS, counts, error_lines, loaded_sample, waiting_for_the_lock
from support.stages import stage_env, start_stage_script

import batch_transfer_data_to_cloud_storage as export_stage
import transform_load_csv_data as load_stage

DAY = "2024-05-01"


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


def test_export_faults_during_a_load_is_one_snapshot(schema_db, s3_bucket, tmp_path):
    """A real load has written its rows but not committed (it waits to write the audit table the
    test has locked against writers; reading it, as a load does first, is allowed): the export
    shows the state before it; after the commit, the state after."""
    loaded_sample(schema_db)
    for name, text in LATER.items():
        write_csv(tmp_path / "later" / name, text)
    holder = psycopg2.connect(schema_db)
    observer = Observer(schema_db)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE load_run_table IN EXCLUSIVE MODE")  # readers pass, writers wait
        loader = start_stage_script(LOADER, ["--data-dir", str(tmp_path / "later")], stage_env(schema_db), tmp_path)
        (backend,) = wait_until(lambda: observer.waiting_on_table("load_run_table"), "the load to reach its audit rows",
                                timeout=60)
        assert observer.rows("SELECT query FROM pg_stat_activity WHERE pid = %s", (backend,))[0][0].startswith(
            "INSERT INTO load_run_table")  # customers, destinations and bookings are written, not committed

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
def test_export_faults_retries_store_faults(sample_db, s3_bucket, moto_endpoint, monkeypatch, fail, error):
    with FaultyStore(moto_endpoint, fail, error) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.url)
        assert export_stage.main(["--date", DAY, "--batch-size", "50"]) == 0
        assert store.failed >= 2

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert_complete_export(s3_bucket)


def test_export_faults_store_keeps_failing_then_rerun(sample_db, s3_bucket, moto_endpoint, monkeypatch, capsys):
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


def test_export_faults_killed_mid_upload_keeps_the_previous_export(sample_db, s3_bucket, moto_endpoint, monkeypatch,
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


def test_export_faults_two_exports_of_a_day_are_serialised(schema_db, s3_bucket, moto_endpoint, tmp_path):
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


def test_export_faults_snapshot_starts_once_the_lock_is_held(schema_db, s3_bucket, tmp_path):
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


def test_export_faults_waiting_for_the_lock_stops_on_ctrl_c(schema_db, s3_bucket, tmp_path):
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


def test_export_faults_that_lost_its_lock_publishes_nothing(sample_db, s3_bucket, moto_endpoint, tmp_path):
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
