"""Stage 3: cleanse the three CSVs with pandas and load them into PostgreSQL.

Reads customer.csv, destination.csv and booking.csv from DOWNLOAD_DIR (or --data-dir),
applies the cleansing rules (each one a function below, each documented in README.md),
adds total_booking_value = number_of_passengers x cost_per_passenger (exact to the cent),
and loads the accepted rows, all three tables in one transaction: COPY straight into a
table that is empty; otherwise the stored rows are read back and only the new or changed
ones go through a staging table and an insert-or-update by key. Every rejected row is
written to REJECTS_DIR (one CSV per table: the original row, its source row number and a
reject_reason) and counted in the summary, which is also stored in the load_run /
load_run_table audit tables.

Needs: the schema from travel.sql; DATABASE_URL or the libpq variables (PGHOST, ...).

Example:
    python transform_load_csv_data.py --data-dir ./download_dataset
    python transform_load_csv_data.py --dry-run      # cleanse and report, change nothing
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

import waddle_common as common

log = logging.getLogger("data_waddle.transform_load")


def log_step(step: str) -> None:
    """A --verbose line with the process's peak memory so far (where a large load spends it)."""
    if log.isEnabledFor(logging.DEBUG):
        try:
            import resource

            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
        except ImportError:  # not on Windows
            peak = "unknown"
        log.debug("%s (peak RSS %s)", step, peak)

SEASONS = ("Spring", "Summer", "Autumn", "Winter")
SEASON_SYNONYMS = {"Fall": "Autumn"}
BIGINT_MAX = 9_223_372_036_854_775_807
INT_MAX = 2_147_483_647
MAX_COST_CENTS = 10**12 - 1  # NUMERIC(12,2)
MAX_TOTAL_CENTS = 10**18 - 1  # 9999999999999999.99: travel.sql's CHECK and the Lambda share it
DATE_MIN, DATE_MAX = 1900, 2100  # booking years outside this range are typing errors
LOAD_LOCK_KEY = 0x5741_4444  # pg advisory lock shared by every loader ("WADD")

# The columns loaded into each table, in COPY order; tables in foreign-key order (parents first).
LOAD_COLUMNS: dict[str, tuple[str, ...]] = {
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "customer": ("customer_id", "first_name", "last_name", "email", "phone"),
    "booking": (
        "booking_id", "customer_id", "destination_id", "booking_date", "number_of_passengers",
        "cost_per_passenger", "total_booking_value", "passengers_imputed", "cost_imputed",
    ),
}
KEYS = {"destination": "destination_id", "customer": "customer_id", "booking": "booking_id"}
NOT_NULL = {
    "customer": ("customer_id", "first_name", "last_name", "email"),
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "booking": ("booking_id", "customer_id", "booking_date", "destination"),
}

MONTHS = {
    name.lower(): number
    for number, names in enumerate(
        [("January", "Jan"), ("February", "Feb"), ("March", "Mar"), ("April", "Apr"), ("May",),
         ("June", "Jun"), ("July", "Jul"), ("August", "Aug"), ("September", "Sep", "Sept"),
         ("October", "Oct"), ("November", "Nov"), ("December", "Dec")],
        start=1,
    )
    for name in names
}


# ---------------------------------------------------------------------------------------
# Reading


def read_source(path: Path, table: str, encoding: str = "utf-8") -> pd.DataFrame:
    """The file as text columns (normalised names), one row per data record in file order,
    with `source_row` = the record's 1-based number (README, "Cleansing rules").

    A record whose field count differs from the header's is kept as a row with every column
    missing, its text in `raw_record` and its count in `field_count`: rule wrong_field_count
    rejects it. Refuses (ConfigError) a missing file, a non-UTF-8 file, an empty file, a
    header with a repeated column, or one that lacks a required column.
    """
    if not path.is_file():
        raise common.ConfigError(f"{path} not found; run download_dataset.py or pass --data-dir")
    try:
        header = common.read_header(path, encoding)
    except UnicodeDecodeError as exc:
        raise not_encoded(path, encoding, exc) from None
    names = unique_header(header, path)
    missing = common.missing_columns(table, names)
    if missing:
        raise common.ConfigError(
            f"{path.name} lacks column(s) {', '.join(missing)}; columns found: {', '.join(header) or '(none)'}"
        )
    records, malformed = read_records(path, len(names), encoding)
    frame = records.to_pandas(types_mapper={pa.string(): TEXT_DTYPE}.get)
    frame.columns = names
    frame = frame[[c for c in frame.columns if not c.startswith("_unnamed_")]]
    numbers = np.arange(1, len(frame) + len(malformed) + 1)
    if malformed:
        bad_numbers = np.array([number for number, _, _ in malformed])
        frame.index = np.delete(numbers, bad_numbers - 1)
        odd = pd.DataFrame(
            {"raw_record": [text for _, _, text in malformed], "field_count": [n for _, n, _ in malformed]},
            index=bad_numbers,
        )
        frame = pd.concat([frame, odd]).sort_index()
        frame.index = pd.RangeIndex(len(frame))
        frame = frame.astype({name: TEXT_DTYPE for name in frame.columns[:-2]} | {"field_count": "Int64"})
    frame.insert(0, "source_row", numbers)
    frame.attrs["header_fields"] = len(names)  # the index column pandas writes included
    return frame


TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
READ_BLOCK_BYTES = 1 << 20


def read_records(path: Path, fields: int, encoding: str) -> tuple[pa.Table, list[tuple[int, int, str]]]:
    """(the records with `fields` fields, as text columns; [(record number, field count, raw
    text)] of the others), parsed by pyarrow's multi-threaded reader.

    A record's number is known only to the single-threaded reader, so a file with malformed
    records (rare) is read a second time with one thread. A record larger than the read block
    (a 3 MB value) is read with a larger block."""
    block = READ_BLOCK_BYTES
    threaded = True
    while True:
        malformed: list[tuple[int | None, int, str]] = []

        def keep_malformed(row, malformed=malformed) -> str:
            # pyarrow numbers records from 1 with the header as the first; empty lines are not counted.
            malformed.append((None if row.number is None else row.number - 1, row.actual_columns, row.text))
            return "skip"

        try:
            records = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(
                    autogenerate_column_names=True, encoding=arrow_encoding(encoding),
                    use_threads=threaded, block_size=block,
                ),
                parse_options=pacsv.ParseOptions(
                    newlines_in_values=True, ignore_empty_lines=True, invalid_row_handler=keep_malformed,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={f"f{i}": pa.string() for i in range(fields)},
                    strings_can_be_null=False, quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            if "straddl" in str(exc) and block < path.stat().st_size:
                block *= 16
                continue
            raise malformed_file(path, encoding, exc) from None
        if malformed and threaded:
            threaded = False
            continue
        return records.slice(1), malformed  # the first record is the header


def arrow_encoding(encoding: str) -> str:
    return "utf8" if common.python_encoding(encoding) == "utf-8-sig" else encoding


def not_encoded(path: Path, encoding: str, exc: UnicodeDecodeError) -> common.ConfigError:
    return common.ConfigError(
        f"{path.name} is not {encoding} text ({exc.reason} at byte {exc.start}); "
        "convert it (iconv -f latin1 -t utf-8) or pass --encoding latin-1"
    )


def malformed_file(path: Path, encoding: str, exc: Exception) -> common.ConfigError:
    """The refusal for a file pyarrow cannot read: bytes that are not `encoding` (named with
    the offset Python's decoder finds), or another parse error."""
    decoder = codecs.getincrementaldecoder(common.python_encoding(encoding))()
    offset = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as bad:
                return not_encoded(path, encoding, UnicodeDecodeError(
                    bad.encoding, bad.object, offset + bad.start, offset + bad.end, bad.reason))
            offset += len(block)
    return common.ConfigError(f"{path.name} is not a well-formed CSV file: {common.first_line(exc)}")


def unique_header(header: list[str], path: Path) -> list[str]:
    """Header names, with blank ones (a pandas index column) renamed; a repeated name is refused."""
    if not header:
        raise common.ConfigError(f"{path.name} is empty: no header row")
    names: list[str] = []
    for position, name in enumerate(header):
        if not name or name.startswith("unnamed:"):
            name = f"_unnamed_{position}"
        elif name in names:
            raise common.ConfigError(f"{path.name} has column {name!r} more than once")
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------
# The rule machinery: every rule marks rows with a reason; the first reason a row gets wins.


@dataclass
class Table:
    """A source table during cleansing: the raw text, the cleansed columns, the reasons."""

    name: str
    raw: pd.DataFrame
    clean: pd.DataFrame = field(init=False)
    reason: pd.Series = field(init=False)
    imputed: pd.Series = field(init=False)

    def __post_init__(self):
        self.clean = pd.DataFrame(index=self.raw.index)
        for column in common.REQUIRED_COLUMNS[self.name]:
            self.clean[column] = trim_text(normalise_text(self.raw[column]))
        self.reason = pd.Series(pd.NA, index=self.raw.index, dtype=object)
        self._ok = np.ones(len(self.raw), dtype=bool)  # kept with reason: isna() at every rule is slow
        self.imputed = pd.Series(False, index=self.raw.index)
        reject_wrong_field_count(self)

    @property
    def ok(self) -> pd.Series:
        return pd.Series(self._ok.copy(), index=self.raw.index)

    def reject(self, mask: pd.Series, template: str, *values: pd.Series) -> None:
        """Give the rows in `mask` that have no reason yet `template`, its `{}` filled with each
        row's `values` (quoted when they are source text). Texts are built for those rows only:
        at a million rows, building one per row for every rule would dominate the run."""
        mask = (mask.fillna(False).astype(bool) & self.ok).reindex(self.raw.index, fill_value=False)
        if not mask.any():
            return
        if not values:
            self.reason[mask] = template
        else:
            columns = [v[mask] if isinstance(v, quoted) else v[mask].tolist() for v in values]
            self.reason[mask] = [template.format(*row) for row in zip(*columns)]
        self._ok &= ~mask.to_numpy()

    def accepted(self) -> pd.DataFrame:
        return self.clean[self.ok]

    def rejected(self) -> pd.DataFrame:
        """The rejected rows as the file wrote them: source_row, the file's columns,
        reject_reason and raw_record (the text of a record rule wrong_field_count rejected)."""
        rows = self.raw[~self.ok].drop(columns=["raw_record", "field_count"], errors="ignore")
        rows["reject_reason"] = self.reason[~self.ok]
        rows["raw_record"] = self.raw["raw_record"][~self.ok] if "raw_record" in self.raw else pd.NA
        return rows


def reject_wrong_field_count(table: Table) -> None:
    """Rule wrong_field_count: a record with more or fewer fields than the header is rejected
    whole (read_source keeps its text): a short row must not be filled in with made-up values."""
    if "field_count" in table.raw:
        counts = table.raw["field_count"]
        fields = table.raw.attrs["header_fields"]
        table.reject(counts.notna(), f"wrong_field_count: {{}} fields, the header has {fields}", counts)


def normalise_text(values: pd.Series) -> pd.Series:
    """Rule normalise_text: Unicode NFC, so that 'u' + a combining diaeresis equals 'ü'."""
    text = as_text(values)
    if pc.all(pc.string_is_ascii(text)).as_py() is not False:
        return values  # ASCII is NFC already: the usual case costs one scan
    normal = pc.utf8_normalize(text, "NFC")
    return pd.Series(normal, index=values.index, dtype=TEXT_DTYPE).mask(values.isna())


# Python's str.isspace() characters (a test checks the list): trimmed as str.strip() does.
WHITE_SPACE_CHARACTERS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def trim_text(values: pd.Series) -> pd.Series:
    """Rule trim_text: strip surrounding white space; an empty or blank value is missing."""
    trimmed = pc.utf8_trim(as_text(values), WHITE_SPACE_CHARACTERS)
    text = pd.Series(trimmed, index=values.index, dtype=TEXT_DTYPE)
    text = text.mask(text == "")
    # A clean column (the usual case) shares the source's memory instead of a second copy.
    return values if text.dtype == values.dtype and text.equals(values) else text


class quoted:  # lower-case: reads as a function at the call sites
    """Source values shown in reject reasons as 'text' (cut to 60 characters), quoted only
    for the rows that are rejected."""

    def __init__(self, values: pd.Series):
        self.values = values

    def __getitem__(self, mask: pd.Series) -> list[str]:
        return ["'" + ("" if pd.isna(v) else str(v))[:60] + "'" for v in self.values[mask]]


def reject_missing(table: Table, columns: Iterable[str]) -> None:
    """Rule missing_field: a row without its key or a required field is rejected."""
    for column in columns:
        table.reject(table.clean[column].isna(), f"missing_field: {column} is empty")


def reject_nul_bytes(table: Table) -> None:
    """Rule invalid_text: a value holding a NUL byte (0x00) is rejected.

    PostgreSQL text cannot store NUL: one such value would otherwise fail the whole COPY
    with an error naming neither the file, the row nor the column."""
    for column in table.clean.columns:
        values = table.clean[column]
        if values.dtype.kind in "iufb":
            continue
        holds_nul = pc.match_substring(as_text(values), "\x00").to_numpy(zero_copy_only=False)
        table.reject(pd.Series(holds_nul, index=values.index), f"invalid_text: {column} contains a NUL byte")


def parse_whole_numbers(values: pd.Series, maximum: int) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(numbers as Int64 or NA, mask of malformed values, mask of values above `maximum`).

    A whole number is the digits 0-9, optionally followed by a point and one or more zeros (pandas
    writes 2.0 for an int column with gaps); anything else (signs, decimals, letters) is
    malformed. Missing values are neither."""
    parts = pc.extract_regex(as_text(values), r"^(?P<digits>[0-9]+)(?:\.0+)?$")
    digits = without_leading_zeros(pc.struct_field(parts, "digits"))
    malformed = pc.and_(pc.is_null(digits), pc.not_equal(as_text(values), ""))
    limit = str(maximum)
    length = pc.utf8_length(digits)
    too_big = pc.fill_null(pc.or_(
        pc.greater(length, len(limit)),
        pc.and_(pc.equal(length, len(limit)), pc.greater(digits, limit)),
    ), False)
    fits = pc.if_else(too_big, None, digits)
    numbers = int_series(pc.cast(fits, pa.int64()), values.index)
    return numbers, as_mask(malformed, values.index), as_mask(too_big, values.index)


def int_series(values: pa.Array, index: pd.Index) -> pd.Series:
    """An int64 pyarrow array as a pandas Int64 series (null is NA)."""
    data = pc.fill_null(values, 0).to_numpy(zero_copy_only=False)
    return pd.Series(pd.arrays.IntegerArray(data, pc.is_null(values).to_numpy(zero_copy_only=False)), index=index)


def without_leading_zeros(digits: pa.Array) -> pa.Array:
    """'007' -> '7', '000' -> '0' (null stays null)."""
    trimmed = pc.utf8_ltrim(digits, "0")
    return pc.if_else(pc.equal(trimmed, ""), pc.if_else(pc.equal(digits, ""), "", "0"), trimmed)


def as_mask(values: pa.Array, index: pd.Index) -> pd.Series:
    """A boolean pyarrow array as a pandas mask (null is False)."""
    return pd.Series(pc.fill_null(values, False).to_numpy(zero_copy_only=False), index=index)


def parse_key(table: Table, column: str) -> pd.Series:
    """Rules invalid_id / id_out_of_range: ids are whole numbers that fit a BIGINT."""
    numbers, malformed, too_big = parse_whole_numbers(table.clean[column], BIGINT_MAX)
    shown = quoted(table.raw[column])
    table.reject(malformed, f"invalid_id: {column} {{}} is not a whole number", shown)
    table.reject(too_big, f"id_out_of_range: {column} {{}} is too large", shown)
    return numbers


def reject_duplicates(table: Table, column: str, values: pd.Series, code: str) -> None:
    """Rules duplicate_key / duplicate_email: among rows that passed every earlier rule, the
    first occurrence of a value wins; later ones are rejected naming the row kept."""
    candidates = values[table.ok & values.notna()]
    repeated = candidates.duplicated(keep="first")
    if not repeated.any():
        return
    first_row = table.raw.loc[candidates.index, "source_row"].groupby(candidates.values).transform("min")
    table.reject(
        repeated.reindex(table.raw.index, fill_value=False),
        f"{code}: {column} {{}} already at row {{}}",
        quoted(table.raw[column]),
        first_row.reindex(table.raw.index).astype("Int64"),
    )


# ---------------------------------------------------------------------------------------
# Customer rules


def cleanse_customers(raw: pd.DataFrame) -> Table:
    table = Table("customer", raw)
    reject_missing(table, NOT_NULL["customer"])
    reject_nul_bytes(table)
    ids = parse_key(table, "customer_id")
    table.clean["email"] = normalise_emails(table.clean["email"])
    reject_malformed_emails(table)
    reject_duplicates(table, "customer_id", ids, "duplicate_key")
    reject_duplicates(table, "email", table.clean["email"], "duplicate_email")
    table.clean["customer_id"] = ids
    return table


def normalise_emails(emails: pd.Series) -> pd.Series:
    """Rule lower_case_email: e-mail addresses compare case-insensitively, so store them
    lower-case, as Python's str.lower() does ('İ' becomes 'i' + a combining dot: the full
    Unicode mapping, which pyarrow's one-to-one mapping is not)."""
    text = as_text(emails)
    lower = pd.Series(pc.utf8_lower(text), index=emails.index, dtype=TEXT_DTYPE).mask(emails.isna())
    beyond_ascii = ~pc.string_is_ascii(text).to_numpy(zero_copy_only=False)
    if beyond_ascii.any():
        lower[beyond_ascii] = [value.lower() for value in emails[beyond_ascii]]
    return lower


# Python's \s (Unicode white space, as str.isspace) spelled for RE2, pyarrow's regex engine.
WHITE_SPACE = r"\t\n\x0b\f\r\x1c-\x1f\x85\p{Z}"
EMAIL_SHAPE = rf"^[^@{WHITE_SPACE}]+@[^@{WHITE_SPACE}]+\.[^@{WHITE_SPACE}]+$"


def reject_malformed_emails(table: Table) -> None:
    """Rule invalid_email: one '@' with text on both sides and a dot in the domain, no spaces."""
    emails = table.clean["email"]
    good = pc.match_substring_regex(as_text(emails), EMAIL_SHAPE).to_numpy(zero_copy_only=False)
    table.reject(emails.notna() & ~pd.Series(good, index=emails.index), "invalid_email: {}", quoted(table.raw["email"]))


# ---------------------------------------------------------------------------------------
# Destination rules


def cleanse_destinations(raw: pd.DataFrame) -> Table:
    table = Table("destination", raw)
    reject_missing(table, NOT_NULL["destination"])
    reject_nul_bytes(table)
    ids = parse_key(table, "destination_id")
    table.clean["popular_season"] = normalise_seasons(table.clean["popular_season"])
    reject_unknown_seasons(table)
    reject_duplicates(table, "destination_id", ids, "duplicate_key")
    table.clean["destination_id"] = ids
    return table


def normalise_seasons(seasons: pd.Series) -> pd.Series:
    """Rule capitalise_season: 'autumn', 'AUTUMN' -> 'Autumn'; 'Fall' is Autumn."""
    capitalised = seasons.str.capitalize()
    return capitalised.replace(SEASON_SYNONYMS)


def reject_unknown_seasons(table: Table) -> None:
    """Rule unknown_season: only Spring, Summer, Autumn and Winter are seasons."""
    seasons = table.clean["popular_season"]
    table.reject(seasons.notna() & ~seasons.isin(SEASONS), "unknown_season: {}", quoted(table.raw["popular_season"]))


# ---------------------------------------------------------------------------------------
# Booking rules


def cleanse_bookings(raw: pd.DataFrame) -> Table:
    """The row rules of bookings; references, duplicates and imputation follow in
    resolve_bookings()."""
    table = Table("booking", raw)
    reject_missing(table, NOT_NULL["booking"])
    reject_nul_bytes(table)
    ids = parse_key(table, "booking_id")
    customer_ids = parse_key(table, "customer_id")
    table.clean["booking_date"] = parse_dates(table)
    passengers, passengers_missing = parse_passengers(table)
    cents, cost_missing = parse_costs(table)
    table.clean["booking_id"] = ids
    table.clean["customer_id"] = customer_ids
    table.clean["number_of_passengers"] = passengers
    table.clean["cost_cents"] = cents
    table.clean["passengers_imputed"] = passengers_missing
    table.clean["cost_imputed"] = cost_missing
    return table


_TIME = (
    r"(?:[T ](?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.[0-9]+)?)?"
    r"(?: ?(?:Z|[+-](?P<zone_hour>[0-9]{2})(?::?(?P<zone_minute>[0-9]{2}))?))?)?"
)
# The accepted shapes (README, rule 7 "dates"), each with named parts; the month is a
# number or a name. The date part is taken as written: a time zone never moves it.
DATE_SHAPES = (
    rf"^(?P<year>[0-9]{{4}})-(?P<month>[0-9]{{1,2}})-(?P<day>[0-9]{{1,2}}){_TIME}$",
    rf"^(?P<year>[0-9]{{4}})/(?P<month>[0-9]{{1,2}})/(?P<day>[0-9]{{1,2}}){_TIME}$",
    r"^(?P<month>[A-Za-z]+)\.? (?P<day>[0-9]{1,2}),? (?P<year>[0-9]{4})$",  # June 3, 2023
    r"^(?P<day>[0-9]{1,2}) (?P<month>[A-Za-z]+)\.?,? (?P<year>[0-9]{4})$",  # 3 June 2023
)
AMBIGUOUS_DATE = r"^[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}$"
DATE_PARTS = ("year", "month", "day", "hour", "minute", "second", "zone_hour", "zone_minute")
# The largest value of each time part; a larger one is an impossible time.
TIME_LIMITS = {"hour": 23, "minute": 59, "second": 59, "zone_hour": 23, "zone_minute": 59}


def parse_dates(table: Table, column: str = "booking_date") -> pd.Series:
    """Rules ambiguous_date / invalid_date / impossible_date / date_out_of_range.

    Returns ISO text (YYYY-MM-DD): dates stay text until PostgreSQL stores them as DATE.
    Each distinct text is parsed once: a million bookings carry a few thousand dates.
    """
    codes, distinct = pd.factorize(table.clean[column])
    parts, matched = date_parts(pa.array(distinct, type=pa.string()))
    text = pd.Series(distinct, dtype=object)
    unmatched = ~matched
    ambiguous = unmatched & text.str.fullmatch(AMBIGUOUS_DATE).astype(bool)
    month = parts["month"]
    bad_month = matched & month.isna()  # a month name we do not know
    valid = matched & ~bad_month & (month >= 1) & (month <= 12) & (parts["day"] >= 1) & (
        parts["day"] <= days_in_month(parts["year"], month))
    for name, limit in TIME_LIMITS.items():
        valid &= ~(parts[name] > limit).fillna(False)
    year = parts["year"]
    out_of_range = valid & ((year < DATE_MIN) | (year > DATE_MAX))
    shown = quoted(table.raw[column])
    rows = table.raw.index
    table.reject(spread(ambiguous, codes, rows), "ambiguous_date: {} (write it as YYYY-MM-DD)", shown)
    table.reject(spread(unmatched, codes, rows), "invalid_date: {} is not a recognised date", shown)
    table.reject(spread(bad_month, codes, rows), "invalid_date: {} has an unknown month name", shown)
    table.reject(spread(matched & ~bad_month & ~valid, codes, rows), "impossible_date: {} does not exist", shown)
    table.reject(spread(out_of_range, codes, rows), "date_out_of_range: {}", shown)
    iso = spread(iso_dates(year, month, parts["day"], valid), codes, rows, pd.NA)
    return iso.where(table.ok, pd.NA)


def spread(values: pd.Series, codes: np.ndarray, index: pd.Index, missing=False) -> pd.Series:
    """Per-row values from per-distinct-text `values`; `codes` come from pd.factorize, whose
    -1 (a missing text) picks `missing`, appended last."""
    return pd.Series(np.append(values.to_numpy(), [missing])[codes], index=index)


def date_parts(text: pa.Array) -> tuple[dict[str, pd.Series], pd.Series]:
    """({part: float values, NaN where absent}, mask of texts in an accepted shape) of date
    texts; a month name is turned into its number (NaN when not a month)."""
    parts = {name: pd.Series(np.nan, index=range(len(text))) for name in DATE_PARTS}
    matched = pd.Series(False, index=range(len(text)))
    for shape in DATE_SHAPES:
        found = pc.extract_regex(text, shape)
        hit = pc.fill_null(pc.is_valid(found), False).to_numpy(zero_copy_only=False) & ~matched.to_numpy()
        if not hit.any():
            continue
        found = found.filter(pa.array(hit))
        for name in (part.name for part in found.type):
            values = pc.struct_field(found, name).to_pandas()
            if name == "month" and not values.str.isdigit().all():
                numbers = values.str.lower().map(MONTHS)
            else:
                numbers = pd.to_numeric(values.replace("", np.nan))
            parts[name][hit] = numbers.to_numpy(dtype=float)
        matched |= hit
    return parts, matched


def iso_dates(year: pd.Series, month: pd.Series, day: pd.Series, good: pd.Series) -> pd.Series:
    """'YYYY-MM-DD' for the rows in `good` (NA elsewhere), built by numpy's calendar."""
    iso = pd.Series(pd.NA, index=year.index, dtype=object)
    if good.any():
        months = (year[good].astype("int64") - 1970) * 12 + month[good].astype("int64") - 1
        days = months.to_numpy().astype("datetime64[M]").astype("datetime64[D]") + (
            day[good].astype("int64").to_numpy() - 1
        )
        iso[good] = days.astype(str)
    return iso


def days_in_month(year: pd.Series, month: pd.Series) -> pd.Series:
    y = year.fillna(1).astype(int)
    m = month.fillna(1).clip(1, 12).astype(int)
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    lengths = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[m - 1]
    return pd.Series(np.where(leap & (m == 2), 29, lengths), index=year.index)


def parse_passengers(table: Table) -> tuple[pd.Series, pd.Series]:
    """Rules impute_passengers / invalid_number / not_positive.

    A missing number_of_passengers becomes 1 (flagged as imputed: a booking has at least
    its booker); zero, negative, fractional or non-numeric values are rejected.
    """
    text = table.clean["number_of_passengers"]
    missing = text.isna()
    negative = text.fillna("").str.fullmatch(r"-[0-9]+(?:\.0+)?")  # minus a whole number
    numbers, malformed, too_big = parse_whole_numbers(text.mask(negative), INT_MAX)
    shown = quoted(table.raw["number_of_passengers"])
    table.reject(negative | (numbers == 0), "not_positive: number_of_passengers {} must be at least 1", shown)
    table.reject(malformed, "invalid_number: number_of_passengers {} is not a whole number", shown)
    table.reject(too_big, "out_of_range: number_of_passengers {} is too large", shown)
    numbers[missing] = 1
    return numbers, missing


COST_DIGITS = 10  # NUMERIC(12,2): ten digits before the point
MONEY_SHAPE = r"^(?P<sign>-?)(?P<units>[0-9]*)(?:\.(?P<cents>[0-9]{0,2})(?P<rest>[0-9]*))?$"


def parse_costs(table: Table) -> tuple[pd.Series, pd.Series]:
    """Rules invalid_number / negative_cost / too_many_decimals / out_of_range for money.

    cost_per_passenger is parsed as text into whole cents (no float ever touches money):
    digits with an optional point and decimals, at least one digit; `10.500` is fine,
    `10.005` is not. Currency symbols, thousands separators and exponents are refused
    rather than guessed. Missing values are imputed later, from the median of the accepted
    rows. Returns (cents as Int64, mask of missing costs)."""
    text = table.clean["cost_per_passenger"]
    source = as_text(text)
    parts = pc.extract_regex(source, MONEY_SHAPE)
    units, cents, rest = (pc.struct_field(parts, name) for name in ("units", "cents", "rest"))
    units = pc.utf8_ltrim(units, "0")  # '' for '0' and '.5': zero units
    has_digit = pc.match_substring_regex(source, "[0-9]")
    shaped = pc.fill_null(pc.and_(pc.is_valid(units), has_digit), False)
    checks = [
        (pc.invert(shaped), "invalid_number: cost_per_passenger {} is not a plain amount"),
        (pc.equal(pc.struct_field(parts, "sign"), "-"), "negative_cost: cost_per_passenger {} is below zero"),
        (pc.match_substring_regex(rest, "[1-9]"), "too_many_decimals: cost_per_passenger {} has fractions of a cent"),
        (pc.greater(pc.utf8_length(units), COST_DIGITS), "out_of_range: cost_per_passenger {} is too large"),
    ]
    missing = text.isna()
    shown = quoted(table.raw["cost_per_passenger"])
    for mask, template in checks:
        table.reject(as_mask(mask, text.index) & ~missing, template, shown)
    usable = pc.and_(shaped, pa.array(table.ok.to_numpy() & ~missing.to_numpy()))
    whole = pc.cast(pc.if_else(pc.and_(usable, pc.not_equal(units, "")), units, "0"), pa.int64())
    fraction = pc.cast(pc.if_else(usable, pc.utf8_rpad(pc.fill_null(cents, ""), 2, "0"), "0"), pa.int64())
    amount = pc.add(pc.multiply(whole, 100), fraction)
    return int_series(pc.if_else(usable, amount, None), text.index), missing


def destination_lookup(destinations: pd.DataFrame) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(name key -> id for unique names, name key -> ids for names shared by several)."""
    keys = name_key(destinations["destination"])
    groups = destinations.groupby(keys.values)["destination_id"].agg(lambda ids: sorted({int(i) for i in ids}))
    unique = {k: ids[0] for k, ids in groups.items() if len(ids) == 1}
    shared = {k: ids for k, ids in groups.items() if len(ids) > 1}
    return unique, shared


def name_key(names: pd.Series) -> pd.Series:
    """Names compare case- and space-insensitively: ' new  YORK ' is 'new york'."""
    folded = pa.array(pd.Series(pc.utf8_normalize(as_text(names), "NFC"), dtype=object).str.casefold(), pa.string())
    spaced = pc.replace_substring_regex(folded, f"[{WHITE_SPACE}]+", " ")
    return pd.Series(pc.utf8_trim(spaced, " "), index=names.index, dtype=TEXT_DTYPE)


def resolve_destinations(table: Table, destinations: pd.DataFrame) -> None:
    """Rules unknown_destination / ambiguous_destination: map a booking's destination name to
    the id of the one destination with that name. Each distinct name is looked up once."""
    unique, shared = destination_lookup(destinations)
    codes, distinct = pd.factorize(table.clean["destination"])
    keys = name_key(pd.Series(distinct, dtype=object))
    rows = table.raw.index
    found = pd.Series([unique.get(k) for k in keys], dtype="Int64")  # no float: ids are BIGINT
    ids = spread(found.astype(object), codes, rows, pd.NA)
    listed = keys.map(lambda k: ", ".join(map(str, shared[k])) if k in shared else "")
    shown = quoted(table.raw["destination"])
    table.reject(spread(keys.isin(list(shared)), codes, rows), "ambiguous_destination: {} names destinations {}", shown,
                 spread(listed, codes, rows, ""))
    table.reject(spread(found.isna(), codes, rows), "unknown_destination: {}", shown)
    table.clean["destination_id"] = ids.astype("Int64")


def reject_unknown_customers(table: Table, known_ids: Iterable[int]) -> None:
    """Rule unknown_customer: a booking's customer must be loaded (now or before)."""
    known = np.fromiter(known_ids, dtype=np.int64)
    ids = table.clean["customer_id"]
    present = ids.notna()
    found = pd.Series(False, index=ids.index)
    found[present] = np.isin(ids[present].astype("int64").to_numpy(), known)
    table.reject(present & ~found, "unknown_customer: customer_id {} is not loaded", quoted(table.raw["customer_id"]))


def impute_costs(table: Table) -> int | None:
    """Rule impute_cost: a missing cost_per_passenger becomes the median cost of the accepted
    bookings (halves of a cent round up), flagged as imputed. Returns the median in cents."""
    cents = table.clean["cost_cents"]
    missing = table.clean["cost_imputed"] & table.ok
    known = cents[table.ok & ~table.clean["cost_imputed"]].dropna().astype("int64")
    if known.empty:
        table.reject(missing, "missing_field: cost_per_passenger is empty and no median is available")
        return None
    median = median_cents(known.to_numpy())
    cents[missing] = median
    table.clean["cost_cents"] = cents
    return median


def median_cents(values: np.ndarray) -> int:
    ordered = np.sort(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return int(ordered[middle])
    pair_sum = Decimal(int(ordered[middle - 1]) + int(ordered[middle]))
    return int((pair_sum / 2).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def add_total_value(table: Table) -> None:
    """total_booking_value = passengers x cost, in whole cents (3 x 33.33 is exactly 99.99)."""
    ok = table.ok
    passengers = table.clean["number_of_passengers"].where(ok, 0).fillna(0).astype("int64")
    cents = table.clean["cost_cents"].where(ok, 0).fillna(0).astype("int64")
    # Exact in int64: passengers x cents > MAX  <=>  passengers > MAX // cents (cents > 0).
    overflow = (cents > 0) & (passengers > MAX_TOTAL_CENTS // cents.clip(lower=1))
    table.reject(overflow, "out_of_range: total_booking_value is too large")
    total = passengers.where(~overflow, 0) * cents.where(~overflow, 0)
    table.clean["cost_per_passenger"] = cents_to_text(cents)
    table.clean["total_booking_value"] = cents_to_text(total)


def cents_to_text(cents: pd.Series) -> pd.Series:
    """Whole cents as an amount with two decimals: 1005 -> '10.05' (built by pyarrow)."""
    values = cents.astype("int64").to_numpy()
    units = pc.cast(pa.array(values // 100), pa.string())
    hundredths = pc.utf8_lpad(pc.cast(pa.array(values % 100), pa.string()), 2, "0")
    text = pc.binary_join_element_wise(units, hundredths, ".")
    return pd.Series(text, index=cents.index, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def resolve_bookings(table: Table, destinations: pd.DataFrame, known_customer_ids: Iterable[int]) -> None:
    """Reference rules, duplicate_key, then imputation of the cost and the total value."""
    resolve_destinations(table, destinations)
    reject_unknown_customers(table, known_customer_ids)
    reject_duplicates(table, "booking_id", table.clean["booking_id"], "duplicate_key")
    impute_costs(table)
    add_total_value(table)
    table.imputed = (table.clean["passengers_imputed"] | table.clean["cost_imputed"]) & table.ok


def cleanse_all(
    raw: dict[str, pd.DataFrame], stored_destinations: pd.DataFrame | None = None,
    stored_customer_ids: Iterable[int] = (),
) -> dict[str, Table]:
    """Every rule but email_in_use (which needs the stored customers), in the README's
    order, on the three files' frames: {table: Table}. Pure: no file, network or database."""
    customers = cleanse_customers(raw["customer"])
    destinations = cleanse_destinations(raw["destination"])
    known_destinations = destinations.accepted()[["destination_id", "destination"]]
    if stored_destinations is not None:
        redefined = stored_destinations["destination_id"].isin(known_destinations["destination_id"])
        known_destinations = pd.concat([known_destinations, stored_destinations[~redefined]], ignore_index=True)
    bookings = cleanse_bookings(raw["booking"])
    known_customers = np.concatenate([
        customers.accepted()["customer_id"].to_numpy(dtype=np.int64),
        np.fromiter(stored_customer_ids, dtype=np.int64),
    ])
    resolve_bookings(bookings, known_destinations, known_customers)
    return {"customer": customers, "destination": destinations, "booking": bookings}


# ---------------------------------------------------------------------------------------
# Summary and rejects


@dataclass
class TableSummary:
    read: int
    loaded: int
    repaired: int
    imputed: int
    rejected: int
    inserted: int = 0
    updated: int = 0


def summarise(table: Table) -> TableSummary:
    ok = table.ok
    imputed = table.imputed & ok
    return TableSummary(
        read=len(table.raw),
        loaded=int(ok.sum()),
        repaired=int((repaired_rows(table) & ok & ~imputed).sum()),
        imputed=int(imputed.sum()),
        rejected=int((~ok).sum()),
    )


def repaired_rows(table: Table) -> pd.Series:
    """Rows loaded with a value other than the one written in the file (trimmed, lower-cased,
    capitalised, a date rewritten as ISO, an amount given two decimals)."""
    changed = np.zeros(len(table.raw), dtype=bool)
    for column in table.clean.columns.intersection(table.raw.columns):
        differs = pc.not_equal(as_text(table.raw[column]), as_text(table.clean[column]))
        changed |= differs.to_numpy(zero_copy_only=False)
    return pd.Series(changed, index=table.raw.index)


def as_text(values: pd.Series) -> pa.Array:
    """A column as the text a file would hold: '' where missing, numbers in decimal."""
    return pc.fill_null(pa.array(values, from_pandas=True).cast(pa.large_string()), "")


def check_reject_rates(summaries: dict[str, TableSummary], max_rate: float) -> None:
    """Refuse the whole load when a table lost more than `max_rate` of its rows, or has none."""
    for name, summary in summaries.items():
        if summary.read == 0:
            raise common.ConfigError(f"{name}.csv has no data rows; nothing was loaded")
        rate = summary.rejected / summary.read
        if rate > max_rate:
            raise common.ConfigError(
                f"{name}: {summary.rejected} of {summary.read} rows rejected ({rate:.1%}), "
                f"above MAX_REJECT_RATE {max_rate:.1%}; nothing was loaded. "
                f"See the rejects file for reasons."
            )


def make_rejects_dir(rejects_dir: Path) -> None:
    """Create REJECTS_DIR before anything is read, so that a bad one stops the load early."""
    try:
        rejects_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise common.ConfigError(f"REJECTS_DIR {rejects_dir} is a file, not a folder; set REJECTS_DIR or --rejects-dir to a folder") from None
    except OSError as exc:
        raise common.ConfigError(f"cannot create REJECTS_DIR {rejects_dir}: {exc.strerror}") from None


def write_rejects(tables: Sequence[Table], rejects_dir: Path) -> dict[str, Path]:
    """One CSV per table (source_row, the row as written, reject_reason, raw_record), replaced atomically."""
    make_rejects_dir(rejects_dir)
    written = {}
    for table in tables:
        target = rejects_dir / f"{table.name}_rejects.csv"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=rejects_dir)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as out:
            table.rejected().to_csv(out, index=False)
        os.replace(tmp, target)
        written[table.name] = target
    return written


def format_summary(summaries: dict[str, TableSummary], dry_run: bool) -> str:
    fields = ("read", "loaded", "repaired", "imputed", "rejected", "inserted", "updated")
    lines = ["table".ljust(12) + "".join(f.rjust(10) for f in fields)]
    for name, summary in summaries.items():
        lines.append(name.ljust(12) + "".join(str(getattr(summary, f)).rjust(10) for f in fields))
    if dry_run:
        lines.append("dry run: nothing was written to the database")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# PostgreSQL


# Arrow types of the loaded columns, in COPY order: how rows are written for COPY and how
# the stored rows read back are typed, so the two compare value by value.
LOAD_TYPES = {
    "destination": (pa.int64(), pa.string(), pa.string(), pa.string()),
    "customer": (pa.int64(), pa.string(), pa.string(), pa.string(), pa.string()),
    "booking": (pa.int64(), pa.int64(), pa.int64(), pa.string(), pa.int64(), pa.string(), pa.string(),
                pa.bool_(), pa.bool_()),
}
LOAD_SCHEMAS = {t: pa.schema(list(zip(LOAD_COLUMNS[t], LOAD_TYPES[t]))) for t in LOAD_COLUMNS}
COPY_BATCH_ROWS = 100_000  # rows formatted at a time: memory follows the batch, not the table
COPY_READ_BYTES = 1 << 20


def load_rows(table: Table) -> pa.Table:
    """The accepted rows of `table` in COPY order, typed as LOAD_SCHEMAS (no pandas copy of
    the cleansed frame on the way)."""
    columns = list(LOAD_COLUMNS[table.name])
    rows = pa.Table.from_pandas(table.clean.loc[:, columns], preserve_index=False).cast(LOAD_SCHEMAS[table.name])
    return rows.filter(pa.array(table.ok.to_numpy()))


class CsvStream:
    """A file-like object for copy_expert: `rows` as CSV (no header; NULL is an empty
    unquoted field), formatted by pyarrow one batch at a time when COPY asks for more."""

    def __init__(self, rows: pa.Table):
        self._batches = iter(rows.to_batches(max_chunksize=COPY_BATCH_ROWS))
        self._pending, self._offset = b"", 0
        self._options = pacsv.WriteOptions(include_header=False)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            return b"".join(iter(lambda: self.read(COPY_READ_BYTES), b""))
        while self._offset >= len(self._pending):
            batch = next(self._batches, None)
            if batch is None:
                return b""
            sink = pa.BufferOutputStream()
            pacsv.write_csv(batch, sink, write_options=self._options)
            self._pending, self._offset = sink.getvalue().to_pybytes(), 0
        chunk = self._pending[self._offset:self._offset + size]
        self._offset += len(chunk)
        return chunk


def copy_rows(cur, target: str, table: str, rows: pa.Table) -> None:
    """COPY `rows` (columns LOAD_COLUMNS[table]) into `target`."""
    from psycopg2 import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, LOAD_COLUMNS[table]))
    )
    cur.copy_expert(statement.as_string(cur), CsvStream(rows), size=COPY_READ_BYTES)


def stored_rows(cur, table: str) -> pa.Table:
    """Every row stored in `table` (its LOAD_COLUMNS), read with one COPY TO and typed as
    LOAD_SCHEMAS, so a reload can tell which rows of the file are new or changed."""
    from psycopg2 import sql

    columns = LOAD_COLUMNS[table]
    statement = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT WITH (FORMAT csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
    )
    # Spooled through a temporary file: the CSV text never sits in memory beside the table.
    with tempfile.TemporaryFile(prefix="waddle-stored-") as buffer:
        cur.copy_expert(statement.as_string(cur), buffer, size=COPY_READ_BYTES)
        if not buffer.tell():
            return LOAD_SCHEMAS[table].empty_table()
        buffer.seek(0)
        return read_stored_csv(buffer, table)


def read_stored_csv(source, table: str) -> pa.Table:
    """PostgreSQL's CSV rendering of `table`'s LOAD_COLUMNS, typed as LOAD_SCHEMAS.

    `source` is a seekable file. A stored row larger than the read block (a 3 MB name) is
    read again with a larger block: pyarrow refuses a record that straddles two blocks."""
    block = READ_BLOCK_BYTES
    while True:
        try:
            return read_stored_blocks(source, table, block)
        except pa.ArrowInvalid as exc:
            size = source.seek(0, os.SEEK_END)
            if "straddl" not in str(exc) or block > size:
                raise
            source.seek(0)
            block *= 16


def read_stored_blocks(source, table: str, block: int) -> pa.Table:
    columns = LOAD_COLUMNS[table]
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=list(columns), block_size=block),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=LOAD_SCHEMAS[table], true_values=["t"], false_values=["f"],
            # NULL is the empty unquoted field, nothing else: a stored 'NA' or 'null' is text.
            null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
        ),
    )


def new_or_changed(rows: pa.Table, stored: pa.Table, key: str) -> np.ndarray:
    """Mask of `rows` whose key is not stored, or whose stored row differs in any column.

    Equal text and numbers mean equal stored values, so a row left out is one the upsert
    would not touch; a row kept by a mere difference of rendering is harmless (the upsert
    still compares the values)."""
    positions = pd.Index(stored[key].to_numpy()).get_indexer(rows[key].to_numpy())
    found = positions >= 0
    pending = ~found
    if found.any():
        ours = rows.filter(pa.array(found))
        theirs = stored.take(pa.array(positions[found]))
        differs = np.zeros(int(found.sum()), dtype=bool)
        for column in rows.column_names:
            a, b = ours[column], theirs[column]
            same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
            differs |= ~same.to_numpy(zero_copy_only=False)
        pending[found] = differs
    return pending


def create_staging(cur, table: str) -> None:
    from psycopg2 import sql

    cur.execute(
        sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
            sql.Identifier(f"stage_{table}"), sql.Identifier(table)
        )
    )


def write_table(cur, table: str, rows: pa.Table, stored: pa.Table) -> tuple[int, int]:
    """Store the accepted `rows` of `table`: (inserted, updated).

    Into an empty table the rows are copied straight in (the first load: every row is new,
    no staging, no upsert). Otherwise only the rows that are new or differ from `stored` go
    through stage_<table> and the upsert; identical rows are never sent again."""
    if stored.num_rows == 0:
        return copy_into_empty(cur, table, rows)
    pending = rows.filter(pa.array(new_or_changed(rows, stored, KEYS[table])))
    if pending.num_rows == 0:
        return 0, 0
    create_staging(cur, table)
    copy_rows(cur, f"stage_{table}", table, pending)
    return upsert(cur, table)


def copy_into_empty(cur, table: str, rows: pa.Table) -> tuple[int, int]:
    """COPY `rows` straight into `table`, which holds no row: all of them are inserted."""
    copy_rows(cur, table, table, rows)
    return rows.num_rows, 0


def take_load_lock(cur) -> None:
    """Serialise loads: a second loader waits for the first to commit (and says so)."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOAD_LOCK_KEY,))
    if not cur.fetchone()[0]:
        log.info("another load is running; waiting for it to finish")
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOAD_LOCK_KEY,))


def database_destinations(cur, exclude_ids: Iterable[int]) -> pd.DataFrame:
    """Destinations already stored that this run does not redefine (for name mapping)."""
    cur.execute(
        "SELECT destination_id, destination FROM destination WHERE NOT (destination_id = ANY(%s))",
        (list(map(int, exclude_ids)),),
    )
    return pd.DataFrame(cur.fetchall(), columns=["destination_id", "destination"])


def lock_and_read_customers(cur) -> pa.Table:
    """Take the load lock, set the session up, and read the stored customers."""
    take_load_lock(cur)
    cur.execute("SET LOCAL datestyle = 'ISO, YMD'")  # dates read back as written
    return stored_rows(cur, "customer")


def stage_customers(cur, customers: Table, stored: pa.Table) -> np.ndarray:
    """When customers are stored, put the new and changed ones in stage_customer and apply
    rule email_in_use to them. Returns the ids of the stored customers."""
    if stored.num_rows:
        rows = load_rows(customers)
        create_staging(cur, "customer")
        copy_rows(cur, "stage_customer", "customer", rows.filter(pa.array(new_or_changed(rows, stored, "customer_id"))))
        reject_emails_in_use(cur, customers)
    return stored["customer_id"].to_numpy()


def reject_emails_in_use(cur, table: Table) -> None:
    """Rule email_in_use: an e-mail already held by another stored customer who keeps it
    cannot be given to this one. Needs stage_customer filled with the accepted customers that
    are new or changed (an unchanged one holds its own address already).

    A holder keeps its address when it does not move away in stage_customer; a holder whose
    own move is rejected keeps it too, so the rule repeats until nothing changes (a chain:
    1 takes 2's address, 2 takes the address of 3, who stays: both 2 and 1 are rejected)."""
    while True:
        cur.execute(
            """
            SELECT s.customer_id, c.customer_id
            FROM stage_customer s
            JOIN customer c ON c.email = s.email AND c.customer_id <> s.customer_id
            WHERE NOT EXISTS (
                SELECT 1 FROM stage_customer moved
                WHERE moved.customer_id = c.customer_id AND moved.email <> c.email)
            """
        )
        holders = dict(cur.fetchall())
        if not holders:
            return
        holder = table.clean["customer_id"].map(holders).astype("Int64")
        table.reject(holder.notna(), "email_in_use: {} belongs to customer_id {}", quoted(table.raw["email"]), holder)
        cur.execute("DELETE FROM stage_customer WHERE customer_id = ANY(%s)", (list(holders),))


def upsert(cur, table: str) -> tuple[int, int]:
    """Insert new rows, update changed ones, leave identical ones untouched: (inserted, updated)."""
    from psycopg2 import sql

    columns = LOAD_COLUMNS[table]
    key = KEYS[table]
    others = [c for c in columns if c != key]
    statement = sql.SQL(
        """
        WITH changed AS (
            INSERT INTO {table} AS t ({columns}) SELECT {columns} FROM {stage}
            ON CONFLICT ({key}) DO UPDATE SET ({others}) = ROW({excluded})
            WHERE ({current}) IS DISTINCT FROM ({excluded})
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM changed
        """
    ).format(
        table=sql.Identifier(table),
        stage=sql.Identifier(f"stage_{table}"),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        key=sql.Identifier(key),
        others=sql.SQL(", ").join(map(sql.Identifier, others)),
        excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in others),
        current=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in others),
    )
    cur.execute(statement)
    inserted, updated = cur.fetchone()
    return int(inserted), int(updated)


def record_run(cur, started_at: datetime, sources: dict[str, dict], summaries: dict[str, TableSummary]) -> int:
    cur.execute(
        "INSERT INTO load_run (started_at, tool_version, source_files) VALUES (%s, %s, %s) RETURNING run_id",
        (started_at, common.__version__, json.dumps(sources)),
    )
    run_id = cur.fetchone()[0]
    for name, s in summaries.items():
        cur.execute(
            """INSERT INTO load_run_table (run_id, table_name, rows_read, rows_loaded, rows_repaired,
                   rows_imputed, rows_rejected, rows_inserted, rows_updated)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (run_id, name, s.read, s.loaded, s.repaired, s.imputed, s.rejected, s.inserted, s.updated),
        )
    return run_id


def describe_source(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------
# The stage


def reject_rate(text: str) -> float:
    """--max-reject-rate: a share of the rows, 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1 (0.10 = 10%), got {text!r}")
    return value


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument("--data-dir", metavar="DIR", help="folder with the three CSVs (default: $DOWNLOAD_DIR)")
    parser.add_argument("--rejects-dir", metavar="DIR", help="where rejected rows go (default: $REJECTS_DIR)")
    parser.add_argument(
        "--max-reject-rate", type=reject_rate, metavar="RATE",
        help="refuse the load when a table loses more than this share of its rows (default: $MAX_REJECT_RATE, 0.10)",
    )
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the CSVs (default: utf-8)")
    parser.add_argument("--dry-run", action="store_true", help="cleanse, write rejects and the summary; change no table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return common.run_stage("transform_load_csv_data", args, lambda settings: transform_and_load(settings, args))


def transform_and_load(settings: common.Settings, args) -> int:
    """Read, cleanse and load. The connection works in a second thread while this one
    cleanses: PostgreSQL takes the lock and sends back the stored customers while the
    customer rules run, then stores destinations and customers (or, on a reload, sends back
    the stored bookings) while the booking rules run: one core each."""
    import psycopg2

    started_at = datetime.now(UTC)
    data_dir = Path(args.data_dir) if args.data_dir else settings.download_dir
    rejects_dir = Path(args.rejects_dir) if args.rejects_dir else settings.rejects_dir
    max_rate = settings.max_reject_rate if args.max_reject_rate is None else args.max_reject_rate
    paths = {name: data_dir / f"{name}.csv" for name in common.TABLES}
    make_rejects_dir(rejects_dir)
    raw = {name: read_source(paths[name], name, args.encoding) for name in common.TABLES}
    log.info("read %s", ", ".join(f"{len(frame)} {name} rows" for name, frame in raw.items()))

    log.info("loading into %s", common.describe_database())
    conn = common.connect_db("transform_load")
    try:
        with conn, conn.cursor() as cur, ThreadPoolExecutor(max_workers=1) as database:
            # The worker and this thread take turns on the connection: one waits on .result()
            # before it uses the connection again.
            try:
                reading_customers = database.submit(lock_and_read_customers, cur)
                customers = cleanse_customers(raw["customer"])
                destinations = cleanse_destinations(raw["destination"])
                log_step("customer and destination rules applied")
                stored_customer_ids = stage_customers(cur, customers, reading_customers.result())
                log_step(f"{len(stored_customer_ids)} stored customers compared")
                known_destinations = pd.concat(
                    [destinations.accepted()[["destination_id", "destination"]],
                     database_destinations(cur, destinations.accepted()["destination_id"])],
                    ignore_index=True,
                )
                parents = database.submit(write_parents, cur, destinations, customers, len(stored_customer_ids) > 0)
                stored_bookings = database.submit(stored_rows, cur, "booking")

                bookings = cleanse_bookings(raw.pop("booking"))
                log_step("booking row rules applied")
                known_customers = np.concatenate([
                    customers.accepted()["customer_id"].to_numpy(dtype=np.int64),
                    stored_customer_ids,
                ])
                resolve_bookings(bookings, known_destinations, known_customers)
                writing_bookings = database.submit(
                    lambda: write_table(cur, "booking", load_rows(bookings), stored_bookings.result())
                )
                tables = (customers, destinations, bookings)
                write_rejects(tables, rejects_dir)
                summaries = {t.name: summarise(t) for t in tables}
                check_reject_rates(summaries, max_rate)
                log_step("rejects written")

                counts = {**parents.result(), "booking": writing_bookings.result()}
                log_step("tables written")
                for name, (summaries[name].inserted, summaries[name].updated) in counts.items():
                    log.info("%s: %d inserted, %d updated", name, summaries[name].inserted, summaries[name].updated)
                cur.execute("SET CONSTRAINTS ALL IMMEDIATE")  # surface a deferred e-mail clash here
                if args.dry_run:
                    conn.rollback()
                else:
                    record_run(cur, started_at, {n: describe_source(p) for n, p in paths.items()}, summaries)
            except BaseException:
                # A refusal, a failure or Ctrl-C here: stop the statement the worker may be in
                # (a COPY, or the wait for the load lock, where libpq sees no signal), so that
                # the worker ends at once; the transaction is rolled back anyway.
                conn.cancel()
                raise
    except psycopg2.Error as exc:
        raise common.PipelineError(
            f"load failed and was rolled back, no table changed: {common.first_line(common.redact(exc))}"
        ) from None
    finally:
        conn.close()

    ordered = {name: summaries[name] for name in common.TABLES}
    print(format_summary(ordered, args.dry_run))
    return common.EXIT_OK


def write_parents(cur, destinations: Table, customers: Table, customers_staged: bool) -> dict:
    """Store destinations, then customers (staged by stage_customers when some were stored,
    else copied straight in): {table: (inserted, updated)}."""
    return {
        "destination": write_table(cur, "destination", load_rows(destinations), stored_rows(cur, "destination")),
        "customer": upsert(cur, "customer") if customers_staged else copy_into_empty(cur, "customer", load_rows(customers)),
    }


if __name__ == "__main__":
    raise SystemExit(main())
