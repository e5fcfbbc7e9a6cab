"""Stage 4: export customer, destination and booking from PostgreSQL to S3 as compressed CSV batches.

Reads the three tables in one read-only REPEATABLE READ transaction (one consistent
snapshot, even while a load runs), streams each with COPY and cuts it into batches of
EXPORT_BATCH_SIZE rows (--batch-size, default 50000). Every batch is one CSV file with a
header, compressed as zip (default) or gzip (EXPORT_COMPRESSION, --compression; level
EXPORT_COMPRESSION_LEVEL, default 6), and stored as

    s3://$S3_BUCKET_NAME/$S3_PREFIX<date>/<table>/<table>_<date>_batch_0001.csv.zip   (.csv.gz)

with <date> today in UTC (or --date YYYY-MM-DD). Booking rows carry the destination's
name and country and total_booking_value, so a reader needs no database. Batches are
compressed and uploaded in parallel (--workers) with a bounded queue: memory follows the
batch size, not the table size. Every table has at least one object, header-only when the
table is empty.

Last comes $S3_PREFIX<date>/_manifest.json, listing every object with its table, row
count, size and SHA-256 (the manifest contract is build_manifest() below). A day's
export exists for readers only once its manifest does. Running again for the same day
replaces that day's export as a whole: the old manifest is deleted first (the day
disappears), the new batches are uploaded, objects in the day's table folders that this
run did not write are deleted, and the new manifest is written last. A failed run leaves
no manifest for its day.

CSV format: UTF-8, comma-separated, "\\n" line ends, quoted only where needed (PostgreSQL
COPY). A NULL (customer.phone) is an empty unquoted field; an empty text is "". Dates
are YYYY-MM-DD; money has exactly two decimals (99.99); booleans are t / f.

Every object is stored with server-side encryption (S3_SSE: AES256, the default, or
aws:kms with the key S3_KMS_KEY_ID, or the account's default KMS key when it is empty)
and a SHA-256 checksum the store verifies on receipt.

Needs: the schema from travel.sql; DATABASE_URL or the libpq variables (PGHOST, ...);
S3_BUCKET_NAME; AWS credentials from boto3's default chain (environment, profile, SSO,
instance or task role). For an S3-compatible store, set AWS_ENDPOINT_URL_S3 (boto3 reads
it itself).

Example:
    python batch_transfer_data_to_cloud_storage.py
    python batch_transfer_data_to_cloud_storage.py --date 2024-05-01 --compression gzip --batch-size 10000
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import logging
import os
import re
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterable, Sequence

import waddle_common as common

log = logging.getLogger("data_waddle.export")

STAGE = "batch_transfer_data_to_cloud_storage"
MANIFEST_FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
TOOL_NAME = "data-waddle"

# compression -> (key suffix, Content-Type). No Content-Encoding on gzip objects: HTTP
# clients would then unpack them on the fly and the bytes would no longer match sha256.
COMPRESSIONS = {"zip": (".csv.zip", "application/zip"), "gzip": (".csv.gz", "application/gzip")}
SSE_MODES = {"aes256": "AES256", "aws:kms": "aws:kms"}
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))
QUEUE_PER_WORKER = 2  # batches waiting or in progress per worker: bounds the memory
DELETE_CHUNK = 1000  # DeleteObjects takes at most 1000 keys
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")

# The columns of each exported table, in file order: the header line and the manifest.
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "customer": ("customer_id", "first_name", "last_name", "email", "phone"),
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "booking": (
        "booking_id", "customer_id", "destination_id", "destination", "country", "booking_date",
        "number_of_passengers", "cost_per_passenger", "total_booking_value", "passengers_imputed",
        "cost_imputed",
    ),
}
KEYS = {"customer": "customer_id", "destination": "destination_id", "booking": "booking_id"}
# Booking columns that come from the joined destination row; the others from booking.
BOOKING_FROM_DESTINATION = ("destination", "country")


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ExportPlan:
    """What one run does: every setting checked, command-line options applied."""

    bucket: str
    prefix: str
    day: str
    compression: str
    compression_level: int
    batch_size: int
    workers: int
    sse: str
    kms_key_id: str

    @property
    def day_prefix(self) -> str:
        return day_prefix(self.prefix, self.day)

    @property
    def manifest_key(self) -> str:
        return f"{self.day_prefix}{MANIFEST_NAME}"


def check_prefix(prefix: str) -> str:
    """S3_PREFIX is empty or a folder ending in '/' ('exports/'), so keys never run together.

    A leading '/' is refused too: S3 would keep it (an unnamed top folder), while the Lambda
    reader strips it and would then look in another place.
    """
    if prefix and not prefix.endswith("/"):
        raise common.ConfigError(f"S3_PREFIX must be empty or end with '/', got {prefix!r}; try {prefix + '/'!r}")
    if prefix.startswith("/"):
        raise common.ConfigError(f"S3_PREFIX must not start with '/', got {prefix!r}; try {prefix.lstrip('/')!r}")
    return prefix


def check_sse(sse: str, kms_key_id: str) -> str:
    """S3_SSE is AES256 or aws:kms; S3_KMS_KEY_ID only makes sense with aws:kms."""
    mode = SSE_MODES.get(sse.strip().lower())
    if mode is None:
        raise common.ConfigError(f"S3_SSE must be AES256 or aws:kms, got {sse!r}")
    if kms_key_id and mode != "aws:kms":
        raise common.ConfigError("S3_KMS_KEY_ID is set but S3_SSE is AES256; set S3_SSE=aws:kms to use the key")
    return mode


def make_plan(settings: common.Settings, args: argparse.Namespace, today: date | None = None) -> ExportPlan:
    """The run's plan from the settings and the options; a ConfigError names what is wrong."""
    if not settings.s3_bucket_name:
        raise common.ConfigError("S3_BUCKET_NAME is not set; name the bucket to export to (environment or .env)")
    compression = (args.compression or settings.export_compression).lower()
    if compression not in COMPRESSIONS:
        raise common.ConfigError(f"EXPORT_COMPRESSION must be zip or gzip, got {compression!r}")
    level = settings.export_compression_level
    if not 0 <= level <= 9:
        raise common.ConfigError(f"EXPORT_COMPRESSION_LEVEL must be 0 to 9, got {level}")
    batch_size = args.batch_size or settings.export_batch_size
    if batch_size < 1:
        raise common.ConfigError(f"EXPORT_BATCH_SIZE must be at least 1, got {batch_size}")
    today = today or datetime.now(timezone.utc).date()
    return ExportPlan(
        bucket=settings.s3_bucket_name,
        prefix=check_prefix(settings.s3_prefix),
        day=args.date or today.isoformat(),
        compression=compression,
        compression_level=level,
        batch_size=batch_size,
        workers=args.workers or DEFAULT_WORKERS,
        sse=check_sse(settings.s3_sse, settings.s3_kms_key_id),
        kms_key_id=settings.s3_kms_key_id,
    )


# ---------------------------------------------------------------------------------------
# Names


def day_prefix(prefix: str, day: str) -> str:
    return f"{prefix}{day}/"


def member_name(table: str, day: str, number: int) -> str:
    """The CSV file's name inside its archive: booking_2024-05-01_batch_0001.csv."""
    return f"{table}_{day}_batch_{number:04d}.csv"


def batch_key(prefix: str, day: str, table: str, number: int, compression: str) -> str:
    """exports/2024-05-01/booking/booking_2024-05-01_batch_0001.csv.zip (batches count from 1)."""
    suffix = COMPRESSIONS[compression][0]
    return f"{day_prefix(prefix, day)}{table}/{table}_{day}_batch_{number:04d}{suffix}"


def table_prefix(prefix: str, day: str, table: str) -> str:
    return f"{day_prefix(prefix, day)}{table}/"


# ---------------------------------------------------------------------------------------
# Batches: cutting the COPY stream, compressing


def csv_header(table: str) -> bytes:
    return (",".join(EXPORT_COLUMNS[table]) + "\n").encode("utf-8")


class BatchWriter:
    """A file-like target for COPY ... TO STDOUT (FORMAT csv) that cuts the stream into batches.

    Each batch is `header` plus at most `batch_size` rows, handed to `emit(number, rows,
    data)` as soon as it is full (numbers count from 1). A row ends at a line end outside
    quotes, so a value holding a newline stays in its row however the stream is chunked.
    finish() emits the last, partial batch, or a header-only one when the table is empty.

    write() runs once per row (psycopg2 passes one row per call) on the thread that reads
    from PostgreSQL, which is the export's bottleneck: it only queues the bytes. Every
    `batch_size` writes the queue is split into rows at once, in C (count, split) when no
    line holds an odd number of quotes, i.e. no value spans lines; row by row otherwise.
    """

    def __init__(self, header: bytes, batch_size: int, emit: Callable[[int, int, bytes], None]):
        self.header = header
        self.batch_size = batch_size
        self.emit = emit
        self.batches = 0
        self.total_rows = 0
        self._pending: list[bytes] = []  # written, not yet split into rows
        self._parts: list[bytes] = [header]  # whole rows (and a row begun) of the current batch
        self._rows = 0
        self._in_quotes = False
        self._in_row = False

    def write(self, data: bytes) -> int:
        self._pending.append(data)
        if len(self._pending) >= self.batch_size:
            self._split_pending()
        return len(data)

    def finish(self) -> None:
        self._split_pending()
        if self._in_row:
            raise common.PipelineError("COPY output ended in the middle of a row")
        if self._rows or not self.batches:
            self._cut()

    def _split_pending(self) -> None:
        pending, self._pending = self._pending, []
        try:
            data = b"".join(pending)
        except TypeError:  # text written: encode it
            data = b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in pending)
        if not data:
            return
        rows = data.count(b"\n")
        if not self._in_row and self._rows + rows <= self.batch_size and data.endswith(b"\n") \
                and lines_are_rows(data):
            self._parts.append(data)
            self._rows += rows
            if self._rows == self.batch_size:
                self._cut()
        else:
            self._split_rows(data)

    def _split_rows(self, data: bytes) -> None:
        start, end = 0, len(data)
        while start < end:
            newline = data.find(b"\n", start)
            stop = end if newline < 0 else newline + 1
            # In CSV a quote character toggles quoting; "" inside a value toggles twice.
            if data.count(b'"', start, stop) % 2:
                self._in_quotes = not self._in_quotes
            self._parts.append(data[start:stop])
            start = stop
            if newline < 0 or self._in_quotes:
                self._in_row = True
                continue
            self._in_row = False
            self._rows += 1
            if self._rows == self.batch_size:
                self._cut()

    def _cut(self) -> None:
        self.batches += 1
        self.total_rows += self._rows
        data, rows = b"".join(self._parts), self._rows
        self._parts = [self.header]
        self._rows = 0
        self.emit(self.batches, rows, data)


def lines_are_rows(data: bytes) -> bool:
    """True when no line of `data` holds an odd number of quotes: no value spans two lines."""
    return b'"' not in data or not any(line.count(b'"') & 1 for line in data.split(b"\n"))


def compress_batch(data: bytes, member: str, compression: str, level: int, day: str) -> bytes:
    """`data` as a zip archive holding one file `member`, or as gzip.

    The archive's timestamps are fixed (the export day; 0 for gzip), so the same rows on
    the same day always give the same bytes and the same sha256.
    """
    if compression == "gzip":
        out = io.BytesIO()
        with gzip.GzipFile(filename=member, mode="wb", fileobj=out, compresslevel=level, mtime=0) as gz:
            gz.write(data)
        return out.getvalue()
    if compression != "zip":
        raise ValueError(f"unknown compression {compression!r}")
    year, month, day_of_month = (int(part) for part in day.split("-"))
    info = zipfile.ZipInfo(member, date_time=(year, month, day_of_month, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16  # unzip creates a normal, readable file
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(info, data, compresslevel=level)
    return out.getvalue()


# ---------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class ExportedObject:
    key: str
    table: str
    batch: int
    rows: int
    bytes: int
    sha256: str


def build_manifest(plan: ExportPlan, exported_at: datetime, objects: Iterable[ExportedObject]) -> dict:
    """The manifest: the contract between this stage and every reader (the Lambda).

    {"format_version": 1, "date": "YYYY-MM-DD", "prefix": "<S3_PREFIX><date>/",
     "exported_at": "YYYY-MM-DDTHH:MM:SSZ", "tool": "data-waddle", "tool_version": "...",
     "compression": "zip" | "gzip",
     "tables": {"customer": {"columns": [...], "rows": N}, "destination": ..., "booking": ...},
     "objects": [{"key", "table", "rows", "bytes", "sha256"}, ...]}

    exported_at is when the snapshot was taken (UTC, whole seconds). Objects are sorted by
    table name, then batch number (which is also key order); every table has at least one.
    sha256 is the hex digest of the object's bytes as stored.
    """
    ordered = sorted(objects, key=lambda o: (o.table, o.batch))
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "date": plan.day,
        "prefix": plan.day_prefix,
        "exported_at": exported_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": TOOL_NAME,
        "tool_version": common.__version__,
        "compression": plan.compression,
        "tables": {
            table: {
                "columns": list(EXPORT_COLUMNS[table]),
                "rows": sum(o.rows for o in ordered if o.table == table),
            }
            for table in common.TABLES
        },
        "objects": [
            {"key": o.key, "table": o.table, "rows": o.rows, "bytes": o.bytes, "sha256": o.sha256}
            for o in ordered
        ],
    }


def format_summary(manifest: dict, bucket: str) -> str:
    lines = [f"{'table':<12}{'objects':>9}{'rows':>12}{'bytes':>14}"]
    for table, info in manifest["tables"].items():
        objects = [o for o in manifest["objects"] if o["table"] == table]
        size = sum(o["bytes"] for o in objects)
        lines.append(f"{table:<12}{len(objects):>9}{info['rows']:>12}{size:>14}")
    lines.append(f"manifest: s3://{bucket}/{manifest['prefix']}{MANIFEST_NAME}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# S3


ACCESS_DENIED_CODES = {
    "403", "AccessDenied", "AllAccessDisabled", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "KMS.AccessDeniedException",
}


def storage_error(exc: Exception, bucket: str, doing: str) -> common.PipelineError:
    """One clear line for a failed S3 call (`doing`: "uploading exports/.../x.csv.zip")."""
    from botocore import exceptions as boto

    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return common.PipelineError(
            f"no AWS credentials found while {doing}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run with an IAM role"
        )
    if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError)):
        return common.PipelineError(
            f"cannot reach the S3 endpoint while {doing}: {common.redact(common.first_line(exc))}; "
            "check the network and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL"
        )
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "unknown"
        message = common.redact(error.get("Message", "") or "")
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and exc.operation_name == "HeadBucket"):
            return common.PipelineError(f"bucket {bucket} does not exist; create it or correct S3_BUCKET_NAME")
        if code in ACCESS_DENIED_CODES:
            return common.PipelineError(
                f"access denied ({code}) to bucket {bucket} while {doing}; check the AWS credentials, "
                "the bucket policy and, with aws:kms, the key policy"
            )
        detail = f"{code}: {message}" if message else code
        return common.PipelineError(f"S3 refused {doing} in bucket {bucket} ({detail})")
    return common.PipelineError(f"S3 failed while {doing}: {common.redact(common.first_line(exc))}")


class Storage:
    """The bucket, through one boto3 client (thread-safe) shared by the upload workers."""

    def __init__(self, plan: ExportPlan):
        import boto3
        from botocore.config import Config

        self.plan = plan
        self.bucket = plan.bucket
        # Credentials and endpoint come from boto3's default chain and AWS_ENDPOINT_URL(_S3).
        self.client = boto3.client(
            "s3",
            config=Config(
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=120,
                max_pool_connections=plan.workers + 4,
            ),
        )

    def _call(self, doing: str, method: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, self.bucket, doing) from None

    def check_bucket(self) -> None:
        self._call("checking the bucket", "head_bucket")

    def put(self, key: str, body: bytes, content_type: str, **extra) -> str:
        """Store `body` encrypted at rest, with a SHA-256 the store checks; its hex digest."""
        digest = hashlib.sha256(body).digest()
        encryption = {"ServerSideEncryption": self.plan.sse}
        if self.plan.sse == "aws:kms" and self.plan.kms_key_id:
            encryption["SSEKMSKeyId"] = self.plan.kms_key_id
        reply = self._call(
            f"uploading {key}", "put_object", Key=key, Body=body, ContentType=content_type,
            ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
            **encryption, **extra,
        )
        # A store that ignores the encryption header must not pass for one that honoured it.
        if reply.get("ServerSideEncryption") != self.plan.sse:
            raise common.PipelineError(
                f"the store did not confirm {self.plan.sse} encryption of s3://{self.bucket}/{key} "
                f"(it answered {reply.get('ServerSideEncryption')!r}); check S3_SSE and the store's encryption support"
            )
        return digest.hex()

    def list_keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(exc, self.bucket, f"listing {prefix}") from None
        return keys

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[start:start + DELETE_CHUNK]
            reply = self._call(
                f"deleting {len(chunk)} old object(s) under {self.plan.day_prefix}", "delete_objects",
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            if reply.get("Errors"):
                first = reply["Errors"][0]
                raise common.PipelineError(
                    f"could not delete s3://{self.bucket}/{first.get('Key')} "
                    f"({first.get('Code')}: {first.get('Message')}) and {len(reply['Errors']) - 1} more"
                )


def stale_keys(existing: Iterable[str], written: set[str]) -> list[str]:
    """Objects of an earlier run for the same day that this run did not rewrite."""
    return sorted(key for key in existing if key not in written)


# ---------------------------------------------------------------------------------------
# Parallel compression and upload


class UploadPool:
    """Runs `job(...)` on `workers` threads with at most QUEUE_PER_WORKER x workers batches
    waiting or in progress: submit() blocks when the queue is full, so memory stays a few
    batches whatever the table size. The first failure is raised by submit() or finish()."""

    def __init__(self, job: Callable[..., ExportedObject], workers: int):
        self._job = job
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export")
        self._limit = QUEUE_PER_WORKER * workers
        self._pending: set[Future] = set()
        self.results: list[ExportedObject] = []

    def submit(self, *args) -> None:
        self._collect(timeout=0)
        while len(self._pending) >= self._limit:
            self._collect(return_when=FIRST_COMPLETED)
        self._pending.add(self._executor.submit(self._job, *args))

    def finish(self) -> list[ExportedObject]:
        while self._pending:
            self._collect(return_when=FIRST_COMPLETED)
        return self.results

    def close(self) -> None:
        """Drop batches not started yet and wait for those in progress (after a failure)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _collect(self, timeout: float | None = None, return_when: str = FIRST_COMPLETED) -> None:
        done, self._pending = wait(self._pending, timeout=timeout, return_when=return_when)
        for future in done:
            self.results.append(future.result())


def upload_batch(storage: Storage, plan: ExportPlan, table: str, number: int, rows: int, data: bytes) -> ExportedObject:
    """Compress one batch and store it (runs on a worker thread; zlib releases the GIL)."""
    member = member_name(table, plan.day, number)
    body = compress_batch(data, member, plan.compression, plan.compression_level, plan.day)
    key = batch_key(plan.prefix, plan.day, table, number, plan.compression)
    sha256 = storage.put(key, body, COMPRESSIONS[plan.compression][1])
    log.debug("stored %s: %d rows, %d bytes", key, rows, len(body))
    return ExportedObject(key=key, table=table, batch=number, rows=rows, bytes=len(body), sha256=sha256)


# ---------------------------------------------------------------------------------------
# PostgreSQL


def export_query(table: str):
    """COPY (SELECT ... ORDER BY key) TO STDOUT as CSV without header, as a psycopg2.sql object."""
    from psycopg2 import sql

    columns = EXPORT_COLUMNS[table]
    if table == "booking":
        select = sql.SQL(
            "SELECT {columns} FROM {booking} AS b JOIN {destination} AS d ON d.{destination_id} = b.{destination_id} "
            "ORDER BY b.{key}"
        ).format(
            columns=sql.SQL(", ").join(
                sql.Identifier("d" if c in BOOKING_FROM_DESTINATION else "b", c) for c in columns
            ),
            booking=sql.Identifier("booking"),
            destination=sql.Identifier("destination"),
            destination_id=sql.Identifier("destination_id"),
            key=sql.Identifier(KEYS[table]),
        )
    else:
        select = sql.SQL("SELECT {columns} FROM {table} ORDER BY {key}").format(
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            table=sql.Identifier(table),
            key=sql.Identifier(KEYS[table]),
        )
    return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER false)").format(select)


def open_snapshot(conn) -> None:
    """Every later statement on `conn` sees one snapshot, and none can write."""
    conn.set_client_encoding("UTF8")
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    with conn.cursor() as cur:
        # COPY writes dates in the session's DateStyle. psycopg2 already asks for ISO when it
        # connects; the file format depends on it, so it is said here too.
        cur.execute("SET DateStyle TO 'ISO, YMD'")


def copy_table(conn, table: str, plan: ExportPlan, submit: Callable[..., None]) -> int:
    """Stream `table` through a BatchWriter; every full batch goes to `submit`. Its row count."""
    import psycopg2

    with common.progress(None, table, unit="rows") as bar:
        def emit(number: int, rows: int, data: bytes) -> None:
            bar.update(rows)
            submit(table, number, rows, data)

        writer = BatchWriter(csv_header(table), plan.batch_size, emit)
        try:
            with conn.cursor() as cur:
                cur.copy_expert(export_query(table).as_string(cur), writer)
                copied = cur.rowcount
        except psycopg2.Error as exc:
            raise common.PipelineError(
                f"reading table {table} failed: {common.first_line(common.redact(exc))}"
            ) from None
        writer.finish()
    if copied >= 0 and copied != writer.total_rows:
        raise common.PipelineError(f"{table}: PostgreSQL sent {copied} rows but {writer.total_rows} were batched")
    return writer.total_rows


# ---------------------------------------------------------------------------------------
# The stage


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def export_date(text: str) -> str:
    """--date: a real calendar day written YYYY-MM-DD."""
    try:
        if not DATE_PATTERN.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in the form YYYY-MM-DD: {text!r}") from None


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument(
        "--date", type=export_date, metavar="YYYY-MM-DD", help="the export's day (default: today in UTC)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, metavar="ROWS",
        help="rows per object (default: $EXPORT_BATCH_SIZE, 50000)",
    )
    parser.add_argument(
        "--compression", choices=tuple(COMPRESSIONS), help="zip or gzip (default: $EXPORT_COMPRESSION, zip)"
    )
    parser.add_argument(
        "--workers", type=positive_int, metavar="N",
        help=f"batches compressed and uploaded at once (default: {DEFAULT_WORKERS})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return common.run_stage(STAGE, args, lambda settings: export(settings, args))


def export(settings: common.Settings, args: argparse.Namespace) -> int:
    plan = make_plan(settings, args)
    storage = Storage(plan)
    conn = common.connect_db("export")
    try:
        exported_at = datetime.now(timezone.utc)
        open_snapshot(conn)
        storage.check_bucket()
        # From here until the new manifest is written the day does not exist for readers,
        # so they never combine objects of two runs.
        storage.delete([plan.manifest_key])
        objects = export_tables(conn, storage, plan)
    finally:
        conn.close()

    written = {o.key for o in objects}
    existing = [key for table in common.TABLES for key in storage.list_keys(table_prefix(plan.prefix, plan.day, table))]
    stale = stale_keys(existing, written)
    if stale:
        log.debug("deleting %d object(s) of an earlier run for %s", len(stale), plan.day)
        storage.delete(stale)

    manifest = build_manifest(plan, exported_at, objects)
    body = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    storage.put(plan.manifest_key, body, "application/json", CacheControl="no-cache")
    print(format_summary(manifest, plan.bucket))
    return common.EXIT_OK


def export_tables(conn, storage: Storage, plan: ExportPlan) -> list[ExportedObject]:
    """Read every table in the snapshot; batches upload while the next ones are read."""
    pool = UploadPool(lambda *batch: upload_batch(storage, plan, *batch), plan.workers)
    try:
        for table in common.TABLES:
            copy_table(conn, table, plan, pool.submit)
        conn.rollback()  # read only: nothing to keep; ends the snapshot before the last uploads
        return pool.finish()
    finally:
        pool.close()


if __name__ == "__main__":
    raise SystemExit(main())
