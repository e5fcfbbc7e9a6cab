"""The bad-input catalogue: malformed source files and values, each with the outcome the load
must give (Stored, Rejected with its rule code, or Refused with one line). Used by
tests/test_load_bad_input.py, which runs each case, and tests/test_load_golden.py, which
loads them all at once."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

HEADERS = {
    "customer": ["customer_id", "first_name", "last_name", "email", "phone"],
    "destination": ["destination_id", "destination", "country", "popular_season"],
    "booking": ["booking_id", "customer_id", "booking_date", "destination", "number_of_passengers",
                "cost_per_passenger"],
}
PLACES = [("Paris", "France", "Spring"), ("Rome", "Italy", "Summer"), ("Oslo", "Norway", "Winter"),
          ("Lima", "Peru", "Autumn"), ("Cairo", "Egypt", "Winter"), ("Kyoto", "Japan", "Spring"),
          ("Quito", "Ecuador", "Summer"), ("Perth", "Australia", "Summer"), ("Porto", "Portugal", "Autumn"),
          ("Bergen", "Norway", "Winter")]
BASE_ROWS = {
    "customer": [[str(i), f"First{i}", f"Last{i}", f"c{i}@example.com", f"555-01{i:02d}"] for i in range(1, 11)],
    "destination": [[str(i), *place] for i, place in enumerate(PLACES, start=1)],
    "booking": [[str(i), str(i), f"2024-01-{i:02d}", PLACES[i - 1][0], "2", "10.00"] for i in range(1, 11)],
}
# The row a case appends, before its changes: key 11, valid.
NEW_ROW = {
    "customer": {"customer_id": "11", "first_name": "Eve", "last_name": "Eleven", "email": "eve@example.com",
                 "phone": "555-0111"},
    "destination": {"destination_id": "11", "destination": "Lyon", "country": "France", "popular_season": "Spring"},
    "booking": {"booking_id": "11", "customer_id": "1", "booking_date": "2024-02-01", "destination": "Paris",
                "number_of_passengers": "2", "cost_per_passenger": "10.00"},
}
KEYS = {"customer": "customer_id", "destination": "destination_id", "booking": "booking_id"}
PREFIX = "transform_load_csv_data: error: "


def csv_text(header: list[str], rows: list[list[str]], newline: str = "\n") -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows([header, *rows])
    return out.getvalue()


def base_text(table: str, newline: str = "\n") -> str:
    return csv_text(HEADERS[table], BASE_ROWS[table], newline)


def with_row(table: str, **changes: str) -> list[str]:
    row = {**NEW_ROW[table], **changes}
    return [row[c] for c in HEADERS[table]]


# ---------------------------------------------------------------------------------------
# Outcomes


@dataclass
class Stored:
    """Loaded: `sql` (one row) returns `expected`."""

    sql: str
    expected: tuple


@dataclass
class Rejected:
    """The appended row is rejected with reason code `code`; nothing else is. A record that
    cannot be split into the header's columns comes back whole as `raw_record`."""

    code: str
    raw_record: str | None = None


@dataclass
class Refused:
    """The whole load is refused: exit `exit_code`, stderr is exactly PREFIX + `message`."""

    message: str
    exit_code: int = 2


@dataclass
class Case:
    id: str
    table: str
    expect: Stored | Rejected | Refused
    row: dict[str, str] | None = None  # changes to NEW_ROW[table], appended as a CSV row
    content: bytes | None = None  # or the whole file, as bytes

    def files(self) -> dict[str, bytes]:
        """The three files of the case: the base dataset with this case's change."""
        out = {t: base_text(t).encode() for t in HEADERS}
        if self.content is not None:
            out[self.table] = self.content
        else:
            rows = [*BASE_ROWS[self.table], with_row(self.table, **(self.row or {}))]
            out[self.table] = csv_text(HEADERS[self.table], rows).encode()
        return out


def refuse_columns(table: str, missing: str, found: list[str]) -> Refused:
    return Refused(f"{table}.csv lacks column(s) {missing}; columns found: {', '.join(found)}")


BOOKING_SEMICOLONS = ";".join(HEADERS["booking"])
LATIN1_CUSTOMERS = (base_text("customer") + "11,José,Eleven,jose@example.com,\n").encode("latin-1")
SQL_TEXT = "Robert'); DROP TABLE customer; --"
FORMULA = '=HYPERLINK("http://example.com/x","click me")'
HUGE = "x" * 300_000

CATALOGUE = [
    # --- whole files: structure ------------------------------------------------------------
    Case("wrong-delimiter", "booking",
         refuse_columns("booking", ", ".join(HEADERS["booking"]), [BOOKING_SEMICOLONS]),
         content=(BOOKING_SEMICOLONS + "\n1;1;2024-01-01;Paris;2;10.00\n").encode()),
    Case("missing-column", "customer",
         refuse_columns("customer", "email", ["customer_id", "first_name", "last_name", "phone"]),
         content=b"customer_id,first_name,last_name,phone\n1,A,B,555\n"),
    Case("renamed-column", "booking",
         refuse_columns("booking", "cost_per_passenger", [*HEADERS["booking"][:-1], "cost"]),
         content=(base_text("booking").replace("cost_per_passenger", "cost", 1)).encode()),
    Case("duplicated-column", "destination", Refused("destination.csv has column 'country' more than once"),
         content=b"destination_id,destination,country,country,popular_season\n1,Paris,France,FR,Spring\n"),
    Case("header-only", "booking", Refused("booking.csv has no data rows; nothing was loaded"),
         content=(",".join(HEADERS["booking"]) + "\r\n").encode()),
    Case("empty-file", "customer", Refused("customer.csv is empty: no header row"), content=b""),
    Case("blank-header-line", "destination",
         refuse_columns("destination", ", ".join(HEADERS["destination"]), ["(none)"]),
         content=b"   \n1,Paris,France,Spring\n"),
    Case("non-utf8", "customer",
         Refused(f"customer.csv is not utf-8 text (invalid continuation byte at byte {LATIN1_CUSTOMERS.index(0xE9)}); "
                 "convert it (iconv -f latin1 -t utf-8) or pass --encoding latin-1"),
         content=LATIN1_CUSTOMERS),
    Case("unclosed-quote", "customer",
         Rejected("wrong_field_count", raw_record='11,"Eve,Eleven,eve@example.com,555'),
         content=(base_text("customer") + '11,"Eve,Eleven,eve@example.com,555\n').encode()),
    Case("row-with-extra-field", "customer",
         Rejected("wrong_field_count", raw_record="11,Eve,Eleven,eve@example.com,555,surplus"),
         content=(base_text("customer") + "11,Eve,Eleven,eve@example.com,555,surplus\n").encode()),
    Case("row-with-missing-field", "booking",
         Rejected("wrong_field_count", raw_record="11,1,2024-06-02,Paris,3"),
         content=(base_text("booking") + "11,1,2024-06-02,Paris,3\n").encode()),
    Case("half-the-rows-bad", "booking",
         Refused("booking: 6 of 16 rows rejected (37.5%), above MAX_REJECT_RATE 10.0%; nothing was loaded. "
                 "See the rejects file for reasons."),
         content=(base_text("booking") + "".join(f"{i},1,1850-01-01,Paris,1,1.00\n" for i in range(11, 17))).encode()),
    # --- whole files: accepted shapes --------------------------------------------------------
    Case("extra-column", "destination", Stored("SELECT destination FROM destination WHERE destination_id = 11",
                                               ("Lyon",)),
         content=(base_text("destination").replace("popular_season\n", "popular_season,notes\n", 1)
                  .replace("\n", ",\n").replace("notes,\n", "notes\n") + "11,Lyon,France,Spring,a note\n").encode()),
    Case("columns-reordered-any-case", "customer",
         Stored("SELECT first_name, email, phone FROM customer WHERE customer_id = 11",
                ("Eve", "eve@example.com", "555")),
         content=csv_text(["Phone", "EMAIL", "Last Name", "First_Name", " Customer ID "],
                          [[r[4], r[3], r[2], r[1], r[0]] for r in BASE_ROWS["customer"]]
                          + [["555", "eve@example.com", "Eleven", "Eve", "11"]]).encode()),
    Case("bom", "destination", Stored("SELECT destination_id, destination FROM destination WHERE destination_id = 1",
                                      (1, "Paris")),
         content=("\ufeff" + base_text("destination")).encode()),
    Case("crlf", "customer", Stored("SELECT last_name, phone FROM customer WHERE customer_id = 10",
                                    ("Last10", "555-0110")),
         content=base_text("customer", newline="\r\n").encode()),
    Case("quoted-newline-and-comma", "customer",
         Stored("SELECT last_name, first_name FROM customer WHERE customer_id = 11", ("Van\nDyke", "Eve, Jr.")),
         row={"last_name": "Van\nDyke", "first_name": "Eve, Jr."}),
    Case("huge-field", "customer",
         Stored("SELECT length(last_name), md5(last_name) = md5(repeat('x', 300000)) FROM customer "
                "WHERE customer_id = 11", (300_000, True)),
         row={"last_name": HUGE}),
    # --- ids ---------------------------------------------------------------------------------
    Case("id-negative", "customer", Rejected("invalid_id"), row={"customer_id": "-5"}),
    Case("id-not-numeric", "destination", Rejected("invalid_id"), row={"destination_id": "eleven"}),
    Case("id-overflows-bigint", "booking", Rejected("id_out_of_range"), row={"booking_id": "9223372036854775808"}),
    Case("id-float-and-spaces", "customer", Stored("SELECT first_name FROM customer WHERE customer_id = 11",
                                                   ("Eve",)),
         row={"customer_id": " 11.0 "}),
    Case("id-sql-text", "booking", Rejected("invalid_id"), row={"booking_id": "11; DROP TABLE booking"}),
    Case("duplicate-key", "customer", Rejected("duplicate_key"), row={"customer_id": "3"}),
    # --- text and whitespace ---------------------------------------------------------------
    Case("whitespace-only-name", "customer", Rejected("missing_field"), row={"first_name": " \t "}),
    Case("whitespace-only-phone", "customer", Stored("SELECT phone IS NULL FROM customer WHERE customer_id = 11",
                                                     (True,)),
         row={"phone": "   "}),
    Case("email-case-and-spaces", "customer", Stored("SELECT email FROM customer WHERE customer_id = 11",
                                                     ("eve.e@example.com",)),
         row={"email": "  Eve.E@EXAMPLE.com "}),
    Case("email-invalid", "customer", Rejected("invalid_email"), row={"email": "eve(at)example.com"}),
    Case("email-duplicate", "customer", Rejected("duplicate_email"), row={"email": "C4@example.com"}),
    Case("season-any-case", "destination", Stored("SELECT popular_season FROM destination WHERE destination_id = 11",
                                                  ("Autumn",)),
         row={"popular_season": " FALL "}),
    Case("season-unknown", "destination", Rejected("unknown_season"), row={"popular_season": "Monsoon"}),
    # --- passengers --------------------------------------------------------------------------
    Case("passengers-zero", "booking", Rejected("not_positive"), row={"number_of_passengers": "0"}),
    Case("passengers-negative", "booking", Rejected("not_positive"), row={"number_of_passengers": "-3"}),
    Case("passengers-fraction", "booking", Rejected("invalid_number"), row={"number_of_passengers": "2.5"}),
    Case("passengers-words", "booking", Rejected("invalid_number"), row={"number_of_passengers": "two"}),
    Case("passengers-overflow-int", "booking", Rejected("out_of_range"),
         row={"number_of_passengers": "2147483648"}),
    Case("passengers-whitespace-only", "booking",
         Stored("SELECT number_of_passengers, passengers_imputed, total_booking_value::text FROM booking "
                "WHERE booking_id = 11", (1, True, "10.00")),
         row={"number_of_passengers": "  "}),
    # --- money -------------------------------------------------------------------------------
    Case("money-currency-symbol", "booking", Rejected("invalid_number"), row={"cost_per_passenger": "$10.00"}),
    Case("money-euro-comma", "booking", Rejected("invalid_number"), row={"cost_per_passenger": "10,50 €"}),
    Case("money-thousands-separator", "booking", Rejected("invalid_number"),
         row={"cost_per_passenger": "1,000.00"}),
    Case("money-exponent", "booking", Rejected("invalid_number"), row={"cost_per_passenger": "1e3"}),
    Case("money-three-decimals", "booking", Rejected("too_many_decimals"), row={"cost_per_passenger": "10.005"}),
    Case("money-trailing-zero-decimal", "booking",
         Stored("SELECT cost_per_passenger::text, total_booking_value::text FROM booking WHERE booking_id = 11",
                ("10.50", "21.00")),
         row={"cost_per_passenger": "10.500"}),
    Case("money-negative", "booking", Rejected("negative_cost"), row={"cost_per_passenger": "-1.00"}),
    Case("money-zero", "booking",
         Stored("SELECT cost_per_passenger::text, total_booking_value::text FROM booking WHERE booking_id = 11",
                ("0.00", "0.00")),
         row={"cost_per_passenger": "0"}),
    Case("money-too-large", "booking", Rejected("out_of_range"), row={"cost_per_passenger": "12345678901.00"}),
    # --- dates -------------------------------------------------------------------------------
    Case("date-before-1900", "booking", Rejected("date_out_of_range"), row={"booking_date": "1899-12-31"}),
    Case("date-after-2100", "booking", Rejected("date_out_of_range"), row={"booking_date": "2101-01-01"}),
    Case("date-ambiguous", "booking", Rejected("ambiguous_date"), row={"booking_date": "03/04/2024"}),
    Case("date-impossible", "booking", Rejected("impossible_date"), row={"booking_date": "2023-02-29"}),
    Case("date-words", "booking", Rejected("invalid_date"), row={"booking_date": "next Tuesday"}),
    Case("date-named-month", "booking", Stored("SELECT booking_date::text FROM booking WHERE booking_id = 11",
                                               ("2024-06-03",)),
         row={"booking_date": "June 3, 2024"}),
    Case("date-with-time-and-zone", "booking", Stored("SELECT booking_date::text FROM booking WHERE booking_id = 11",
                                                      ("2024-02-29",)),
         row={"booking_date": "2024-02-29T23:30:00+02:00"}),
    # --- references --------------------------------------------------------------------------
    Case("destination-name-case-and-spaces", "booking",
         Stored("SELECT destination_id FROM booking WHERE booking_id = 11", (3,)), row={"destination": "  oSLO "}),
    Case("destination-unknown", "booking", Rejected("unknown_destination"), row={"destination": "Atlantis"}),
    Case("destination-formula", "booking", Rejected("unknown_destination"), row={"destination": FORMULA}),
    Case("customer-unknown", "booking", Rejected("unknown_customer"), row={"customer_id": "999"}),
    # --- text that looks like code -----------------------------------------------------------
    Case("sql-text", "customer", Stored("SELECT last_name FROM customer WHERE customer_id = 11", (SQL_TEXT,)),
         row={"last_name": SQL_TEXT}),
    Case("formula-text", "customer", Stored("SELECT first_name FROM customer WHERE customer_id = 11", (FORMULA,)),
         row={"first_name": FORMULA}),
    Case("copy-escapes", "destination",
         Stored("SELECT destination, country FROM destination WHERE destination_id = 11", ("\\N", "\\.")),
         row={"destination": "\\N", "country": "\\."}),
    Case("nul-byte", "customer", Rejected("invalid_text"), row={"last_name": "Ele\x00ven"}),
    Case("nul-byte-in-booking-destination", "booking", Rejected("invalid_text"), row={"destination": "Par\x00is"}),
    # Digits of other scripts are not guessed into numbers: only 0-9 count.
    Case("id-arabic-indic-digits", "customer", Rejected("invalid_id"), row={"customer_id": "\u0661\u0662"}),
    Case("passengers-full-width-digits", "booking", Rejected("invalid_number"),
         row={"number_of_passengers": "\uff13"}),
]


def case_id(case) -> str:
    return case.id


def cases() -> list[Case]:
    """The catalogue's cases, unwrapped from their pytest.param marks."""
    return [c.values[0] if hasattr(c, "values") else c for c in CATALOGUE]
