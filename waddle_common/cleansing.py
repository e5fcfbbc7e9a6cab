"""The cleansing rules of stage 3, in the order of README.md's rules table: pure functions.

Frames of source text in, cleansed columns, masks and reject reasons out; no file, network
or database access (stage 3, transform_load_csv_data.py, reads and loads). The rules run on
one chunk of a file at a time. A rule that needs the whole file keeps compact state across
chunks instead of the rows: FirstSeen remembers each id and e-mail address already accepted
(rules duplicate_key and duplicate_email), the booking rules take the sorted ids of the
customers a booking may point to, and a booking without a cost waits (`Table.pending`) until
the median of the whole file is known (rule impute_cost). Rule email_in_use compares with
the stored customers, so stage 3 applies it in PostgreSQL. The state that grows with a file
goes to an ArrayStore: memory by default; stage 3 gives one of files, mapped while searched.

cleanse_all() runs every other rule on whole files held in memory, chunk by chunk exactly as
the stage does: the tests' entry point.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import waddle_common as common

TEXT_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
NOT_NULL = {table: declaration.required for table, declaration in common.SCHEMA.items()}

SEASONS = ("Spring", "Summer", "Autumn", "Winter")
SEASON_SYNONYMS = {"Fall": "Autumn"}
BIGINT_MAX = 9_223_372_036_854_775_807
INT_MAX = 2_147_483_647
MAX_COST_CENTS = 10**12 - 1  # NUMERIC(12,2)
MAX_TOTAL_CENTS = 10**18 - 1  # 9999999999999999.99: travel.sql's CHECK and the Lambda share it
DATE_MIN, DATE_MAX = 1900, 2100  # booking years outside this range are typing errors

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
        # Bookings accepted so far that wait for the whole file's median cost (rule impute_cost).
        self.pending = np.zeros(len(self.raw), dtype=bool)
        self.costs = np.empty(0, dtype=np.int64)  # bookings: the cents of those with a cost
        reject_wrong_field_count(self)

    def take(self, mask: np.ndarray) -> Table:
        """The rows in `mask` as a table of their own, with their cleansed values and reasons."""
        part = object.__new__(Table)
        part.name, part.raw = self.name, self.raw.iloc[mask].reset_index(drop=True)
        part.raw.attrs = dict(self.raw.attrs)
        part.clean = self.clean.iloc[mask].reset_index(drop=True)
        part.reason = self.reason.iloc[mask].reset_index(drop=True)
        part.imputed = self.imputed.iloc[mask].reset_index(drop=True)
        part._ok, part.pending, part.costs = self._ok[mask], self.pending[mask], self.costs
        return part

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

    @staticmethod
    def concat(parts: list[Table]) -> Table:
        """One table of several (the chunks of a file), rows in the order given."""
        whole = object.__new__(Table)
        whole.name = parts[0].name
        whole.raw = pd.concat([p.raw for p in parts], ignore_index=True)
        whole.raw.attrs = dict(parts[0].raw.attrs)
        whole.clean = pd.concat([p.clean for p in parts], ignore_index=True)
        whole.reason = pd.concat([p.reason for p in parts], ignore_index=True)
        whole.imputed = pd.concat([p.imputed for p in parts], ignore_index=True)
        whole._ok = np.concatenate([p._ok for p in parts])
        whole.pending = np.concatenate([p.pending for p in parts])
        whole.costs = np.concatenate([p.costs for p in parts])
        return whole

    def in_file_order(self) -> Table:
        return self.take(np.argsort(self.raw["source_row"].to_numpy(), kind="stable"))

    @property
    def loaded(self) -> np.ndarray:
        """Rows accepted and complete: what goes to the database now."""
        return self._ok & ~self.pending

    def accepted(self) -> pd.DataFrame:
        return self.clean[self.ok]

    def rejected(self) -> pd.DataFrame:
        """The rejected rows as the file wrote them: source_row, the file's columns,
        reject_reason and raw_record (the text of a record rule wrong_field_count rejected)."""
        rows = self.raw[~self.ok].drop(columns=["raw_record", "field_count"], errors="ignore")
        rows["reject_reason"] = self.reason[~self.ok]
        rows["raw_record"] = self.raw["raw_record"][~self.ok] if "raw_record" in self.raw else pd.NA
        return rows


class quoted:  # lower-case: reads as a function at the call sites
    """Source values shown in reject reasons as 'text' (cut to 60 characters), quoted only
    for the rows that are rejected."""

    def __init__(self, values: pd.Series):
        self.values = values

    def __getitem__(self, mask: pd.Series) -> list[str]:
        return ["'" + ("" if pd.isna(v) else str(v))[:60] + "'" for v in self.values[mask]]


def as_text(values: pd.Series) -> pa.Array:
    """A column as the text a file would hold: '' where missing, numbers in decimal."""
    return pc.fill_null(pa.array(values, from_pandas=True).cast(pa.large_string()), "")


# ---------------------------------------------------------------------------------------
# Rules 1-6: every table


def reject_wrong_field_count(table: Table) -> None:
    """Rule wrong_field_count: a record with more or fewer fields than the header is rejected
    whole (read_source keeps its text): a short row must not be filled in with made-up values."""
    if "field_count" in table.raw:
        counts = table.raw["field_count"]
        fields = table.raw.attrs["header_fields"]
        table.reject(counts.notna(), f"wrong_field_count: {{}} fields, the header has {fields}", counts)


def normalise_text(values: pd.Series) -> pd.Series:
    """Rule normalise_text: Unicode NFC, so that 'u' + a combining diaeresis equals 'ü'."""
    beyond_ascii = ~pc.string_is_ascii(as_text(values)).to_numpy(zero_copy_only=False)
    if not beyond_ascii.any():
        return values  # ASCII is NFC already: the usual case costs one scan
    # Python's unicodedata, not pyarrow's utf8_normalize: before pyarrow 26 that returned NFD.
    at = np.flatnonzero(beyond_ascii)
    normal = values.copy()
    normal.iloc[at] = [unicodedata.normalize("NFC", value) for value in values.iloc[at]]
    return normal


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
    data = data if data.flags.writeable else data.copy()  # pandas 2.3 writes into it
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


# ---------------------------------------------------------------------------------------
# Rule 7: the values of each table


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


def normalise_seasons(seasons: pd.Series) -> pd.Series:
    """Rule capitalise_season: 'autumn', 'AUTUMN' -> 'Autumn'; 'Fall' is Autumn."""
    capitalised = seasons.str.capitalize()
    return capitalised.replace(SEASON_SYNONYMS)


def reject_unknown_seasons(table: Table) -> None:
    """Rule unknown_season: only Spring, Summer, Autumn and Winter are seasons."""
    seasons = table.clean["popular_season"]
    table.reject(seasons.notna() & ~seasons.isin(SEASONS), "unknown_season: {}", quoted(table.raw["popular_season"]))


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


# ---------------------------------------------------------------------------------------
# Rule 8: destinations by name


class DestinationLookup:
    """Destination names (as name_key() folds them) -> ids: the accepted destinations of this
    run and the stored ones it does not redefine."""

    def __init__(self, destinations: pd.DataFrame):
        keys = name_key(destinations["destination"])
        groups = destinations.groupby(keys.values)["destination_id"].agg(lambda ids: sorted({int(i) for i in ids}))
        self.unique = {k: ids[0] for k, ids in groups.items() if len(ids) == 1}
        self.shared = {k: ids for k, ids in groups.items() if len(ids) > 1}


def name_key(names: pd.Series) -> pd.Series:
    """Names compare case- and space-insensitively: ' new  YORK ' is 'new york'."""
    folded = pa.array([unicodedata.normalize("NFC", name).casefold() for name in as_text(names).to_pylist()], pa.string())
    spaced = pc.replace_substring_regex(folded, f"[{WHITE_SPACE}]+", " ")
    return pd.Series(pc.utf8_trim(spaced, " "), index=names.index, dtype=TEXT_DTYPE)


def resolve_destinations(table: Table, destinations: DestinationLookup) -> None:
    """Rules unknown_destination / ambiguous_destination: map a booking's destination name to
    the id of the one destination with that name. Each distinct name is looked up once."""
    unique, shared = destinations.unique, destinations.shared
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


# ---------------------------------------------------------------------------------------
# Where the state that grows with a file is kept (rules 9-11)


class ArrayStore(Protocol):
    """Keeps tuples of arrays: put() gives a handle, open() the arrays again (valid while they
    are referenced: stage 3's store maps files, unmapped when the arrays are dropped), drop()
    forgets them."""

    def put(self, arrays: tuple[np.ndarray, ...]) -> object: ...

    def open(self, handle) -> tuple[np.ndarray, ...]: ...

    def drop(self, handle) -> None: ...


class InMemory:
    """The default ArrayStore: the arrays are their own handle."""

    def put(self, arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        return arrays

    def open(self, handle: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        return handle

    def drop(self, handle) -> None:
        pass


IN_MEMORY = InMemory()

MAX_RUN = 1 << 20  # entries: a merge never holds more than two runs of this size twice over
SPILL_ENTRIES = 1 << 16  # entries: a shorter run stays in memory, whatever the store
T = TypeVar("T")


class SortedRuns:
    """Runs of arrays sorted by the first (keys, then what goes with them), merged like a
    binary counter up to MAX_RUN entries: few to search, none large. Runs of SPILL_ENTRIES
    or more are kept in `store`, and opened one at a time."""

    def __init__(self, store: ArrayStore = IN_MEMORY):
        self.store = store
        self._runs: list[tuple[int, ArrayStore, object]] = []  # (entries, where it is kept, handle)

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: tuple[np.ndarray, ...]) -> None:
        """A non-empty run, sorted by its first array."""
        self._keep(run)
        while len(self._runs) > 1 and self._runs[-2][0] <= min(2 * self._runs[-1][0], MAX_RUN - self._runs[-1][0]):
            (_, b_store, b), (_, a_store, a) = self._runs.pop(), self._runs.pop()
            self._keep(merge_runs(a_store.open(a), b_store.open(b)))
            a_store.drop(a)
            b_store.drop(b)

    def each(self, look: Callable[[tuple[np.ndarray, ...]], T]) -> list[T]:
        """look(run) for every run, oldest first, each open only meanwhile."""
        return [look(where.open(handle)) for _, where, handle in self._runs]

    def _keep(self, run: tuple[np.ndarray, ...]) -> None:
        where = self.store if len(run[0]) >= SPILL_ENTRIES else IN_MEMORY
        self._runs.append((len(run[0]), where, where.put(run)))


def merge_runs(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Two runs, each sorted by its first array, as one, in linear time."""
    where_b = np.searchsorted(a[0], b[0]) + np.arange(len(b[0]))
    where_a = np.ones(len(a[0]) + len(b[0]), dtype=bool)
    where_a[where_b] = False
    merged = []
    for a_part, b_part in zip(a, b):
        part = np.empty(len(where_a), dtype=np.result_type(a_part, b_part))
        part[where_a], part[where_b] = a_part, b_part
        merged.append(part)
    return tuple(merged)


# ---------------------------------------------------------------------------------------
# Rule 9: customers a booking may name


class SortedKeys:
    """A set of int64 keys as SortedRuns (stage 3 keeps them in files): the ids of the
    customers a booking may name."""

    def __init__(self, store: ArrayStore = IN_MEMORY):
        self._runs = SortedRuns(store)

    def add(self, keys: np.ndarray) -> None:
        if len(keys):
            self._runs.add((np.sort(keys),))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Mask of the int64 `keys` that are in the set."""
        order = np.argsort(keys)  # in order, a run is searched about four times faster
        wanted = keys[order]
        hits = np.zeros(len(keys), dtype=bool)
        for in_run in self._runs.each(lambda run: found_in(run[0], wanted)):
            hits |= in_run
        found = np.empty(len(keys), dtype=bool)
        found[order] = hits
        return found


def found_in(ordered: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Mask of `keys` that are in the sorted, non-empty array `ordered`; only those within its
    range are looked up (ids added in ascending blocks make runs that barely overlap)."""
    within = np.flatnonzero((keys >= ordered[0]) & (keys <= ordered[-1]))
    found = np.zeros(len(keys), dtype=bool)
    found[within] = ordered[np.searchsorted(ordered, keys[within])] == keys[within]
    return found


def reject_unknown_customers(table: Table, known: SortedKeys) -> None:
    """Rule unknown_customer: a booking's customer must be loaded (now or before); `known`
    holds their ids."""
    ids = table.clean["customer_id"]
    present = ids.notna()
    found = pd.Series(False, index=ids.index)
    found[present] = known.contains(ids[present].astype("int64").to_numpy())
    table.reject(present & ~found, "unknown_customer: customer_id {} is not loaded", quoted(table.raw["customer_id"]))


# ---------------------------------------------------------------------------------------
# Rules 10 and 11: duplicates, the first occurrence in the file wins


def reject_duplicates(table: Table, column: str, keys: Keys, code: str, seen: FirstSeen) -> None:
    """Rules duplicate_key / duplicate_email: among rows that passed every earlier rule, the
    first occurrence of a value in the file wins (in an earlier chunk or earlier in this
    one); later ones are rejected naming the row kept. `keys` are one or two int64 arrays per
    row (an id; the two halves of an e-mail's digest); `seen` remembers the winners."""
    candidates = table.ok.to_numpy() & keys.present
    rows = table.raw["source_row"].to_numpy(dtype=np.int64)
    first = np.zeros(len(rows), dtype=np.int64)
    first[candidates] = seen.first_rows(tuple(k[candidates] for k in keys.parts), rows[candidates])
    repeated = candidates & (first != rows)
    table.reject(pd.Series(repeated, index=table.raw.index), f"{code}: {column} {{}} already at row {{}}",
                 quoted(table.raw[column]), pd.Series(first, index=table.raw.index))


@dataclass
class Keys:
    """The values a duplicate rule compares, as int64 arrays (`parts`), and where one is present."""

    parts: tuple[np.ndarray, ...]
    present: np.ndarray

    @classmethod
    def of_ids(cls, ids: pd.Series) -> Keys:
        return cls((ids.fillna(0).to_numpy(dtype=np.int64),), ids.notna().to_numpy())

    @classmethod
    def of_text(cls, values: pd.Series) -> Keys:
        """A 128-bit digest of each text (two SipHash halves): equal texts, equal keys; two
        different addresses share one with a chance of about n²/2¹²⁹ (1e-25 at ten million)."""
        present = values.notna().to_numpy()
        text = values.to_numpy(dtype=object, na_value="")
        halves = tuple(pd.util.hash_array(text, hash_key=key, categorize=False).view(np.int64)
                       for key in ("data-waddle-key1", "data-waddle-key2"))
        return cls(halves, present)


class FirstSeen:
    """The first source row of every key accepted so far in a file, about 12 bytes per id
    (20 per e-mail digest): SortedRuns of (key parts..., row), so a chunk searches few runs
    and the state follows the distinct keys (in `store`: stage 3's are files)."""

    def __init__(self, store: ArrayStore = IN_MEMORY):
        self._runs = SortedRuns(store)

    def first_rows(self, keys: tuple[np.ndarray, ...], rows: np.ndarray) -> np.ndarray:
        """For each (key, row), rows ascending: the row where the key was first seen, in an
        earlier call or earlier in this one (its own row if nowhere). Remembers new keys."""
        first = np.zeros(len(rows), dtype=np.int64)
        order = np.argsort(keys[0])  # searched in order, a large run is searched several times faster
        wanted = tuple(k[order] for k in keys)
        for found, found_rows in self._runs.each(lambda run: rows_of(run, wanted)):
            first[order[found]] = found_rows
        new = first == 0
        if new.any():
            fresh_keys = pd.DataFrame({i: k[new] for i, k in enumerate(keys)})
            fresh_rows = rows[new]
            repeated = fresh_keys.duplicated(keep="first").to_numpy()
            if repeated.any():
                fresh_rows = pd.Series(fresh_rows).groupby([fresh_keys[c] for c in fresh_keys]).transform("min").to_numpy()
            first[new] = fresh_rows
            self._add(tuple(k[new][~repeated] for k in keys), rows[new][~repeated])
        return first

    def _add(self, keys: tuple[np.ndarray, ...], rows: np.ndarray) -> None:
        order = np.argsort(keys[0], kind="stable")
        self._runs.add((*(k[order] for k in keys), compact_rows(rows[order])))


def rows_of(run: tuple[np.ndarray, ...], keys: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(found, their first rows) of `keys` in one of FirstSeen's runs: (key parts..., rows)."""
    found, at = find(run[:-1], keys)
    return found, run[-1][at[found]]


def find(run_keys: tuple[np.ndarray, ...], keys: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of `keys` in a run sorted by its first part; the other part, when
    there is one, is compared among the entries sharing the first (nearly always one)."""
    low = np.searchsorted(run_keys[0], keys[0], "left")
    at = np.minimum(low, len(run_keys[0]) - 1)
    found = run_keys[0][at] == keys[0]
    if len(keys) == 1 or not found.any():
        return found, at
    matched = found & (run_keys[1][at] == keys[1])
    for i in np.flatnonzero(found & ~matched):  # equal first halves, other second: look further
        high = np.searchsorted(run_keys[0], keys[0][i], "right")
        hits = np.flatnonzero(run_keys[1][low[i]:high] == keys[1][i])
        if hits.size:
            matched[i], at[i] = True, low[i] + hits[0]
    return matched, at


def compact_rows(rows: np.ndarray) -> np.ndarray:
    return rows.astype(np.uint32) if len(rows) and rows.max() < 2**32 else rows


# ---------------------------------------------------------------------------------------
# Rules 13 and 14 (rule 12, email_in_use, compares with the stored customers: stage 3 applies it in PostgreSQL)


def complete_pending(pending: Table, median: int | None) -> Table:
    """Rule impute_cost, then the total, for the pending bookings of a file: a missing
    cost_per_passenger becomes `median`, the median cost of the file's accepted bookings
    (median_cents), flagged as imputed; with no median the booking is rejected."""
    pending.pending = np.zeros(len(pending.raw), dtype=bool)
    if median is None:
        pending.reject(pending.ok, "missing_field: cost_per_passenger is empty and no median is available")
        return pending
    pending.clean["cost_cents"] = pd.Series(median, index=pending.raw.index, dtype="Int64")
    add_total_value(pending)
    pending.imputed = pending.imputed & pending.ok
    return pending


def median_cents(values: np.ndarray) -> int | None:
    """The median of whole cents (of two middle values their mean, a half cent rounding up);
    None when there are none. Reorders `values` in place: a sorted copy of a 10M-row file's
    costs would be stage 3's largest allocation."""
    if not len(values):
        return None
    middle = len(values) // 2
    values.partition([middle] if len(values) % 2 else [middle - 1, middle])
    if len(values) % 2:
        return int(values[middle])
    pair_sum = Decimal(int(values[middle - 1]) + int(values[middle]))
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


# ---------------------------------------------------------------------------------------
# The three files, chunk by chunk


@dataclass
class FileState:
    """What the rules keep across the chunks of the three files."""

    customer_ids: FirstSeen = field(default_factory=FirstSeen)
    emails: FirstSeen = field(default_factory=FirstSeen)
    destination_ids: FirstSeen = field(default_factory=FirstSeen)
    booking_ids: FirstSeen = field(default_factory=FirstSeen)

    @classmethod
    def kept_in(cls, store: ArrayStore) -> FileState:
        """A new state whose larger runs `store` keeps."""
        return cls(*(FirstSeen(store) for _ in fields(cls)))


def rules_of_every_table(name: str, raw: pd.DataFrame) -> tuple[Table, pd.Series]:
    """Rules 1-6 on a chunk of `name`.csv: (the table, its keys)."""
    table = Table(name, raw)  # rules 1-3
    reject_missing(table, NOT_NULL[name])
    reject_nul_bytes(table)
    return table, parse_key(table, common.SCHEMA[name].key)


def cleanse_customers(raw: pd.DataFrame, state: FileState | None = None) -> Table:
    """Rules 1-7, duplicate_key and duplicate_email on a chunk of customer.csv (a file's first
    chunk without `state`)."""
    state = state or FileState()
    table, ids = rules_of_every_table("customer", raw)
    table.clean["email"] = normalise_emails(table.clean["email"])
    reject_malformed_emails(table)
    reject_duplicates(table, "customer_id", Keys.of_ids(ids), "duplicate_key", state.customer_ids)
    reject_duplicates(table, "email", Keys.of_text(table.clean["email"]), "duplicate_email", state.emails)
    table.clean["customer_id"] = ids
    return table


def cleanse_destinations(raw: pd.DataFrame, state: FileState | None = None) -> Table:
    """Rules 1-7 and duplicate_key on a chunk of destination.csv (a file's first chunk
    without `state`)."""
    state = state or FileState()
    table, ids = rules_of_every_table("destination", raw)
    table.clean["popular_season"] = normalise_seasons(table.clean["popular_season"])
    reject_unknown_seasons(table)
    reject_duplicates(table, "destination_id", Keys.of_ids(ids), "duplicate_key", state.destination_ids)
    table.clean["destination_id"] = ids
    return table


def cleanse_bookings(raw: pd.DataFrame, destinations: DestinationLookup | None = None,
                     known_customers: SortedKeys | None = None, state: FileState | None = None) -> Table:
    """Rules 1-10 and the total on a chunk of booking.csv. A booking without a cost that
    passes them is left pending (`table.pending`) until complete_pending() gives it the
    median of the whole file's costs, which are collected in `table.costs` (rule impute_cost)."""
    destinations = destinations or DestinationLookup(pd.DataFrame({"destination_id": [], "destination": []}))
    known_customers = SortedKeys() if known_customers is None else known_customers
    state = state or FileState()
    table, ids = rules_of_every_table("booking", raw)
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
    resolve_destinations(table, destinations)
    reject_unknown_customers(table, known_customers)
    reject_duplicates(table, "booking_id", Keys.of_ids(ids), "duplicate_key", state.booking_ids)
    with_cost = table.ok & ~cost_missing
    table.costs = cents[with_cost].to_numpy(dtype=np.int64)
    table.pending = (table.ok & cost_missing).to_numpy()
    add_total_value(table)
    table.imputed = (passengers_missing | cost_missing) & table.ok
    return table


def cleanse_all(
    raw: dict[str, pd.DataFrame], stored_destinations: pd.DataFrame | None = None,
    stored_customer_ids: Iterable[int] = (), chunk_rows: int = 50_000,
) -> dict[str, Table]:
    """Every rule but email_in_use (which needs the stored customers), in the README's order,
    on the three files' whole frames, chunk by chunk as stage 3 runs them: {table: Table},
    rows in file order. Pure: no file, network or database."""
    state = FileState()
    customers = Table.concat([cleanse_customers(c, state) for c in chunks(raw["customer"], chunk_rows)])
    destinations = Table.concat([cleanse_destinations(c, state) for c in chunks(raw["destination"], chunk_rows)])
    lookup = DestinationLookup(known_destinations(destinations.accepted(), stored_destinations))
    known_customers = SortedKeys()
    known_customers.add(np.unique(np.concatenate([
        customers.accepted()["customer_id"].to_numpy(dtype=np.int64),
        np.fromiter(stored_customer_ids, dtype=np.int64),
    ])))
    parts = [cleanse_bookings(c, lookup, known_customers, state) for c in chunks(raw["booking"], chunk_rows)]
    median = median_cents(np.concatenate([p.costs for p in parts]))
    completed = complete_pending(Table.concat([p.take(p.pending) for p in parts]), median)
    bookings = Table.concat([p.take(~p.pending) for p in parts] + [completed]).in_file_order()
    return {"customer": customers, "destination": destinations, "booking": bookings}


def known_destinations(accepted: pd.DataFrame, stored: pd.DataFrame | None) -> pd.DataFrame:
    """The destinations a booking may name: this run's, and the stored ones it does not redefine."""
    accepted = accepted[["destination_id", "destination"]]
    if stored is None:
        return accepted
    redefined = stored["destination_id"].isin(accepted["destination_id"])
    return pd.concat([accepted, stored[~redefined]], ignore_index=True)


def chunks(frame: pd.DataFrame, rows: int) -> Iterator[pd.DataFrame]:
    """`frame` in slices of `rows` rows (one empty slice for an empty frame)."""
    for start in range(0, max(len(frame), 1), rows):
        part = frame.iloc[start:start + rows].reset_index(drop=True)
        part.attrs = dict(frame.attrs)
        yield part


# ---------------------------------------------------------------------------------------
# Summary


@dataclass
class TableSummary:
    read: int
    loaded: int
    repaired: int
    imputed: int
    rejected: int
    inserted: int = 0
    updated: int = 0

    def __add__(self, other: TableSummary) -> TableSummary:
        return TableSummary(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


def summarise(table: Table, rows_read: bool = True) -> TableSummary:
    """The counts of `table` (a chunk, or the pending bookings completed: `rows_read` False,
    as their chunks counted them); pending rows count when they are completed."""
    loaded = pd.Series(table.loaded, index=table.raw.index)
    imputed = table.imputed & loaded
    return TableSummary(
        read=len(table.raw) if rows_read else 0,
        loaded=int(loaded.sum()),
        repaired=int((repaired_rows(table) & loaded & ~imputed).sum()),
        imputed=int(imputed.sum()),
        rejected=int((~table.ok).sum()),
    )


def repaired_rows(table: Table) -> pd.Series:
    """Rows loaded with a value other than the one written in the file (trimmed, lower-cased,
    capitalised, a date rewritten as ISO, an amount given two decimals)."""
    changed = np.zeros(len(table.raw), dtype=bool)
    for column in table.clean.columns.intersection(table.raw.columns):
        differs = pc.not_equal(as_text(table.raw[column]), as_text(table.clean[column]))
        changed |= differs.to_numpy(zero_copy_only=False)
    return pd.Series(changed, index=table.raw.index)


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


def format_summary(summaries: dict[str, TableSummary], dry_run: bool) -> str:
    fields = ("read", "loaded", "repaired", "imputed", "rejected", "inserted", "updated")
    lines = ["table".ljust(12) + "".join(f.rjust(10) for f in fields)]
    for name, summary in summaries.items():
        lines.append(name.ljust(12) + "".join(str(getattr(summary, f)).rjust(10) for f in fields))
    if dry_run:
        lines.append("dry run: nothing was written to the database")
    return "\n".join(lines)
