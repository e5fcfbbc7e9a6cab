"""Property tests of stage 3 against an independent model of README.md's cleansing rules.

tests/support/cleansing_model.py is a small, slow, plain-Python reading of the README's "Cleansing
rules" table. Hypothesis builds whole CSV files that mix every accepted and rejected shape
of every column, and for each the stage must agree with the model: the rows it stores, each
reject's row and reason, and the summary counts (read = loaded + rejected always).

- test_properties_cleansing_agrees_with_model: read_source + cleanse_all, 300 examples.
- test_properties_load_agrees_with_model: main() into empty tables, tables and rejects files
  read back, load_run_table counts (--max-reject-rate 1, so every comparison is made).
- test_properties_two_loads_agree_with_model: a second load with changed, moved, omitted
  and new rows and e-mails moved between customers (reload rules: updates, unchanged rows,
  stored rows kept, email_in_use, references to stored rows).
- test_properties_reject_rate_refuses_as_model_predicts: MAX_REJECT_RATE 0.25.

About 2 minutes when stage and model agree (2 cores). tests/support/cleansing_model.py's own unit
tests are the test_model_* ones here.

All derandomised (the same examples every run). A disagreement is fixed in the stage or in
the model, never left; each one found is kept as an explicit @example.

Where the README is silent or ambiguous the model assumes (ASSUMPTION: in the model):
- an e-mail's domain has a dot with text on both sides: 'a@.com' and 'a@com.' are invalid;
- e-mails are lower-cased with Python's str.lower() (full mapping: 'İ' becomes 'i' + U+0307);
- 'fall' in any case is Autumn; seasons compare through str.capitalize();
- ambiguous_date's two separators may differ ('02-06/2023');
- a time's hour, minute and second have two digits ('10:30', not '1:30'); a zone follows a
  time only; 'T' and 'Z' are upper-case; the date's two separators are the same;
- 'a minus sign followed by digits' is literal: '-2' is not_positive, '-2.0' invalid_number;
  any leading minus on a cost is negative_cost, '-0' included;
- white space is Python's (str.strip(), and re's class for white space);
- a blank header name anywhere is pandas' index column: ignored, but a field of the header
  (it counts in wrong_field_count's "the header has N");
- a line of only spaces is a record (of one field), only an empty line is not;
- repaired: a stored value whose text differs from the file's (a blank value read as
  missing counts, an empty one does not; a booking's destination name trimmed or put in NFC
  counts);
- a stored destination is "redefined" by an accepted row with its id only;
- for email_in_use, a stored customer gives up its address only when its row in the file is
  accepted with another one (absent, rejected by an earlier rule, or rejected by rule 12:
  it keeps it);
- a reason names the column its rule looked at where the code alone does not say which
  (missing_field, invalid_text, invalid_id, id_out_of_range, invalid_number, out_of_range).
"""

from __future__ import annotations

import csv
import io
import re

from support import cleansing_model as model
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

CUSTOMER_HEADER = "customer_id,first_name,last_name,email,phone\n"
DESTINATION_HEADER = "destination_id,destination,country,popular_season\n"
BOOKING_HEADER = "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"


def files(customers: str = "1,Ada,Lovelace,ada@example.com,555\n",
          destinations: str = "1,Paris,France,Spring\n",
          bookings: str = "1,1,2023-06-02,Paris,2,10.00\n") -> dict[str, bytes]:
    return {
        "customer": (CUSTOMER_HEADER + customers).encode(),
        "destination": (DESTINATION_HEADER + destinations).encode(),
        "booking": (BOOKING_HEADER + bookings).encode(),
    }


def reasons(result: model.LoadResult, table: str) -> list[tuple[int, str]]:
    return [(r.source_row, r.code) for r in result.tables[table].rejects]


# ---------------------------------------------------------------------------------------
# The model itself, on tiny inputs


def test_model_loads_a_clean_dataset():
    result = model.run_load(files())
    assert result.refused is None
    assert result.tables["booking"].rows == [{
        "booking_id": 1, "customer_id": 1, "destination_id": 1, "booking_date": "2023-06-02",
        "number_of_passengers": 2, "cost_per_passenger": "10.00", "total_booking_value": "20.00",
        "passengers_imputed": False, "cost_imputed": False,
    }]
    assert result.tables["customer"].counts() == {
        "read": 1, "loaded": 1, "repaired": 0, "imputed": 0, "rejected": 0, "inserted": 1, "updated": 0}


def test_model_reads_bom_crlf_index_column_quotes_and_extra_columns():
    data = ("\ufeff,Customer ID,First_Name,LAST NAME,extra,email,phone\r\n"
            '0,1,"Ada, Countess","Love\r\nlace",\x00,ada@example.com,\r\n\r\n'
            "1,2,Bob,Smith,x,bob@example.com,5\r\n").encode()
    result = model.run_load({**files(), "customer": data})
    rows = result.tables["customer"].rows
    assert [r["first_name"] for r in rows] == ["Ada, Countess", "Bob"]
    assert rows[0]["last_name"] == "Love\r\nlace" and rows[0]["phone"] is None
    assert result.tables["customer"].read == 2


def test_model_wrong_field_count_keeps_raw_record_and_counts_rows():
    customers = '1,Ada,Lovelace,ada@example.com,555\n\n2,"B\nob",x\n3,C,C,c@example.com,5,6\n'
    result = model.run_load(files(customers=customers))
    rejects = result.tables["customer"].rejects
    assert [(r.source_row, r.text) for r in rejects] == [
        (2, "wrong_field_count: 3 fields, the header has 5"), (3, "wrong_field_count: 6 fields, the header has 5")]
    assert rejects[0].raw_record == '2,"B\nob",x'


@pytest.mark.parametrize("customers, expected", [
    ("1,,Lovelace,ada@example.com,\n", "missing_field"),
    ("1, ,Lovelace,,\n", "missing_field"),
    ("1,A\x00,Lovelace,,\n", "missing_field"),  # the missing e-mail comes first (rule 4 before 5)
    ("1,Ada,Lovelace,ada@example.com,5\x00\n", "invalid_text"),
    ("+1,Ada,Lovelace,ada@example.com,\n", "invalid_id"),
    ("1.,Ada,Lovelace,ada@example.com,\n", "invalid_id"),
    ("\u0661,Ada,Lovelace,ada@example.com,\n", "invalid_id"),
    ("9223372036854775808,Ada,Lovelace,ada@example.com,\n", "id_out_of_range"),
    ("1,Ada,Lovelace,a@b@example.com,\n", "invalid_email"),
    ("1,Ada,Lovelace,a\u2003b@example.com,\n", "invalid_email"),
    ("1,Ada,Lovelace,ada@examplecom,\n", "invalid_email"),
    ("1,Ada,Lovelace,ada@.com,\n", "invalid_email"),
    ("1,Ada,Lovelace,ada@com.,\n", "invalid_email"),
])
def test_model_rejects_customers(customers, expected):
    assert reasons(model.run_load(files(customers=customers)), "customer") == [(1, expected)]


def test_model_duplicates_compare_ids_as_numbers_and_emails_lower_case_nfc():
    customers = ("7,A,A,j\u00fcrgen@example.com,\n007,B,B,b@example.com,\n8,C,C,JU\u0308RGEN@example.com,\n"
                 "9,D,D,STRASSE@example.com,\n10,E,E,stra\u00dfe@example.com,\n")
    result = model.run_load(files(customers=customers, bookings="1,7,2023-06-02,Paris,,\n"))
    rejects = result.tables["customer"].rejects
    assert [(r.source_row, r.code, r.kept_row) for r in rejects] == [(2, "duplicate_key", 1), (3, "duplicate_email", 1)]
    assert [r["email"] for r in result.tables["customer"].rows] == [
        "j\u00fcrgen@example.com", "strasse@example.com", "stra\u00dfe@example.com"]


@pytest.mark.parametrize("season, expected", [
    ("autumn", "Autumn"), (" SUMMER ", "Summer"), ("Fall", "Autumn"), ("FALL", "Autumn"), ("Monsoon", None)])
def test_model_seasons(season, expected):
    result = model.run_load(files(destinations=f"1,Paris,France,{season}\n"))
    stored = [r["popular_season"] for r in result.tables["destination"].rows]
    assert stored == ([expected] if expected else [])


@pytest.mark.parametrize("text, expected", [
    ("2023-06-02", "2023-06-02"), ("2023/6/2", "2023-06-02"), ("2023-06-02T10:30", "2023-06-02"),
    ("2023-06-02 10:30:00.123 +02:00", "2023-06-02"), ("2023-06-02T23:59:59Z", "2023-06-02"),
    ("2023-06-02T10:30:00-0500", "2023-06-02"), ("June 3, 2023", "2023-06-03"), ("Jun 3 2023", "2023-06-03"),
    ("Jun. 3, 2023", "2023-06-03"), ("3 June 2023", "2023-06-03"), ("3 Jun. 2023", "2023-06-03"),
    ("2100-12-31", "2100-12-31"), ("1900-01-01", "1900-01-01"),
    ("02/06/2023", "ambiguous_date"), ("2-6-23", "ambiguous_date"), ("2.6.2023", "ambiguous_date"),
    ("13/06/2023", "ambiguous_date"), ("1/2/3", "invalid_date"), ("002/06/2023", "invalid_date"),
    ("2023-06/02", "invalid_date"), ("Juno 3, 2023", "invalid_date"),
    ("June. 3, 2023", "2023-06-03"), ("sePT. 3, 2023", "2023-09-03"), ("3 june, 2023", "2023-06-03"),
    ("June  3, 2023", "invalid_date"), ("Septe 3, 2023", "invalid_date"), ("June 3,2023", "invalid_date"),
    ("2023-06-02T10", "invalid_date"), ("2023-06-02Z", "invalid_date"),
    ("2023-02-30", "impossible_date"), ("2023-06-02T25:99", "impossible_date"),
    ("2023-06-02T10:30+24:00", "impossible_date"), ("2100-02-29", "impossible_date"),
    ("1899-12-31", "date_out_of_range"), ("2101-01-01", "date_out_of_range"), ("1899-02-30", "impossible_date"),
])
def test_model_dates(text, expected):
    assert model.parse_date(text) == (("ok", expected) if expected[0].isdigit() else (expected, None))


@pytest.mark.parametrize("text, expected", [
    ("10.50", 1050), ("10.5", 1050), ("10.500", 1050), (".5", 50), ("5.", 500), ("007", 700),
    ("9999999999.99", 999999999999), ("00012345678901", "out_of_range"), ("12345678901", "out_of_range"),
    ("abc", "invalid_number"), ("$10.00", "invalid_number"), ("1e5", "invalid_number"), ("+5", "invalid_number"),
    ("1,000", "invalid_number"), (".", "invalid_number"), ("-1", "negative_cost"), ("-0", "negative_cost"),
    ("-10.005", "negative_cost"), ("10.005", "too_many_decimals"), ("12345678901.005", "too_many_decimals"),
])
def test_model_costs(text, expected):
    assert model.parse_cost(text) == (("ok", expected) if isinstance(expected, int) else (expected, None))


@pytest.mark.parametrize("text, expected", [
    ("2", 2), ("02", 2), ("2.0", 2), ("2147483647", 2147483647), ("0", "not_positive"), ("0.0", "not_positive"),
    ("-2", "not_positive"), ("-2.0", "not_positive"), ("-2.", "invalid_number"), ("2.5", "invalid_number"), ("two", "invalid_number"),
    ("+2", "invalid_number"), ("2147483648", "out_of_range"),
])
def test_model_passengers(text, expected):
    assert model.parse_passengers(text) == (("ok", expected) if isinstance(expected, int) else (expected, None))


def test_model_booking_rule_order_and_median():
    destinations = "1,Paris,France,Spring\n2,Springfield,US,Summer\n3,springfield ,US,Summer\n4,Stra\u00dfe,DE,Winter\n"
    bookings = ("1,1,2023-02-30,Gotham,x,y\n"  # the date rule first: passengers and cost never looked at
                "2,1,2023-06-02,SPRINGFIELD,1,1.00\n"
                "3,9,2023-06-02,Gotham,1,1.00\n"  # destination (rule 8) before customer (rule 9)
                "4,9,2023-06-02,Paris,1,1.00\n"
                "5,1,2023-06-02,STRASSE,1,10.00\n"
                "5,1,2023-06-02,paris,1,2.00\n"
                "6,1,June 3 2023,  PARIS ,3,\n"
                "7,1,2023-06-02,Paris,1001001,9990000009.99\n"
                "8,1,2023-06-02,Paris,1001001,9990000010.00\n")
    result = model.run_load(files(destinations=destinations, bookings=bookings))
    rejects = result.tables["booking"].rejects
    assert [(r.source_row, r.code) for r in rejects] == [
        (1, "impossible_date"), (2, "ambiguous_destination"), (3, "unknown_destination"), (4, "unknown_customer"),
        (6, "duplicate_key"),
        (9, "out_of_range")]
    assert rejects[1].ids == (2, 3) and rejects[4].kept_row == 5
    rows = {r["booking_id"]: r for r in result.tables["booking"].rows}
    assert rows[5]["destination_id"] == 4 and rows[5]["passengers_imputed"] is False  # STRASSE is Straße
    # The median of 10.00, 9990000009.99 and 9990000010.00 (row 9 is rejected after rule 13).
    assert rows[6]["cost_per_passenger"] == "9990000009.99" and rows[6]["cost_imputed"] is True
    assert rows[6]["booking_date"] == "2023-06-03" and rows[6]["total_booking_value"] == "29970000029.97"
    assert rows[7]["total_booking_value"] == "9999999999999999.99"


def test_model_median_half_cent_rounds_up_and_no_cost_rejects():
    bookings = "1,1,2023-06-02,Paris,1,0.01\n2,1,2023-06-02,Paris,1,0.02\n3,1,2023-06-02,Paris,,\n"
    rows = model.run_load(files(bookings=bookings)).tables["booking"].rows
    assert [(r["cost_per_passenger"], r["number_of_passengers"]) for r in rows][2] == ("0.02", 1)
    result = model.run_load(files(bookings="1,1,2023-06-02,Paris,1,\n"))
    assert [(r.code, r.column) for r in result.tables["booking"].rejects] == [("missing_field", "cost_per_passenger")]


def test_model_repaired_and_imputed_counts():
    customers = ("1,Ada,Lovelace,ada@example.com,\n2, Bob,B,b@example.com,\n03,C,C,c@example.com,\n"
                 "4,D,D,D@example.com,\n")
    bookings = ("1,1,2023-06-02,Paris,2,10.00\n2,1,2023/06/02,Paris,2,10.00\n3,1,2023-06-02,Paris,,10.5\n"
                "4,1,2023-06-02, Paris,2,10.00\n")
    result = model.run_load(files(customers=customers, bookings=bookings))
    assert (result.tables["customer"].repaired, result.tables["customer"].imputed) == (3, 0)
    assert (result.tables["booking"].repaired, result.tables["booking"].imputed) == (2, 1)


def test_model_file_without_data_rows_refuses_the_load():
    assert model.run_load(files(bookings="\n")).refused == "booking.csv has no data rows"
    with pytest.raises(model.Refused):
        model.run_load({**files(), "customer": b"customer_id,first_name\n1,A\n"})


def test_model_reload_email_in_use_chain_swap_and_absent_owner():
    first = model.run_load(files(customers="1,A,A,a@x.com,\n2,B,B,b@x.com,\n3,C,C,c@x.com,\n4,D,D,d@x.com,\n"
                                           "5,E,E,e@x.com,\n"))
    # 1 takes 2's address, 2 takes 3's, 3 is absent: a chain, both rejected. 4 and 5 swap.
    # 6 (new) takes the address of 1, which 1 gives up only if 1 is accepted: it is not.
    second = model.run_load(files(customers="1,A,A,b@x.com,\n2,B,B,c@x.com,\n4,D,D,e@x.com,\n5,E,E,d@x.com,\n"
                                            "6,F,F,a@x.com,\n"), first.stored)
    assert reasons(second, "customer") == [(1, "email_in_use"), (2, "email_in_use"), (5, "email_in_use")]
    assert {k: v["email"] for k, v in second.stored["customer"].items()} == {
        1: "a@x.com", 2: "b@x.com", 3: "c@x.com", 4: "e@x.com", 5: "d@x.com"}
    assert (second.tables["customer"].inserted, second.tables["customer"].updated) == (0, 2)


def test_model_reload_resolves_stored_destinations_and_customers():
    first = model.run_load(files(destinations="1,Paris,France,Spring\n2,Rome,Italy,Summer\n"))
    second = model.run_load(files(customers="2,B,B,b@x.com,\n",
                                  destinations="2,Roma,Italy,Summer\n3,Paris,France,Winter\n",
                                  bookings="1,1,2023-06-02,Paris,2,10.00\n2,1,2023-06-02,Rome,1,1\n"
                                           "3,2,2023-06-02,roma,2,10.00\n"), first.stored)
    assert [(r.code, r.ids) for r in second.tables["booking"].rejects] == [
        ("ambiguous_destination", (1, 3)), ("unknown_destination", ())]
    assert second.tables["booking"].counts() == {
        "read": 3, "loaded": 1, "repaired": 0, "imputed": 0, "rejected": 2, "inserted": 1, "updated": 0}
    assert sorted(second.stored["booking"]) == [1, 3]


# ---------------------------------------------------------------------------------------
# Strategies: whole files from per-column pools of accepted and rejected shapes

NFD = {"\u00fc": "u\u0308", "\u00e3": "a\u0303", "\u00f4": "o\u0302", "\u00e9": "e\u0301"}


def nfd(text: str) -> str:
    return "".join(NFD.get(c, c) for c in text)


def weighted(*pairs):
    """one_of with weights: (weight, strategy) pairs (one_of itself would drop the repeats)."""
    choices = [strategy for weight, strategy in pairs for _ in range(weight)]
    return st.sampled_from(choices).flatmap(lambda strategy: strategy)


ARABIC_INDIC = "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"
FULL_WIDTH = "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"


# Per example, either every pool mixes in rejected shapes, or none does: clean examples
# exercise the accepted paths (medians, totals, references, updates) with many rows.
DIRT = st.shared(st.sampled_from(["dirty", "clean"]), key="dirt")


def pool(good, bad, odds: int = 15):
    """Accepted shapes `odds` times as often as rejected ones (lists are sampled from);
    accepted shapes only in a clean example."""
    good, bad = [st.sampled_from(x) if isinstance(x, list) else x for x in (good, bad)]
    mixed = weighted((odds, good), (1, bad))
    return DIRT.flatmap(lambda dirt: good if dirt == "clean" else mixed)


def digit_forms(n: int) -> str:
    return (ARABIC_INDIC if n % 2 else FULL_WIDTH)[n]


ID_FORMS = ["{}"] * 6 + ["0{}", "00{}", "{}.0", "{}.00", " {} ", "\t{}"]
BAD_ID_FORMS = ["+{}", "-{}", "{}.", "{}.5", "{}e0", "{},0", "{} 1", "#{}", "{}\x00", "0x{}"]
ODD_IDS = ["", " ", "abc", ".0", "-0", "9223372036854775808", "99999999999999999999", "1" * 70]


def ids(high: int = 6):
    """Keys and references from a small range, so that duplicates and references meet."""
    return pool(
        weighted(
            (12, st.tuples(st.integers(1, high), st.sampled_from(ID_FORMS)).map(lambda t: t[1].format(t[0]))),
            (1, st.sampled_from(["0", "9223372036854775807", "0009223372036854775807"])),
        ),
        st.one_of(
            st.tuples(st.integers(0, high), st.sampled_from(BAD_ID_FORMS)).map(lambda t: t[1].format(t[0])),
            st.integers(0, 9).map(digit_forms),
            st.sampled_from(ODD_IDS),
        ),
    )


names = pool(
    weighted((4, st.sampled_from(
        ["Ada", "Bob", " Ada ", "Ada, Countess", "Line\nBreak", "Line\r\nBreak", 'Say "hi"', "J\u00fcrgen",
         nfd("J\u00fcrgen"), "\xa0Ada\xa0", "Ada\u3000", "\u200bAda", "Ada\x1f", "Ada\x85", "O'Brien",
         '=HYPERLINK("http://example.com")', "Robert'); DROP TABLE customer; --", "A" * 70])),
        (1, st.text(alphabet="aZ \u00fc\u0308,\"'\n\t", min_size=1, max_size=4))),
    ["", " ", "\t", "x\x00y"],
)
EMAIL_LOCALS = ["a", "b", "c", "d", "e", "f", "g", "A", "j\u00fcrgen", nfd("j\u00fcrgen"), "J\u00dcRGEN",
                nfd("J\u00dcRGEN"), "stra\u00dfe",
                "STRASSE", "\u0130"]
EMAIL_DOMAINS = ["@example.com", "@EXAMPLE.com", "@x.org"]
emails = pool(
    weighted((12, st.tuples(st.sampled_from(EMAIL_LOCALS), st.sampled_from(EMAIL_DOMAINS)).map("".join)),
             (1, st.sampled_from([" a@example.com ", '"a,b"@example.com']))),
    ["", " ", "no-at.example.com", "a@.com", "a@com.", "a@@example.com", "a@b@example.com", "@example.com", "a@",
     "a@examplecom",
     "a b@example.com", "a\tb@example.com", "a\u2003b@example.com", "a\xa0b@example.com", "a@example.com\x00",
     "a" * 70 + "@example", "a@example.com\nx"],
    odds=8,
)
phones = pool(["555-0101", "555-0102", "", "", " ", " 555 ", "+1 555", "NA", "NULL", "=1+1", "\uff10\uff11"],
              ["5\x00"])
seasons = pool(["Spring", "Summer", "Autumn", "Winter", "spring", "SUMMER", "autumn", " winter ", "Fall", "fall",
                "FALL", "\u017fpring", "Autumn\xa0"],
               ["Monsoon", "", "Sprung", "Spring\x00", "Win ter", "Spring,", "Autumn" * 11])
PLACES = ["Paris", "Rome", "New York", "Springfield", "Stra\u00dfe", "Z\u00fcrich", "S\u00e3o Paulo", "Lima", "Oslo",
          "Kyoto", "Cairo", "Quito"]
PLACE_FORMS = [lambda n: n, lambda n: n, lambda n: n, lambda n: n.lower(), lambda n: n.upper(), lambda n: f" {n} ",
               lambda n: n.replace(" ", "  "), lambda n: n.replace(" ", "\t"), nfd, lambda n: nfd(n.upper())]
place_names = pool(
    st.tuples(st.sampled_from(PLACES), st.sampled_from(PLACE_FORMS)).map(lambda t: t[1](t[0])),
    ["Gotham", "Atlantis", "", " ", "Par is", "Paris\x00", "P" * 70, "Paris, France", "New\nYork"],
)
countries = pool(["France", " Italy ", "US", nfd("C\u00f4te d'Ivoire")], ["", "Brazil\x00"])


def two(n: int) -> str:
    return f"{n:02d}"


def numeric_dates(years, months, days, hours, minutes, seconds, zones):
    return st.builds(
        lambda year, sep, month, day, time: f"{year}{sep[0]}{month}{sep[1]}{day}{time}",
        st.sampled_from(years),
        st.sampled_from([("-", "-"), ("-", "-"), ("/", "/"), ("-", "/")][: 3 if "2101" not in years else 4]),
        st.sampled_from(months).flatmap(lambda m: st.sampled_from([str(m), two(m)])),
        st.sampled_from(days).flatmap(lambda d: st.sampled_from([str(d), two(d)])),
        st.one_of(st.just(""), st.builds(
            lambda sep, hour, minute, second, zone: f"{sep}{hour}:{minute}{second}{zone}",
            st.sampled_from(["T", " "] if "2101" not in years else ["T", " ", "t", "  "]),
            st.sampled_from(hours), st.sampled_from(minutes), st.sampled_from(seconds), st.sampled_from(zones),
        )),
    )


GOOD_ZONES = ["", "", "Z", "+02", "+0200", "+02:00", "-05:00", " Z", " +02:00", "-0000", "+23:59"]
good_numeric_dates = numeric_dates(
    ["2023", "2024", "1900", "2100"], list(range(1, 13)), [1, 2, 9, 28], ["00", "10", "23"], ["00", "30", "59"],
    ["", ":00", ":59", ":00.123", ":00.1", ":00.123456"], GOOD_ZONES)
any_numeric_dates = numeric_dates(
    ["2023", "2024", "1900", "2100", "1899", "2101", "0000", "9999", "23"], list(range(14)),
    [1, 2, 9, 28, 29, 30, 31, 32, 0], ["00", "10", "23", "24", "25", "9"], ["00", "30", "59", "60", "99"],
    ["", ":00", ":59", ":60", ":00.123", ":00."],
    GOOD_ZONES + ["+24:00", "+02:60", "z", "+2", "+02:0", "+02:00:00"])


def text_dates(months, days, years, forms):
    return st.builds(lambda month, day, year, form: form.format(m=month, d=day, y=year),
                     st.sampled_from(months), st.sampled_from(days), st.sampled_from(years), st.sampled_from(forms))


GOOD_MONTHS = ["June", "Jun", "Jun.", "May", "May.", "February", "Feb", "Sep.", "December", "june", "JUNE", "jun.",
               "Sept", "SEPT.", "June."]
good_text_dates = text_dates(GOOD_MONTHS, ["1", "3", "03", "28"], ["2023", "2024", "2100"],
                             ["{m} {d}, {y}", "{m} {d} {y}", "{d} {m} {y}", "{d} {m}, {y}"])
any_text_dates = text_dates(
    GOOD_MONTHS + ["Juno", "Jnu", "Septe", "Sep..", "J\u00fcne"],
    ["1", "3", "03", "29", "30", "31", "0", "32"], ["2023", "2024", "1899", "2100", "2101", "23"],
    ["{m} {d}, {y}", "{m} {d} {y}", "{d} {m} {y}", "{d} {m}, {y}", "{m}  {d}, {y}", "{m} {d},{y}", "{d},{m} {y}",
     "{m}, {d} {y}", "{d}  {m} {y}"])
ambiguous_dates = st.builds(lambda d, m, y: f"{d}/{m}/{y}", st.integers(0, 13).map(two), st.integers(1, 13).map(str),
                            st.sampled_from(["2023", "1850"]))
dates = pool(
    weighted((3, good_numeric_dates), (1, good_text_dates),
             (1, st.sampled_from([" 2023-6-2 ", "2023-06-02 00:00:00"]))),
    st.one_of(any_numeric_dates, any_text_dates, ambiguous_dates, st.sampled_from(
        ["", " ", "yesterday", "20230602", "2023-06-02T", "2023-06-02Z", "2023-06-02\x00",
         "\u0662\u0660\u0662\u0663-\u0660\u0666-\u0660\u0662", "02-06-2023", "02/06/23", "2023-06-02 " * 6])),
    odds=8,
)
passengers = pool(["", "1", "2", "3", "02", "2.0", " 3 ", "2147483647", "1001001"],
                  ["0", "00", "0.0", "-2", "-0", "-2.0", "2.5", "two", "+2", "2147483648", "1e2", "\u0662", "3.",
                   "1,000", "9" * 25, "2\x00"])
costs = pool(
    weighted(
        (2, st.sampled_from(["10.50", "10.5", "10.500", ".5", "5.", "007", "", " ", "0", "0.00", " 10.50 ",
                             "0.01", "0.02", "33.33", "9999999999.99", "0001", "9990000009.99",
                             "9990000010.00"])),
        (2, st.builds(lambda cents, form: form.format(cents // 100, cents % 100),
                      st.integers(0, 10**6), st.sampled_from(["{}.{:02d}", "{}.{:02d}0", "{}"])))),
    ["abc", "$10.00", "1e5", "-1", "-0", "-0.00", "10.005", "10.0050", "12345678901", "00012345678901",
     "1,000.00", "+5", "- 5", "5-", "\u0661\u0660", "\uff11\uff10", ".", "-", "-.5", "1 000", "10.50\x00", "10.5.0"],
)

ROW_VALUES = {
    "customer": {"customer_id": ids(10), "first_name": names, "last_name": names, "email": emails, "phone": phones},
    "destination": {"destination_id": ids(9), "destination": place_names, "country": countries,
                    "popular_season": seasons},
    "booking": {"booking_id": ids(12), "customer_id": ids(10), "booking_date": dates, "destination": place_names,
                "number_of_passengers": passengers, "cost_per_passenger": costs},
}
HEADER_FORMS = [lambda c: c, lambda c: c, lambda c: c.upper(), lambda c: f" {c} ",
                lambda c: c.replace("_", " ").title(), lambda c: c.replace("_", "  "), lambda c: c.replace("_", "\t")]
EXTRA_COLUMNS = ["notes", "Extra Col", "source", "id"]
extra_values = st.sampled_from(["", "x", "a,b", "line\nbreak", "\x00", " ", "1.5"])


@st.composite
def csv_file(draw, table: str, rows=None, min_rows: int = 1, max_rows: int = 8) -> bytes:
    """A whole file: rows of pooled values under a header in any order and case, with
    extra columns, the unnamed index column, short and long rows, empty lines, BOM, CRLF."""
    columns = list(model.COLUMNS[table])
    if rows is None:
        rows = draw(st.lists(st.fixed_dictionaries(ROW_VALUES[table]), min_size=min_rows, max_size=max_rows))
    rows = list(rows)
    extras = draw(st.lists(st.sampled_from(EXTRA_COLUMNS), unique=True, max_size=2))
    layout = draw(st.permutations(columns + extras))
    index = draw(st.sampled_from([None, None, 0, 0, len(layout)]))  # where pandas' index column sits
    if index is not None:
        layout.insert(index, None)
    header = [("" if c is None else draw(st.sampled_from(HEADER_FORMS))(c)) for c in layout]
    records = []
    for number, row in enumerate(rows):
        fields = [str(number) if c is None else row[c] if c in row else draw(extra_values) for c in layout]
        shape = draw(st.sampled_from(["ok"] * 100 + ["short", "short", "long", "long", "blank", "spaces"]))
        if shape == "short":
            fields = fields[: draw(st.integers(1, len(fields) - 1))]
        elif shape == "long":
            fields += draw(st.lists(extra_values, min_size=1, max_size=2))
        elif shape == "blank":
            fields = [""]  # written as "": a record of one empty field, not an empty line
        elif shape == "spaces":
            fields = ["  "]
        records.append(fields)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline,
                        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(header)
    for fields in records:
        if draw(st.integers(0, 9)) == 0:
            out.write(newline)  # an empty line is not a record
        writer.writerow(fields)
    text = out.getvalue()
    if draw(st.booleans()):
        text = text[: -len(newline)]  # no line ending after the last record
    return (("\ufeff" if draw(st.booleans()) else "") + text).encode("utf-8")




MAX_ROWS = {"customer": 8, "destination": 6, "booking": 10}


def table_rows(table: str, min_rows: int = 1, **values):
    return st.lists(st.fixed_dictionaries({**ROW_VALUES[table], **values}), min_size=min_rows,
                    max_size=MAX_ROWS[table])


@st.composite
def dataset_rows(draw, min_rows: int = 1) -> dict[str, list[dict]]:
    """Rows of the three tables; bookings mostly name customers and destinations drawn here."""
    customers = draw(table_rows("customer", min_rows))
    destinations = draw(table_rows("destination", min_rows))
    customer_ids = sorted({row["customer_id"] for row in customers})
    place_names_here = sorted({row["destination"] for row in destinations})
    bookings = draw(table_rows(
        "booking", min_rows,
        customer_id=weighted((6, st.sampled_from(customer_ids)), (1, ids(10))),
        destination=weighted((6, st.tuples(st.sampled_from(place_names_here), st.sampled_from(PLACE_FORMS))
                                  .map(lambda t: t[1](t[0]))), (1, place_names)),
    ))
    return {"customer": customers, "destination": destinations, "booking": bookings}


@st.composite
def datasets(draw, min_rows: int = 1) -> dict[str, bytes]:
    """The three files of one load."""
    rows = draw(dataset_rows(min_rows))
    return {table: draw(csv_file(table, rows=rows[table])) for table in model.TABLES}


# ---------------------------------------------------------------------------------------
# Comparing the stage with the model

# Codes shared by several columns: the reason must name the column the rule looked at.
CODES_NAMING_THE_COLUMN = {"missing_field", "invalid_text", "invalid_id", "id_out_of_range", "invalid_number",
                           "out_of_range"}


def by_key(table: str, rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row[model.KEY[table]])


def describe(table: str, expected: model.TableResult, stage_rows, stage_rejects) -> str:
    return (f"\n{table}: model rows {by_key(table, expected.rows)}\n{table}: stage rows {by_key(table, stage_rows)}"
            f"\n{table}: model rejects {[(r.source_row, r.code) for r in expected.rejects]}"
            f"\n{table}: stage rejects {[(r['source_row'], r['reject_reason']) for r in stage_rejects]}")


def check_table(table: str, expected: model.TableResult, stage_rows: list[dict] | None, stage_rejects: list[dict],
                counts: dict[str, int] | None) -> None:
    """The stage's stored rows and counts (None: not compared here), rejects (dicts of text,
    source_row an int) against the model's; one assert per kind of disagreement, so Hypothesis
    keeps them apart."""
    context = describe(table, expected, stage_rows or [], stage_rejects)
    if stage_rows is not None:
        assert by_key(table, stage_rows) == by_key(table, expected.rows), f"[{table}: stored rows differ]" + context
    got = sorted((r["source_row"], r["reject_reason"].split(":")[0]) for r in stage_rejects)
    want = [(r.source_row, r.code) for r in expected.rejects]
    assert got == want, f"[{table}: reject codes differ] first {first_difference(got, want)}" + context
    stage_by_row = {r["source_row"]: r for r in stage_rejects}
    for want in expected.rejects:
        check_reject(table, want, stage_by_row[want.source_row], context)
    if counts is None:
        return
    assert counts["read"] == counts["loaded"] + counts["rejected"], f"[{table}: read != loaded + rejected] {counts}"
    want_counts = {name: value for name, value in expected.counts().items() if name in counts}
    assert counts == want_counts, f"[{table}: summary counts differ] stage {counts}, model {want_counts}" + context


def first_difference(got: list[tuple[int, str]], want: list[tuple[int, str]]) -> str:
    stage, expected = dict(got), dict(want)
    row = min(n for n in stage.keys() | expected.keys() if stage.get(n) != expected.get(n))
    return f"at row {row}: model {expected.get(row, 'accepts')}, stage {stage.get(row, 'accepts')}"


def check_reject(table: str, want: model.Reject, got: dict, context: str) -> None:
    """One reject's reason and row against the model's, where the README says what they hold."""
    reason = got["reject_reason"]
    where = f"{table} {want.code}]: row {want.source_row}, reason {reason!r}"
    if want.text is not None:
        assert reason == want.text, f"[reason text of {where}, README says {want.text!r}" + context
    if want.raw_record is not None:
        assert got.get("raw_record") == want.raw_record, (
            f"[raw_record of {where}: {got.get('raw_record')!r}, the file has {want.raw_record!r}" + context)
    if want.kept_row is not None:
        assert reason.endswith(f"already at row {want.kept_row}"), (
            f"[row kept by {where}: should end 'already at row {want.kept_row}'" + context)
    if want.ids:
        listed = [int(n) for n in re.findall(r"[0-9]+", reason.rsplit("'", 1)[-1])]
        assert listed == list(want.ids), f"[ids listed by {where}: the name names {want.ids}" + context
    if want.code in CODES_NAMING_THE_COLUMN and want.column is not None:
        assert re.search(rf"\b{want.column}\b", reason), f"[column named by {where}: should be {want.column}" + context
    if want.value and "'" in reason:
        check_value_shown(where, reason, want.value, context)
    if want.fields is not None:
        as_written = {column: got.get(column) for column in want.fields}
        assert as_written == want.fields, f"[row as written of {where}: the file has {want.fields}" + context


def check_value_shown(where: str, reason: str, value: str, context: str) -> None:
    """README: values shown in a reason are the file's text in single quotes, cut to 60 characters."""
    quoted = f"'{value[:60]}'"
    assert quoted in reason, f"[value shown by {where}: should be the file's text {quoted}" + context


def frame_records(frame) -> list[dict]:
    """A stage DataFrame of rejects as dicts of text ('' for missing), source_row an int."""
    import pandas as pd

    out = []
    for record in frame.to_dict("records"):
        row = {key: ("" if value is None or (not isinstance(value, str) and pd.isna(value)) else value)
               for key, value in record.items()}
        row["source_row"] = int(row["source_row"])
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------
# The pure cleansing: read_source + cleanse_all against the model, most of the examples

PURE_SETTINGS = settings(
    max_examples=300, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def cleanse_with_stage(files: dict[str, bytes]):
    """stage 3's pure entry points on `files`: {table: Table}."""
    import tempfile
    from pathlib import Path

    import transform_load_csv_data as stage

    with tempfile.TemporaryDirectory() as folder:
        raw = {}
        for table in model.TABLES:
            path = Path(folder) / f"{table}.csv"
            path.write_bytes(files[table])
            raw[table] = stage.read_source(path, table)
        return stage.cleanse_all(raw)


def dataset(customers: str | None = None, destinations: str | None = None, bookings: str | None = None,
            **whole: bytes) -> dict[str, bytes]:
    """An explicit example: the tiny valid files of files() with some rows or whole files replaced."""
    given_rows = {"customers": customers, "destinations": destinations, "bookings": bookings}
    return {**files(**{k: v for k, v in given_rows.items() if v is not None}), **whole}


# Disagreements Hypothesis found, minimised (see the report in the commit message).
# The reason counts the unnamed index column in "the header has": 6 fields here, not 5.
@example(files=dataset(customer=b",customer_id,first_name,last_name,email,phone\n0,1,Ada,Lovelace,ada@example.com\n"))
# A reason shows the file's text: ' 1.0 ', not '1'; ' A@x.com ', not 'a@x.com'; ' +3 ', not '+3'.
@example(files=dataset(customers=" 1 ,A,A,a@x.com,\n 1.0 ,B,B,b@x.com,\n"))
@example(files=dataset(customers="1,A,A,a@x.com,\n2,B,B, A@X.com ,\n"))
@example(files=dataset(customers="1,A,A,a@x.com,\n +3 ,B,B,b@x.com,\n"))
@example(files=dataset(customers="1,A,A,a@x.com,\n2,B,B, AB@.com ,\n"))
# str.lower() of 'İ' is 'i' + U+0307; the stage stores 'i@example.com'.
@example(files=dataset(customers="1,A,A,\u0130@example.com,\n"))
# '3.' is a point without zeros: not an id, not a passenger count.
@example(files=dataset(bookings="1,1,2023-06-02,Paris,3.,10.00\n"))
@example(files=dataset(destinations="1,Paris,France,Spring\n2.,Rome,Italy,Summer\n"))
# Ambiguous date shapes; a time's hour has one or two digits ('1:30' and '10:30').
@example(files=dataset(bookings="1,1,02-06-2023,Paris,1,1\n2,1,02/06/23,Paris,1,1\n3,1,2.6.2023,Paris,1,1\n"
                                "4,1,02-06/2023,Paris,1,1\n5,1,1/2/3,Paris,1,1\n6,1,02/06/20234,Paris,1,1\n"))
@example(files=dataset(bookings="1,1,2023-06-02T1:30,Paris,1,1\n"))
# A minus sign before a whole number of the id grammar is not_positive ('-2.0', '-0'); '-2.' and '-2.5' are not numbers.
@example(files=dataset(bookings="1,1,2023-06-02,Paris,-2.0,1\n2,1,2023-06-02,Paris,-0,1\n3,1,2023-06-02,Paris,-2.,1\n"
                                "4,1,2023-06-02,Paris,-2.5,1\n5,1,2023-06-02,Paris,1,1\n"))
# The stage 3 bugs being fixed as this test was written, each as one example.
@example(files=dataset(customers="1,Ada,Lovelace,ada@example.com,555\n2,Bob\n3,C,C,c@example.com,5,6\n"))
@example(files=dataset(customers="1,A,A,ju\u0308rgen@example.com,\n2,B,B,J\u00dcRGEN@example.com,\n"))
@example(files=dataset(bookings="1,1,2023-06-02T25:99,Paris,1,1\n2,1,2023-06-02 10:30:00.123 +02:00,Paris,1,1\n"))
@example(files=dataset(bookings="1,1,2023-06-02,Paris,1,10.5\n2,1,2023-06-02,Paris,1,abc\n3,1,2023-06-02,Paris,1,\n"))
@example(files=dataset(bookings="1,1,2023-06-02,Paris,1001001,9990000009.99\n"
                                "2,1,2023-06-02,Paris,1001001,9990000010.00\n"))
@example(files=dataset(bookings="1,1,2023-06-02,Gotham,1,1\n1,9,2023-06-02,Paris,1,1\n1,1,2023-06-02,Paris,2,2\n"))
@example(files=dataset(customers="+1,A,A,a@x.com,\n1,B,B,b@x.com,\n2,C,C,c@x.com,\n2,D,D,d@x.com,\n"))
@PURE_SETTINGS
@given(files=datasets())
def test_properties_cleansing_agrees_with_model(files):
    check_cleansing(files)


def check_cleansing(files: dict[str, bytes]) -> None:
    """The property: read_source + cleanse_all store, reject and count what the model does."""
    from waddle_common import cleansing, load_database

    expected = model.run_load(files, rule_12=False)
    tables = cleanse_with_stage(files)
    for table in model.TABLES:
        summary = cleansing.summarise(tables[table])
        counts = {name: getattr(summary, name) for name in ("read", "loaded", "repaired", "imputed", "rejected")}
        check_table(table, expected.tables[table], load_database.load_rows(tables[table]).to_pylist(),
                    frame_records(tables[table].rejected()), counts)


# ---------------------------------------------------------------------------------------
# Real loads: main() on a real PostgreSQL, tables and rejects files read back

LOAD_SETTINGS = settings(
    max_examples=25, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
READ_BACK = {
    "customer": "SELECT customer_id, first_name, last_name, email, phone FROM customer",
    "destination": "SELECT destination_id, destination, country, popular_season FROM destination",
    "booking": "SELECT booking_id, customer_id, destination_id, booking_date::text, number_of_passengers, "
               "cost_per_passenger::text, total_booking_value::text, passengers_imputed, cost_imputed FROM booking",
}
COUNT_COLUMNS = ("read", "loaded", "repaired", "imputed", "rejected", "inserted", "updated")


@pytest.fixture
def property_db(pg_admin_url, monkeypatch):
    """One database with the schema for a whole property test; empty_tables() empties it
    for each example (TRUNCATE as the server's superuser: far quicker than a new database)."""
    from support.database import apply_schema, new_database

    with new_database(pg_admin_url, "props") as url:
        apply_schema(url)
        monkeypatch.setenv("DATABASE_URL", url)
        yield url


def empty_tables(url: str) -> None:
    from support.database import query

    query(url, "TRUNCATE booking, customer, destination, load_run_table, load_run RESTART IDENTITY")


def read_tables(url: str) -> dict[str, dict[int, dict]]:
    """The three tables as the model's `stored`: key -> row in the load's column order."""
    from support.database import query

    state = {}
    for table in model.TABLES:
        columns = model.LOAD_COLUMNS[table]
        state[table] = {row[0]: dict(zip(columns, row)) for row in query(url, READ_BACK[table])}
    return state


def run_load_main(files: dict[str, bytes], folder, max_reject_rate: str = "1"
                   ) -> tuple[int, str, dict[str, list[dict]]]:
    """main() on `files` written to `folder`: exit code, stderr, and the rejects files' rows."""
    import contextlib
    import shutil

    import transform_load_csv_data as stage

    data, rejects = folder / "data", folder / "rejects"
    shutil.rmtree(folder, ignore_errors=True)
    data.mkdir(parents=True)
    for table, content in files.items():
        (data / f"{table}.csv").write_bytes(content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = stage.main(["--data-dir", str(data), "--rejects-dir", str(rejects),
                           "--max-reject-rate", max_reject_rate])
    written = {}
    for table in model.TABLES:
        path = rejects / f"{table}_rejects.csv"
        rows = []
        if path.exists():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [{**row, "source_row": int(row["source_row"])} for row in csv.DictReader(fh)]
        written[table] = rows
    return code, err.getvalue(), written


def run_counts(url: str) -> dict[str, dict[str, int]]:
    """load_run_table of the last committed run: table -> counts."""
    from support.database import query

    rows = query(url, "SELECT table_name, rows_read, rows_loaded, rows_repaired, rows_imputed, rows_rejected, "
                      "rows_inserted, rows_updated FROM load_run_table "
                      "WHERE run_id = (SELECT max(run_id) FROM load_run)")
    return {row[0]: dict(zip(COUNT_COLUMNS, row[1:])) for row in rows}


def check_real_load(url: str, files: dict[str, bytes], stored: dict, folder, max_reject_rate: float = 1.0
                    ) -> model.LoadResult:
    """One run of main() on `files` over the tables `stored` (as the database holds them)
    against the model: exit code and stderr, the tables after it, rejects files, counts."""
    expected = model.run_load(files, stored, max_reject_rate=max_reject_rate)
    code, err, rejects = run_load_main(files, folder, str(max_reject_rate))
    lines = err.splitlines()
    if expected.refused is None:
        assert (code, lines) == (0, []), f"[load must succeed] exit {code}, stderr {err!r}"
    else:
        assert code == 2 and len(lines) == 1, f"[load must be refused: {expected.refused}] exit {code}, {err!r}"
    stage_tables = read_tables(url)
    for table in model.TABLES:
        model_rows, stage_rows = expected.stored[table], stage_tables[table]
        differ = {key: (model_rows.get(key), stage_rows.get(key)) for key in model_rows.keys() | stage_rows.keys()
                  if model_rows.get(key) != stage_rows.get(key)}
        assert not differ, (f"[{table} table after the {folder.name} load differs] key: (model row, stage row) "
                            f"{differ}" + describe(table, expected.tables[table], [], rejects[table]))
    counts = run_counts(url) if expected.refused is None else {}
    for table in model.TABLES:
        check_table(table, expected.tables[table], None, rejects[table], counts.get(table))
    return expected


# The pure property's disagreements, through a real load (the rejects file, the table).
@example(files=dataset(customer=b",customer_id,first_name,last_name,email,phone\n0,1,Ada,Lovelace,ada@example.com\n"))
@example(files=dataset(customers="1,A,A,a@x.com,\n 1.0 ,B,B,b@x.com,\n"))
@example(files=dataset(customers="1,A,A,\u0130@example.com,\n"))
@LOAD_SETTINGS
@given(files=datasets())
def test_properties_load_agrees_with_model(property_db, tmp_path, files):
    check_load(files, property_db, tmp_path)


def check_load(files: dict[str, bytes], url: str, folder) -> None:
    """The property: one load into empty tables stores, rejects and counts what the model does."""
    empty_tables(url)
    check_real_load(url, files, model.empty_store(), folder / "run")


# ---------------------------------------------------------------------------------------
# Two consecutive loads: the second with changed, moved, omitted and new rows, and e-mails
# moved between customers (chains, swaps, an absent owner's address)


@st.composite
def second_rows(draw, table: str, first: list[dict], **values) -> list[dict]:
    """`first`'s rows kept, changed in one column, or omitted, in a new order, plus new rows."""
    strategies = {**ROW_VALUES[table], **values}
    out = []
    for row in first:
        action = draw(st.sampled_from(["keep", "keep", "keep", "change", "change", "omit"]))
        if action == "omit":
            continue
        row = dict(row)
        if action == "change":
            column = draw(st.sampled_from(model.COLUMNS[table][1:]))
            row[column] = draw(strategies[column])
        out.append(row)
    out = draw(st.permutations(out))
    return out + draw(st.lists(st.fixed_dictionaries(strategies), max_size=3))


@st.composite
def dataset_pairs(draw) -> tuple[dict[str, bytes], dict[str, bytes]]:
    first = draw(dataset_rows())
    customers = draw(second_rows("customer", first["customer"]))
    # E-mails move: customer i takes the address customer j had in the first load. With
    # omitted customers and several moves this makes chains, swaps and taken addresses.
    old_emails = [row["email"] for row in first["customer"]]
    for i, j in draw(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=3)):
        if customers:
            customers[i % len(customers)]["email"] = old_emails[j % len(old_emails)]
    destinations = draw(second_rows("destination", first["destination"]))
    customer_ids = sorted({row["customer_id"] for rows in (first["customer"], customers) for row in rows})
    names = sorted({row["destination"] for rows in (first["destination"], destinations) for row in rows})
    bookings = draw(second_rows(
        "booking", first["booking"],
        customer_id=weighted((6, st.sampled_from(customer_ids)), (1, ids(10))),
        destination=weighted((6, st.tuples(st.sampled_from(names), st.sampled_from(PLACE_FORMS))
                                  .map(lambda t: t[1](t[0]))), (1, place_names)),
    ))
    second = {"customer": customers, "destination": destinations, "booking": bookings}
    for table in model.TABLES:
        if not second[table]:  # a file without data rows refuses the load: keep one row
            second[table] = first[table][:1]
    return ({table: draw(csv_file(table, rows=first[table])) for table in model.TABLES},
            {table: draw(csv_file(table, rows=second[table])) for table in model.TABLES})


SWAP_AND_CHAINS = (
    dataset(customers="1,A,A,a@x.com,\n2,B,B,b@x.com,\n3,C,C,c@x.com,\n4,D,D,d@x.com,\n5,E,E,e@x.com,\n"),
    # 1 takes 2's address, 2 takes 3's, 3 is absent: both rejected. 4 and 5 swap. 6 (new)
    # takes 1's, which 1 keeps since its own change is rejected.
    dataset(customers="1,A,A,b@x.com,\n2,B,B,c@x.com,\n4,D,D,E@x.com,\n5,E,E,d@x.com,\n6,F,F,a@x.com,\n",
            bookings="1,6,2023-06-02,Paris,1,1\n2,2,2023-06-02,Paris,1,1\n"),
)


@example(pair=SWAP_AND_CHAINS)
# A stored destination stays matchable when its id's row is rejected (not redefined); a
# stored customer keeps its address when its own row is rejected by an earlier rule.
@example(pair=(dataset(destinations="1,Paris,France,Spring\n2,Rome,Italy,Summer\n"),
               dataset(destinations="1,Lyon,France,Monsoon\n", bookings="1,1,2023-06-02,Paris,1,1\n")))
@example(pair=(dataset(customers="1,A,A,a@x.com,\n2,B,B,b@x.com,\n"),
               dataset(customers="1,,A,c@x.com,\n2,B,B,a@x.com,\n", bookings="1,2,2023-06-02,Paris,1,1\n")))
# email_in_use shows 'a@x.com', the README says the file's text 'A@X.COM' (test_load expects the former).
@example(pair=(dataset(customers="1,A,A,a@x.com,\n"),
               dataset(customers="2,B,B,A@X.COM,\n", bookings="1,2,2023-06-02,Paris,1,1\n")))
@LOAD_SETTINGS
@given(pair=dataset_pairs())
def test_properties_two_loads_agree_with_model(property_db, tmp_path, pair):
    check_two_loads(pair, property_db, tmp_path)


def check_two_loads(pair: tuple[dict[str, bytes], dict[str, bytes]], url: str, folder) -> None:
    """The property: a second load over the first's tables (reload rules: updates, unchanged
    rows, rows absent from the files kept, e-mail in use, references to stored rows)."""
    empty_tables(url)
    first = check_real_load(url, pair[0], model.empty_store(), folder / "first")
    check_real_load(url, pair[1], first.stored, folder / "second")


# ---------------------------------------------------------------------------------------
# MAX_REJECT_RATE: refused exactly when a table loses more than its share, rejects still written

RATE_SETTINGS = settings(LOAD_SETTINGS, max_examples=10)


@example(files=dataset(customers="1,A,A,a@x.com,\n2,B,B,b@x.com,\n3,C\n",
                       bookings="1,1,2023-06-02,Paris,1,1\n2,2,2023-06-02,Paris,1,1\n3,3,2023-06-02,Paris,1,1\n"))
@example(files=dataset(customer=b",customer_id,first_name,last_name,email,phone\n0,1,Ada,Lovelace,ada@example.com\n"))
@example(files=dataset(bookings="\n"))  # no data rows: refused whatever the rate
@RATE_SETTINGS
@given(files=datasets())
def test_properties_reject_rate_refuses_as_model_predicts(property_db, tmp_path, files):
    check_reject_rate(files, property_db, tmp_path)


def check_reject_rate(files: dict[str, bytes], url: str, folder) -> None:
    """The property: with MAX_REJECT_RATE 0.25 the load is refused (exit 2, one line naming a
    table over the limit, no table changed) exactly when the model says so."""
    empty_tables(url)
    expected = check_real_load(url, files, model.empty_store(), folder / "rate", max_reject_rate=0.25)
    if expected.refused is not None:
        _, err, _ = run_load_main(files, folder / "rate", "0.25")
        empty = [f"{t}.csv has no data rows" for t, r in expected.tables.items() if r.read == 0]
        over = [f"{t}: {r.rejected} of {r.read} rows rejected" for t, r in expected.tables.items()
                if r.read and r.rejected / r.read > 0.25]
        assert any(text in err for text in empty or over), f"[refusal names its reason] {err!r}, {empty or over}"
