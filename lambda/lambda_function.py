"""Stage 5 (AWS Lambda): per-destination booking metrics from the day's S3 export.

Reads `{S3_PREFIX}{date}/_manifest.json` (stage 4's commit point), then the destination and booking objects it lists
(CSV, or Parquet with pyarrow), each checked against its size and SHA-256. Returns for every destination (by name,
country, id) total_bookings_, total_booking_value_ (exact, "1234.50") and total_passengers_booked_per_destination.
Money off the export grammar EXPORT_MONEY, or a NUL byte in a CSV, fails the run: ExportCorrupt names object and row.
Local run, same variables (and ./.env): python lambda/lambda_function.py --date 2026-11-26 [--json]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO, Any

import boto3
import numpy as np
import pandas as pd
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

MANIFEST_FORMAT_VERSION = 1
FORMATS = ("csv", "parquet", None)  # the manifest's format; None: stage 4 from before Parquet, CSV
CHUNK_ROWS = 100_000  # rows per parsed chunk: a few MB whatever the object's size
READ_WORKERS = 4  # objects downloaded, verified and parsed at once (network and parsing overlap)
RESULTS = {"json": ("destination_metrics.json", "application/json"), "csv": ("destination_metrics.csv", "text/csv")}
SSE_MODES = {"aes256": "AES256", "aws:kms": "aws:kms"}  # S3_SSE, as for stage 4
# The export's money grammar, written once: exactly two decimals and at most 16 digits of
# units, the limit of stage 3 and travel.sql (9999999999999999.99: the cents fit an int64).
MAX_UNIT_DIGITS = 16
EXPORT_MONEY = rf"[0-9]{{1,{MAX_UNIT_DIGITS}}}\.[0-9]{{2}}"
MONEY_VALUE = re.compile(EXPORT_MONEY)
MONEY_LINES = re.compile(rf"{EXPORT_MONEY}(?:\n{EXPORT_MONEY})*")  # a chunk's values joined by newlines
# The columns read, typed as in travel.sql; the others are not parsed. Text and money stay
# text: a place called "Nan" stays a name, and no float ever touches money.
COLUMNS: dict[str, dict[str, Any]] = {
    "destination": {"destination_id": "int64", "destination": object, "country": object},
    "booking": {"destination_id": "int64", "number_of_passengers": "int64", "total_booking_value": object},
}
METRIC_COLUMNS = ("destination_id", "destination", "country", "total_bookings_per_destination",
                  "total_booking_value_per_destination", "total_passengers_booked_per_destination")


class MetricsError(Exception):
    """An expected failure, reported in one line: the invocation fails so an alarm can fire."""


class ExportNotFound(MetricsError):
    """The day's manifest does not exist: stage 4 has not (yet) exported that day."""


class ExportCorrupt(MetricsError):
    """A listed object is missing, altered or unreadable, or the manifest is invalid."""


def normalise_prefix(value: str) -> str:
    """' /exports ' -> 'exports/'; '' and '/' -> '' (the bucket's root). Stage 4 does the same."""
    value = value.strip().lstrip("/")
    return value if not value or value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Settings:
    """Every setting, read from the environment (see env.example)."""

    bucket: str
    prefix: str
    results_prefix: str
    sse: str
    kms_key_id: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        level = env.get("LOG_LEVEL", "").strip().upper()
        return cls(env.get("S3_BUCKET_NAME", "").strip(), normalise_prefix(env.get("S3_PREFIX", "")),
                   normalise_prefix(env.get("RESULTS_PREFIX", "")), env.get("S3_SSE", "").strip() or "AES256",
                   env.get("S3_KMS_KEY_ID", "").strip(),
                   level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")

    def check(self) -> None:
        if not self.bucket:
            raise MetricsError("S3_BUCKET_NAME is not set: name the bucket that holds the daily exports")
        if (mode := SSE_MODES.get(self.sse.lower())) is None or (self.kms_key_id and mode != "aws:kms"):
            raise MetricsError(f"S3_SSE must be AES256 or aws:kms (aws:kms to use S3_KMS_KEY_ID), got {self.sse!r}")


def s3_client():
    """boto3's default chain (the execution role on Lambda; AWS_ENDPOINT_URL for moto)."""
    config = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", config=config)


# On Lambda the runtime's handler on the root logger writes each record as one JSON object
# (LoggingConfig LogFormat JSON), `extra=` fields included; locally main() adds a handler.
LOG = logging.getLogger("data_waddle.lambda")
SETTINGS = Settings.from_env()
LOG.setLevel(SETTINGS.log_level)
for _noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
logging.captureWarnings(True)  # a library's warning is a log record too, never loose text on stderr
S3 = s3_client()
LOG.info("cold start", extra={"pandas_version": pd.__version__, "boto3_version": boto3.__version__})


class RunLog(logging.LoggerAdapter):
    """Adds the run's fields (bucket, prefix, date) to each line's own `extra` fields."""

    def process(self, msg, kwargs):
        return msg, {**kwargs, "extra": {**self.extra, **kwargs.get("extra", {})}}


def parse_day(value: object, source: str = "date") -> str:
    """`'2026-11-26'` -> itself, after checking it is a real calendar date."""
    with suppress(ValueError):
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text := str(value).strip()):
            return date.fromisoformat(text).isoformat()
    raise MetricsError(f"{source} must be a date as YYYY-MM-DD, got {value!r}")


def resolve_date(event: Mapping[str, Any] | None, now: datetime | None = None) -> str:
    """event["date"]; else the UTC date of an EventBridge event's `time`; else today (UTC)."""
    event = event if isinstance(event, Mapping) else {}
    if event.get("date") is not None:
        return parse_day(event["date"], "event date")
    if event.get("time") is not None:
        raw = str(event["time"]).strip()
        try:
            moment = datetime.fromisoformat(raw)  # "Z" included, since Python 3.11
        except ValueError:
            raise MetricsError(f"event time must be an ISO 8601 timestamp, got {raw!r}") from None
        return (moment.astimezone(UTC) if moment.tzinfo else moment).date().isoformat()
    return (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def load_manifest(s3, bucket: str, prefix: str, day: str, key: str) -> dict:
    where = f"bucket {bucket}, prefix {prefix!r}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if (code := error_code(exc)) in ("NoSuchKey", "404", "NotFound"):
            raise ExportNotFound(f"no export for {day}: s3://{bucket}/{key} does not exist ({where}); run stage 4 "
                                 "(batch_transfer_data_to_cloud_storage.py) for that date or check S3_PREFIX") from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise MetricsError(f"access denied reading s3://{bucket}/{key} ({where}): the execution role needs "
                               "s3:GetObject on the manifests and s3:ListBucket on the prefix") from None
        raise MetricsError(f"cannot read s3://{bucket}/{key} ({where}): {code or exc}") from None
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportCorrupt(f"manifest s3://{bucket}/{key} is not valid JSON: {exc}") from None
    check_manifest(manifest, key, f"{prefix}{day}/", day)
    return manifest


def check_manifest(manifest: object, key: str, folder: str, day: str) -> None:
    """The fields this stage relies on are present and agree with the request."""
    if not (isinstance(manifest, dict) and isinstance(manifest.get("objects"), list)
            and isinstance(manifest.get("tables", {}), dict)):
        raise ExportCorrupt(f"manifest {key} is not a JSON object with an objects list (and a tables object)")
    for field, wanted in (("format_version", (MANIFEST_FORMAT_VERSION,)), ("date", (day,)), ("format", FORMATS)):
        if manifest.get(field) not in wanted:
            raise ExportCorrupt(f"manifest {key} is for {field} {manifest.get(field)!r}, not "
                                f"{' or '.join(map(repr, wanted))}")
    seen = set()
    for entry in manifest["objects"]:
        name = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.startswith(folder) or name in seen:
            raise ExportCorrupt(f"manifest {key} lists {entry!r} " + ("twice" if name in seen else f"outside {folder}"))
        seen.add(name)
        if not (isinstance(entry.get("table"), str) and re.fullmatch(r"[0-9a-fA-F]{64}", str(entry.get("sha256")))
                and all(type(entry.get(item)) is int and entry[item] >= 0 for item in ("rows", "bytes"))):
            raise ExportCorrupt(f"manifest {key} gives {name} no valid table, rows, bytes or sha256")


def fetch_verified(s3, bucket: str, entry: dict, stack: ExitStack) -> IO[bytes]:
    """The object's bytes in a spooled temporary file, after checking size and SHA-256."""
    key = entry["key"]
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=8 << 20))  # then in /tmp
        digest = hashlib.sha256()
        for block in body.iter_chunks(1 << 20):
            digest.update(block)
            spool.write(block)
        size = spool.tell()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            raise ExportCorrupt(f"object {key} is listed in the manifest but missing from bucket {bucket}") from None
        raise MetricsError(f"cannot read s3://{bucket}/{key}: {error_code(exc) or exc}") from None
    except (BotoCoreError, OSError) as exc:
        raise MetricsError(f"download of s3://{bucket}/{key} failed: {exc}") from None
    if size != entry["bytes"]:
        raise ExportCorrupt(f"object {key} has {size} bytes, the manifest says {entry['bytes']}: export is corrupt")
    if digest.hexdigest() != entry["sha256"].lower():
        raise ExportCorrupt(f"object {key} does not match its SHA-256 in the manifest: export is corrupt")
    spool.seek(0)
    return spool


def read_frames(raw: IO[bytes], key: str, table: str, chunk_rows: int, stack: ExitStack, form: str):
    """The used columns of an object in chunks: ids, counts int64; text, money as text (in Parquet the decimal's exact
    text) for to_cents' one grammar. CSV: pandas' C reader with or without pyarrow (one reader, one verdict)."""
    if form == "parquet":
        try:  # the AWS SDK for pandas layer has pyarrow; CSV exports need none
            import pyarrow.parquet as pq
        except ImportError:
            raise MetricsError(f"object {key} is Parquet and this Lambda has no pyarrow: add a layer with pyarrow "
                               "(AWS SDK for pandas) or export the day as CSV (EXPORT_FORMAT=csv)") from None
        header = [field.name for field in pq.read_schema(raw) if not field.nullable]  # required: never empty
    elif key.endswith(".zip"):
        archive = stack.enter_context(zipfile.ZipFile(raw))
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise ExportCorrupt(f"object {key} should hold one CSV, holds {len(members)} files")
        raw = stack.enter_context(archive.open(members[0]))
    elif key.endswith(".gz"):
        raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    elif not key.endswith(".csv"):
        raise ExportCorrupt(f"object {key} is neither .csv.zip, .csv.gz nor .csv")
    if form != "parquet":
        raw = io.BufferedReader(NulRefused(raw, key), 1 << 20)
        header = next(csv.reader([raw.readline().decode("utf-8-sig")]), [])
    missing = [name for name in COLUMNS[table] if name not in header]
    if missing or len(set(header)) != len(header):
        raise ExportCorrupt(f"object {key} {'lacks column(s) ' + ', '.join(missing) if missing else 'repeats a column'}"
                            f"; {'required ' * (form == 'parquet')}columns found: {', '.join(header)}")
    if form == "parquet":
        types = {name: "string" if kind is object else kind for name, kind in COLUMNS[table].items()}
        return (pd.DataFrame({n: batch[n].cast(t).to_numpy(zero_copy_only=False) for n, t in types.items()})
                for batch in pq.ParquetFile(raw).iter_batches(chunk_rows, columns=list(types)))
    return stack.enter_context(pd.read_csv(raw, encoding="utf-8", header=None, names=header, chunksize=chunk_rows,
                                           usecols=list(COLUMNS[table]), dtype=COLUMNS[table], keep_default_na=False,
                                           na_values=[]))


class NulRefused(io.RawIOBase):
    """pandas before 3.1 (the layers') ends a value at NUL ('10.00\\0x' read as 10.00): refuse it."""

    def __init__(self, raw: IO[bytes], key: str):
        self.raw, self.key, self.readable = raw, key, lambda: True

    def readinto(self, buffer) -> int:
        if (size := self.raw.readinto(buffer)) and bytes(memoryview(buffer)[:size]).find(0) >= 0:
            raise ExportCorrupt(f"object {self.key} holds a NUL byte: the export is corrupt")
        return size


def to_cents(values: np.ndarray, key: str, first_row: int) -> np.ndarray:
    """int64 cents of money texts in the export grammar (else ExportCorrupt names the first other):
    one regex over the values joined by newlines, numpy parses them without points, all in C."""
    text = "\n".join(values)
    cents = np.fromstring(text.replace(".", ""), dtype=np.int64, sep="\n") if MONEY_LINES.fullmatch(text) else []
    if len(cents) != len(values):  # a value off the grammar, or one holding a newline
        row, value = next((row, v) for row, v in enumerate(values, first_row) if not MONEY_VALUE.fullmatch(v))
        raise ExportCorrupt(f"object {key} data row {row}: total_booking_value {value[:60]!r} is not money as the "
                            "export writes it (digits, a point, two decimals: [0-9]{1,16}.[0-9]{2})")
    return np.asarray(cents, dtype=np.int64)


def format_cents(cents: int) -> str:
    """1234550 -> "12345.50": exactly two decimals, exact for any size."""
    return f"{cents // 100}.{cents % 100:02d}"  # never negative: the grammar has no sign


def add_sums(totals: dict[int, list[int]], ids: np.ndarray, *columns: np.ndarray) -> None:
    """totals[destination_id] += [rows, the sum of each column], exactly (integers, never floats)."""
    codes, keys = pd.factorize(ids)
    for position, column in enumerate((np.ones(len(ids), dtype=np.int64), *columns)):
        if len(column) and max(int(column.max()), -int(column.min())) * len(column) >= 2**63:  # int64 could wrap
            column = column.astype(object)
        sums = np.zeros(len(keys), dtype=column.dtype)
        np.add.at(sums, codes, column)
        for dest_id, value in zip(keys.tolist(), sums.tolist(), strict=True):
            totals.setdefault(dest_id, [0] * (1 + len(columns)))[position] += int(value)


def read_object(s3, bucket: str, entry: dict, chunk_rows: int, form: str) -> tuple[int, list, dict, float]:
    """(rows, [(id, name, country)], {id: [bookings, passengers, cents]}, seconds) of one object."""
    (key, table, started), rows, destinations, totals = (entry["key"], entry["table"], time.monotonic()), 0, [], {}
    with ExitStack() as stack:
        raw = fetch_verified(s3, bucket, entry, stack)
        try:
            for frame in read_frames(raw, key, table, chunk_rows, stack, form):
                if table == "destination":  # never empty in travel.sql: a short row, filled in by pandas
                    for bad in np.flatnonzero((frame["destination"] == "") | (frame["country"] == ""))[:1]:
                        raise ExportCorrupt(f"object {key} data row {rows + bad + 1} lacks a name")
                    destinations.extend(frame.itertuples(index=False, name=None))
                else:
                    passengers = frame["number_of_passengers"].to_numpy()
                    for bad in np.flatnonzero(passengers < 1)[:1]:  # stage 3 rejects such a row: corrupt
                        raise ExportCorrupt(f"object {key} data row {rows + bad + 1}: number_of_passengers "
                                            f"{passengers[bad]} is not a positive count")
                    cents = to_cents(frame["total_booking_value"].to_numpy(), key, rows + 1)
                    add_sums(totals, frame["destination_id"].to_numpy(), passengers, cents)
                rows += len(frame)
        except (ValueError, TypeError, NotImplementedError, OverflowError, EOFError, OSError, zipfile.BadZipFile,
                zlib.error, pd.errors.ParserError) as exc:
            raise ExportCorrupt(f"object {key} cannot be read as a {table} {form}: {first_line(exc)}") from None
    if rows != entry["rows"]:
        raise ExportCorrupt(f"object {key} has {rows} rows, the manifest says {entry['rows']}")
    return rows, destinations, totals, round(time.monotonic() - started, 3)


def compute_metrics(s3, bucket: str, prefix: str, day: str, *, chunk_rows: int = CHUNK_ROWS,
                    log: RunLog | None = None) -> dict:
    """The day's metrics as a JSON-serialisable dict. READ_WORKERS objects are read at once; results
    come in manifest order (the first bad object is the one reported, the others are cancelled)."""
    key, log = f"{prefix}{day}/_manifest.json", log or RunLog(LOG, {"date": day})
    manifest = load_manifest(s3, bucket, prefix, day, key)
    form = manifest.get("format") or "csv"  # Parquet without pyarrow: the first object read says so
    log.info("manifest read", extra={"key": key, "objects": len(manifest["objects"]), "format": form,
                                     "run_id": manifest.get("run_id"), "exported_at": manifest.get("exported_at")})
    rows_read, objects_read, destinations, totals = {"destination": 0, "booking": 0}, 0, {}, {}
    pool = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="read")
    try:
        for table in rows_read:
            entries = [entry for entry in manifest["objects"] if entry["table"] == table]
            objects_read += len(entries)
            read = pool.map(lambda entry: read_object(s3, bucket, entry, chunk_rows, form), entries)
            for entry, (rows, places, sums, seconds) in zip(entries, read, strict=True):
                log.info("object read", extra={"table": table, "key": entry["key"], "rows": rows,
                                               "bytes": entry["bytes"], "seconds": seconds})
                rows_read[table] += rows
                for dest_id, *place in places:  # [name, country], stored unless the id came before
                    if destinations.setdefault(dest_id, place) is not place:
                        raise ExportCorrupt(f"object {entry['key']} repeats destination_id {dest_id}")
                for dest_id, values in sums.items():
                    totals[dest_id] = [a + b for a, b in zip(totals.get(dest_id, (0, 0, 0)), values, strict=True)]
            declared = manifest.get("tables", {}).get(table)  # the exporter's summary, checked when present
            if isinstance(declared, dict) and declared.get("rows") != rows_read[table]:
                raise ExportCorrupt(f"manifest counts {declared.get('rows')} {table} rows, objects {rows_read[table]}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if unknown := sorted(set(totals) - set(destinations)):
        raise ExportCorrupt("bookings reference destination_id(s) not in the destination table: "
                            + ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else ""))
    return {"date": day, "bucket": bucket, "prefix": prefix, "manifest": key,
            "exported_at": manifest.get("exported_at"), "objects_read": objects_read, "rows_read": rows_read,
            "money_format": "decimal string with exactly 2 places", **build_report(destinations, totals),
            "results": None}


def build_report(destinations: Mapping[int, Sequence[str]], totals: Mapping[int, list[int]]) -> dict:
    """Metrics rows (every destination, sorted by name, country, id), the unbooked, the totals."""
    metrics = []
    for dest_id in sorted(destinations, key=lambda i: (*destinations[i], i)):
        bookings, passengers, cents = totals.get(dest_id, (0, 0, 0))
        values = (dest_id, *destinations[dest_id], bookings, format_cents(cents), passengers)
        metrics.append(dict(zip(METRIC_COLUMNS, values, strict=True)))
    unbooked = [row for row in metrics if row["total_bookings_per_destination"] == 0]
    bookings, passengers, cents = (sum(column) for column in zip((0, 0, 0), *totals.values(), strict=True))
    return {"metrics": metrics, "destinations_without_bookings": [row["destination"] for row in unbooked],
            "destination_ids_without_bookings": [row["destination_id"] for row in unbooked],
            "totals": {"destinations": len(metrics), "destinations_with_bookings": len(metrics) - len(unbooked),
                       "total_bookings": bookings, "total_booking_value": format_cents(cents),
                       "total_passengers_booked": passengers}}


def write_results(s3, settings: Settings, result: dict, log: RunLog) -> None:
    """The JSON and the CSV side by side under RESULTS_PREFIX, encrypted as S3_SSE says."""
    keys = {kind: f"{settings.results_prefix}{result['date']}/{name}" for kind, (name, _) in RESULTS.items()}
    result["results"] = {kind: f"s3://{settings.bucket}/{key}" for kind, key in keys.items()}
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([METRIC_COLUMNS, *(m.values() for m in result["metrics"])])
    bodies = {"json": json.dumps(result, indent=2, ensure_ascii=False) + "\n", "csv": table.getvalue()}
    encryption = {"ServerSideEncryption": SSE_MODES[settings.sse.lower()],
                  **({"SSEKMSKeyId": settings.kms_key_id} if settings.kms_key_id else {})}
    for kind, key in keys.items():
        body = bodies[kind].encode("utf-8")
        try:
            s3.put_object(Bucket=settings.bucket, Key=key, Body=body,
                          ContentType=f"{RESULTS[kind][1]}; charset=utf-8", **encryption)
        except ClientError as exc:
            raise MetricsError(f"cannot write s3://{settings.bucket}/{key}: {error_code(exc) or exc}; the execution "
                               "role needs s3:PutObject on RESULTS_PREFIX (and the KMS key with aws:kms)") from None
        log.info("result written", extra={"key": key, "bytes": len(body)})


def run(event: Mapping[str, Any] | None, settings: Settings, s3) -> dict:
    """Compute the event's day, write the results if asked; log a failure with context, raise it."""
    started, log = time.monotonic(), RunLog(LOG, {"bucket": settings.bucket, "prefix": settings.prefix})
    try:
        settings.check()
        log.extra["date"] = resolve_date(event)
        log.info("run started", extra={"results_prefix": settings.results_prefix or None})
        result = compute_metrics(s3, settings.bucket, settings.prefix, log.extra["date"], log=log)
        if settings.results_prefix:
            write_results(s3, settings, result, log)
    except Exception as exc:
        log.error("run failed", exc_info=not isinstance(exc, MetricsError),
                  extra={"error": first_line(exc), "error_type": type(exc).__name__})
        raise
    log.info("run finished", extra={"seconds": round(time.monotonic() - started, 3), **result["totals"]})
    return result


def lambda_handler(event, context):
    """AWS Lambda entry point: returns the metrics dict, raises on any failure."""
    return run(event, SETTINGS, S3)


def first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0].strip() if text else type(value).__name__


def format_table(result: dict) -> str:
    """The metrics as an aligned text table, for people (travel.sh prints it)."""
    totals = result["totals"]
    rows = [("destination_id", "destination", "country", "bookings", "booking_value", "passengers"),
            *([str(value) for value in m.values()] for m in result["metrics"]),
            ("total", "", "", str(totals["total_bookings"]), totals["total_booking_value"],
             str(totals["total_passengers_booked"]))]
    widths = [max(map(len, column)) for column in zip(*rows)]
    lines = ["  ".join(c.ljust(w) if i in (1, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    rule = "  ".join("-" * w for w in widths)
    written = result["results"] and f"\nWritten: {result['results']['json']} and {result['results']['csv']}"
    return (f"Destination metrics for {result['date']} (s3://{result['bucket']}/{result['prefix']}{result['date']}/: "
            f"{result['objects_read']} objects, {result['rows_read']['booking']} bookings)\n\n"
            + "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]]) + "\n\nDestinations without bookings: "
            f"{', '.join(result['destinations_without_bookings']) or 'none'}{written or ''}")


class JsonLines(logging.Formatter):
    """The local CLI's --verbose lines: one JSON object each, like Lambda's JSON log format."""

    STANDARD = frozenset({*vars(logging.makeLogRecord({})), "message", "asctime"})

    def format(self, record: logging.LogRecord) -> str:
        entry = {"timestamp": self.formatTime(record), "level": record.levelname, "message": record.getMessage()}
        entry.update((name, value) for name, value in vars(record).items() if name not in self.STANDARD)
        if record.exc_info:
            entry["stackTrace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lambda_function.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="the export day (default: today in UTC)")
    parser.add_argument("--json", action="store_true", help="print the returned dict as JSON instead of a table")
    parser.add_argument("--env-file", metavar="FILE", help="read configuration from FILE instead of ./.env")
    parser.add_argument("--verbose", action="store_true", help="JSON log lines on stderr (at LOG_LEVEL)")
    try:
        args = parser.parse_args(argv)
        try:
            event = {"date": parse_day(args.date)} if args.date else {}
        except MetricsError as exc:
            parser.error(f"argument --date: {exc}")
        if args.env_file and not os.path.isfile(args.env_file):
            parser.error(f"argument --env-file: {args.env_file} does not exist")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    with suppress(ImportError):  # python-dotenv: for local runs only; real variables win
        from dotenv import load_dotenv
        load_dotenv(args.env_file or ".env", override=False)
    # --verbose: the log as JSON lines on stderr; else only an error line (NullHandler: no last resort).
    handler = logging.StreamHandler(sys.stderr) if args.verbose else logging.NullHandler()
    handler.setFormatter(JsonLines())
    logging.getLogger().addHandler(handler)
    try:
        settings = Settings.from_env()
        LOG.setLevel(settings.log_level if args.verbose else logging.CRITICAL + 1)
        result = run(event, settings, s3_client())
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        unexpected = "" if isinstance(exc, MetricsError) else f"unexpected {type(exc).__name__}: "
        sys.stderr.write(f"lambda_function: error: {unexpected}{first_line(exc)}\n")
        return 1
    finally:
        logging.getLogger().removeHandler(handler)
        LOG.setLevel(SETTINGS.log_level)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
