"""Stage 1 under faults: an HTTP source that keeps failing, stalls, breaks half-way, asks to
retry later, or sends Latin-1 or CR-only files.

Each fault runs on real services (PostgreSQL, moto's S3 server, a local HTTP server), bounded
in time; waits are on real conditions (pg_stat_progress_copy, pg_locks, process exit) with
deadlines, never sleeps. docs/faults.md has the whole fault matrix.
"""

from __future__ import annotations

import time

import pytest
from support.database import (
    query,
)
from support.datasets import write_csv
from support.faults import BOOKING_CSV, counts, error_lines
from support.http_server import BrokenBody, HalfBodyServer, Reply

import download_dataset
import transform_load_csv_data as load_stage

DAY = "2024-05-01"


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
def test_download_faults_persistent_fault_keeps_previous_good_file(http_server, monkeypatch, tmp_path, capsys,
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


def test_download_faults_stalled_server_keeps_previous_good_file(http_server, monkeypatch, tmp_path, capsys):
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
def test_download_faults_body_broken_half_way_keeps_previous_good_file(monkeypatch, tmp_path, capsys, then, reason):
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


def test_download_faults_honours_retry_after(http_server, monkeypatch, tmp_path):
    serve_booking(http_server, monkeypatch, [Reply(503, b"busy", {"Retry-After": "1"}), Reply(200, BOOKING_CSV)])

    started = time.monotonic()
    assert download_dataset.main(["--dest", str(tmp_path), "--only", "booking"]) == 0

    assert time.monotonic() - started >= 1.0  # the server's 1 s, not DOWNLOAD_BACKOFF's 0.01 s
    assert (tmp_path / "booking.csv").read_bytes() == BOOKING_CSV


LATIN1_DESTINATIONS = "destination_id,destination,country,popular_season\n1,São Paulo,Brasil,Summer\n"


def test_download_faults_latin1_file_is_kept_verbatim_and_the_load_says_how_to_read_it(
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


def test_download_faults_latin1_header_is_kept_verbatim(http_server, monkeypatch, tmp_path, capsys):
    """A non-ASCII column name in Latin-1 (an extra column) does not hide the required ones."""
    body = "destination_id,destination,country,popular_season,année\n1,Paris,France,Spring,2024\n".encode("latin-1")
    http_server.routes["/destination.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    monkeypatch.setenv("DESTINATION_CSV_URL", f"{http_server.base_url}/destination.csv")

    assert download_dataset.main(["--dest", str(tmp_path), "--only", "destination"]) == 0

    assert (tmp_path / "destination.csv").read_bytes() == body
    assert "--encoding latin-1" in capsys.readouterr().err



def test_download_faults_cr_only_line_endings_are_a_csv(http_server, monkeypatch, tmp_path):
    """Old Mac exports end lines with CR alone: the header check still finds the columns."""
    body = b"destination_id,destination,country,popular_season\r1,Paris,France,Spring\r"
    http_server.routes["/destination.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    monkeypatch.setenv("DESTINATION_CSV_URL", f"{http_server.base_url}/destination.csv")

    assert download_dataset.main(["--dest", str(tmp_path), "--only", "destination"]) == 0

    assert (tmp_path / "destination.csv").read_bytes() == body
