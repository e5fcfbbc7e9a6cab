"""The fault matrix (issue 7): each stage under a real fault, on real services, bounded in time.

| Fault                                              | Test                                                  |
|----------------------------------------------------|-------------------------------------------------------|
| loader SIGKILLed in the middle of COPY             | test_faults_load_killed_mid_copy_changes_nothing      |
| PostgreSQL down / restarted between stages         | test_faults_postgres_restart_between_stages           |
| PostgreSQL restarted while a load waits            | test_faults_postgres_restart_during_a_load            |
| two loads at once                                  | test_faults_two_loads_are_serialised                  |
| export while a load holds uncommitted rows         | test_faults_export_during_a_load_is_one_snapshot      |
| export while a load commits                        | test_export.py::test_export_snapshot_ignores_changes_committed_during_the_run |
| HTTP: 500/503/429/reset/short body, then 200       | test_download.py::test_download_retries_transient_failures |
| HTTP: HTML, empty body, 4xx                        | test_download.py::test_download_failure_keeps_good_file |
| HTTP: the same faults for good, stall, mid-body    | test_faults_download_* below                          |
| HTTP: Latin-1 bytes                                | test_faults_download_latin1_*                         |
| S3: 500 / SlowDown for some PUTs                   | test_faults_export_retries_store_faults               |
| S3: a store that keeps failing                     | test_faults_export_store_keeps_failing_then_rerun     |
| Lambda: listed object missing or altered           | test_lambda.py::test_lambda_listed_object_missing_names_its_key, |
|                                                    | test_lambda.py::test_lambda_corrupted_object_names_its_key |

Waits are on real conditions (pg_stat_progress_copy, pg_locks, process exit) with
deadlines; no test sleeps to synchronise.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

import batch_transfer_data_to_cloud_storage as export_stage
import download_dataset
import transform_load_csv_data as load_stage
from conftest import SAMPLE_DIR, apply_schema, query, with_database, write_csv
from faults_helpers import (
    INTERNAL_ERROR,
    SLOW_DOWN,
    BrokenBody,
    FaultyStore,
    HalfBodyServer,
    Observer,
    export_rows,
    generate_dataset,
    read_manifest,
    run_stage,
    s3_keys,
    stage_env,
    start_stage,
    table_fingerprint,
    wait_until,
)
from services import EmbeddedPostgres, Reply

DAY = "2024-05-01"
LOADER = "transform_load_csv_data.py"
SAMPLE_COUNTS = {"customer": 201, "destination": 51, "booking": 203}
BOOKING_CSV = (SAMPLE_DIR / "booking.csv").read_bytes()


@pytest.fixture(autouse=True)
def quiet_moto_server():
    """moto's server runs in this process: keep its request log out of the stderr tests read."""
    logger = logging.getLogger("werkzeug")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


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
    assert lines == [f"download_dataset: error: {http_server.base_url}/booking.csv: {reason} (gave up after 3 attempts)"]
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
