"""Stage 3 end to end on a real PostgreSQL: load, reload, atomicity, refusals, dry run."""

from __future__ import annotations

import csv
import shutil

import pytest
from support.database import query
from support.datasets import write_csv

import transform_load_csv_data as stage

TABLE_SNAPSHOT = {
    "customer": "SELECT xmin::text, * FROM customer ORDER BY customer_id",
    "destination": "SELECT xmin::text, * FROM destination ORDER BY destination_id",
    "booking": "SELECT xmin::text, * FROM booking ORDER BY booking_id",
}


def snapshot(url):
    """Every row of the three tables with its row version (xmin): equal only if untouched."""
    return {table: query(url, sql) for table, sql in TABLE_SNAPSHOT.items()}


def counts(url):
    return {table: query(url, f"SELECT count(*) FROM {table}")[0][0] for table in TABLE_SNAPSHOT}


def read_rejects(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_load_sample_dataset(schema_db, sample_dir, tmp_path, capsys):
    assert stage.main(["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / "rej")]) == 0

    assert counts(schema_db) == {"customer": 201, "destination": 51, "booking": 203}
    reasons = {row["reject_reason"].split(":")[0] for row in read_rejects(tmp_path / "rej" / "booking_rejects.csv")}
    assert reasons == {"impossible_date", "negative_cost", "unknown_destination", "duplicate_key", "unknown_customer"}
    assert query(schema_db, "SELECT total_booking_value::text FROM booking WHERE booking_id = 207") == [("99.99",)]
    audit = query(schema_db, "SELECT table_name, rows_read, rows_loaded, rows_imputed, rows_rejected, rows_inserted "
                             "FROM load_run_table ORDER BY table_name")
    assert audit == [("booking", 208, 203, 2, 5, 203), ("customer", 204, 201, 0, 3, 201),
                     ("destination", 52, 51, 0, 1, 51)]
    sources = query(schema_db, "SELECT source_files FROM load_run")[0][0]
    assert set(sources) == {"customer", "destination", "booking"} and len(sources["booking"]["sha256"]) == 64
    assert "booking" in capsys.readouterr().out


def test_load_twice_changes_nothing(schema_db, sample_dir):
    assert stage.main(["--data-dir", str(sample_dir)]) == 0
    before = snapshot(schema_db)

    assert stage.main(["--data-dir", str(sample_dir)]) == 0

    assert snapshot(schema_db) == before
    second = query(schema_db, "SELECT sum(rows_inserted + rows_updated) FROM load_run_table WHERE run_id = "
                              "(SELECT max(run_id) FROM load_run)")
    assert second == [(0,)]


def test_load_updates_changed_rows_only(schema_db, sample_dir):
    assert stage.main(["--data-dir", str(sample_dir)]) == 0
    text = (sample_dir / "customer.csv").read_text()
    (sample_dir / "customer.csv").write_text(text.replace("1,Kwame,Taylor,", "1,Kwame,Taylor-Smith,", 1))

    assert stage.main(["--data-dir", str(sample_dir)]) == 0

    assert query(schema_db, "SELECT last_name FROM customer WHERE customer_id = 1") == [("Taylor-Smith",)]
    assert query(schema_db, "SELECT table_name, rows_updated FROM load_run_table WHERE rows_updated > 0") == [
        ("customer", 1)
    ]


def test_load_failure_on_last_table_rolls_back_everything(schema_db, sample_dir, capsys):
    # A constraint only this test database has: the booking upsert (the last step) fails.
    query(schema_db, "ALTER TABLE booking ADD CONSTRAINT test_only_small CHECK (number_of_passengers < 3)")

    assert stage.main(["--data-dir", str(sample_dir)]) == 1

    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}
    assert query(schema_db, "SELECT count(*) FROM load_run") == [(0,)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rolled back" in err[0]


def test_load_refuses_when_reject_rate_too_high(schema_db, sample_dir, tmp_path):
    rows = (sample_dir / "booking.csv").read_text().splitlines()
    broken = [rows[0]] + [line.replace(",2023", ",1823") if i % 2 else line for i, line in enumerate(rows[1:])]
    (sample_dir / "booking.csv").write_text("\n".join(broken) + "\n")

    assert stage.main(["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / "rej")]) == 2

    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}
    assert len(read_rejects(tmp_path / "rej" / "booking_rejects.csv")) > 20
    assert stage.main(["--data-dir", str(sample_dir), "--max-reject-rate", "0.9"]) == 0


def test_load_dry_run_writes_rejects_but_no_rows(schema_db, sample_dir, tmp_path, capsys):
    assert stage.main(["--data-dir", str(sample_dir), "--dry-run", "--rejects-dir", str(tmp_path / "rej")]) == 0

    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}
    assert query(schema_db, "SELECT count(*) FROM load_run") == [(0,)]
    assert len(read_rejects(tmp_path / "rej" / "customer_rejects.csv")) == 3
    assert "dry run" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["customer.csv", "booking.csv"])
def test_load_missing_file_is_usage_error(schema_db, sample_dir, missing, capsys):
    (sample_dir / missing).unlink()
    assert stage.main(["--data-dir", str(sample_dir)]) == 2
    err = capsys.readouterr().err
    assert missing in err and err.count("\n") == 1


def test_load_missing_column_lists_it(schema_db, sample_dir, capsys):
    text = (sample_dir / "destination.csv").read_text()
    (sample_dir / "destination.csv").write_text(text.replace("popular_season", "season", 1))
    assert stage.main(["--data-dir", str(sample_dir)]) == 2
    assert "lacks column(s) popular_season" in capsys.readouterr().err
    assert counts(schema_db)["destination"] == 0


def test_load_bookings_may_reference_rows_already_in_database(schema_db, sample_dir, tmp_path):
    assert stage.main(["--data-dir", str(sample_dir)]) == 0
    later = tmp_path / "later"
    write_csv(later / "customer.csv", "customer_id,first_name,last_name,email,phone\n500,New,Person,new@example.com,\n")
    write_csv(later / "destination.csv", "destination_id,destination,country,popular_season\n60,Oslo North,Norway,winter\n")
    write_csv(later / "booking.csv",
              "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"
              "900,1,2024-01-01,Paris,2,10.00\n901,500,2024-01-02,oslo north,1,20.00\n")

    assert stage.main(["--data-dir", str(later)]) == 0

    assert query(schema_db, "SELECT booking_id, customer_id, destination_id FROM booking WHERE booking_id >= 900 "
                            "ORDER BY 1") == [(900, 1, 1), (901, 500, 60)]


def test_load_rejects_email_held_by_another_stored_customer(schema_db, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        write_csv(folder / "destination.csv", "destination_id,destination,country,popular_season\n1,Paris,France,Spring\n")
        write_csv(folder / "booking.csv",
                  "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"
                  "1,1,2024-01-01,Paris,1,1.00\n")
    write_csv(first / "customer.csv", "customer_id,first_name,last_name,email,phone\n1,A,A,a@example.com,\n"
                                      "2,B,B,b@example.com,\n")
    # Customers 1 and 2 swap addresses (allowed); 3 takes 1's old address (refused).
    write_csv(second / "customer.csv", "customer_id,first_name,last_name,email,phone\n1,A,A,b@example.com,\n"
                                       "2,B,B,a@example.com,\n3,C,C,a@example.com,\n")
    assert stage.main(["--data-dir", str(first)]) == 0

    assert stage.main(["--data-dir", str(second), "--max-reject-rate", "0.5", "--rejects-dir", str(tmp_path / "r")]) == 0

    assert query(schema_db, "SELECT customer_id, email FROM customer ORDER BY 1") == [
        (1, "b@example.com"), (2, "a@example.com")
    ]
    rejected = read_rejects(tmp_path / "r" / "customer_rejects.csv")
    assert [(r["customer_id"], r["reject_reason"].split(":")[0]) for r in rejected] == [("3", "duplicate_email")]


def test_load_email_in_use_by_stored_customer_is_rejected(schema_db, tmp_path):
    folder = tmp_path / "d"
    write_csv(folder / "destination.csv", "destination_id,destination,country,popular_season\n1,Paris,France,Spring\n")
    write_csv(folder / "booking.csv", "booking_id,customer_id,booking_date,destination,number_of_passengers,"
                                      "cost_per_passenger\n1,1,2024-01-01,Paris,1,1.00\n")
    write_csv(folder / "customer.csv", "customer_id,first_name,last_name,email,phone\n1,A,A,a@example.com,\n")
    assert stage.main(["--data-dir", str(folder)]) == 0
    write_csv(folder / "customer.csv", "customer_id,first_name,last_name,email,phone\n2,B,B,A@example.com,\n"
                                       "3,C,C,c@example.com,\n")

    assert stage.main(["--data-dir", str(folder), "--max-reject-rate", "0.5", "--rejects-dir", str(tmp_path / "r")]) == 0

    rejected = read_rejects(tmp_path / "r" / "customer_rejects.csv")
    assert [r["reject_reason"] for r in rejected] == ["email_in_use: 'A@example.com' belongs to customer_id 1"]
    assert query(schema_db, "SELECT customer_id FROM customer ORDER BY 1") == [(1,), (3,)]


def test_load_database_unreachable_is_one_line_without_password(sample_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://loader:s3cret-Passw0rd@127.0.0.1:1/travel")
    assert stage.main(["--data-dir", str(sample_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to PostgreSQL loader@127.0.0.1:1/travel" in err
    assert "s3cret-Passw0rd" not in err


def test_load_help_exits_zero(capsys):
    assert stage.main(["--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out


def test_load_sample_files_unchanged_by_load(schema_db, sample_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    assert stage.main(["--data-dir", str(sample_dir)]) == 0
    for name in ("customer.csv", "destination.csv", "booking.csv"):
        assert (copy / name).read_bytes() == (sample_dir / name).read_bytes()


@pytest.mark.parametrize("rate", ["-0.1", "1.5", "ten", "nan", "0.1_0", "\u0660.\u0665"])
def test_load_max_reject_rate_must_be_a_share(sample_dir, rate, capsys):
    assert stage.main(["--data-dir", str(sample_dir), "--max-reject-rate", rate]) == 2
    assert f"must be a share between 0 and 1 (0.10 = 10%), got '{rate}'" in capsys.readouterr().err


def test_load_max_reject_rate_variable_must_be_a_share(sample_dir, monkeypatch, capsys):
    monkeypatch.setenv("MAX_REJECT_RATE", "10")
    assert stage.main(["--data-dir", str(sample_dir)]) == 2
    assert capsys.readouterr().err.strip() == (
        "transform_load_csv_data: error: MAX_REJECT_RATE must be a share between 0 and 1 (0.10 = 10%), got '10'"
    )
