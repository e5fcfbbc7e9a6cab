"""Stage 3 against inputs a hostile tester combined: each case mixes valid and invalid values
in one file, loads through the real stage into a real PostgreSQL, and checks the stored
rows and the rejects file."""

from __future__ import annotations

import csv
import re
import unicodedata
from decimal import Decimal

import boto3
import pandas as pd
import pytest
from support import REPO
from support.database import query
from support.lambda_module import lambda_module

import batch_transfer_data_to_cloud_storage as export_stage
import transform_load_csv_data as stage
from waddle_common import cleansing

CUSTOMERS = "customer_id,first_name,last_name,email,phone\n" + "".join(
    f"{i},First{i},Last{i},c{i}@example.com,555-{i:04d}\n" for i in range(1, 11)
)
DESTINATIONS = "destination_id,destination,country,popular_season\n1,Paris,France,Spring\n2,Zürich,Switzerland,Winter\n"
BOOKING_HEADER = "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"


def write(folder, customer=CUSTOMERS, destination=DESTINATIONS, booking=None):
    folder.mkdir(parents=True, exist_ok=True)
    booking = booking if booking is not None else BOOKING_HEADER + "1,1,2024-06-02,Paris,1,10.00\n"
    for name, text in {"customer": customer, "destination": destination, "booking": booking}.items():
        (folder / f"{name}.csv").write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


def load(data, rejects, *extra) -> int:
    return stage.main(["--data-dir", str(data), "--rejects-dir", str(rejects), "--max-reject-rate", "1", *extra])


def rejects_of(rejects, table) -> list[dict[str, str]]:
    with open(rejects / f"{table}_rejects.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def reasons(rejects, table) -> dict[int, str]:
    return {int(r["source_row"]): r["reject_reason"] for r in rejects_of(rejects, table)}


def codes(rejects, table) -> dict[int, str]:
    return {row: reason.split(":")[0] for row, reason in reasons(rejects, table).items()}


def bookings(url) -> dict[int, tuple]:
    rows = query(url, "SELECT booking_id, number_of_passengers, cost_per_passenger::text, total_booking_value::text,"
                      " cost_imputed FROM booking ORDER BY 1")
    return {r[0]: r[1:] for r in rows}


def test_load_costs_of_every_accepted_shape_beside_rejected_ones(schema_db, tmp_path, capsys):
    costs = ["10.00", "10.5", "abc", "10.500", "$10.00", ".5", "-1", "5.", "10.005", "007", "1e5", ""]
    rows = "".join(f"{i},1,2024-06-02,Paris,2,{c}\n" for i, c in enumerate(costs, start=1))
    data = write(tmp_path / "data", booking=BOOKING_HEADER + rows)

    assert load(data, tmp_path / "rejects") == 0

    assert capsys.readouterr().err == ""
    assert codes(tmp_path / "rejects", "booking") == {
        3: "invalid_number", 5: "invalid_number", 7: "negative_cost", 9: "too_many_decimals", 11: "invalid_number"}
    # The median of 0.50, 5.00, 7.00, 10.00, 10.50, 10.50 is (7.00 + 10.00) / 2.
    assert bookings(schema_db) == {
        1: (2, "10.00", "20.00", False), 2: (2, "10.50", "21.00", False), 4: (2, "10.50", "21.00", False),
        6: (2, "0.50", "1.00", False), 8: (2, "5.00", "10.00", False), 10: (2, "7.00", "14.00", False),
        12: (2, "8.50", "17.00", True)}


def test_load_a_stored_row_over_a_megabyte_does_not_stop_later_loads(schema_db, tmp_path):
    huge = "L" * (3 << 20)
    data = write(tmp_path / "data", customer=CUSTOMERS + f"11,Big,{huge},big@example.com,\n")
    assert load(data, tmp_path / "rejects") == 0

    changed = write(tmp_path / "again", customer=CUSTOMERS.replace("First1,", "Changed1,"))
    assert load(changed, tmp_path / "rejects") == 0

    assert query(schema_db, "SELECT first_name, length(last_name) FROM customer WHERE customer_id IN (1, 11) ORDER BY 1")\
        == [("Big", 3 << 20), ("Changed1", 5)]


def test_load_short_and_long_rows_are_rejected_alone_and_numbered_as_records(schema_db, tmp_path):
    text = (BOOKING_HEADER
            + "1,1,2024-06-02,Paris,2,10.00,\n"        # a trailing comma on the first data row only
            + '2,1,2024-06-02,"Par\nis",2,10.00\n'    # a quoted newline: one record, two lines
            + "\n"                                      # an empty line is not a record
            + "101,1,2024-06-02,Paris,3\n"              # no cost field
            + "102,1,2024-06-02,Paris\n"                # no passengers, no cost
            + "4,1,2024-06-02,Paris,2,10.00\n"
            + "5,1,2024-06-02,Paris,2,10.00,x,y\n"
            + "6,1,2024-06-02,Paris,1,40")               # a cut-off last row, no final newline
    data = write(tmp_path / "data", booking=text)

    assert load(data, tmp_path / "rejects") == 0

    rejected = {int(r["source_row"]): r for r in rejects_of(tmp_path / "rejects", "booking")}
    assert {row: r["reject_reason"] for row, r in rejected.items()} == {
        1: "wrong_field_count: 7 fields, the header has 6",
        2: "unknown_destination: 'Par\nis'",
        3: "wrong_field_count: 5 fields, the header has 6",
        4: "wrong_field_count: 4 fields, the header has 6",
        6: "wrong_field_count: 8 fields, the header has 6",
    }
    assert rejected[4]["raw_record"] == "102,1,2024-06-02,Paris"
    assert (rejected[4]["booking_id"], rejected[2]["raw_record"]) == ("", "")
    assert bookings(schema_db) == {4: (2, "10.00", "20.00", False), 6: (1, "40.00", "40.00", False)}
    assert query(schema_db, "SELECT rows_read, rows_loaded, rows_rejected FROM load_run_table"
                            " WHERE table_name = 'booking'") == [(7, 2, 5)]


def test_load_email_chain_rejects_every_link_and_keeps_the_table_unique(schema_db, tmp_path):
    assert load(write(tmp_path / "first"), tmp_path / "rejects") == 0
    # 1 takes 2's address, 2 takes the address of 3, who is absent and keeps it.
    chain = CUSTOMERS.replace("1,First1,Last1,c1@", "1,First1,Last1,c2@").replace("2,First2,Last2,c2@",
                                                                                     "2,First2,Last2,c3@")
    chain = "\n".join(line for line in chain.split("\n") if not line.startswith("3,")) + "\n"
    data = write(tmp_path / "second", customer=chain)

    for rejects in ("rejects", "again"):  # and cleansed again (a new rejects folder): the same verdict
        assert load(data, tmp_path / rejects) == 0
        assert reasons(tmp_path / rejects, "customer") == {
            2: "email_in_use: 'c3@example.com' belongs to customer_id 3",
            1: "email_in_use: 'c2@example.com' belongs to customer_id 2",
        }
    assert query(schema_db, "SELECT customer_id, email FROM customer WHERE customer_id <= 3 ORDER BY 1") == [
        (1, "c1@example.com"), (2, "c2@example.com"), (3, "c3@example.com")]


def test_load_email_swap_and_move_to_a_freed_address_pass(schema_db, tmp_path):
    assert load(write(tmp_path / "first"), tmp_path / "rejects") == 0
    moved = (CUSTOMERS.replace("1,First1,Last1,c1@", "1,First1,Last1,c2@")
             .replace("2,First2,Last2,c2@", "2,First2,Last2,c1@")
             .replace("3,First3,Last3,c3@", "3,First3,Last3,new3@")
             + "11,New,Customer,c3@example.com,\n")
    assert load(write(tmp_path / "second", customer=moved), tmp_path / "rejects") == 0
    assert rejects_of(tmp_path / "rejects", "customer") == []
    assert query(schema_db, "SELECT customer_id, email FROM customer WHERE customer_id IN (1, 2, 3, 11) ORDER BY 1") \
        == [(1, "c2@example.com"), (2, "c1@example.com"), (3, "new3@example.com"), (11, "c3@example.com")]


LIMIT = "9999999999999999.99"


def test_load_total_value_limit_is_exact(schema_db, tmp_path):
    rows = ("1,1,2024-06-02,Paris,1000000000,10000000.00\n"   # 10**18 cents: one cent too many
            "2,1,2024-06-02,Paris,1000001,9999990000.01\n"    # just above, lost in a float
            "3,1,2024-06-02,Paris,1,9999999999.99\n"
            "4,1,2024-06-02,Paris,1000001,9999989999.99\n")   # just below
    data = write(tmp_path / "data", booking=BOOKING_HEADER + rows)

    assert load(data, tmp_path / "rejects") == 0

    assert codes(tmp_path / "rejects", "booking") == {1: "out_of_range", 2: "out_of_range"}
    stored = bookings(schema_db)
    assert sorted(stored) == [3, 4]
    assert Decimal(stored[4][2]) == 1000001 * Decimal("9999989999.99") <= Decimal(LIMIT)


def test_load_limit_agrees_with_travel_sql_and_the_lambda():
    sql_limit = re.search(r"total_booking_value <= ([0-9.]+)", (REPO / "travel.sql").read_text()).group(1)

    assert sql_limit == LIMIT
    assert cleansing.MAX_TOTAL_CENTS == int(Decimal(LIMIT) * 100)
    assert 10 ** (lambda_module().MAX_UNIT_DIGITS + 2) - 1 == cleansing.MAX_TOTAL_CENTS


def test_load_what_stage_3_accepts_the_export_and_the_lambda_accept(schema_db, s3_bucket, tmp_path):
    rows = ("1,1,2024-06-02,Paris,1000001,9999989999.99\n"     # just below the limit
            "2,2,2024-06-02,Paris,1,0.01\n"
            "3,3,2024-06-02,Zürich,2147483647,0\n")
    assert load(write(tmp_path / "data", booking=BOOKING_HEADER + rows), tmp_path / "rejects") == 0
    assert rejects_of(tmp_path / "rejects", "booking") == []

    assert export_stage.main(["--date", "2024-06-03"]) == 0
    result = lambda_module().compute_metrics(boto3.client("s3"), s3_bucket, "", "2024-06-03")

    by_name = {d["destination"]: d for d in result["metrics"]}
    assert by_name["Paris"]["total_booking_value_per_destination"] == str(
        1000001 * Decimal("9999989999.99") + Decimal("0.01"))
    assert by_name["Zürich"]["total_passengers_booked_per_destination"] == 2147483647


def test_load_schema_refuses_a_total_above_the_limit(schema_db):
    query(schema_db, "INSERT INTO destination VALUES (1, 'Paris', 'France', 'Spring')")
    query(schema_db, "INSERT INTO customer VALUES (1, 'A', 'B', 'a@example.com', NULL)")
    query(schema_db, f"INSERT INTO booking VALUES (1, 1, 1, '2023-01-01', 1000001, 9999989999.99, "
                     f"{1000001 * Decimal('9999989999.99')})")
    with pytest.raises(Exception, match="booking_total_value_limit"):
        query(schema_db, "INSERT INTO booking VALUES (2, 1, 1, '2023-01-01', 1000000000, 10000000.00, "
                         "10000000000000000.00)")


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_load_text_is_nfc_before_any_comparison(schema_db, tmp_path):
    customers = (CUSTOMERS + "11,Jürgen,Müller,jürgen@example.com,\n"
                 + f"12,{nfd('Jürgen')},{nfd('Müller')},{nfd('JÜRGEN@example.com')},\n")
    booking = BOOKING_HEADER + f"1,11,2024-06-02,{nfd('zürich')},1,10.00\n2,11,2024-06-02,{nfd(' ZÜRICH ')},1,10.00\n"
    data = write(tmp_path / "data", customer=customers, booking=booking)

    assert load(data, tmp_path / "rejects") == 0

    assert reasons(tmp_path / "rejects", "customer") == {
        12: f"duplicate_email: email '{nfd('JÜRGEN@example.com')}' already at row 11"}  # as the file wrote it
    assert query(schema_db, "SELECT destination_id FROM booking ORDER BY 1") == [(2,), (2,)]
    # Both bookings' names were rewritten in NFC: repaired.
    assert query(schema_db, "SELECT rows_repaired FROM load_run_table WHERE table_name = 'booking'") == [(2,)]


def test_load_stored_text_not_in_nfc_is_rewritten_when_its_row_comes_again(schema_db, tmp_path):
    assert load(write(tmp_path / "first"), tmp_path / "rejects") == 0
    query(schema_db, "UPDATE customer SET first_name = %s WHERE customer_id IN (1, 2)", (nfd("Jürgen"),))

    assert load(write(tmp_path / "first"), tmp_path / "rejects") == 0  # 1 comes again as 'First1'
    customers = CUSTOMERS.replace("1,First1,", "1,Jürgen,")
    assert load(write(tmp_path / "again", customer=customers), tmp_path / "rejects") == 0

    names = dict(query(schema_db, "SELECT customer_id, first_name FROM customer WHERE customer_id IN (1, 2)"))
    assert names == {1: "Jürgen", 2: "First2"}


def test_load_duplicate_reason_names_a_whole_row_number(schema_db, tmp_path):
    customers = (CUSTOMERS + "".join(f"{i},A,B,x{i}@example.com,\n" for i in range(11, 199)) + "x,Bad,Id,bad@example.com,\n"
                 + "5,Again,Five,d5@example.com,\n")
    data = write(tmp_path / "data", customer=customers)

    assert load(data, tmp_path / "rejects") == 0

    assert reasons(tmp_path / "rejects", "customer") == {
        199: "invalid_id: customer_id 'x' is not a whole number", 200: "duplicate_key: customer_id '5' already at row 5"}


def test_load_rejects_dir_that_is_a_file_is_refused_first(schema_db, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")

    assert load(write(tmp_path / "data"), tmp_path / "a-file") == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"transform_load_csv_data: error: REJECTS_DIR {tmp_path / 'a-file'} is a file, not a folder; "
                    "set REJECTS_DIR or --rejects-dir to a folder")]
    assert query(schema_db, "SELECT count(*) FROM load_run") == [(0,)]


@pytest.mark.parametrize("text", ["2024-06-02T25:99:00", "2024-06-02T10:60", "2024-06-02 24:00", "2024-06-02T10:00+25"])
def test_load_impossible_times_are_rejected(text):
    table = cleansing.cleanse_bookings(pd.DataFrame({
        "source_row": [1], "booking_id": ["1"], "customer_id": ["1"], "booking_date": [text], "destination": ["Paris"],
        "number_of_passengers": ["1"], "cost_per_passenger": ["1"]}, dtype=object).astype(
            {c: cleansing.TEXT_DTYPE for c in ["booking_id", "customer_id", "booking_date", "destination",
                                           "number_of_passengers", "cost_per_passenger"]}))
    assert table.reason.iloc[0] == f"impossible_date: '{text}' does not exist"


def test_load_white_space_list_is_pythons():
    assert cleansing.WHITE_SPACE_CHARACTERS == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
