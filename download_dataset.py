"""Stage 1: download the three source CSVs (customer, destination, booking).

Reads the URLs from CUSTOMER_CSV_URL, DESTINATION_CSV_URL and BOOKING_CSV_URL (the public
dataset on GitHub by default) and writes customer.csv, destination.csv and booking.csv into
DOWNLOAD_DIR (default ./download_dataset, or --dest). http(s) URLs, file:// URLs and plain
local paths are accepted.

Each file is streamed to a temporary file beside its target and renamed into place only
when the body is complete and its header has the expected columns, so a failed, truncated
or HTML-error download never replaces a good file. Connection errors, timeouts, 429 and 5xx
answers are retried with exponential backoff (honouring Retry-After); 4xx answers are not.

A body is complete when the bytes received on the wire match Content-Length (the compressed
size, for a gzip Content-Encoding), or when a chunked body ends with its last chunk. A body
with neither, which simply ends when the server closes the connection (HTTP/1.0 style), is
refused: a cut one looks exactly like a whole one. DOWNLOAD_ALLOW_UNSIZED=1 accepts it with
a warning.

Example:
    python download_dataset.py --dest ./download_dataset
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
from urllib3.exceptions import ReadTimeoutError

import waddle_common as common

log = logging.getLogger("data_waddle.download")

CHUNK_SIZE = 1 << 16
MAX_RETRY_AFTER = 60.0  # seconds: the longest Retry-After honoured; a longer one is cut to this
MAX_BACKOFF = 300.0  # seconds: the doubling delay stops growing here (100 retries would be 2**99 s)
ALLOW_UNSIZED = "DOWNLOAD_ALLOW_UNSIZED"


class DownloadError(common.PipelineError):
    """A file could not be fetched; the message names the URL and the reason."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument("--dest", metavar="DIR", help="folder to write the CSVs to (default: $DOWNLOAD_DIR)")
    parser.add_argument(
        "--only", choices=common.TABLES, action="append", help="download only this table (repeatable)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return common.run_stage("download_dataset", args, lambda settings: download_all(settings, args))


def download_all(settings: common.Settings, args) -> int:
    allow_unsized = settings.download_allow_unsized
    dest = Path(args.dest) if args.dest else settings.download_dir
    dest.mkdir(parents=True, exist_ok=True)
    failures = 0
    for table in args.only or common.TABLES:
        url = settings.source_urls[table]
        target = dest / f"{table}.csv"
        try:
            size = fetch_to(url, target, table, settings, allow_unsized)
        except common.PipelineError as exc:
            failures += 1
            sys.stderr.write(f"download_dataset: error: {common.redact(exc)}\n")
            continue
        print(f"{table}: {size} bytes -> {target}")
    return common.EXIT_FAILURE if failures else common.EXIT_OK


def fetch_to(url: str, target: Path, table: str, settings: common.Settings, allow_unsized: bool = False) -> int:
    """Fetch `url` into `target` atomically; return the size written."""
    with common.replacing(target, suffix=".part") as tmp:
        with open(tmp, "wb") as out:
            if is_local(url):
                copy_local(local_path(url), out, url)
            else:
                fetch_http(url, out, settings, allow_unsized)
        check_csv(tmp, table, url)
        os.chmod(tmp, 0o644)
    return target.stat().st_size


def is_local(url: str) -> bool:
    scheme = urlparse(url).scheme.lower()
    return scheme == "file" or scheme == "" or len(scheme) == 1  # a Windows drive letter is a path


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme.lower() == "file" else Path(url)


def copy_local(path: Path, out, url: str) -> None:
    try:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, out, CHUNK_SIZE)
    except OSError as exc:
        raise DownloadError(f"{url}: cannot read: {exc.strerror or exc}") from None


def fetch_http(url: str, out, settings: common.Settings, allow_unsized: bool = False) -> None:
    """Stream `url` into `out`, retrying transient failures with exponential backoff."""
    attempts = settings.download_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            out.seek(0)
            out.truncate()
            stream_once(url, out, settings.download_timeout, allow_unsized)
            return
        except _Retryable as exc:
            if attempt == attempts:
                raise DownloadError(f"{url}: {exc} (gave up after {attempts} attempts)") from None
            delay = backoff_delay(attempt, settings.download_backoff, exc.retry_after)
            log.warning("%s: %s; retrying in %.1fs (attempt %d of %d)", url, exc, delay, attempt + 1, attempts)
            time.sleep(delay)


def backoff_delay(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff (base, 2 x base, 4 x base ... up to MAX_BACKOFF), or the server's
    Retry-After if longer."""
    delay = min(base * (2 ** (attempt - 1)), MAX_BACKOFF)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def stream_once(url: str, out, timeout: float, allow_unsized: bool = False) -> None:
    try:
        with requests.get(url, stream=True, timeout=(min(timeout, 10.0), timeout)) as response:
            check_status(response)
            expected = declared_length(response)
            if expected is None and not response.raw.chunked:
                where = url if response.url == url else f"{url} (redirected to {response.url})"
                check_unsized(where, allow_unsized)
            # Content-Length counts the bytes on the wire, compressed ones under a gzip
            # Content-Encoding, and so does response.raw.tell(). Counting the decoded bytes
            # left gzip unchecked, and zlib hands back a cut gzip stream's prefix without an
            # error (urllib3 2 raises on a short body itself; urllib3 1.26 does not).
            seen = 0
            with common.progress(expected, Path(urlparse(url).path).name or url) as bar:
                for chunk in response.iter_content(CHUNK_SIZE):
                    out.write(chunk)
                    # tell() stays 0 for a chunked body (no total either): count what it yields.
                    now = response.raw.tell() if expected is not None else seen + len(chunk)
                    bar.update(now - seen)
                    seen = now
            if expected is not None and response.raw.tell() != expected:
                raise _Retryable(f"body cut short: {response.raw.tell()} of {expected} bytes")
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise _Retryable(describe_request_error(exc)) from None
    except requests.RequestException as exc:
        raise DownloadError(f"{url}: {describe_request_error(exc)}") from None


def check_status(response: requests.Response) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status} {response.reason}", parse_retry_after(response.headers.get("Retry-After")))
    if status >= 400:
        raise DownloadError(f"{response.url}: HTTP {status} {response.reason}")
    content_type = response.headers.get("Content-Type", "").lower()
    if "html" in content_type:
        raise DownloadError(f"{response.url}: got an HTML page ({content_type}), not a CSV file")


def declared_length(response: requests.Response) -> int | None:
    """The body's size on the wire from Content-Length (the compressed size under a
    Content-Encoding), or None: no usable Content-Length, or a chunked body, whose last
    chunk marks its end instead (RFC 9112: Transfer-Encoding overrides Content-Length)."""
    if response.raw.chunked:
        return None
    try:
        # "42, 42" is one length repeated (RFC 9110 8.6), as urllib3 reads it.
        lengths = {int(value) for value in response.headers["Content-Length"].split(",")}
    except (KeyError, ValueError):
        return None
    length = lengths.pop() if len(lengths) == 1 else -1
    return length if length >= 0 else None


def check_unsized(url: str, allow_unsized: bool) -> None:
    """A body without Content-Length or chunking ends when the connection closes, so a
    connection cut mid-row looks like the end of the file (a cost of 400.25 arrived as 40):
    refused, not retried (the server will not start sending a length), unless opted in."""
    if not allow_unsized:
        raise DownloadError(
            f"{url}: no Content-Length and not chunked, so a body cut short cannot be detected; refused"
            f" (serve it with a Content-Length, or set {ALLOW_UNSIZED}=1 to accept it unverified)"
        )
    log.warning(
        "%s: no Content-Length and not chunked; accepted because %s=1, but a body cut short cannot be detected",
        url, ALLOW_UNSIZED,
    )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def describe_request_error(exc: Exception) -> str:
    # A server that stalls after the headers surfaces from iter_content() as a
    # ConnectionError wrapping urllib3's ReadTimeoutError: it is a timeout all the same.
    if isinstance(exc, requests.Timeout) or any(isinstance(arg, ReadTimeoutError) for arg in exc.args):
        return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken mid-body"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return common.first_line(exc)


def check_csv(path: Path, table: str, url: str) -> None:
    """Refuse an empty body, an HTML page, or a header that lacks a required column.

    The bytes are kept as the source sent them: a file in another encoding (Latin-1 from a
    spreadsheet export) is not a broken download, so it is stored with a warning and the
    load decides (it refuses it with a hint, or reads it with --encoding latin-1).
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.strip():
        raise DownloadError(f"{url}: empty body, expected {table} CSV data")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        raise DownloadError(f"{url}: got an HTML or XML page, not a CSV file")
    header = header_columns(path)
    missing = common.missing_columns(table, header)
    if missing:
        raise DownloadError(
            f"{url}: {table} file lacks column(s) {', '.join(missing)}; columns found: {', '.join(header) or '(none)'}"
        )
    if not is_utf8(path):
        log.warning(
            "%s: %s.csv is not UTF-8 text; load it with --encoding latin-1 or convert it (iconv -f latin1 -t utf-8)",
            url, table,
        )


def header_columns(path: Path) -> list[str]:
    """The normalised column names of the first line, whatever its encoding: the required
    names are ASCII, so Latin-1 (which decodes any byte) finds them when UTF-8 fails."""
    with open(path, "rb") as fh:
        line = fh.readline(1 << 20)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = line.decode("latin-1")
    # newline="": csv finds the record's end itself (a CR-only file is one "line" here).
    return [common.normalise_column(c) for c in next(csv.reader(io.StringIO(text, newline="")), [])]


def is_utf8(path: Path) -> bool:
    """Whether the whole file decodes as UTF-8 (read in blocks: memory stays small)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
