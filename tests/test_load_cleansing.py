"""Each cleansing rule of stage 3 on small frames, without a database."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import transform_load_csv_data as stage
import waddle_common as common
from waddle_common import cleansing

CUSTOMER_HEADER = ["customer_id", "first_name", "last_name", "email", "phone"]
DESTINATION_HEADER = ["destination_id", "destination", "country", "popular_season"]
BOOKING_HEADER = ["booking_id", "customer_id", "booking_date", "destination", "number_of_passengers", "cost_per_passenger"]

DESTINATIONS = pd.DataFrame(
    {"destination_id": [1, 2, 3, 4], "destination": ["Paris", "New York", "Springfield", "Springfield"]}
)


def raw(header, *rows):
    frame = pd.DataFrame([list(r) for r in rows], columns=header, dtype=str)
    frame.insert(0, "source_row", np.arange(1, len(frame) + 1))
    return frame


def customer(*fields):
    defaults = ["1", "Ada", "Lovelace", "ada@example.com", "555"]
    return [f if f is not None else d for f, d in zip(fields, defaults)] + defaults[len(fields):]


def booking(**fields):
    row = {"booking_id": "1", "customer_id": "1", "booking_date": "2023-06-02", "destination": "Paris",
           "number_of_passengers": "2", "cost_per_passenger": "10.00"}
    row.update(fields)
    return [row[c] for c in BOOKING_HEADER]


def cleanse_booking_rows(*rows, known_customers=(1, 2, 3)):
    """The booking rules on `rows`, DESTINATIONS and `known_customers` stored already."""
    files = {"customer": raw(CUSTOMER_HEADER), "destination": raw(DESTINATION_HEADER), "booking": raw(BOOKING_HEADER, *rows)}
    return stage.cleanse_all(files, DESTINATIONS, known_customers)["booking"]


def reason_code(table, row=0):
    value = table.reason.iloc[row]
    return None if pd.isna(value) else value.split(":")[0]


# ---------------------------------------------------------------------------------------
# Customers


def test_load_cleanse_customers_trims_and_lower_cases_email():
    table = cleansing.cleanse_customers(raw(CUSTOMER_HEADER, ["  7 ", " Ada ", "Lovelace ", " ADA@Example.COM ", " "]))
    row = table.accepted().iloc[0]
    assert (row.customer_id, row.first_name, row.last_name, row.email) == (7, "Ada", "Lovelace", "ada@example.com")
    assert pd.isna(row.phone)
    assert cleansing.summarise(table).repaired == 1


@pytest.mark.parametrize(
    "row, code",
    [
        (customer("", None), "missing_field"),
        (customer(None, "  "), "missing_field"),
        (customer(None, None, None, ""), "missing_field"),
        (customer("abc"), "invalid_id"),
        (customer("-4"), "invalid_id"),
        (customer("99999999999999999999"), "id_out_of_range"),
        (customer(None, None, None, "not-an-email"), "invalid_email"),
        (customer(None, None, None, "a b@example.com"), "invalid_email"),
    ],
)
def test_load_cleanse_customers_rejects(row, code):
    table = cleansing.cleanse_customers(raw(CUSTOMER_HEADER, row))
    assert reason_code(table) == code


def test_load_cleanse_customers_duplicate_key_and_email_keep_first():
    table = cleansing.cleanse_customers(raw(
        CUSTOMER_HEADER,
        customer("1", None, None, "a@example.com"),
        customer("1", None, None, "b@example.com"),
        customer("2", None, None, "A@EXAMPLE.COM"),
        customer("3", None, None, "c@example.com"),
    ))
    assert [reason_code(table, i) for i in range(4)] == [None, "duplicate_key", "duplicate_email", None]
    assert "already at row 1" in table.reason.iloc[1]


def test_load_cleanse_customers_first_valid_occurrence_wins():
    table = cleansing.cleanse_customers(raw(CUSTOMER_HEADER, customer("1", None, None, "bad"), customer("1")))
    assert [reason_code(table, i) for i in range(2)] == ["invalid_email", None]


def test_load_cleanse_customers_accepts_pandas_float_ids():
    table = cleansing.cleanse_customers(raw(CUSTOMER_HEADER, customer("12.0")))
    assert table.accepted().customer_id.tolist() == [12]


# ---------------------------------------------------------------------------------------
# Destinations


@pytest.mark.parametrize("season, expected", [("autumn", "Autumn"), ("SUMMER", "Summer"), (" winter ", "Winter"), ("Fall", "Autumn")])
def test_load_cleanse_destinations_capitalises_seasons(season, expected):
    table = cleansing.cleanse_destinations(raw(DESTINATION_HEADER, ["1", "Paris", "France", season]))
    assert table.accepted().popular_season.tolist() == [expected]


def test_load_cleanse_destinations_rejects_unknown_season_and_duplicates():
    table = cleansing.cleanse_destinations(raw(
        DESTINATION_HEADER, ["1", "Paris", "France", "Monsoon"], ["2", "Rome", "Italy", "Summer"],
        ["2", "Roma", "Italy", "Summer"], ["3", "", "Italy", "Summer"],
    ))
    assert [reason_code(table, i) for i in range(4)] == ["unknown_season", None, "duplicate_key", "missing_field"]


# ---------------------------------------------------------------------------------------
# Booking dates


@pytest.mark.parametrize(
    "text, iso",
    [
        ("2023-06-02", "2023-06-02"),
        ("2023/06/02", "2023-06-02"),
        ("June 3, 2023", "2023-06-03"),
        ("Jun 3 2023", "2023-06-03"),
        ("3 June 2023", "2023-06-03"),
        ("2023-06-02 14:30:00", "2023-06-02"),
        ("2023-06-02T23:30:00+02:00", "2023-06-02"),
        ("2024-02-29", "2024-02-29"),
        (" 2023-6-2 ", "2023-06-02"),
        ("2024-06-02T10:30:00+02", "2024-06-02"),
        ("2024-06-02T10:30:00+0200", "2024-06-02"),
        ("2024-06-02 10:30:00.5 Z", "2024-06-02"),
        ("2024/06/02 10:00", "2024-06-02"),
        ("2024/06/02T23:59:59-11:30", "2024-06-02"),
        ("Jun. 3, 2023", "2023-06-03"),
        ("sept 3 2023", "2023-09-03"),
        ("3 Jun., 2023", "2023-06-03"),
    ],
)
def test_load_cleanse_bookings_parses_mixed_date_formats(text, iso):
    table = cleanse_booking_rows(booking(booking_date=text))
    assert table.accepted().booking_date.tolist() == [iso]


@pytest.mark.parametrize(
    "text, code",
    [
        ("2023-02-30", "impossible_date"),
        ("2023-02-29", "impossible_date"),
        ("2023-13-01", "impossible_date"),
        ("02/06/2023", "ambiguous_date"),
        ("yesterday", "invalid_date"),
        ("Juno 3, 2023", "invalid_date"),
        ("1850-01-01", "date_out_of_range"),
        ("2024-06-02T25:99:00", "impossible_date"),
        ("2024-06-02T10:30:60", "impossible_date"),
        ("2024-06-02T10:30+24:00", "impossible_date"),
        ("2024-06-02T10", "invalid_date"),
        ("2024-06-02  10:30", "invalid_date"),
        ("June  3, 2023", "invalid_date"),
        ("", "missing_field"),
    ],
)
def test_load_cleanse_bookings_rejects_bad_dates(text, code):
    assert reason_code(cleanse_booking_rows(booking(booking_date=text))) == code


# ---------------------------------------------------------------------------------------
# Passengers, money, totals


def test_load_cleanse_bookings_imputes_missing_passengers_as_one():
    table = cleanse_booking_rows(booking(number_of_passengers=""))
    row = table.accepted().iloc[0]
    assert (row.number_of_passengers, bool(row.passengers_imputed), row.total_booking_value) == (1, True, "10.00")
    assert cleansing.summarise(table).imputed == 1


def test_load_cleanse_bookings_imputes_missing_cost_with_median():
    table = cleanse_booking_rows(
        booking(booking_id="1", cost_per_passenger="10.00"),
        booking(booking_id="2", cost_per_passenger="20.01"),
        booking(booking_id="3", cost_per_passenger="", number_of_passengers="3"),
    )
    imputed = table.accepted().set_index("booking_id").loc[3]
    assert (imputed.cost_per_passenger, bool(imputed.cost_imputed), imputed.total_booking_value) == ("15.01", True, "45.03")


def test_load_cleanse_bookings_median_ignores_rejected_rows():
    table = cleanse_booking_rows(
        booking(booking_id="1", cost_per_passenger="10.00"),
        booking(booking_id="2", cost_per_passenger="9999.00", destination="Gotham"),
        booking(booking_id="3", cost_per_passenger=""),
    )
    assert table.accepted().set_index("booking_id").loc[3].cost_per_passenger == "10.00"


@pytest.mark.parametrize(
    "passengers, cost, total",
    [("3", "33.33", "99.99"), ("1", "0", "0.00"), ("7", "0.1", "0.70"), ("2", "10.500", "21.00"), ("2.0", "5", "10.00"),
     ("1000", "9999999999.99", "9999999999990.00")],
)
def test_load_cleanse_bookings_total_value_is_exact(passengers, cost, total):
    table = cleanse_booking_rows(booking(number_of_passengers=passengers, cost_per_passenger=cost))
    assert table.accepted().total_booking_value.tolist() == [total]


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("number_of_passengers", "0", "not_positive"),
        ("number_of_passengers", "-2", "not_positive"),
        ("number_of_passengers", "2.5", "invalid_number"),
        ("number_of_passengers", "two", "invalid_number"),
        ("number_of_passengers", "3000000000", "out_of_range"),
        ("cost_per_passenger", "-5.00", "negative_cost"),
        ("cost_per_passenger", "$10.00", "invalid_number"),
        ("cost_per_passenger", "1,000.00", "invalid_number"),
        ("cost_per_passenger", "1e3", "invalid_number"),
        ("cost_per_passenger", "10.005", "too_many_decimals"),
        ("cost_per_passenger", "12345678901.00", "out_of_range"),
        ("booking_id", "1.5", "invalid_id"),
        ("customer_id", "", "missing_field"),
    ],
)
def test_load_cleanse_bookings_rejects_bad_numbers(field, value, code):
    assert reason_code(cleanse_booking_rows(booking(**{field: value}))) == code


# ---------------------------------------------------------------------------------------
# References


@pytest.mark.parametrize("name, destination_id", [("paris", 1), ("  PARIS ", 1), ("new   york", 2), ("New York", 2)])
def test_load_cleanse_bookings_maps_destination_names(name, destination_id):
    table = cleanse_booking_rows(booking(destination=name))
    assert table.accepted().destination_id.tolist() == [destination_id]


@pytest.mark.parametrize("name, code", [("Gotham", "unknown_destination"), ("springfield", "ambiguous_destination")])
def test_load_cleanse_bookings_rejects_unmappable_destinations(name, code):
    table = cleanse_booking_rows(booking(destination=name))
    assert reason_code(table) == code


def test_load_cleanse_bookings_ambiguous_reason_lists_ids():
    table = cleanse_booking_rows(booking(destination="Springfield"))
    assert table.reason.iloc[0].endswith("names destinations 3, 4")


def test_load_cleanse_bookings_rejects_unknown_customers():
    table = cleanse_booking_rows(booking(booking_id="1", customer_id="1"), booking(booking_id="2", customer_id="42"))
    assert [reason_code(table, i) for i in range(2)] == [None, "unknown_customer"]


def test_load_cleanse_bookings_duplicate_booking_keeps_first():
    table = cleanse_booking_rows(booking(cost_per_passenger="1.00"), booking(cost_per_passenger="2.00"))
    assert [reason_code(table, i) for i in range(2)] == [None, "duplicate_key"]
    assert table.accepted().cost_per_passenger.tolist() == ["1.00"]


# ---------------------------------------------------------------------------------------
# Whole files


def test_load_read_source_handles_bom_crlf_index_column_quotes_and_extra_columns(tmp_path):
    path = tmp_path / "booking.csv"
    path.write_bytes(
        "\ufeff,Booking_ID,extra,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\r\n"
        '0,1,x,1,2023-06-02,"Paris, France",2,10.00\r\n'.encode()
    )
    frame = stage.read_source(path, "booking")
    assert frame.loc[0, "booking_id"] == "1"
    assert frame.loc[0, "destination"] == "Paris, France"
    assert "extra" in frame.columns and not any(c.startswith("_unnamed") for c in frame.columns)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"booking_id;customer_id\n1;2\n", "lacks column(s)"),
        (b"booking_id,booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n",
         "more than once"),
        ("booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"
         "1,1,2023-01-01,Br\u00e9sil,1,1\n".encode("latin-1"), "--encoding latin-1"),
    ],
)
def test_load_read_source_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "booking.csv"
    path.write_bytes(content)
    with pytest.raises(common.ConfigError, match=None) as info:
        stage.read_source(path, "booking")
    assert message in str(info.value)


def test_load_check_reject_rates_refuses_above_limit():
    table = cleansing.cleanse_customers(raw(CUSTOMER_HEADER, customer("1"), customer("x")))
    summaries = {"customer": cleansing.summarise(table)}
    with pytest.raises(common.ConfigError) as info:
        cleansing.check_reject_rates(summaries, 0.10)
    assert "1 of 2 rows rejected" in str(info.value)
    cleansing.check_reject_rates(summaries, 0.5)
