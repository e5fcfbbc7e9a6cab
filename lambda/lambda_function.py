"""Stage 5 (AWS Lambda): per-destination booking metrics from the day's S3 export.

Reads `{S3_PREFIX}{date}/_manifest.json`, written by stage 4
(batch_transfer_data_to_cloud_storage.py) once a day's export is complete, then exactly
the destination and booking objects it lists (`.csv.zip`, `.csv.gz` or plain `.csv`),
each checked against the manifest's byte count and SHA-256 before it is parsed. Objects
the manifest does not list are not part of the export and are never read.

For every destination (those without bookings too, with zeros) it computes
total_bookings_per_destination, total_booking_value_per_destination and
total_passengers_booked_per_destination, grouped by destination_id (two places may share
a name) and sorted by name, then country, then id.

Money is summed exactly, as integer cents parsed from the decimal text (never through
floats: Arrow's decimal128 or digit arithmetic in numpy), and reported as a STRING with exactly two decimals ("1234.50"), in the
returned dict, in the JSON and in the CSV alike: a JSON number would print 1234.5.

Memory follows the object, not the export: READ_WORKERS objects are read at a time (so
downloading, hashing, inflating and parsing overlap), each spooled to /tmp while its hash
is computed, then parsed whole by Arrow's CSV reader when it has at most CHUNK_ROWS rows
(stage 4 writes 50,000 per object), else CHUNK_ROWS rows at a time by pandas straight
from the zip member or gzip stream; only three sums per destination_id are kept.

When RESULTS_PREFIX is set the result is also written to
`{RESULTS_PREFIX}{date}/destination_metrics.json` and `.csv` in the same bucket.

Deployed alone: it imports only the standard library, pandas and boto3 (the runtime and
the AWS SDK for pandas layer provide them), and pyarrow when present (the same layer has
it; without it pandas reads everything), never the rest of the repository.
Credentials come from the execution role (boto3's default chain).

The day is event["date"] (YYYY-MM-DD) if given, else the date of an EventBridge event's
`time` (UTC), else today in UTC.

Local run (same variables; a ./.env is loaded when python-dotenv is installed):
    python lambda/lambda_function.py --date 2026-11-26          # a table
    python lambda/lambda_function.py --date 2026-11-26 --json   # the returned dict
Exit status: 0 success, 1 failure (one line on stderr), 2 bad usage.
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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

import boto3
import numpy as np  # pandas' own dependency: always present with it
import pandas as pd
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

try:  # in the AWS SDK for pandas layer with pandas; without it pandas' C engine reads everything
    import pyarrow as pa
    import pyarrow.csv as pa_csv
except ImportError:
    pa = pa_csv = None

__version__ = "0.1.0"

TOOL = "lambda_function"
MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT_VERSION = 1
CHUNK_ROWS = 100_000  # rows per pandas chunk: a few MB whatever the export's size
READ_WORKERS = 4  # objects downloaded, verified and parsed at once (network and parsing overlap)
WHOLE_OBJECT_BYTES = 32 << 20  # objects up to this size may be parsed whole (see read_chunks)
SPOOL_BYTES = 8 << 20  # an object is kept in memory up to this size, else in /tmp
DOWNLOAD_BLOCK = 1 << 20
RESULTS_JSON = "destination_metrics.json"
RESULTS_CSV = "destination_metrics.csv"

# Declared types, matching travel.sql. Ids and counts are int64; text stays text, and so do
# dates and money: no datetime64 is ever created (it crashes some AWS SDK for pandas layer
# builds, e.g. 3.17.0) and no float ever touches money.
DTYPES: dict[str, dict[str, str]] = {
    "destination": {
        "destination_id": "int64",
        "destination": "str",
        "country": "str",
        "popular_season": "str",
    },
    "booking": {
        "booking_id": "int64",
        "customer_id": "int64",
        "destination_id": "int64",
        "destination": "str",
        "country": "str",
        "booking_date": "str",
        "number_of_passengers": "int64",
        "cost_per_passenger": "str",
        "total_booking_value": "str",
        "passengers_imputed": "str",
        "cost_imputed": "str",
    },
}
# The columns each table needs here; the others are not even parsed.
USED_COLUMNS: dict[str, tuple[str, ...]] = {
    "destination": ("destination_id", "destination", "country"),
    "booking": ("destination_id", "number_of_passengers", "total_booking_value"),
}
METRIC_COLUMNS = (
    "destination_id",
    "destination",
    "country",
    "total_bookings_per_destination",
    "total_booking_value_per_destination",
    "total_passengers_booked_per_destination",
)

DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
MONEY_FORMAT = r"^(?P<sign>-?)(?P<units>\d+)(?:\.(?P<frac>\d{0,2}))?$"
MAX_UNIT_DIGITS = 16  # < 10**18 cents, stage 3's MAX_TOTAL_CENTS: parsing never overflows int64


# ---------------------------------------------------------------------------------------
# Errors


class MetricsError(Exception):
    """An expected failure, reported in one line: the invocation fails so an alarm can fire."""


class ExportNotFound(MetricsError):
    """The day's manifest does not exist: stage 4 has not (yet) exported that day."""


class ExportCorrupt(MetricsError):
    """A listed object is missing, altered or unreadable, or the manifest is invalid."""


# ---------------------------------------------------------------------------------------
# Configuration and clients: once per container


def normalise_prefix(value: str) -> str:
    """`'exports'` -> `'exports/'`; `''` stays `''` (the bucket's root)."""
    value = value.strip().lstrip("/")
    return value if not value or value.endswith("/") else value + "/"


@dataclass(frozen=True)
class Settings:
    """Every setting, read once from the environment (see env.example)."""

    bucket: str
    prefix: str
    results_prefix: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        results = env.get("RESULTS_PREFIX", "").strip()
        return cls(
            bucket=env.get("S3_BUCKET_NAME", "").strip(),
            prefix=normalise_prefix(env.get("S3_PREFIX", "")),
            results_prefix=normalise_prefix(results) if results else "",
            log_level=(env.get("LOG_LEVEL", "").strip() or "INFO").upper(),
        )

    def check(self) -> None:
        if not self.bucket:
            raise MetricsError("S3_BUCKET_NAME is not set: name the bucket that holds the daily exports")


@dataclass
class Runtime:
    settings: Settings
    s3: Any


_RUNTIME: Runtime | None = None


def s3_client():
    # Credentials: boto3's default chain (the execution role on Lambda). AWS_ENDPOINT_URL,
    # when set, points it at another S3 (moto in the tests).
    return boto3.client(
        "s3",
        config=BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60),
    )


def runtime(settings: Settings | None = None) -> Runtime:
    """The container's settings and S3 client, created on first use (cold start).

    The environment of a Lambda container never changes, so this is built once; it is
    rebuilt only if the settings differ (tests, local runs with another configuration).
    """
    global _RUNTIME
    settings = settings or Settings.from_env()
    if _RUNTIME is None or _RUNTIME.settings != settings:
        configure_logging(settings.log_level)
        _RUNTIME = Runtime(settings, s3_client())
        emit(
            logging.INFO, "cold start", pandas_version=pd.__version__, boto3_version=boto3.__version__,
            python_version=sys.version.split()[0], tool_version=__version__,
        )
    return _RUNTIME


# ---------------------------------------------------------------------------------------
# Logging: one JSON object per line, CloudWatch-friendly; never credentials


LOGGER = logging.getLogger("data_waddle.lambda")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"level": record.levelname, "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StderrHandler(logging.Handler):
    """Writes to the current sys.stderr (Lambda sends it to CloudWatch Logs)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def configure_logging(level: str) -> None:
    if not any(isinstance(h, _StderrHandler) for h in LOGGER.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        LOGGER.addHandler(handler)
    # Lambda's runtime puts its own handler on the root logger: do not print twice.
    LOGGER.propagate = False
    LOGGER.setLevel(logging.getLevelName(level) if isinstance(logging.getLevelName(level), int) else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def emit(level: int, message: str, exc_info: bool = False, **fields: Any) -> None:
    LOGGER.log(level, message, exc_info=exc_info, extra={"fields": fields})


@dataclass
class RunLog:
    """Logs a step of one run: every line carries the date and the request id."""

    context: dict[str, Any] = field(default_factory=dict)

    def info(self, message: str, **fields: Any) -> None:
        emit(logging.INFO, message, **self.context, **fields)

    def debug(self, message: str, **fields: Any) -> None:
        emit(logging.DEBUG, message, **self.context, **fields)

    def error(self, message: str, exc_info: bool = False, **fields: Any) -> None:
        emit(logging.ERROR, message, exc_info=exc_info, **self.context, **fields)


# ---------------------------------------------------------------------------------------
# The day


def parse_day(value: object, source: str = "date") -> str:
    """`'2026-11-26'` -> itself, after checking it is a real calendar date."""
    text = str(value).strip()
    try:
        if not DATE_FORMAT.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise MetricsError(f"{source} must be a date as YYYY-MM-DD, got {value!r}") from None
    return text


def resolve_date(event: Mapping[str, Any] | None, now: datetime | None = None) -> str:
    """event["date"]; else the UTC date of an EventBridge event's `time`; else today (UTC)."""
    event = event if isinstance(event, Mapping) else {}
    if event.get("date") is not None:
        return parse_day(event["date"], "event date")
    if event.get("time") is not None:
        raw = str(event["time"]).strip()
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise MetricsError(f"event time must be an ISO 8601 timestamp, got {raw!r}") from None
        if moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc)
        return moment.date().isoformat()
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date().isoformat()


# ---------------------------------------------------------------------------------------
# Manifest


def manifest_key(prefix: str, day: str) -> str:
    return f"{prefix}{day}/{MANIFEST_NAME}"


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def load_manifest(s3, bucket: str, prefix: str, day: str) -> dict:
    key = manifest_key(prefix, day)
    where = f"bucket {bucket}, prefix {prefix!r}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ExportNotFound(
                f"no export for {day}: s3://{bucket}/{key} does not exist ({where}); "
                "run stage 4 (batch_transfer_data_to_cloud_storage.py) for that date or check S3_PREFIX"
            ) from None
        if code == "NoSuchBucket":
            raise ExportNotFound(f"bucket {bucket} does not exist (prefix {prefix!r}); check S3_BUCKET_NAME") from None
        if code in ("AccessDenied", "403", "Forbidden"):
            raise MetricsError(
                f"access denied reading s3://{bucket}/{key} ({where}): the execution role needs s3:GetObject "
                "on the export prefix (and s3:ListBucket for it, or a missing manifest looks like this)"
            ) from None
        raise MetricsError(f"cannot read s3://{bucket}/{key} ({where}): {code or exc}") from None
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportCorrupt(f"manifest s3://{bucket}/{key} is not valid JSON: {exc}") from None
    check_manifest(manifest, key, prefix, day)
    return manifest


def check_manifest(manifest: object, key: str, prefix: str, day: str) -> None:
    """The fields this stage relies on are present and agree with the request."""

    def bad(problem: str) -> ExportCorrupt:
        return ExportCorrupt(f"manifest {key} {problem}")

    if not isinstance(manifest, dict):
        raise bad("is not a JSON object")
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise bad(f"has format_version {manifest.get('format_version')!r}; this reader knows {MANIFEST_FORMAT_VERSION}")
    if manifest.get("date") != day:
        raise bad(f"is for date {manifest.get('date')!r}, not {day}")
    objects = manifest.get("objects")
    if not isinstance(objects, list):
        raise bad("has no objects list")
    folder = f"{prefix}{day}/"
    seen = set()
    for entry in objects:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise bad(f"has an object entry without a key: {entry!r}")
        name = entry["key"]
        if not name.startswith(folder):
            raise bad(f"lists {name}, outside the day's folder {folder}")
        if name in seen:
            raise bad(f"lists {name} twice")
        seen.add(name)
        for item in ("rows", "bytes"):
            if not isinstance(entry.get(item), int) or isinstance(entry.get(item), bool) or entry[item] < 0:
                raise bad(f"gives {name} no valid {item!r}")
        if not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entry["sha256"]):
            raise bad(f"gives {name} no valid sha256")
        if not isinstance(entry.get("table"), str):
            raise bad(f"gives {name} no table")


def listed_objects(manifest: dict, table: str) -> list[dict]:
    return [entry for entry in manifest["objects"] if entry["table"] == table]


# ---------------------------------------------------------------------------------------
# Objects: fetched, verified, decompressed as a stream


def fetch_verified(s3, bucket: str, entry: dict) -> IO[bytes]:
    """The object's bytes in a spooled temporary file, after checking size and SHA-256."""
    key = entry["key"]
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ExportCorrupt(f"object {key} is listed in the manifest but missing from bucket {bucket}") from None
        raise MetricsError(f"cannot read s3://{bucket}/{key}: {code or exc}") from None
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        digest = hashlib.sha256()
        size = 0
        for block in response["Body"].iter_chunks(DOWNLOAD_BLOCK):
            digest.update(block)
            size += len(block)
            spool.write(block)
        if size != entry["bytes"]:
            raise ExportCorrupt(f"object {key} has {size} bytes, the manifest says {entry['bytes']}: export is corrupt")
        if digest.hexdigest() != entry["sha256"].lower():
            raise ExportCorrupt(f"object {key} does not match its SHA-256 in the manifest: export is corrupt")
        spool.seek(0)
        return spool
    except (BotoCoreError, OSError) as exc:
        spool.close()
        raise MetricsError(f"download of s3://{bucket}/{key} failed: {exc}") from None
    except BaseException:
        spool.close()
        raise


def csv_stream(raw: IO[bytes], key: str) -> IO[bytes]:
    """The CSV bytes inside `raw`, by the key's extension, decompressed as they are read."""
    if key.endswith(".zip"):
        archive = zipfile.ZipFile(raw)
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise ExportCorrupt(f"object {key} should hold one CSV, holds {len(members)} files")
        return archive.open(members[0])
    if key.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if key.endswith(".csv"):
        return raw
    raise ExportCorrupt(f"object {key} is neither .csv.zip, .csv.gz nor .csv")


def read_header(stream: IO[bytes], key: str, table: str) -> list[str]:
    """The object's column names (first line), checked against what this stage needs."""
    line = stream.readline().decode("utf-8-sig")
    header = [name.strip() for name in next(csv.reader([line]), [])]
    wanted = USED_COLUMNS[table]
    missing = [name for name in wanted if name not in header]
    if missing:
        raise ExportCorrupt(f"object {key} lacks column(s) {', '.join(missing)}; columns found: {', '.join(header)}")
    if len(set(header)) != len(header):
        raise ExportCorrupt(f"object {key} repeats a column name: {', '.join(header)}")
    return header



def read_chunks(stream: IO[bytes], key: str, table: str, chunk_rows: int, rows: int | None = None
                ) -> Iterator[pd.DataFrame]:
    """DataFrames of at most `chunk_rows` rows holding the columns this stage uses.

    A booking object of at most `chunk_rows` rows (the manifest's `rows`; stage 4 writes
    50,000 per object) is parsed whole by Arrow's CSV reader when pyarrow is there (the AWS
    SDK for pandas layer has it): several times faster than pandas' C engine, money
    included (see arrow_bookings). Other objects are read in chunks by the C engine, so
    memory stays bounded either way.
    """
    header = read_header(stream, key, table)
    wanted = list(USED_COLUMNS[table])
    if table == "booking" and pa_csv is not None and rows is not None and rows <= chunk_rows:
        data = stream.read()
        frame = arrow_bookings(data, header)
        if frame is not None:
            yield frame
            return
        stream = io.BytesIO(data)  # Arrow refused a value: pandas reads it again to name it
    yield from pd.read_csv(
        stream,
        encoding="utf-8",
        header=None,
        names=header,
        usecols=wanted,
        dtype={name: DTYPES[table][name] for name in wanted},
        # Text is text: a place called "Nan" or a country coded "NA" must not become missing.
        keep_default_na=False,
        na_values=[],
        chunksize=chunk_rows,
    )


def arrow_bookings(data: bytes, header: list[str]) -> pd.DataFrame | None:
    """The booking rows of `data` (CSV without its header) parsed by Arrow's CSV reader.

    total_booking_value is read as decimal128(18, 2), which is exact: a value with more
    than two places, or beyond stage 3's limit of 16 digits of units, is an error, never
    rounded. Its 128-bit integers ARE the cents (< 10**18), taken from the low 64-bit words
    of the array's buffer. The frame has a total_booking_cents column instead of the text.
    None when Arrow refuses a value: pandas then reads the object and names the bad value.
    """
    if len(data) < 64 and not data.strip():  # header-only (an empty table)
        return pd.DataFrame({"destination_id": [], "number_of_passengers": [], "total_booking_cents": []},
                            dtype="int64")
    types = {"destination_id": pa.int64(), "number_of_passengers": pa.int64(),
             "total_booking_value": pa.decimal128(MAX_UNIT_DIGITS + 2, 2)}
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=header),
            convert_options=pa_csv.ConvertOptions(include_columns=list(USED_COLUMNS["booking"]), column_types=types,
                                                  null_values=[], strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError):
        return None
    return pd.DataFrame({
        "destination_id": table.column("destination_id").to_numpy(),
        "number_of_passengers": table.column("number_of_passengers").to_numpy(),
        "total_booking_cents": decimal_cents(table.column("total_booking_value")),
    })


def decimal_cents(column) -> np.ndarray:
    """int64 cents of an Arrow decimal128 column with scale 2 and at most 18 digits."""
    array = column.combine_chunks()
    # Arrow stores decimal128 as two little-endian 64-bit words; below 10**18 the high word
    # is only the sign, so the low word is the whole value.
    words = np.frombuffer(array.buffers()[1], dtype="<i8").reshape(-1, 2)
    return words[array.offset:array.offset + len(array), 0].astype(np.int64)


# ---------------------------------------------------------------------------------------
# Money: exact, in integer cents


def parse_cents(values: pd.Series) -> pd.Series:
    """Decimal text ("99.99", "100", "0.5") -> int64 cents, without floats.

    Raises ValueError naming the first value that is not a decimal with at most two places
    or is beyond stage 3's limit (16 digits of units). Well-formed values take a vectorised
    path; only the others (spaces, leading zeros, errors) go through a regular expression.
    """
    cents, ok = arrow_cents(values) if is_arrow_string(values) else fast_cents(values)
    if not ok.all():
        cents[~ok] = regex_cents(values[~ok]).to_numpy()
    return pd.Series(cents, index=values.index, dtype="int64")


EXPORTED_MONEY = r"-?\d{1,16}\.\d\d"  # how stage 4 writes NUMERIC(22,2): always two places


def is_arrow_string(values: pd.Series) -> bool:
    return getattr(values.dtype, "storage", None) == "pyarrow"


def arrow_cents(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(cents, ok) for Arrow strings: values written as stage 4 does ("1234.50") lose their
    dot and are cast to int64, all in Arrow's C++ kernels; the others are left to the caller.
    """
    ok = values.str.fullmatch(EXPORTED_MONEY).fillna(False).to_numpy(dtype=bool)
    if not ok.all():
        return fast_cents(values.astype(object))
    cents = values.str.replace(".", "", regex=False).astype("int64").to_numpy()
    return cents, ok


def fast_cents(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(cents, ok): cents of every value matching -?D{1,16}(.D{0,2})?, digit by digit in numpy.

    Python-level string methods cost ~10 s per million rows, too slow for a Lambda's
    fraction of a vCPU; this walks the characters as a byte matrix, one column at a time.
    """
    n = len(values)
    nothing = (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
    if n == 0:
        return nothing
    try:
        raw = np.asarray(values.to_numpy(dtype=object), dtype=np.bytes_)
    except (UnicodeEncodeError, TypeError, ValueError):  # non-ASCII text: all to the slow path
        return nothing
    width = raw.dtype.itemsize
    chars = raw.view(np.uint8).reshape(n, width)  # NUL-padded on the right
    digit = (chars >= ord("0")) & (chars <= ord("9"))
    dot = chars == ord(".")
    pad = chars == 0
    allowed = digit | dot | pad
    allowed[:, 0] |= chars[:, 0] == ord("-")
    after_dot = np.cumsum(dot, axis=1) > 0
    before = (digit & ~after_dot).sum(axis=1)
    after = (digit & after_dot).sum(axis=1)
    ok = (
        allowed.all(axis=1)
        & (np.diff(pad.astype(np.int8), axis=1) >= 0).all(axis=1)  # padding only at the end
        & (dot.sum(axis=1) <= 1)
        & (before >= 1) & (before <= MAX_UNIT_DIGITS)
        & (after <= 2)
    )
    number = np.zeros(n, dtype=np.int64)
    for j in range(width):
        number = np.where(digit[:, j], number * 10 + (chars[:, j].astype(np.int64) - ord("0")), number)
    number = number * np.array([100, 10, 1], dtype=np.int64)[np.minimum(after, 2)]
    number = np.where(chars[:, 0] == ord("-"), -number, number)
    return np.where(ok, number, 0), ok


def regex_cents(values: pd.Series) -> pd.Series:
    """The general path: trims spaces, allows leading zeros, reports the first bad value."""
    parts = values.astype(str).str.strip().str.extract(MONEY_FORMAT)
    bad = parts["units"].isna()
    if bad.any():
        position = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(
            f"total_booking_value {values.iloc[position]!r} in data row {row_number(values, position)} "
            "is not a decimal with at most 2 places"
        )
    long = parts["units"].str.lstrip("0").str.len() > MAX_UNIT_DIGITS
    if long.any():
        position = int(long.to_numpy().nonzero()[0][0])
        raise ValueError(
            f"total_booking_value {values.iloc[position]!r} in data row {row_number(values, position)} "
            "is beyond 9999999999999999.99"
        )
    units = parts["units"].str.lstrip("0").replace("", "0").astype("int64")
    fraction = parts["frac"].fillna("").astype(str).str.ljust(2, "0").astype("int64")
    cents = units * 100 + fraction
    negative = (parts["sign"] == "-").to_numpy()
    return cents.where(~negative, -cents).astype("int64")


def row_number(values: pd.Series, position: int) -> int:
    """1-based data row in the object: read_csv's chunks carry on one index across chunks."""
    try:
        return int(values.index[position]) + 1
    except (TypeError, ValueError):
        return position + 1


def format_cents(cents: int) -> str:
    """1234550 -> "12345.50": exactly two decimals, exact for any integer."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(int(cents)), 100)
    return f"{sign}{units}.{rest:02d}"


# ---------------------------------------------------------------------------------------
# Partial sums


@dataclass
class Sums:
    """Running totals per destination_id: memory follows the number of destinations."""

    bookings: dict[int, int] = field(default_factory=dict)
    passengers: dict[int, int] = field(default_factory=dict)
    cents: dict[int, int] = field(default_factory=dict)

    def add(self, chunk: pd.DataFrame) -> None:
        if chunk.empty:
            return
        ids = chunk["destination_id"].to_numpy(dtype=np.int64)
        passengers = chunk["number_of_passengers"].to_numpy(dtype=np.int64)
        if "total_booking_cents" in chunk:
            cents = chunk["total_booking_cents"].to_numpy(dtype=np.int64)
        else:
            cents = parse_cents(chunk["total_booking_value"]).to_numpy()
        if int(np.abs(cents).max()) * len(cents) >= 2**63:
            # int64 could overflow inside this chunk's sum: add as Python integers instead.
            cents = cents.astype(object)
        keys, bookings, sums = group_sums(ids, passengers, cents)
        for dest_id, count, passenger_total, cent_total in zip(
            keys.tolist(), bookings.tolist(), sums[0].tolist(), sums[1].tolist(), strict=True
        ):
            self.bookings[dest_id] = self.bookings.get(dest_id, 0) + count
            self.passengers[dest_id] = self.passengers.get(dest_id, 0) + int(passenger_total)
            self.cents[dest_id] = self.cents.get(dest_id, 0) + int(cent_total)

    def merge(self, other: "Sums") -> None:
        for mine, theirs in ((self.bookings, other.bookings), (self.passengers, other.passengers),
                             (self.cents, other.cents)):
            for dest_id, value in theirs.items():
                mine[dest_id] = mine.get(dest_id, 0) + value


def group_sums(ids: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(distinct ids, rows per id, [each column summed per id]) in integer arithmetic.

    numpy instead of a pandas groupby: the same exact sums at a fraction of the fixed cost
    per chunk. np.add.at adds int64 (or Python ints) exactly; np.bincount with weights
    would sum as float64.
    """
    codes, keys = pd.factorize(ids)
    sums = []
    for column in columns:
        total = np.zeros(len(keys), dtype=column.dtype)
        np.add.at(total, codes, column)
        sums.append(total)
    return np.asarray(keys), np.bincount(codes, minlength=len(keys)), sums


def partial_sums(frames: Iterator[pd.DataFrame]) -> Sums:
    sums = Sums()
    for frame in frames:
        sums.add(frame)
    return sums


# ---------------------------------------------------------------------------------------
# The computation


def read_table(s3, bucket: str, manifest: dict, table: str, chunk_rows: int, log: RunLog,
               summarise: Callable[[Iterator[pd.DataFrame]], Any], combine: Callable[[Any, str], None]) -> int:
    """Read every listed object of `table`; return the rows read.

    READ_WORKERS threads each download, verify and parse one object (hashing, inflating and
    parsing run in C without the GIL) and reduce its chunks with `summarise`; `combine`
    gets each object's result here, in manifest order, so the first bad object is the one
    reported. At most READ_WORKERS + 1 objects are in flight: memory does not follow the export.
    """
    total = 0
    window: deque[tuple[dict, Future]] = deque()
    pool = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="read")

    def collect() -> int:
        entry, future = window.popleft()
        rows, result, seconds = future.result()
        combine(result, entry["key"])
        log.info("object read", table=table, key=entry["key"], rows=rows, bytes=entry["bytes"], seconds=seconds)
        return rows

    try:
        for entry in listed_objects(manifest, table):
            window.append((entry, pool.submit(read_object, s3, bucket, entry, table, chunk_rows, summarise)))
            if len(window) > READ_WORKERS:
                total += collect()
        while window:
            total += collect()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    tables = manifest.get("tables") if isinstance(manifest.get("tables"), dict) else {}
    declared = tables.get(table, {}).get("rows") if isinstance(tables.get(table), dict) else None
    if isinstance(declared, int) and declared != total:
        raise ExportCorrupt(f"manifest says table {table} has {declared} rows, its objects hold {total}")
    return total


def read_object(s3, bucket: str, entry: dict, table: str, chunk_rows: int,
                summarise: Callable[[Iterator[pd.DataFrame]], Any]) -> tuple[int, Any, float]:
    """(rows, summarise(its chunks), seconds) of one listed object, checked against the manifest."""
    key = entry["key"]
    started = time.monotonic()
    counts: list[int] = []

    def counted(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            counts.append(len(frame))
            yield frame

    # Parsed whole only when the manifest says it is small; else in chunks (see read_chunks).
    small = entry["rows"] if entry["bytes"] <= WHOLE_OBJECT_BYTES else None
    with fetch_verified(s3, bucket, entry) as raw:
        try:
            with csv_stream(raw, key) as stream:
                result = summarise(counted(read_chunks(stream, key, table, chunk_rows, rows=small)))
        except MetricsError:
            raise
        except (ValueError, OverflowError, UnicodeDecodeError, EOFError, OSError,
                zipfile.BadZipFile, zlib.error, pd.errors.ParserError) as exc:
            raise ExportCorrupt(f"object {key} cannot be read as a {table} CSV: {first_line(exc)}") from None
    rows = sum(counts)
    if rows != entry["rows"]:
        raise ExportCorrupt(f"object {key} has {rows} rows, the manifest says {entry['rows']}")
    return rows, result, round(time.monotonic() - started, 3)


def compute_metrics(s3, bucket: str, prefix: str, day: str, *, chunk_rows: int = CHUNK_ROWS,
                    log: RunLog | None = None) -> dict:
    """The metrics of the day's export as a JSON-serialisable dict (see the module doc)."""
    log = log or RunLog({"date": day})
    manifest = load_manifest(s3, bucket, prefix, day)
    log.info("manifest read", key=manifest_key(prefix, day), objects=len(manifest["objects"]),
             exported_at=manifest.get("exported_at"), tool_version=manifest.get("tool_version"))

    destinations: dict[int, tuple[str, str]] = {}

    def add_destinations(frames: list[pd.DataFrame], key: str) -> None:
        for chunk in frames:
            rows = chunk[["destination_id", "destination", "country"]]  # usecols keeps the file's order
            for dest_id, name, country in rows.itertuples(index=False, name=None):
                dest_id = int(dest_id)
                if dest_id in destinations:
                    raise ExportCorrupt(f"object {key} repeats destination_id {dest_id}")
                destinations[dest_id] = (str(name), str(country))

    sums = Sums()
    rows = {
        "destination": read_table(s3, bucket, manifest, "destination", chunk_rows, log, list, add_destinations),
        "booking": read_table(s3, bucket, manifest, "booking", chunk_rows, log, partial_sums,
                              lambda partial, key: sums.merge(partial)),
    }
    unknown = sorted(set(sums.bookings) - set(destinations))
    if unknown:
        shown = ", ".join(str(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise ExportCorrupt(f"bookings reference destination_id(s) not in the destination table: {shown}")

    report = build_report(destinations, sums)
    objects_read = len(listed_objects(manifest, "destination")) + len(listed_objects(manifest, "booking"))
    result = {
        "date": day,
        "bucket": bucket,
        "prefix": prefix,
        "manifest": manifest_key(prefix, day),
        "exported_at": manifest.get("exported_at"),
        "objects_read": objects_read,
        "rows_read": rows,
        "money_format": "decimal string with exactly 2 places",
        **report,
        "results": None,
    }
    log.info("metrics computed", destinations=len(destinations), bookings=rows["booking"],
             objects_read=objects_read, without_bookings=len(report["destinations_without_bookings"]))
    return result


def build_report(destinations: Mapping[int, tuple[str, str]], sums: Sums) -> dict:
    """Metrics rows (every destination, sorted by name, country, id), the unbooked, the totals."""
    order = sorted(destinations, key=lambda i: (destinations[i][0], destinations[i][1], i))
    metrics = []
    for dest_id in order:
        name, country = destinations[dest_id]
        metrics.append({
            "destination_id": dest_id,
            "destination": name,
            "country": country,
            "total_bookings_per_destination": sums.bookings.get(dest_id, 0),
            "total_booking_value_per_destination": format_cents(sums.cents.get(dest_id, 0)),
            "total_passengers_booked_per_destination": sums.passengers.get(dest_id, 0),
        })
    unbooked = [row for row in metrics if row["total_bookings_per_destination"] == 0]
    return {
        "metrics": metrics,
        "destinations_without_bookings": [row["destination"] for row in unbooked],
        "destination_ids_without_bookings": [row["destination_id"] for row in unbooked],
        "totals": {
            "destinations": len(metrics),
            "destinations_with_bookings": len(metrics) - len(unbooked),
            "total_bookings": sum(sums.bookings.get(i, 0) for i in destinations),
            "total_booking_value": format_cents(sum(sums.cents.get(i, 0) for i in destinations)),
            "total_passengers_booked": sum(sums.passengers.get(i, 0) for i in destinations),
        },
    }


# ---------------------------------------------------------------------------------------
# Results


def metrics_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["metrics"])
    return out.getvalue()


def results_keys(results_prefix: str, day: str) -> dict[str, str]:
    return {"json": f"{results_prefix}{day}/{RESULTS_JSON}", "csv": f"{results_prefix}{day}/{RESULTS_CSV}"}


def write_results(s3, bucket: str, results_prefix: str, result: dict, log: RunLog) -> dict[str, str]:
    """Write the JSON and CSV next to each other; returns their s3:// URIs."""
    keys = results_keys(results_prefix, result["date"])
    uris = {kind: f"s3://{bucket}/{key}" for kind, key in keys.items()}
    result["results"] = uris
    bodies = {
        "json": (json.dumps(result, indent=2, ensure_ascii=False) + "\n", "application/json"),
        "csv": (metrics_csv(result), "text/csv"),
    }
    for kind, key in keys.items():
        body, content_type = bodies[kind]
        try:
            # Encryption at rest: the bucket's default encryption (SSE-S3 or SSE-KMS).
            s3.put_object(
                Bucket=bucket, Key=key, Body=body.encode("utf-8"), ContentType=f"{content_type}; charset=utf-8"
            )
        except ClientError as exc:
            raise MetricsError(
                f"cannot write s3://{bucket}/{key}: {error_code(exc) or exc}; "
                "the execution role needs s3:PutObject on RESULTS_PREFIX"
            ) from None
        log.info("result written", key=key, bytes=len(body.encode("utf-8")))
    return uris


# ---------------------------------------------------------------------------------------
# Entry points


def run(event: Mapping[str, Any] | None, context: Any, rt: Runtime) -> dict:
    """Turn the event into arguments, compute, optionally write the results."""
    started = time.monotonic()
    request_id = getattr(context, "aws_request_id", None)
    log = RunLog({"request_id": request_id} if request_id else {})
    settings = rt.settings
    try:
        settings.check()
        day = resolve_date(event)
    except MetricsError as exc:
        log.error("invalid invocation", error=str(exc))
        raise
    log.context["date"] = day
    log.info("run started", bucket=settings.bucket, prefix=settings.prefix,
             results_prefix=settings.results_prefix or None)
    try:
        result = compute_metrics(rt.s3, settings.bucket, settings.prefix, day, log=log)
        if settings.results_prefix:
            write_results(rt.s3, settings.bucket, settings.results_prefix, result, log)
    except MetricsError as exc:
        log.error("run failed", error=str(exc), error_type=type(exc).__name__, bucket=settings.bucket,
                  prefix=settings.prefix)
        raise
    except Exception as exc:
        log.error("run failed unexpectedly", exc_info=True, error=first_line(exc), error_type=type(exc).__name__,
                  bucket=settings.bucket, prefix=settings.prefix)
        raise MetricsError(f"destination metrics for {day} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    log.info("run finished", seconds=round(time.monotonic() - started, 3),
             bookings=result["totals"]["total_bookings"], total_booking_value=result["totals"]["total_booking_value"])
    return result


def lambda_handler(event, context):
    """AWS Lambda entry point: returns the metrics dict, raises on any failure."""
    return run(event, context, runtime())


def first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0].strip() if text else type(value).__name__


def format_table(result: dict) -> str:
    """The metrics as an aligned text table, for people."""
    headers = ("destination_id", "destination", "country", "bookings", "booking_value", "passengers")
    rows = [
        (str(m["destination_id"]), m["destination"], m["country"], str(m["total_bookings_per_destination"]),
         m["total_booking_value_per_destination"], str(m["total_passengers_booked_per_destination"]))
        for m in result["metrics"]
    ]
    totals = result["totals"]
    footer = ("total", "", "", str(totals["total_bookings"]), totals["total_booking_value"],
              str(totals["total_passengers_booked"]))
    widths = [max(len(r[i]) for r in [headers, *rows, footer]) for i in range(len(headers))]
    numeric = (True, False, False, True, True, True)

    def line(cells) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    out = [
        f"Destination metrics for {result['date']} (s3://{result['bucket']}/{result['prefix']}{result['date']}/: "
        f"{result['objects_read']} objects, {result['rows_read']['booking']} bookings)",
        "",
        line(headers),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        line(["-" * w for w in widths]),
        line(footer),
    ]
    unbooked = result["destinations_without_bookings"]
    out.append(f"\nDestinations without bookings: {', '.join(unbooked) if unbooked else 'none'}")
    if result.get("results"):
        out.append(f"Written: {result['results']['json']} and {result['results']['csv']}")
    return "\n".join(out)


def load_dotenv_file(path: str | None) -> None:
    """Load `path` (default ./.env) if python-dotenv is installed; real variables win."""
    try:
        from dotenv import load_dotenv  # optional: not in the Lambda runtime, not needed there
    except ImportError:
        if path:
            raise MetricsError("--env-file needs python-dotenv (pip install python-dotenv)") from None
        return
    target = path or ".env"
    if path and not os.path.isfile(target):
        raise MetricsError(f"env file {target} does not exist")
    if os.path.isfile(target):
        load_dotenv(target, override=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lambda_function.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--date", metavar="YYYY-MM-DD", type=date_argument, help="the export day (default: today in UTC)"
    )
    parser.add_argument("--json", action="store_true", help="print the returned dict as JSON instead of a table")
    parser.add_argument("--env-file", metavar="FILE", help="read configuration from FILE instead of ./.env")
    parser.add_argument("--verbose", action="store_true", help="print the JSON log lines on stderr (at LOG_LEVEL)")
    return parser


def date_argument(value: str) -> str:
    try:
        return parse_day(value)
    except MetricsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        load_dotenv_file(args.env_file)
        settings = Settings.from_env()
        # Locally the log lines are noise on the terminal; --verbose shows them.
        rt = runtime(settings if args.verbose else replace(settings, log_level="CRITICAL"))
        result = run({"date": args.date} if args.date else {}, None, rt)
    except MetricsError as exc:
        sys.stderr.write(f"{TOOL}: error: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        sys.stderr.write(f"{TOOL}: error: unexpected {type(exc).__name__}: {first_line(exc)}\n")
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
