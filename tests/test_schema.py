"""travel.sql on a real PostgreSQL: applies to an empty database and again to a loaded one,
and agrees with waddle_common.SCHEMA, the one declaration of the tables in Python."""

import dataclasses
import re

import psycopg2
import pytest
from support import REPO
from support.database import apply_schema, query, run_psql

import transform_load_csv_data as stage
import waddle_common


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


# ---------------------------------------------------------------------------------------
# waddle_common.SCHEMA and travel.sql: the same tables, columns in order, types, NULLs, keys


AUDIT_TABLES = {"load_run", "load_run_table", "tables_version"}


def sql_type(text: str) -> str:
    """'NUMERIC(12, 2)' and 'numeric(12,2)' alike: upper case, no spaces."""
    return re.sub(r"\s+", "", text).upper()


def declared(schema: dict) -> dict[str, dict]:
    """What a declaration says of each table: key and (name, type, nullable) per column, in order."""
    return {
        name: {"key": [table.key],
               "columns": [(c.name, sql_type(c.sql_type), c.nullable) for c in table.columns]}
        for name, table in schema.items()
    }


def stored(url: str) -> dict[str, dict]:
    """The same, read from the database travel.sql built (information_schema and pg_constraint)."""
    columns = query(url, """
        SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable = 'YES'
        FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name <> ALL (%s)
        ORDER BY table_name, ordinal_position""", (sorted(AUDIT_TABLES),))
    keys = query(url, """
        SELECT c.conrelid::regclass::text, array_agg(a.attname::text ORDER BY k.n)
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.contype = 'p' AND c.connamespace = current_schema()::regnamespace
        GROUP BY c.conrelid""")
    out = {}
    for table, column, data_type, precision, scale, nullable in columns:
        text = f"{data_type}({precision},{scale})" if data_type == "numeric" and precision is not None else data_type
        out.setdefault(table, {"key": dict(keys).get(table), "columns": []})["columns"].append(
            (column, sql_type(text), nullable))
    return out


def test_schema_declaration_agrees_with_travel_sql(schema_db):
    assert declared(waddle_common.SCHEMA) == stored(schema_db)


def test_schema_declaration_check_sees_a_column_added_on_one_side_only(schema_db):
    customer = waddle_common.SCHEMA["customer"]
    longer = dataclasses.replace(customer, columns=(*customer.columns, waddle_common.Column("loyalty", "TEXT", True)))
    assert declared({**waddle_common.SCHEMA, "customer": longer}) != stored(schema_db)

    query(schema_db, "ALTER TABLE customer ADD COLUMN loyalty TEXT")
    assert declared(waddle_common.SCHEMA) != stored(schema_db)
    assert declared({**waddle_common.SCHEMA, "customer": longer}) == stored(schema_db)
