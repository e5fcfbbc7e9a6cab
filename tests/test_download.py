"""Stage 1 against a real HTTP server on 127.0.0.1 (and file:// and plain paths)."""

from __future__ import annotations

import pytest

import download_dataset as stage
from conftest import SAMPLE_DIR
from services import Reply

CSV = {name: (SAMPLE_DIR / f"{name}.csv").read_bytes() for name in ("customer", "destination", "booking")}


def serve_all(server, overrides=None):
    """Route /customer.csv etc. to the sample files, with `overrides` for some paths."""
    for name, body in CSV.items():
        server.routes[f"/{name}.csv"] = [Reply(200, body, {"Content-Type": "text/csv"})]
    server.routes.update(overrides or {})


def point_at(server, monkeypatch):
    for name in CSV:
        monkeypatch.setenv(f"{name.upper()}_CSV_URL", f"{server.base_url}/{name}.csv")


def test_download_all_three_files(http_server, monkeypatch, tmp_path):
    serve_all(http_server)
    point_at(http_server, monkeypatch)

    assert stage.main(["--dest", str(tmp_path / "out")]) == 0

    for name, body in CSV.items():
        assert (tmp_path / "out" / f"{name}.csv").read_bytes() == body
    assert not list((tmp_path / "out").glob(".*part"))


def test_download_default_folder_from_env(http_server, monkeypatch, tmp_path):
    serve_all(http_server)
    point_at(http_server, monkeypatch)
    monkeypatch.setenv("DOWNLOAD_DIR", str(tmp_path / "from-env"))
    assert stage.main([]) == 0
    assert (tmp_path / "from-env" / "booking.csv").exists()


@pytest.mark.parametrize(
    "replies",
    [
        [Reply(500, b"oops"), Reply(200, CSV["booking"])],
        [Reply(503, b"busy", {"Retry-After": "0"}), Reply(200, CSV["booking"])],
        [Reply(429, b"slow down"), Reply(200, CSV["booking"])],
        [Reply(reset=True), Reply(200, CSV["booking"])],
        [Reply(200, CSV["booking"][:100], declared_length=len(CSV["booking"])), Reply(200, CSV["booking"])],
    ],
    ids=["500-then-200", "503-retry-after", "429", "connection-reset", "truncated-then-whole"],
)
def test_download_retries_transient_failures(http_server, monkeypatch, tmp_path, replies):
    serve_all(http_server, {"/booking.csv": replies})
    point_at(http_server, monkeypatch)

    assert stage.main(["--dest", str(tmp_path)]) == 0

    assert (tmp_path / "booking.csv").read_bytes() == CSV["booking"]
    assert http_server.hits["/booking.csv"] == 2


@pytest.mark.parametrize(
    "reply, reason",
    [
        (Reply(404, b"missing"), "HTTP 404"),
        (Reply(403, b"forbidden"), "HTTP 403"),
        (Reply(200, b"<html><body>Rate limited</body></html>", {"Content-Type": "text/html"}), "HTML"),
        (Reply(200, b"<!DOCTYPE html><html></html>", {"Content-Type": "text/plain"}), "HTML"),
        (Reply(200, b""), "empty body"),
        (Reply(200, b"id,name\n1,x\n"), "lacks column(s)"),
    ],
    ids=["404", "403", "html-content-type", "html-body", "empty", "wrong-columns"],
)
def test_download_failure_keeps_good_file(http_server, monkeypatch, tmp_path, capsys, reply, reason):
    serve_all(http_server, {"/booking.csv": [reply]})
    point_at(http_server, monkeypatch)
    good = tmp_path / "booking.csv"
    good.write_bytes(b"the previous good file")

    assert stage.main(["--dest", str(tmp_path)]) == 1

    assert good.read_bytes() == b"the previous good file"
    assert (tmp_path / "customer.csv").read_bytes() == CSV["customer"]
    assert http_server.hits["/booking.csv"] == 1  # permanent failures are not retried
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{http_server.base_url}/booking.csv" in err[0] and reason in err[0]
    assert not list(tmp_path.glob(".*part"))


def test_download_gives_up_after_retries(http_server, monkeypatch, tmp_path, capsys):
    serve_all(http_server, {"/booking.csv": [Reply(500, b"down")]})
    point_at(http_server, monkeypatch)
    monkeypatch.setenv("DOWNLOAD_RETRIES", "2")

    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    assert http_server.hits["/booking.csv"] == 3
    assert not (tmp_path / "booking.csv").exists()
    assert "gave up after 3 attempts" in capsys.readouterr().err


def test_download_stalled_server_times_out(http_server, monkeypatch, tmp_path, capsys):
    serve_all(http_server, {"/booking.csv": [Reply(stall=True)]})
    point_at(http_server, monkeypatch)
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "0")

    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    assert "timed out" in capsys.readouterr().err
    assert not (tmp_path / "booking.csv").exists()


def test_download_from_file_url_and_plain_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CUSTOMER_CSV_URL", (SAMPLE_DIR / "customer.csv").as_uri())
    monkeypatch.setenv("DESTINATION_CSV_URL", str(SAMPLE_DIR / "destination.csv"))
    monkeypatch.setenv("BOOKING_CSV_URL", (SAMPLE_DIR / "booking.csv").as_uri())

    assert stage.main(["--dest", str(tmp_path / "out")]) == 0

    for name, body in CSV.items():
        assert (tmp_path / "out" / f"{name}.csv").read_bytes() == body


def test_download_missing_local_file_names_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BOOKING_CSV_URL", str(tmp_path / "nope.csv"))
    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1
    assert "nope.csv: cannot read" in capsys.readouterr().err


def test_download_unreachable_host(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BOOKING_CSV_URL", "http://127.0.0.1:1/booking.csv")
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1
    assert "http://127.0.0.1:1/booking.csv: connection failed" in capsys.readouterr().err


def test_download_bad_setting_is_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DOWNLOAD_TIMEOUT", "soon")
    assert stage.main(["--dest", str(tmp_path)]) == 2
    assert "DOWNLOAD_TIMEOUT must be a number" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("5", 5.0), (None, None), ("soon", None)])
def test_parse_retry_after(value, expected):
    assert stage.parse_retry_after(value) == expected


def test_backoff_doubles_and_honours_retry_after():
    assert [stage.backoff_delay(a, 1.0, None) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert stage.backoff_delay(1, 1.0, 10.0) == 10.0
    assert stage.backoff_delay(1, 1.0, 3600.0) == stage.MAX_RETRY_AFTER
