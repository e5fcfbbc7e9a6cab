"""Stage 4: export customer, destination and booking from PostgreSQL to S3 as CSV or Parquet batches.

Reads the three tables in one read-only REPEATABLE READ transaction (one consistent
snapshot, even while a load runs), streams each with COPY and cuts it into batches of
EXPORT_BATCH_SIZE rows (--batch-size, default 50000). Every batch is one CSV file with a
header, compressed as zip (default) or gzip (EXPORT_COMPRESSION, --compression; level
EXPORT_COMPRESSION_LEVEL, default 6), and stored as

    s3://$S3_BUCKET_NAME/$S3_PREFIX<date>/<run>/<table>/<table>_<date>_batch_0001.csv.zip   (.csv.gz)

with <date> today in UTC (or --date YYYY-MM-DD) and <run> this run's id: the snapshot
time and a random suffix (20240501T063015.123Z-1a2b3c4d), so runs sort by start and no run
ever writes over another's object. Booking rows carry the destination's name and country
and total_booking_value, so a reader needs no database. Batches are compressed and
uploaded in parallel (--workers) with a bounded queue: memory follows the batch size, not
the table size. Every table has at least one object, header-only when the table is empty.

With EXPORT_FORMAT=parquet (--format parquet) each batch is instead one Parquet file of one
row group (<...>_batch_0001.parquet), snappy-compressed and typed as travel.sql declares the
column: BIGINT int64, INTEGER int32, DATE date32, NUMERIC(p, 2) decimal128(p, 2) (exact),
BOOLEAN bool, TEXT string. Columns and types come from waddle_common.SCHEMA.

Last comes $S3_PREFIX<date>/_manifest.json, one PUT naming the run and listing its objects
with their table, row count, size and SHA-256 (the contract is build_manifest() below). It
is the one commit point: a day's export exists for readers only once its manifest does,
and a reader holding a manifest reads exactly that manifest's bytes. Until the new
manifest replaces it, the previous export stays complete and readable. After the commit,
the day keeps this run, the run whose manifest it replaced, and any earlier run replaced
less than KEEP_REPLACED_SECONDS ago (the Lambda's longest timeout and a margin), so a
reader that fetched an older manifest can finish; other run folders (failed runs
included) and objects of the layout before runs (<date>/<table>/...) are deleted. A failed
run publishes nothing and leaves the previous export as it was.

After the manifest, for engines (Athena, Trino, Spark through SymlinkTextInputFormat), a
Parquet export writes $S3_PREFIX<date>/_symlink/<table>/symlink.txt, listing the run's
objects of the table (s3://bucket/key, one a line), destination, customer then booking; a
CSV export removes them. See update_symlinks() for what a reader may see meanwhile.

Exports of one bucket, prefix and day are serialised by a PostgreSQL advisory lock, taken
on its own connection before the snapshot is opened and held until the manifest is
written and old runs are removed: a run that waits (it logs so) then reads newer data than
the run it waited for, never older.

CSV format: UTF-8, comma-separated, "\\n" line ends, quoted only where needed (PostgreSQL
COPY). A NULL (customer.phone) is an empty unquoted field; an empty text is "". Dates
are YYYY-MM-DD; money has exactly two decimals (99.99); booleans are t / f.

Every object is stored with server-side encryption (S3_SSE: AES256, the default, or
aws:kms with the key S3_KMS_KEY_ID, or the account's default KMS key when it is empty)
and a SHA-256 checksum the store verifies on receipt.

Needs: the schema from travel.sql; DATABASE_URL or the libpq variables (PGHOST, ...);
S3_BUCKET_NAME; AWS credentials from boto3's default chain (environment, profile, SSO,
instance or task role) allowed to list the prefix, put and delete objects under it and get
the day's _manifest.json. For an S3-compatible store, set AWS_ENDPOINT_URL_S3 (boto3 reads
it itself).

Example:
    python batch_transfer_data_to_cloud_storage.py
    python batch_transfer_data_to_cloud_storage.py --date 2024-05-01 --compression gzip --batch-size 10000
    python batch_transfer_data_to_cloud_storage.py --format parquet
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
import secrets
import zipfile
from contextlib import closing, contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterable, Iterator, Sequence

import waddle_common as common

log = logging.getLogger("data_waddle.export")

STAGE = "batch_transfer_data_to_cloud_storage"
MANIFEST_FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
TOOL_NAME = "data-waddle"

# compression -> (key suffix, Content-Type). No Content-Encoding on gzip objects: HTTP
# clients would then unpack them on the fly and the bytes would no longer match sha256.
COMPRESSIONS = {"zip": (".csv.zip", "application/zip"), "gzip": (".csv.gz", "application/gzip")}
FORMATS = ("csv", "parquet")
# A Parquet batch: one file, one row group, compressed with snappy (not zstd, 27% smaller on
# bookings at the same speed: the AWS SDK for pandas Lambda layers build Arrow with
# ARROW_WITH_ZSTD=OFF, so the Lambda could not read it; docs/performance-export.md measures).
PARQUET = (".parquet", "application/vnd.apache.parquet")
PARQUET_CODEC = "snappy"
# Hive symlink manifests for engines (Athena's SymlinkTextInputFormat): after the day's
# manifest, <S3_PREFIX><day>/_symlink/<table>/symlink.txt lists the run's objects of <table>.
SYMLINK_FOLDER = "_symlink"
SYMLINK_NAME = "symlink.txt"
SSE_MODES = {"aes256": "AES256", "aws:kms": "aws:kms"}
DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))
QUEUE_PER_WORKER = 2  # batches waiting or in progress per worker: bounds the memory
DELETE_CHUNK = 1000  # DeleteObjects takes at most 1000 keys
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
# A run's id: its snapshot time in UTC to the millisecond, then 8 random hex digits.
RUN_ID_PATTERN = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # exported_at, replaced_at in the manifest
# How long a run's objects stay after its manifest was replaced, for readers that fetched
# that manifest just before: the Lambda's longest timeout (900 s, the most AWS allows and
# lambda/template.yaml's MaxValue) plus 5 minutes for the manifest's upload and for clocks
# of two exporting machines that disagree. The run just replaced is kept regardless.
KEEP_REPLACED_SECONDS = 20 * 60
# Classid-free bigint namespace of the export lock (the loader's key is 0x57414444).
LOCK_NAMESPACE = "data-waddle export"

# Booking columns that come from the joined destination row, after destination_id (so a
# reader needs no database): the export's one rule of its own. Every other column, its type
# and each table's key come from waddle_common.SCHEMA.
BOOKING_FROM_DESTINATION = ("destination", "country")


def export_declaration(table: str) -> tuple[common.Column, ...]:
    """The exported columns of `table` in file order, as SCHEMA declares them; booking gains
    the destination's name and country after destination_id."""
    columns = common.SCHEMA[table].columns
    if table != "booking":
        return columns
    at = [c.name for c in columns].index("destination_id") + 1
    joined = tuple(common.SCHEMA["destination"].column(name) for name in BOOKING_FROM_DESTINATION)
    return columns[:at] + joined + columns[at:]


EXPORT_DECLARATION = {table: export_declaration(table) for table in common.TABLES}
# The header line (CSV) or the schema's field names (Parquet), and the manifest's columns.
EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {t: tuple(c.name for c in cs) for t, cs in EXPORT_DECLARATION.items()}
KEYS = {table: common.SCHEMA[table].key for table in common.TABLES}


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ExportPlan:
    """What one run does: every setting checked, command-line options applied."""

    bucket: str
    prefix: str
    day: str
    compression: str  # of CSV objects (zip or gzip); Parquet objects are always PARQUET_CODEC
    compression_level: int
    batch_size: int
    workers: int
    sse: str
    kms_key_id: str
    format: str = "csv"

    @property
    def kind(self) -> str:
        """What each object is: "zip" or "gzip" (CSV), or "parquet"."""
        return "parquet" if self.format == "parquet" else self.compression

    @property
    def day_prefix(self) -> str:
        return day_prefix(self.prefix, self.day)

    @property
    def manifest_key(self) -> str:
        return f"{self.day_prefix}{MANIFEST_NAME}"


def check_prefix(prefix: str) -> str:
    """S3_PREFIX as a folder: ' /exports ' -> 'exports/'; '' and '/' -> '' (the bucket's root).

    The Lambda's normalise_prefix does exactly the same, so both always name the same keys.
    A missing '/' is added rather than refused: 'exports' can only mean the folder (keys
    would otherwise run together as 'exports2024-05-01/'), and the Lambda, deployed with its
    own copy of the setting, has always added it. A leading '/' is dropped: S3 would keep it
    as an unnamed top folder that no one means.
    """
    prefix = prefix.strip().lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


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
    export_format = (getattr(args, "format", None) or settings.export_format).lower()
    if export_format not in FORMATS:
        raise common.ConfigError(f"EXPORT_FORMAT must be csv or parquet, got {export_format!r}")
    if export_format == "parquet" and args.compression:
        raise common.ConfigError(f"--compression applies to CSV exports; Parquet objects are always compressed "
                                 f"with {PARQUET_CODEC}: drop --compression or use --format csv")
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
        format=export_format,
    )


# ---------------------------------------------------------------------------------------
# Names


def day_prefix(prefix: str, day: str) -> str:
    return f"{prefix}{day}/"


def new_run_id(at: datetime) -> str:
    """20240501T063015.123Z-1a2b3c4d: sorts by time; the suffix keeps two runs in one
    millisecond (or on two machines) apart."""
    at = at.astimezone(timezone.utc)
    return f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def run_prefix(prefix: str, day: str, run_id: str) -> str:
    return f"{day_prefix(prefix, day)}{run_id}/"


def member_name(table: str, day: str, number: int) -> str:
    """The CSV file's name inside its archive: booking_2024-05-01_batch_0001.csv."""
    return f"{table}_{day}_batch_{number:04d}.csv"


def object_type(kind: str) -> tuple[str, str]:
    """(key suffix, Content-Type) of an object of `kind`: zip, gzip or parquet."""
    return PARQUET if kind == "parquet" else COMPRESSIONS[kind]


def batch_key(prefix: str, day: str, run_id: str, table: str, number: int, kind: str) -> str:
    """exports/2024-05-01/<run>/booking/booking_2024-05-01_batch_0001.csv.zip (.csv.gz, .parquet;
    batches count from 1)."""
    suffix = object_type(kind)[0]
    return f"{run_prefix(prefix, day, run_id)}{table}/{table}_{day}_batch_{number:04d}{suffix}"


def symlink_key(prefix: str, day: str, table: str) -> str:
    """exports/2024-05-01/_symlink/booking/symlink.txt: the table's objects for engines."""
    return f"{day_prefix(prefix, day)}{SYMLINK_FOLDER}/{table}/{SYMLINK_NAME}"


def export_lock_key(bucket: str, prefix: str, day: str) -> int:
    """The advisory lock (a positive bigint) that serialises exports of one bucket, prefix and day."""
    name = "\0".join((LOCK_NAMESPACE, bucket, prefix, day)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big") >> 1


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
# Parquet: the same batch, typed as the database has it

SQL_TO_ARROW = {"BIGINT": "int64", "INTEGER": "int32", "DATE": "date32", "BOOLEAN": "bool_", "TEXT": "string"}
SQL_NUMERIC = re.compile(r"NUMERIC\((\d+), *(\d+)\)")


def arrow_type(sql_type: str):
    """The Arrow type of a travel.sql type: BIGINT int64, INTEGER int32, DATE date32, BOOLEAN
    bool, TEXT string, NUMERIC(p, s) decimal128(p, s) (exact: money never becomes a float)."""
    import pyarrow as pa

    if numeric := SQL_NUMERIC.fullmatch(sql_type):
        return pa.decimal128(int(numeric.group(1)), int(numeric.group(2)))
    if sql_type not in SQL_TO_ARROW:
        raise ValueError(f"no Arrow type for the SQL type {sql_type!r}")
    return getattr(pa, SQL_TO_ARROW[sql_type])()


def arrow_schema(table: str):
    """The Parquet schema of an exported table: SCHEMA's columns and types, in file order."""
    import pyarrow as pa

    return pa.schema([pa.field(c.name, arrow_type(c.sql_type), nullable=c.nullable)
                      for c in EXPORT_DECLARATION[table]])


def parquet_batch(data: bytes, table: str) -> bytes:
    """One batch of COPY's CSV rows (no header) as a Parquet file of one row group.

    COPY writes NULL as an empty unquoted field and an empty text as "", booleans t / f,
    dates YYYY-MM-DD and NUMERIC as its exact decimal text; Arrow's CSV reader takes them so
    (no other null spellings: a place called "NA" stays a name). Money is read as text and
    cast to decimal128, which is exact (a value that does not fit fails; it is never rounded).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = arrow_schema(table)
    if not data:  # an empty table: one file with the schema and no rows
        typed = schema.empty_table()
    else:
        # On one thread (read_copy_csv): batches already convert on --workers threads; Arrow's
        # own pool only contended with them (1M bookings: 4.3 s and 230 MB against 5.8 s and 269 MB).
        text_first = {f.name: pa.string() if pa.types.is_decimal(f.type) else f.type for f in schema}
        read = common.read_copy_csv(data, schema.names, text_first)
        columns = [pc.cast(read[f.name], f.type) for f in schema]
        for field, column in zip(schema, columns):
            if not field.nullable and column.null_count:
                raise common.PipelineError(f"{table}.{field.name}: PostgreSQL sent NULL in a NOT NULL column")
        typed = pa.Table.from_arrays(columns, schema=schema)
    out = pa.BufferOutputStream()
    pq.write_table(typed, out, compression=PARQUET_CODEC, row_group_size=max(1, typed.num_rows))
    return out.getvalue().to_pybytes()


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


@dataclass(frozen=True)
class KeptRun:
    """An earlier run of the day whose objects stay for readers still holding its manifest.

    run_id None stands for the objects of the layout before runs (<date>/<table>/...)."""

    run_id: str | None
    replaced_at: datetime


def build_manifest(plan: ExportPlan, run_id: str, exported_at: datetime, objects: Iterable[ExportedObject],
                   kept: Iterable[KeptRun] = ()) -> dict:
    """The manifest: the contract between this stage and every reader (the Lambda).

    {"format_version": 1, "date": "YYYY-MM-DD", "prefix": "<S3_PREFIX><date>/",
     "exported_at": "YYYY-MM-DDTHH:MM:SSZ", "run_id": "<run>", "tool": "data-waddle",
     "tool_version": "...", "format": "csv" | "parquet", "compression": "zip" | "gzip" | "snappy",
     "tables": {"customer": {"columns": [...], "rows": N}, "destination": ..., "booking": ...},
     "objects": [{"key", "table", "rows", "bytes", "sha256"}, ...],
     "kept_runs": [{"run_id": "<run>" | null, "replaced_at": "YYYY-MM-DDTHH:MM:SSZ"}, ...]}

    exported_at is when the snapshot was taken (UTC, whole seconds). Every object is under
    "<prefix><run_id>/". Objects are sorted by table name, then batch number (which is also
    key order); every table has at least one. sha256 is the hex digest of the object's
    bytes as stored. kept_runs is the exporter's own bookkeeping (readers ignore it): the
    earlier runs whose objects are still kept and when their manifest was replaced, the
    run this one replaced first; null is the layout before runs.
    """
    ordered = sorted(objects, key=lambda o: (o.table, o.batch))
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "date": plan.day,
        "prefix": plan.day_prefix,
        "exported_at": exported_at.astimezone(timezone.utc).strftime(TIME_FORMAT),
        "run_id": run_id,
        "tool": TOOL_NAME,
        "tool_version": common.__version__,
        "format": plan.format,
        "compression": PARQUET_CODEC if plan.format == "parquet" else plan.compression,
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
        "kept_runs": [
            {"run_id": k.run_id, "replaced_at": k.replaced_at.astimezone(timezone.utc).strftime(TIME_FORMAT)}
            for k in kept
        ],
    }


# ---------------------------------------------------------------------------------------
# Retention: which earlier runs of the day stay after a commit


@dataclass(frozen=True)
class PreviousExport:
    """What the manifest about to be replaced says. run_id None: it is of the layout before
    runs. known False: it could not be understood (not JSON, or a newer format), so which
    run it names is unknown."""

    run_id: str | None
    kept: tuple[KeptRun, ...] = ()
    known: bool = True


def parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def parse_previous(body: bytes) -> PreviousExport:
    """The previous manifest's run and kept runs; known=False when it cannot be trusted."""
    try:
        manifest = json.loads(body)
        if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise ValueError("not a format_version 1 manifest")
        if "run_id" not in manifest:  # written before runs: its objects are <date>/<table>/...
            return PreviousExport(run_id=None)
        run_id = manifest["run_id"]
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r}")
        kept = []
        for entry in manifest.get("kept_runs", []):
            kept_id = entry["run_id"]
            if kept_id is not None and not (isinstance(kept_id, str) and RUN_ID_PATTERN.fullmatch(kept_id)):
                raise ValueError(f"kept run_id {kept_id!r}")
            kept.append(KeptRun(kept_id, parse_time(entry["replaced_at"])))
        return PreviousExport(run_id=run_id, kept=tuple(kept))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        log.warning("the day's previous manifest cannot be read (%s); this run deletes no earlier objects",
                    common.first_line(exc))
        return PreviousExport(run_id=None, known=False)


def run_of(key: str, day_folder: str) -> tuple[bool, str | None]:
    """(True, run id) for an object of a run, (True, None) for one of the layout before runs
    (<date>/<table>/...), (False, None) for anything else (the manifest, foreign objects)."""
    folder, slash, _ = key.removeprefix(day_folder).partition("/")
    if not key.startswith(day_folder) or not slash:
        return False, None
    if RUN_ID_PATTERN.fullmatch(folder):
        return True, folder
    return (True, None) if folder in common.TABLES else (False, None)


def runs_present(keys: Iterable[str], day_folder: str) -> set[str | None]:
    found = (run_of(key, day_folder) for key in keys)
    return {run for is_run, run in found if is_run}


def runs_to_keep(previous: PreviousExport | None, now: datetime, present: Iterable[str | None] = ()) -> list[KeptRun]:
    """The earlier runs a new manifest keeps: the one it replaces (as of `now`) and those
    replaced less than KEEP_REPLACED_SECONDS before `now`. When the previous manifest is not
    understood, every run `present` is kept, as if replaced now."""
    if previous is None:
        return []
    if not previous.known:
        return [KeptRun(run, now) for run in sorted(present, key=lambda r: r or "")]
    kept = [KeptRun(previous.run_id, now)]
    for run in previous.kept:
        if run.run_id != previous.run_id and (now - run.replaced_at).total_seconds() < KEEP_REPLACED_SECONDS:
            kept.append(run)
    return kept


def keys_to_delete(keys: Iterable[str], day_folder: str, keep: set[str | None]) -> list[str]:
    """Objects of runs not in `keep` (None: the layout before runs); never the manifest or
    objects this stage did not write."""
    doomed = []
    for key in keys:
        is_run, run = run_of(key, day_folder)
        if is_run and run not in keep:
            doomed.append(key)
    return sorted(doomed)


def format_summary(manifest: dict, bucket: str) -> str:
    lines = [f"{'table':<12}{'objects':>9}{'rows':>12}{'bytes':>14}"]
    for table, info in manifest["tables"].items():
        objects = [o for o in manifest["objects"] if o["table"] == table]
        size = sum(o["bytes"] for o in objects)
        lines.append(f"{table:<12}{len(objects):>9}{info['rows']:>12}{size:>14}")
    lines.append(f"manifest: s3://{bucket}/{manifest['prefix']}{MANIFEST_NAME} (run {manifest['run_id']})")
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
        # A one-key listing of the day, not HeadBucket: S3 authorises HeadBucket as a
        # ListBucket without s3:prefix, which a policy can allow only by allowing a listing
        # of the whole bucket. This one stays inside the export prefix (ExportPolicy).
        self._call("checking the bucket", "list_objects_v2", Prefix=self.plan.day_prefix, MaxKeys=1)

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

    def read(self, key: str) -> bytes | None:
        """The object's bytes; None when it does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise storage_error(exc, self.bucket, f"reading {key} (the export needs s3:GetObject on it)") from None
        except BotoCoreError as exc:
            raise storage_error(exc, self.bucket, f"reading {key}") from None

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


def upload_batch(storage: Storage, plan: ExportPlan, run_id: str, table: str, number: int, rows: int,
                 data: bytes) -> ExportedObject:
    """Compress one batch and store it (runs on a worker thread; zlib releases the GIL)."""
    if plan.format == "parquet":
        body = parquet_batch(data, table)
    else:
        body = compress_batch(data, member_name(table, plan.day, number), plan.compression,
                              plan.compression_level, plan.day)
    key = batch_key(plan.prefix, plan.day, run_id, table, number, plan.kind)
    sha256 = storage.put(key, body, object_type(plan.kind)[1])
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


def take_export_lock(conn, plan: ExportPlan) -> None:
    """Hold the advisory lock of this bucket, prefix and day on `conn` (its own session,
    autocommit: no transaction stays open); wait, saying so, while another export holds it.
    Advisory locks need no privilege: the travel_reader role can take them."""
    import psycopg2

    key = export_lock_key(plan.bucket, plan.prefix, plan.day)
    conn.autocommit = True
    interrupted: list[bool] = []
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            if not cur.fetchone()[0]:
                log.info("another export of %s to s3://%s/%s is running; waiting for it to finish",
                         plan.day, plan.bucket, plan.day_prefix)
                with interruptible(interrupted):
                    cur.execute("SELECT pg_advisory_lock(%s)", (key,))
    except psycopg2.Error as exc:
        if interrupted:
            raise KeyboardInterrupt from None
        raise common.PipelineError(f"taking the export lock failed: {common.first_line(common.redact(exc))}") from None
    if interrupted:  # Ctrl-C as the lock came: the cancel found nothing to cancel
        raise KeyboardInterrupt


@contextmanager
def interruptible(interrupted: list[bool]) -> Iterator[None]:
    """Ctrl-C cancels a statement run inside (noted in `interrupted`). By default psycopg2
    waits inside libpq, where Python sees a signal only once the statement ends: a run
    waiting for the lock ignored Ctrl-C until the other export finished. The wait callback
    is process-wide (every connection would wait through it), so it is set only around the
    lock's wait, before the snapshot's connection exists."""
    import select

    from psycopg2 import extensions

    def wait(conn) -> None:  # psycopg2.extras.wait_select, remembering the interrupt
        while True:
            try:
                state = conn.poll()
                if state == extensions.POLL_OK:
                    return
                if state == extensions.POLL_READ:
                    select.select([conn.fileno()], [], [])
                elif state == extensions.POLL_WRITE:
                    select.select([], [conn.fileno()], [])
                else:
                    raise conn.OperationalError(f"bad state from poll: {state}")
            except KeyboardInterrupt:
                interrupted.append(True)
                conn.cancel()  # the server then ends the statement with an error

    previous = extensions.get_wait_callback()
    extensions.set_wait_callback(wait)
    try:
        yield
    finally:
        extensions.set_wait_callback(previous)


def check_lock_held(conn) -> None:
    """A session lock lasts as long as its session: if the connection is still alive, the
    lock is still ours. Checked just before the manifest is written: after a lost
    connection another export may be running, so nothing is published."""
    import psycopg2

    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    except psycopg2.Error as exc:
        raise common.PipelineError(
            f"lost the export lock before publishing ({common.first_line(common.redact(exc))}); "
            "the previous export is unchanged; run the export again"
        ) from None


@contextmanager
def password_already_judged() -> Iterator[None]:
    """connect_db warns about a weak password on every connection; the export's second
    connection uses the same password, so its warning would only repeat the first."""
    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("the database password is")

    common.log.addFilter(drop)
    try:
        yield
    finally:
        common.log.removeFilter(drop)


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

        # Parquet batches are read by Arrow with the schema's names: no header line to parse.
        writer = BatchWriter(csv_header(table) if plan.format == "csv" else b"", plan.batch_size, emit)
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
        "--format", choices=FORMATS,
        help="csv (compressed as --compression says) or parquet (typed, for engines such as Athena; "
             "default: $EXPORT_FORMAT, csv)",
    )
    parser.add_argument(
        "--compression", choices=tuple(COMPRESSIONS),
        help="zip or gzip, of CSV exports (default: $EXPORT_COMPRESSION, zip)",
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
    # The lock's own session: the snapshot's transaction must begin only once it is held, or
    # a run that waited would publish what it saw before the run it waited for.
    with closing(common.connect_db("export lock")) as lock_conn:
        storage.check_bucket()
        take_export_lock(lock_conn, plan)
        previous = read_previous(storage, plan)
        exported_at = datetime.now(timezone.utc)
        run_id = new_run_id(exported_at)
        try:
            objects = export_run(storage, plan, run_id)
            now = datetime.now(timezone.utc).replace(microsecond=0)
            present = () if previous is None or previous.known else runs_present(
                storage.list_keys(plan.day_prefix), plan.day_prefix) - {run_id}
            kept = runs_to_keep(previous, now, present)
            manifest = build_manifest(plan, run_id, exported_at, objects, kept)
            body = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
            check_lock_held(lock_conn)
        except BaseException:
            discard_run(storage, plan, run_id)  # no manifest names this run: nothing reads it
            raise
        # The commit. Not undone if it fails: the store may have stored it all the same.
        storage.put(plan.manifest_key, body, "application/json", CacheControl="no-cache")
        # Then the engines' view follows it (never leads it): the symlink files name this run.
        try:
            update_symlinks(storage, plan, objects)
        except common.PipelineError as exc:
            # A symlink file may still name an earlier run, which retention would not know to
            # keep: nothing is deleted this time. The next run writes them all again.
            raise common.PipelineError(
                f"the export of {plan.day} is published (its manifest names run {run_id}), but the engines' "
                f"symlink files were not updated: {exc}; engines still read an earlier run; run the export again"
            ) from None
        remove_old_runs(storage, plan, {run_id} | {k.run_id for k in kept})
    print(format_summary(manifest, plan.bucket))
    return common.EXIT_OK


def update_symlinks(storage: Storage, plan: ExportPlan, objects: Sequence[ExportedObject]) -> None:
    """After the manifest: the day's Hive symlink files, one PUT per table, parents first.

    Parquet: <day>/_symlink/<table>/symlink.txt lists this run's objects of the table, one
    s3://bucket/key line each (the table's Athena partition reads exactly those). Each file
    is one PUT, so a reader of one table sees the previous run or this one, whole. A query
    joining tables while the three PUTs happen may combine two consecutive runs; writing
    destination before booking means that mix has new destinations with older bookings,
    whose destinations are all still there (the loader never deletes). CSV (which the
    engines' Parquet tables cannot read): the day's symlink files are removed, so engines see
    no rows for the day rather than an older run than the manifest's.
    """
    folder = f"{plan.day_prefix}{SYMLINK_FOLDER}/"
    if plan.format != "parquet":
        stale = storage.list_keys(folder)
        if stale:
            storage.delete(stale)
        return
    for table in common.LOAD_ORDER:
        lines = "".join(f"s3://{plan.bucket}/{o.key}\n" for o in sorted(objects, key=lambda o: o.batch)
                        if o.table == table)
        storage.put(symlink_key(plan.prefix, plan.day, table), lines.encode("utf-8"), "text/plain; charset=utf-8",
                    CacheControl="no-cache")


def read_previous(storage: Storage, plan: ExportPlan) -> PreviousExport | None:
    """The day's current manifest, read under the lock: the run this one will replace.

    Looked for by a listing first: to a role whose ListBucket is limited to a prefix, S3 may
    answer a GET of a missing key with 403 rather than 404, so the first export of a day
    would look like a permission error."""
    if plan.manifest_key not in storage.list_keys(plan.manifest_key):
        return None
    body = storage.read(plan.manifest_key)
    return None if body is None else parse_previous(body)


def export_run(storage: Storage, plan: ExportPlan, run_id: str) -> list[ExportedObject]:
    """The snapshot (opened now, under the lock), cut into batches stored under the run's folder."""
    with password_already_judged():
        conn = common.connect_db("export")
    try:
        open_snapshot(conn)
        return export_tables(conn, storage, plan, run_id)
    finally:
        conn.close()


def discard_run(storage: Storage, plan: ExportPlan, run_id: str) -> None:
    """Best effort after a failure: a later run's retention removes whatever stays."""
    try:
        storage.delete(storage.list_keys(run_prefix(plan.prefix, plan.day, run_id)))
    except Exception as exc:  # noqa: BLE001 - the run's own failure is the one to report
        log.debug("the failed run's objects stay until a later run removes them: %s", common.first_line(exc))


def remove_old_runs(storage: Storage, plan: ExportPlan, keep: set[str | None]) -> None:
    """After the commit: delete the day's runs not in `keep`. The export is published
    already, so a failure here is a warning; the next run tries again."""
    try:
        doomed = keys_to_delete(storage.list_keys(plan.day_prefix), plan.day_prefix, keep)
        if doomed:
            log.debug("deleting %d object(s) of earlier runs of %s", len(doomed), plan.day)
            storage.delete(doomed)
    except common.PipelineError as exc:
        log.warning("the export is published, but earlier runs of %s were not removed: %s; the next export "
                    "of the day removes them", plan.day, exc)


def export_tables(conn, storage: Storage, plan: ExportPlan, run_id: str) -> list[ExportedObject]:
    """Read every table in the snapshot; batches upload while the next ones are read."""
    pool = UploadPool(lambda *batch: upload_batch(storage, plan, run_id, *batch), plan.workers)
    try:
        for table in common.TABLES:
            copy_table(conn, table, plan, pool.submit)
        conn.rollback()  # read only: nothing to keep; ends the snapshot before the last uploads
        return pool.finish()
    finally:
        pool.close()


if __name__ == "__main__":
    raise SystemExit(main())
