"""Stage 1 against a real HTTP server on 127.0.0.1 (and file:// and plain paths)."""

from __future__ import annotations

import gzip
import socket
import threading
from typing import Self

import pytest

import download_dataset as stage
from support.datasets import SAMPLE_DIR
from support.http_server import Reply

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
    assert stage.backoff_delay(100, 1.0, None) == stage.backoff_delay(10, 1.0, None) == stage.MAX_BACKOFF


# ---------------------------------------------------------------------------------------
# Bodies whose end is not declared up front: close-delimited (no Content-Length), chunked,
# or compressed (Content-Length counts the gzip bytes on the wire, not the CSV's).


@pytest.fixture(autouse=True)
def no_unsized_opt_in(monkeypatch):
    """The developer's shell must not opt in for the tests that expect a refusal."""
    monkeypatch.delenv("DOWNLOAD_ALLOW_UNSIZED", raising=False)


class RawServer:
    """A raw HTTP server on 127.0.0.1 that answers every request with `answer`, bytes exactly
    as given (status line, headers, body), then closes the connection: for the answers
    http.server cannot script (an HTTP/1.0 body ended by the close, a chunked body cut
    before its last chunk)."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.hits = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/booking.csv"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        break
                    request += data
                self.hits += 1
                try:
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_WR)  # the end of the body, for a close-delimited one
                except OSError:
                    pass  # the client hung up first: a refused body is not read to its end

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def close_delimited(body: bytes) -> bytes:
    """An HTTP/1.0 answer without Content-Length: the body is whatever arrives before the close."""
    return b"HTTP/1.0 200 OK\r\nContent-Type: text/csv\r\n\r\n" + body


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"


def chunked(body: bytes, size: int = 1000, last_chunk: bool = True) -> bytes:
    """A chunked HTTP/1.1 answer; `last_chunk=False` leaves out the terminating empty chunk."""
    framed = b"".join(
        f"{len(body[i:i + size]):x}\r\n".encode() + body[i:i + size] + b"\r\n" for i in range(0, len(body), size)
    )
    return CHUNKED_HEAD + framed + (b"0\r\n\r\n" if last_chunk else b"")


# A cost cut mid-number: the last row's 3.33 arrives as 3 (a 400.25 once loaded as 40).
CUT_MID_ROW = CSV["booking"][:-4]


def serve_others(http_server, monkeypatch):
    serve_all(http_server)
    for name in ("customer", "destination"):
        monkeypatch.setenv(f"{name.upper()}_CSV_URL", f"{http_server.base_url}/{name}.csv")


@pytest.mark.parametrize("body", [CUT_MID_ROW, CSV["booking"]], ids=["cut-mid-row", "whole"])
def test_download_close_delimited_body_is_refused(http_server, monkeypatch, tmp_path, capsys, body):
    """Without a length the client cannot tell a cut body from a whole one: refused, once,
    the previous good file kept, the other two files fetched, exit 1."""
    serve_others(http_server, monkeypatch)
    good = tmp_path / "booking.csv"
    good.write_bytes(b"the previous good file")

    with RawServer(close_delimited(body)) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert stage.main(["--dest", str(tmp_path)]) == 1
        assert server.hits == 1  # not retried: a server that sends no length will not start to

    assert good.read_bytes() == b"the previous good file"
    assert (tmp_path / "customer.csv").read_bytes() == CSV["customer"]
    assert (tmp_path / "destination.csv").read_bytes() == CSV["destination"]
    assert capsys.readouterr().err.splitlines() == [(
        f"download_dataset: error: {server.url}: no Content-Length and not chunked, so a body cut short cannot be"
        " detected; refused (serve it with a Content-Length, or set DOWNLOAD_ALLOW_UNSIZED=1 to accept it unverified)"
    )]
    assert not list(tmp_path.glob(".*part"))


def test_download_close_delimited_body_after_a_redirect_names_both_urls(http_server, monkeypatch, tmp_path, capsys):
    with RawServer(close_delimited(CSV["booking"])) as server:
        http_server.routes["/booking.csv"] = [Reply(302, b"", {"Location": server.url})]
        point_at(http_server, monkeypatch)
        assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"download_dataset: error: {http_server.base_url}/booking.csv (redirected to {server.url}): ")


@pytest.mark.parametrize("body", [CSV["booking"], CSV["booking"].rstrip(b"\n")], ids=["whole", "no-final-newline"])
def test_download_close_delimited_body_with_opt_in_is_kept_with_a_warning(monkeypatch, tmp_path, capsys, body):
    monkeypatch.setenv("DOWNLOAD_ALLOW_UNSIZED", "1")
    with RawServer(close_delimited(body)) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 0

    assert (tmp_path / "booking.csv").read_bytes() == body
    [line] = capsys.readouterr().err.splitlines()
    assert " WARNING " in line and line.endswith(
        f"{server.url}: no Content-Length and not chunked; accepted because DOWNLOAD_ALLOW_UNSIZED=1,"
        " but a body cut short cannot be detected"
    )


@pytest.mark.parametrize("value", ["yes", "2", "true", "-1"])
def test_download_allow_unsized_takes_only_0_or_1(http_server, monkeypatch, tmp_path, capsys, value):
    serve_all(http_server)
    point_at(http_server, monkeypatch)
    monkeypatch.setenv("DOWNLOAD_ALLOW_UNSIZED", value)

    assert stage.main(["--dest", str(tmp_path)]) == 2

    assert capsys.readouterr().err.splitlines() == [
        f"download_dataset: error: DOWNLOAD_ALLOW_UNSIZED must be 0 or 1, got {value!r}"
    ]
    assert http_server.hits == {}  # refused before anything is fetched


def test_download_allow_unsized_0_is_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNLOAD_ALLOW_UNSIZED", "0")
    with RawServer(close_delimited(CSV["booking"])) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1
    assert not (tmp_path / "booking.csv").exists()


def test_download_chunked_body_is_accepted(monkeypatch, tmp_path):
    with RawServer(chunked(CSV["booking"])) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 0
    assert (tmp_path / "booking.csv").read_bytes() == CSV["booking"]


@pytest.mark.parametrize(
    "answer",
    [
        chunked(CSV["booking"], last_chunk=False),
        # The last chunk's size line promises more than arrives: the cost 3.33 stops at 3.
        chunked(CSV["booking"])[: chunked(CSV["booking"]).rindex(CSV["booking"][-4:])],
        chunked(CSV["booking"])[: len(CHUNKED_HEAD) + 2500],
    ],
    ids=["no-last-chunk", "cut-mid-row", "cut-mid-chunk"],
)
def test_download_chunked_body_cut_short_fails(monkeypatch, tmp_path, capsys, answer):
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    good = tmp_path / "booking.csv"
    good.write_bytes(b"the previous good file")

    with RawServer(answer) as server:
        monkeypatch.setenv("BOOKING_CSV_URL", server.url)
        assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1
        assert server.hits == 2  # a cut connection is transient: retried

    assert good.read_bytes() == b"the previous good file"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"download_dataset: error: {server.url}: connection broken mid-body (gave up after 2 attempts)"
    )
    assert not list(tmp_path.glob(".*part"))


GZIP_BOOKING = gzip.compress(CSV["booking"])


def test_download_gzip_body_is_checked_against_content_length(http_server, monkeypatch, tmp_path):
    """Content-Length counts the compressed bytes on the wire; a whole gzip body passes."""
    headers = {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    serve_all(http_server, {"/booking.csv": [Reply(200, GZIP_BOOKING, headers)]})
    point_at(http_server, monkeypatch)

    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 0

    assert (tmp_path / "booking.csv").read_bytes() == CSV["booking"]


@pytest.mark.parametrize("sent", [len(GZIP_BOOKING) // 2, len(GZIP_BOOKING) - 4], ids=["half", "trailer-missing"])
def test_download_gzip_body_cut_short_fails(http_server, monkeypatch, tmp_path, capsys, sent):
    """zlib's streaming decoder returns a truncated gzip stream's prefix without an error (the
    whole CSV when only the trailer is missing), so only the bytes received against
    Content-Length show the cut. urllib3 2 raises on a short body itself; under urllib3 1.26,
    which requirements.txt allows, this failed before the check counted wire bytes."""
    headers = {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    cut = Reply(200, GZIP_BOOKING[:sent], headers, declared_length=len(GZIP_BOOKING))
    serve_all(http_server, {"/booking.csv": [cut]})
    point_at(http_server, monkeypatch)
    monkeypatch.setenv("DOWNLOAD_RETRIES", "1")
    good = tmp_path / "booking.csv"
    good.write_bytes(b"the previous good file")

    assert stage.main(["--dest", str(tmp_path), "--only", "booking"]) == 1

    assert good.read_bytes() == b"the previous good file"
    assert http_server.hits["/booking.csv"] == 2
    assert "(gave up after 2 attempts)" in capsys.readouterr().err


def test_download_file_without_final_newline_is_kept(http_server, monkeypatch, tmp_path):
    """Like the public destination.csv: a missing last newline is not a cut (the length says so)."""
    body = CSV["destination"].rstrip(b"\n")
    serve_all(http_server, {"/destination.csv": [Reply(200, body, {"Content-Type": "text/csv"})]})
    point_at(http_server, monkeypatch)
    local = tmp_path / "local-destination.csv"
    local.write_bytes(body)

    assert stage.main(["--dest", str(tmp_path / "http"), "--only", "destination"]) == 0
    monkeypatch.setenv("DESTINATION_CSV_URL", local.as_uri())
    assert stage.main(["--dest", str(tmp_path / "file"), "--only", "destination"]) == 0

    assert (tmp_path / "http" / "destination.csv").read_bytes() == body
    assert (tmp_path / "file" / "destination.csv").read_bytes() == body
