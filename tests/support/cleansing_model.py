"""An independent model of stage 3's cleansing rules, for the property tests.

A small, slow, plain-Python reading of README.md's "Stage 3" section and its "Cleansing
rules" table: the CSV bytes are parsed with the standard `csv` module, and the rules are
applied row by row, in the table's order, with `unicodedata`, `str` methods, `re`,
`calendar` and Python ints (money in cents). No pandas, and nothing from
transform_load_csv_data.py: where the stage and this model disagree, one of them is wrong
and the README decides.

`run_load(files, stored)` predicts one run of the stage: per table the rows it stores
(in the load's column order, None for NULL), its rejects and its summary counts, and the
tables as they are after the run (`stored` for the next one).

Where the README is silent or ambiguous the model makes a choice, marked `ASSUMPTION:`
below; test_properties.py's module docstring lists them.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field

TABLES = ("customer", "destination", "booking")

# The columns each file must have (waddle_common.REQUIRED_COLUMNS): "the table's columns".
COLUMNS = {
    "customer": ("customer_id", "first_name", "last_name", "email", "phone"),
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "booking": ("booking_id", "customer_id", "booking_date", "destination", "number_of_passengers",
                "cost_per_passenger"),
}
# Rule 4, in its order; rule 5 looks at these, then the optional columns.
REQUIRED = {
    "customer": ("customer_id", "first_name", "last_name", "email"),
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "booking": ("booking_id", "customer_id", "booking_date", "destination"),
}
KEY = {"customer": "customer_id", "destination": "destination_id", "booking": "booking_id"}

# The rows as loaded (travel.sql's column order).
LOAD_COLUMNS = {
    "customer": ("customer_id", "first_name", "last_name", "email", "phone"),
    "destination": ("destination_id", "destination", "country", "popular_season"),
    "booking": ("booking_id", "customer_id", "destination_id", "booking_date", "number_of_passengers",
                "cost_per_passenger", "total_booking_value", "passengers_imputed", "cost_imputed"),
}

BIGINT_MAX = 9223372036854775807
INTEGER_MAX = 2147483647
MAX_COST_DIGITS = 10  # NUMERIC(12,2): 10 digits before the point
MAX_TOTAL_CENTS = 999999999999999999  # 9999999999999999.99
SEASONS = ("Spring", "Summer", "Autumn", "Winter")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")


class Refused(Exception):
    """The whole load is refused (exit 2): what the stage must say, roughly."""


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Reject:
    """A rejected record and what its reject_reason must say."""

    source_row: int
    code: str
    column: str | None = None  # the column the rule looked at (a reason should name it)
    value: str | None = None  # the file's text a reason may show in quotes (uncut)
    kept_row: int | None = None  # duplicate_key / duplicate_email: the row kept
    ids: tuple[int, ...] = ()  # ambiguous_destination: the ids the name names
    text: str | None = None  # the whole reason, where the README spells it out
    raw_record: str | None = None  # wrong_field_count: the record as the file wrote it
    fields: dict | None = None  # the file's text of the table's columns (None when malformed)


@dataclass
class TableResult:
    table: str
    rows: list[dict] = field(default_factory=list)  # stored rows, file order
    rejects: list[Reject] = field(default_factory=list)
    read: int = 0
    loaded: int = 0
    repaired: int = 0
    imputed: int = 0
    rejected: int = 0
    inserted: int = 0
    updated: int = 0

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in
                ("read", "loaded", "repaired", "imputed", "rejected", "inserted", "updated")}


@dataclass
class LoadResult:
    tables: dict[str, TableResult]
    refused: str | None  # why the load is refused (exit 2), None when it commits
    stored: dict[str, dict[int, dict]]  # the tables after this run: key -> row


def empty_store() -> dict[str, dict[int, dict]]:
    return {table: {} for table in TABLES}


# ---------------------------------------------------------------------------------------
# Reading a file


def normalise_column(name: str) -> str:
    """As waddle_common.normalise_column: trimmed, lower-case, inner white space as `_`."""
    return re.sub(r"\s+", "_", name.strip().lstrip("\ufeff").strip().lower())


@dataclass
class Record:
    source_row: int
    fields: list[str]
    raw: str  # the record's text in the file, without its line ending


def without_line_ending(raw: str) -> str:
    for ending in ("\r\n", "\n", "\r"):
        if raw.endswith(ending):
            return raw[: -len(ending)]
    return raw


def read_records(data: bytes, table: str) -> tuple[list[str], list[Record]]:
    """The normalised header and the data records of a file; raises Refused for a file
    refused whole."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Refused(f"{table}.csv is not utf-8 text") from None
    lines = io.StringIO(text, newline="").readlines()  # split as csv sees them: \n, \r\n, \r
    reader = csv.reader(iter(lines), strict=True)
    try:
        rows = []
        consumed = 0
        for fields in reader:
            raw = "".join(lines[consumed:reader.line_num])
            consumed = reader.line_num
            rows.append((fields, raw))
    except csv.Error as exc:
        raise Refused(f"{table}.csv is not a well-formed CSV file: {exc}") from None
    if not rows:
        raise Refused(f"{table}.csv is empty")
    header = [normalise_column(name) for name in rows[0][0]]
    named = [name for name in header if name]  # a blank name is pandas' index column
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise Refused(f"{table}.csv has column(s) {', '.join(repeated)} more than once")
    missing = [c for c in COLUMNS[table] if c not in header]
    if missing:
        raise Refused(f"{table}.csv lacks column(s) {', '.join(missing)}")
    records = []
    for fields, raw in rows[1:]:
        if not fields:  # an empty line is not a record
            continue
        records.append(Record(len(records) + 1, fields, without_line_ending(raw)))
    return header, records


# ---------------------------------------------------------------------------------------
# Value rules (rules 2, 3, 6 and 7), one value at a time


def clean_text(raw: str) -> str | None:
    """Rules 2 and 3: NFC, surrounding white space stripped; empty or blank is missing."""
    value = unicodedata.normalize("NFC", raw).strip()
    return value or None


ID_SHAPE = re.compile(r"[0-9]+(?:\.0+)?")  # ASSUMPTION: '12.' (a point and no zero) is not an id


def parse_id(value: str) -> tuple[str, int | None]:
    """Rule 6: ('ok', id), ('invalid_id', None) or ('id_out_of_range', None)."""
    if not ID_SHAPE.fullmatch(value):
        return "invalid_id", None
    number = int(value.split(".")[0])
    if number > BIGINT_MAX:
        return "id_out_of_range", None
    return "ok", number


def lower_case_email(email: str) -> str:
    """Rule 7: Python's lower(), the full Unicode mapping ('İ' becomes 'i' + U+0307)."""
    return email.lower()


def email_is_valid(email: str) -> bool:
    """Rule 7: exactly one @ with text on both sides, a dot in the domain, no white space.

    ASSUMPTION: the dot has text on both sides too ('a@.com' and 'a@com.' are invalid).
    """
    parts = email.split("@")
    return (len(parts) == 2 and parts[0] != "" and re.search(r".\..", parts[1]) is not None
            and re.search(r"\s", email) is None)


def season(value: str) -> str | None:
    """Rule 7: the season's spelling, or None for anything but the four seasons."""
    spelled = value.capitalize()
    if spelled == "Fall":  # ASSUMPTION: 'fall' and 'FALL' too, "in any case"
        return "Autumn"
    return spelled if spelled in SEASONS else None


MONTH_NUMBERS = {name: number for number, name in enumerate(MONTHS, start=1)}
MONTH_ABBREVIATIONS = {name[:3]: number for number, name in enumerate(MONTHS, start=1)}

NUMERIC_DATE = re.compile(
    r"(?P<year>[0-9]{4})(?P<sep>[-/])(?P<month>[0-9]{1,2})(?P=sep)(?P<day>[0-9]{1,2})"
    r"(?:[T ](?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.[0-9]+)?)?"
    r"(?: ?(?:Z|[+-](?P<zone_hour>[0-9]{2})(?::?(?P<zone_minute>[0-9]{2}))?))?)?"
)
MONTH_FIRST = re.compile(r"(?P<month>[A-Za-z]+)\.? (?P<day>[0-9]{1,2}),? (?P<year>[0-9]{4})")
DAY_FIRST = re.compile(r"(?P<day>[0-9]{1,2}) (?P<month>[A-Za-z]+)\.?,? (?P<year>[0-9]{4})")
# Two numbers of 1 or 2 digits and a year of 2 to 4, separated by / . or - (README). ASSUMPTION:
# the two separators may differ ('02-06/2023'), as the README does not ask for the same one.
AMBIGUOUS_DATE = re.compile(r"[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}")


def month_number(name: str) -> int | None:
    """An English month name in any case: full, three letters, or 'Sept'."""
    name = name.lower()
    if name == "sept":
        return 9
    return MONTH_NUMBERS.get(name) or MONTH_ABBREVIATIONS.get(name)


def days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if calendar.isleap(year) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_date(value: str) -> tuple[str, str | None]:
    """Rule 7, dates: ('ok', 'YYYY-MM-DD') or (reason code, None), rejects in README order."""
    if AMBIGUOUS_DATE.fullmatch(value):
        return "ambiguous_date", None
    parts: dict[str, int] = {}
    match = NUMERIC_DATE.fullmatch(value)
    if match:
        parts = {name: int(text) for name, text in match.groupdict().items() if text is not None and name != "sep"}
    else:
        match = MONTH_FIRST.fullmatch(value) or DAY_FIRST.fullmatch(value)
        month = month_number(match["month"]) if match else None
        if month is None:
            return "invalid_date", None
        parts = {"year": int(match["year"]), "month": month, "day": int(match["day"])}
    year, month, day = parts["year"], parts["month"], parts["day"]
    if (not 1 <= month <= 12 or not 1 <= day <= days_in_month(year, month)
            or parts.get("hour", 0) > 23 or parts.get("minute", 0) > 59 or parts.get("second", 0) > 59
            or parts.get("zone_hour", 0) > 23 or parts.get("zone_minute", 0) > 59):
        return "impossible_date", None
    if not 1900 <= year <= 2100:
        return "date_out_of_range", None
    return "ok", f"{year:04d}-{month:02d}-{day:02d}"


def parse_passengers(value: str) -> tuple[str, int | None]:
    """Rule 7, passengers (present): ('ok', n) or a reason code, in README order.

    A minus sign followed by a whole number of the id grammar ('-2', '-2.0', '-0') is
    not_positive; '-2.5' is invalid_number.
    """
    if value.startswith("-") and ID_SHAPE.fullmatch(value[1:]):
        return "not_positive", None
    if ID_SHAPE.fullmatch(value) and int(value.split(".")[0]) == 0:
        return "not_positive", None
    if not ID_SHAPE.fullmatch(value):
        return "invalid_number", None
    number = int(value.split(".")[0])
    if number > INTEGER_MAX:
        return "out_of_range", None
    return "ok", number


MONEY = re.compile(r"(?P<minus>-?)(?P<whole>[0-9]*)(?:\.(?P<decimals>[0-9]*))?")


def parse_cost(value: str) -> tuple[str, int | None]:
    """Rule 7, money (present): ('ok', cents) or a reason code, in README order."""
    match = MONEY.fullmatch(value)
    if not match or not re.search(r"[0-9]", value):
        return "invalid_number", None
    if match["minus"]:
        return "negative_cost", None  # ASSUMPTION: '-0' and '-0.00' too ("a leading minus")
    decimals = match["decimals"] or ""
    if decimals[2:].strip("0"):
        return "too_many_decimals", None
    whole = match["whole"].lstrip("0")
    if len(whole) > MAX_COST_DIGITS:
        return "out_of_range", None
    return "ok", int(whole or "0") * 100 + int((decimals + "00")[:2])


def money_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def name_key(name: str) -> str:
    """Rule 8: a destination name as matched: NFC, case-folded, white space runs as one space, trimmed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", name).casefold()).strip()


def median_cents(values: list[int]) -> int:
    """Rule 13: the median; of two middle values their mean, a half cent rounding up."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle] + 1) // 2


# ---------------------------------------------------------------------------------------
# A row through the table's rules


class Row:
    """One record on its way through the rules: the raw text, the cleaned values, the reject."""

    def __init__(self, table: str, header: list[str], record: Record):
        self.table = table
        self.source_row = record.source_row
        self.record = record
        self.reject: Reject | None = None
        self.malformed = len(record.fields) != len(header)
        self.raw: dict[str, str] = {}
        self.value: dict[str, object] = {}
        if not self.malformed:
            by_name = dict(zip(header, record.fields))
            self.raw = {column: by_name[column] for column in COLUMNS[table]}
        self.header_size = len(header)

    @property
    def ok(self) -> bool:
        return self.reject is None

    def refuse(self, code: str, column: str | None = None, **details) -> None:
        if "value" not in details and column is not None:
            details["value"] = self.raw.get(column)
        self.reject = Reject(self.source_row, code, column=column, fields=dict(self.raw) or None, **details)


def rows_of(table: str, header: list[str], records: list[Record]) -> list[Row]:
    """Rules 1 to 5 for every record."""
    rows = [Row(table, header, record) for record in records]
    for row in rows:
        if row.malformed:  # rule 1
            count = len(row.record.fields)
            row.reject = Reject(row.source_row, "wrong_field_count",
                                text=f"wrong_field_count: {count} fields, the header has {row.header_size}",
                                raw_record=row.record.raw)
            continue
        row.value = {column: clean_text(row.raw[column]) for column in COLUMNS[table]}  # rules 2, 3
        for column in REQUIRED[table]:  # rule 4
            if row.value[column] is None:
                row.refuse("missing_field", column, value=None)
                break
        if not row.ok:
            continue
        optional = [c for c in COLUMNS[table] if c not in REQUIRED[table]]
        for column in (*REQUIRED[table], *optional):  # rule 5
            if row.value[column] is not None and "\x00" in row.value[column]:
                row.refuse("invalid_text", column)
                break
    return rows


def check_ids(rows: list[Row], columns: tuple[str, ...]) -> None:
    """Rule 6: each id column in turn (the key, then a booking's customer_id)."""
    for row in rows:
        for column in columns:
            if not row.ok:
                break
            code, number = parse_id(row.value[column])
            if code != "ok":
                row.refuse(code, column)
            else:
                row.value[column] = number


def reject_duplicates(rows: list[Row], column: str, code: str) -> None:
    """Rules 10 and 11: among rows still accepted, the first occurrence wins."""
    first: dict[object, int] = {}
    for row in rows:
        if not row.ok:
            continue
        value = row.value[column]
        if value in first:
            row.refuse(code, column, kept_row=first[value])
        else:
            first[value] = row.source_row


# ---------------------------------------------------------------------------------------
# The three tables


def cleanse_customers(rows: list[Row], stored: dict[int, dict]) -> None:
    check_ids(rows, ("customer_id",))  # rule 6
    for row in rows:  # rule 7
        if not row.ok:
            continue
        row.value["email"] = lower_case_email(row.value["email"])
        if not email_is_valid(row.value["email"]):
            row.refuse("invalid_email", "email")
    reject_duplicates(rows, "customer_id", "duplicate_key")  # rule 10
    reject_duplicates(rows, "email", "duplicate_email")  # rule 11
    reject_emails_in_use(rows, stored)  # rule 12


def reject_emails_in_use(rows: list[Row], stored: dict[int, dict]) -> None:
    """Rule 12: a new or changed customer may not take an address a stored customer keeps.

    A stored customer keeps its address unless its row in this file is accepted with
    another one; repeated until nothing changes (a chain is rejected link by link, a swap
    passes).
    """
    owner = {customer["email"]: customer_id for customer_id, customer in stored.items()}
    changed = True
    while changed:
        changed = False
        accepted = {row.value["customer_id"]: row for row in rows if row.ok}
        for row in rows:
            if not row.ok:
                continue
            holder = owner.get(row.value["email"])
            if holder is None or holder == row.value["customer_id"]:
                continue
            holder_row = accepted.get(holder)
            keeps = holder_row is None or holder_row.value["email"] == stored[holder]["email"]
            if keeps:
                row.refuse("email_in_use", "email", value=row.raw["email"])
                changed = True


def cleanse_destinations(rows: list[Row]) -> None:
    check_ids(rows, ("destination_id",))  # rule 6
    for row in rows:  # rule 7
        if not row.ok:
            continue
        spelled = season(row.value["popular_season"])
        if spelled is None:
            row.refuse("unknown_season", "popular_season")
        else:
            row.value["popular_season"] = spelled
    reject_duplicates(rows, "destination_id", "duplicate_key")  # rule 10


def cleanse_bookings(rows: list[Row], destinations: dict[int, str], known_customers: set[int]) -> None:
    """Rules 6 to 14 for bookings; `destinations` maps id -> name of every matchable destination."""
    check_ids(rows, ("booking_id", "customer_id"))  # rule 6
    for row in rows:  # rule 7: date, then passengers, then cost
        if not row.ok:
            continue
        code, iso = parse_date(row.value["booking_date"])
        if code != "ok":
            row.refuse(code, "booking_date")
            continue
        row.value["booking_date"] = iso
        passengers = row.value["number_of_passengers"]
        row.value["passengers_imputed"] = passengers is None
        if passengers is None:
            row.value["number_of_passengers"] = 1
        else:
            code, number = parse_passengers(passengers)
            if code != "ok":
                row.refuse(code, "number_of_passengers")
                continue
            row.value["number_of_passengers"] = number
        cost = row.value["cost_per_passenger"]
        row.value["cost_imputed"] = cost is None
        if cost is not None:
            code, cents = parse_cost(cost)
            if code != "ok":
                row.refuse(code, "cost_per_passenger")
                continue
            row.value["cost_per_passenger"] = cents
    by_name: dict[str, list[int]] = {}
    for destination_id, name in destinations.items():
        by_name.setdefault(name_key(name), []).append(destination_id)
    for row in rows:  # rule 8
        if not row.ok:
            continue
        ids = sorted(by_name.get(name_key(row.value["destination"]), []))
        if not ids:
            row.refuse("unknown_destination", "destination")
        elif len(ids) > 1:
            row.refuse("ambiguous_destination", "destination", ids=tuple(ids))
        else:
            row.value["destination_id"] = ids[0]
    for row in rows:  # rule 9
        if row.ok and row.value["customer_id"] not in known_customers:
            row.refuse("unknown_customer", "customer_id")
    reject_duplicates(rows, "booking_id", "duplicate_key")  # rule 10
    costs = [row.value["cost_per_passenger"] for row in rows if row.ok and not row.value["cost_imputed"]]
    for row in rows:  # rule 13
        if row.ok and row.value["cost_imputed"]:
            if costs:
                row.value["cost_per_passenger"] = median_cents(costs)
            else:
                row.refuse("missing_field", "cost_per_passenger", value=None)
    for row in rows:  # rule 14
        if not row.ok:
            continue
        total = row.value["number_of_passengers"] * row.value["cost_per_passenger"]
        if total > MAX_TOTAL_CENTS:
            row.refuse("out_of_range", None)
        else:
            row.value["total_booking_value"] = total


# ---------------------------------------------------------------------------------------
# Stored rows, repairs, counts


def stored_row(table: str, row: Row) -> dict:
    value = row.value
    if table == "booking":
        return {
            "booking_id": value["booking_id"], "customer_id": value["customer_id"],
            "destination_id": value["destination_id"], "booking_date": value["booking_date"],
            "number_of_passengers": value["number_of_passengers"],
            "cost_per_passenger": money_text(value["cost_per_passenger"]),
            "total_booking_value": money_text(value["total_booking_value"]),
            "passengers_imputed": value["passengers_imputed"], "cost_imputed": value["cost_imputed"],
        }
    return {column: value[column] for column in LOAD_COLUMNS[table]}


def is_repaired(table: str, row: Row, stored: dict) -> bool:
    """Summary: a loaded, not imputed row with a value some rule rewrote.

    A value is rewritten when its text as stored (or, for a booking's destination name, as
    matched after NFC and trimming) differs from the file's text. ASSUMPTION: a blank value
    (' ') read as missing was trimmed, so it counts; an empty one ('') does not.
    """
    if table == "booking" and (stored["passengers_imputed"] or stored["cost_imputed"]):
        return False
    for column in COLUMNS[table]:
        if table == "booking" and column == "destination":
            after = row.value["destination"]
        else:
            after = stored[column]
        after_text = "" if after is None else str(after)
        if after_text != row.raw[column]:
            return True
    return False


def table_result(table: str, rows: list[Row], stored: dict[int, dict]) -> TableResult:
    result = TableResult(table)
    result.read = len(rows)
    for row in rows:
        if not row.ok:
            result.rejects.append(row.reject)
            continue
        out = stored_row(table, row)
        result.rows.append(out)
        if table == "booking" and (out["passengers_imputed"] or out["cost_imputed"]):
            result.imputed += 1
        elif is_repaired(table, row, out):
            result.repaired += 1
        key = out[KEY[table]]
        if key not in stored:
            result.inserted += 1
        elif stored[key] != out:
            result.updated += 1
    result.loaded = len(result.rows)
    result.rejected = len(result.rejects)
    return result


def run_load(files: dict[str, bytes], stored: dict[str, dict[int, dict]] | None = None,
             max_reject_rate: float = 1.0, rule_12: bool = True) -> LoadResult:
    """One run of stage 3 on `files` (table -> bytes) over the tables `stored` (key -> row).

    Raises Refused for a file refused whole (empty, a missing or repeated column, not
    UTF-8, malformed). A file without data rows, or a table losing more than
    `max_reject_rate` of its rows, refuses the load: the result says why, and `stored` is
    returned unchanged. `rule_12=False` leaves out email_in_use (the pure cleanse_all()).
    """
    stored = stored if stored is not None else empty_store()
    parsed = {table: read_records(files[table], table) for table in TABLES}
    rows = {table: rows_of(table, *parsed[table]) for table in TABLES}

    # Tables are cleansed in the order customer, destination, booking.
    cleanse_customers(rows["customer"], stored["customer"] if rule_12 else {})
    cleanse_destinations(rows["destination"])
    accepted_destinations = {row.value["destination_id"]: row.value["destination"]
                             for row in rows["destination"] if row.ok}
    # ASSUMPTION: a stored destination is "redefined" by an accepted row with its id; a
    # rejected row with its id leaves the stored one matchable.
    matchable = {destination_id: row["destination"] for destination_id, row in stored["destination"].items()
                 if destination_id not in accepted_destinations}
    matchable.update(accepted_destinations)
    known_customers = {row.value["customer_id"] for row in rows["customer"] if row.ok} | set(stored["customer"])
    cleanse_bookings(rows["booking"], matchable, known_customers)

    results = {table: table_result(table, rows[table], stored[table]) for table in TABLES}
    refused = None
    for table in TABLES:
        result = results[table]
        if result.read == 0:
            refused = refused or f"{table}.csv has no data rows"
        elif result.rejected / result.read > max_reject_rate:
            refused = refused or f"{table}: {result.rejected} of {result.read} rows rejected"
    after = stored
    if refused is None:
        after = {table: dict(stored[table]) for table in TABLES}
        for table in TABLES:
            for row in results[table].rows:
                after[table][row[KEY[table]]] = row
    return LoadResult(results, refused, after)
