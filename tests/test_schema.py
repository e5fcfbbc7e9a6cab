"""travel.sql on a real PostgreSQL: applies to an empty database and again to a loaded one."""

import psycopg2
import pytest

from conftest import REPO, apply_schema, query, run_psql

import transform_load_csv_data as stage


def test_schema_applies_twice_without_losing_data(schema_db, sample_dir):
    assert stage.main(["--data-dir", str(sample_dir)]) == 0
    before = query(schema_db, "SELECT count(*) FROM customer UNION ALL SELECT count(*) FROM booking")

    apply_schema(schema_db)

    assert query(schema_db, "SELECT count(*) FROM customer UNION ALL SELECT count(*) FROM booking") == before


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO destination VALUES (1, 'Paris', 'France', 'Monsoon')",
        "INSERT INTO customer VALUES (1, 'A', 'B', 'UPPER@EXAMPLE.COM', NULL)",
        "INSERT INTO customer VALUES (1, 'A', 'B', NULL, NULL)",
        "INSERT INTO booking VALUES (1, 99, 99, '2023-01-01', 1, 1.00, 1.00)",
        "INSERT INTO booking VALUES (1, 1, 1, '2023-01-01', 0, 1.00, 0.00)",
        "INSERT INTO booking VALUES (1, 1, 1, '2023-01-01', 1, -1.00, -1.00)",
        "INSERT INTO booking VALUES (1, 1, 1, '2023-01-01', 3, 33.33, 100.00)",
    ],
    ids=["season", "email-case", "email-null", "foreign-key", "passengers", "cost", "total"],
)
def test_schema_constraints_refuse_bad_rows(schema_db, statement):
    query(schema_db, "INSERT INTO destination VALUES (1, 'Paris', 'France', 'Spring')")
    query(schema_db, "INSERT INTO customer VALUES (1, 'A', 'B', 'a@example.com', NULL)")
    with pytest.raises(psycopg2.IntegrityError):
        query(schema_db, statement)


def test_schema_duplicate_email_refused(schema_db):
    query(schema_db, "INSERT INTO customer VALUES (1, 'A', 'B', 'a@example.com', NULL)")
    with pytest.raises(psycopg2.IntegrityError):
        query(schema_db, "INSERT INTO customer VALUES (2, 'C', 'D', 'a@example.com', NULL)")


def test_schema_total_value_is_exact(schema_db):
    query(schema_db, "INSERT INTO destination VALUES (1, 'Paris', 'France', 'Spring')")
    query(schema_db, "INSERT INTO customer VALUES (1, 'A', 'B', 'a@example.com', NULL)")
    query(schema_db, "INSERT INTO booking VALUES (1, 1, 1, '2023-01-01', 3, 33.33, 99.99)")
    assert str(query(schema_db, "SELECT total_booking_value FROM booking")[0][0]) == "99.99"


def test_schema_runs_quietly_as_superuser_first_and_again(database_url):
    # Roles, grants and "already exists" notices: nothing to say when all goes well.
    first = run_psql(database_url, REPO / "travel.sql")
    again = run_psql(database_url, REPO / "travel.sql")

    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
