"""Property tests of stage 3 against an independent model of README.md's cleansing rules.

tests/cleansing_model.py is a small, slow, plain-Python reading of the README's "Cleansing
rules" table. Hypothesis builds whole CSV files that mix every accepted and rejected shape
of every column, and for each the stage must agree with the model: the rows it stores,
each reject's row and reason, and the summary counts.
"""

from __future__ import annotations

import cleansing_model as model
import pytest

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
    result = model.run_load(files(customers='1,Ada,Lovelace,ada@example.com,555\n\n2,"B\nob",x\n3,C,C,c@example.com,5,6\n'))
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
    ("02/06/2023", "ambiguous_date"), ("2023-06/02", "invalid_date"), ("Juno 3, 2023", "invalid_date"),
    ("June. 3, 2023", "invalid_date"), ("2023-06-02T10", "invalid_date"), ("2023-06-02Z", "invalid_date"),
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
    ("-2", "not_positive"), ("-2.0", "invalid_number"), ("2.5", "invalid_number"), ("two", "invalid_number"),
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
        (1, "impossible_date"), (2, "ambiguous_destination"), (3, "unknown_destination"), (4, "unknown_customer"), (6, "duplicate_key"),
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
    customers = "1,Ada,Lovelace,ada@example.com,\n2, Bob,B,b@example.com,\n03,C,C,c@example.com,\n4,D,D,D@example.com,\n"
    bookings = "1,1,2023-06-02,Paris,2,10.00\n2,1,2023/06/02,Paris,2,10.00\n3,1,2023-06-02,Paris,,10.5\n4,1,2023-06-02, Paris,2,10.00\n"
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
    second = model.run_load(files(customers="2,B,B,b@x.com,\n", destinations="2,Roma,Italy,Summer\n3,Paris,France,Winter\n",
                                  bookings="1,1,2023-06-02,Paris,2,10.00\n2,1,2023-06-02,Rome,1,1\n"
                                           "3,2,2023-06-02,roma,2,10.00\n"), first.stored)
    assert [(r.code, r.ids) for r in second.tables["booking"].rejects] == [
        ("ambiguous_destination", (1, 3)), ("unknown_destination", ())]
    assert second.tables["booking"].counts() == {
        "read": 3, "loaded": 1, "repaired": 0, "imputed": 0, "rejected": 2, "inserted": 1, "updated": 0}
    assert sorted(second.stored["booking"]) == [1, 3]
