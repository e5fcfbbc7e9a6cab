"""Stage 3's fast paths on a real PostgreSQL: the first load copies straight into empty tables,
a reload sends only new or changed rows, and neither changes what ends up stored."""

from __future__ import annotations

from support.database import query
from support.datasets import write_csv

import transform_load_csv_data as stage

CUSTOMERS = (
    "customer_id,first_name,last_name,email,phone\n"
    '1,"Ann, ""the"" first",O\'Neil,ann@example.com,\n'
    '2,"Bo\nLine",Berg,bo@example.com,555-0102\n'
    "3,=HYPERLINK(\"x\"),'; DROP TABLE customer; --,cy@example.com,  \n"
)
DESTINATIONS = "destination_id,destination,country,popular_season\n1,Paris,France,spring\n2,Rome,Italy,Fall\n"
BOOKINGS = (
    "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"
    "10,1,2023-06-02,paris,,10.50\n"
    "11,2,June 3 2023,Rome,3,\n"
    "12,3,2023/06/04,ROME,2,33.33\n"
)


def write_dataset(folder, customers=CUSTOMERS, destinations=DESTINATIONS, bookings=BOOKINGS):
    write_csv(folder / "customer.csv", customers)
    write_csv(folder / "destination.csv", destinations)
    write_csv(folder / "booking.csv", bookings)
    return folder


def rows_with_versions(url):
    return {t: query(url, f"SELECT xmin::text, * FROM {t} ORDER BY 2") for t in ("customer", "destination", "booking")}


def last_run_counts(url):
    return {
        name: (inserted, updated)
        for name, inserted, updated in query(
            url, "SELECT table_name, rows_inserted, rows_updated FROM load_run_table "
                 "WHERE run_id = (SELECT max(run_id) FROM load_run)")
    }


def test_load_perf_shape_first_load_counts_every_row_inserted(schema_db, tmp_path):
    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "d"))]) == 0

    assert last_run_counts(schema_db) == {"customer": (3, 0), "destination": (2, 0), "booking": (3, 0)}
    assert query(schema_db, "SELECT first_name, last_name, phone FROM customer ORDER BY customer_id") == [
        ('Ann, "the" first', "O'Neil", None), ("Bo\nLine", "Berg", "555-0102"),
        ('=HYPERLINK("x")', "'; DROP TABLE customer; --", None),
    ]
    assert query(schema_db, "SELECT booking_id, destination_id, booking_date::text, cost_per_passenger::text, "
                            "total_booking_value::text, passengers_imputed, cost_imputed FROM booking ORDER BY 1") == [
        (10, 1, "2023-06-02", "10.50", "10.50", True, False),
        (11, 2, "2023-06-03", "21.92", "65.76", False, True),
        (12, 2, "2023-06-04", "33.33", "66.66", False, False),
    ]


def test_load_perf_shape_reload_of_quoted_text_and_nulls_touches_nothing(schema_db, tmp_path):
    data = write_dataset(tmp_path / "d")
    assert stage.main(["--data-dir", str(data)]) == 0
    before = rows_with_versions(schema_db)

    assert stage.main(["--data-dir", str(data)]) == 0

    assert rows_with_versions(schema_db) == before
    assert last_run_counts(schema_db) == {"customer": (0, 0), "destination": (0, 0), "booking": (0, 0)}


def test_load_perf_shape_reload_sends_new_and_changed_rows_only(schema_db, tmp_path):
    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "a"))]) == 0
    before = rows_with_versions(schema_db)
    changed = CUSTOMERS.replace("ann@example.com,", "ann@example.com,555-0101").replace("Berg", "Borg")
    added = BOOKINGS + "13,1,2024-01-01,Paris,1,21.92\n"  # the median (11's imputed cost) stays
    # A value set to NULL counts as a change too: booking 12 loses its passengers (imputed 1).
    added = added.replace("12,3,2023/06/04,ROME,2,33.33", "12,3,2023/06/04,ROME,,33.33")

    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "b", changed, DESTINATIONS, added))]) == 0

    after = rows_with_versions(schema_db)
    assert last_run_counts(schema_db) == {"customer": (0, 2), "destination": (0, 0), "booking": (1, 1)}
    assert after["destination"] == before["destination"]
    assert after["customer"][2] == before["customer"][2]  # customer 3 untouched
    assert after["booking"][1] == before["booking"][1]  # booking 11 untouched
    assert query(schema_db, "SELECT phone, last_name FROM customer WHERE customer_id IN (1, 2) ORDER BY customer_id") == [
        ("555-0101", "O'Neil"), ("555-0102", "Borg")
    ]
    assert query(schema_db, "SELECT number_of_passengers, passengers_imputed, total_booking_value::text "
                            "FROM booking WHERE booking_id = 12") == [(1, True, "33.33")]


def test_load_perf_shape_rows_changed_in_database_are_restored(schema_db, tmp_path):
    data = write_dataset(tmp_path / "d")
    assert stage.main(["--data-dir", str(data)]) == 0
    query(schema_db, "UPDATE customer SET phone = '' WHERE customer_id = 1")  # '' is not NULL
    query(schema_db, "UPDATE booking SET cost_imputed = false, passengers_imputed = false WHERE booking_id = 10")

    assert stage.main(["--data-dir", str(data)]) == 0

    assert last_run_counts(schema_db) == {"customer": (0, 1), "destination": (0, 0), "booking": (0, 1)}
    assert query(schema_db, "SELECT phone FROM customer WHERE customer_id = 1") == [(None,)]
    assert query(schema_db, "SELECT passengers_imputed FROM booking WHERE booking_id = 10") == [(True,)]


def test_load_perf_shape_text_that_reads_like_null_is_compared_as_text(schema_db, tmp_path):
    looks_null = CUSTOMERS.replace("ann@example.com,", "ann@example.com,NA").replace("555-0102", "NULL")
    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "a", looks_null))]) == 0
    assert query(schema_db, "SELECT phone FROM customer WHERE customer_id IN (1, 2) ORDER BY customer_id") == [("NA",), ("NULL",)]

    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "b"))]) == 0  # the real file: 1 has no phone

    assert query(schema_db, "SELECT phone FROM customer WHERE customer_id IN (1, 2) ORDER BY customer_id") == [(None,), ("555-0102",)]
    assert last_run_counts(schema_db)["customer"] == (0, 2)


def test_load_perf_shape_dry_run_on_loaded_database_changes_nothing(schema_db, tmp_path):
    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "a"))]) == 0
    before = rows_with_versions(schema_db)
    changed = CUSTOMERS.replace("Berg", "Borg")

    assert stage.main(["--data-dir", str(write_dataset(tmp_path / "b", changed)), "--dry-run"]) == 0

    assert rows_with_versions(schema_db) == before
    assert query(schema_db, "SELECT count(*) FROM load_run") == [(1,)]

