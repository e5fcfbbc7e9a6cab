"""The bad-input catalogue: malformed source files and values, each with its outcome.

One table, CATALOGUE, of malformed inputs across customer.csv, destination.csv and
booking.csv. Each case changes one file of a small valid dataset (ten rows per table) and
says what the load must do with it:

- Stored: loaded as cleansed; the stored value is read back from PostgreSQL.
- Rejected: that row (and only it) is rejected with the rule's code, in the rejects file
  and in load_run_table; the rest loads.
- Refused: the whole load is refused: the exit code, the one stderr line, no table changed.

Text that looks like SQL or a spreadsheet formula is data: it is stored, exported and read
back byte for byte, and never executed (test_load_bad_input_sql_and_formula_text_round_trips...).
The stage's rule codes are those of README.md's cleansing-rules table.
"""

from __future__ import annotations

import csv
import io
import zipfile

import boto3
import pytest
from support.bad_input import (
    BASE_ROWS,
    CATALOGUE,
    FORMULA,
    HEADERS,
    KEYS,
    PREFIX,
    SQL_TEXT,
    Refused,
    Rejected,
    Stored,
    case_id,
    cases,
    csv_text,
    with_row,
)
from support.database import apply_schema, new_database, query
from support.stages import run_stage_script, stage_env

import batch_transfer_data_to_cloud_storage as export_stage
import transform_load_csv_data as stage

# ---------------------------------------------------------------------------------------
# One database for the catalogue: emptied before each case (creating one per case costs more
# than the case)



@pytest.fixture(scope="module")
def catalogue_url(pg_admin_url):
    with new_database(pg_admin_url, "bad_input") as url:
        apply_schema(url)
        yield url


@pytest.fixture
def empty_db(catalogue_url, monkeypatch):
    query(catalogue_url, "TRUNCATE booking, customer, destination, load_run_table, load_run RESTART IDENTITY")
    monkeypatch.setenv("DATABASE_URL", catalogue_url)
    return catalogue_url


def write_files(folder, files: dict[str, bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for table, data in files.items():
        (folder / f"{table}.csv").write_bytes(data)
    return folder


def read_rejects(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def table_counts(url: str) -> dict[str, int]:
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in (*HEADERS, "load_run")}


@pytest.mark.parametrize("case", CATALOGUE, ids=case_id)
def test_load_bad_input_catalogue(case, empty_db, tmp_path, capsys):
    data = write_files(tmp_path / "data", case.files())
    rejects = tmp_path / "rejects"

    code = stage.main(["--data-dir", str(data), "--rejects-dir", str(rejects)])

    err = capsys.readouterr().err.strip().splitlines()
    if isinstance(case.expect, Refused):
        assert (code, err) == (case.expect.exit_code, [PREFIX + case.expect.message])
        assert table_counts(empty_db) == {"customer": 0, "destination": 0, "booking": 0, "load_run": 0}
        return
    assert (code, err) == (0, [])
    if isinstance(case.expect, Stored):
        assert query(empty_db, case.expect.sql) == [case.expect.expected]
        assert read_rejects(rejects / f"{case.table}_rejects.csv") == []
        return
    rejected = read_rejects(rejects / f"{case.table}_rejects.csv")
    assert [r["reject_reason"].split(":")[0] for r in rejected] == [case.expect.code]
    key = KEYS[case.table]
    if case.expect.raw_record is None:
        assert rejected[0][key] == with_row(case.table, **case.row)[HEADERS[case.table].index(key)]  # as written
    else:
        assert (rejected[0][key], rejected[0]["raw_record"]) == ("", case.expect.raw_record)
    assert rejected[0]["source_row"] == "11"
    audit = query(empty_db, "SELECT table_name, rows_read, rows_loaded, rows_rejected FROM load_run_table ORDER BY 1")
    expected = {t: (t, 10, 10, 0) for t in HEADERS}
    expected[case.table] = (case.table, 11, 10, 1)
    assert audit == sorted(expected.values())
    assert table_counts(empty_db)[case.table] == 10


def test_load_bad_input_catalogue_is_big_enough():
    assert len(cases()) >= 30
    assert {c.table for c in cases()} == set(HEADERS)
    assert {type(c.expect) for c in cases()} == {Stored, Rejected, Refused}
    assert len({c.id for c in cases()}) == len(cases())


def test_load_bad_input_refusal_is_one_line_from_a_real_process(empty_db, tmp_path):
    """The exact stderr of the process, not only of main(): nothing else is printed."""
    case = next(c for c in cases() if c.id == "non-utf8")
    data = write_files(tmp_path / "data", case.files())

    result = run_stage_script("transform_load_csv_data.py", ["--data-dir", str(data)], stage_env(empty_db), tmp_path)

    assert (result.returncode, result.stderr, result.stdout) == (2, PREFIX + case.expect.message + "\n", "")


# ---------------------------------------------------------------------------------------
# SQL- and formula-looking text: stored, exported and read back verbatim, never executed


TRICKY = {
    "first_name": FORMULA,
    "last_name": SQL_TEXT,
    "phone": "+1-555-0100; SELECT pg_sleep(60)",
    "destination": "Paris'; DROP TABLE booking; --",
    "country": "@SUM(A1:A9)",
}


def test_load_bad_input_sql_and_formula_text_round_trips_through_load_and_export(empty_db, s3_bucket, tmp_path):
    added = {
        "customer": ["11", TRICKY["first_name"], TRICKY["last_name"], "eve@example.com", TRICKY["phone"]],
        "destination": ["11", TRICKY["destination"], TRICKY["country"], "Summer"],
        "booking": ["11", "11", "2024-03-01", TRICKY["destination"], "1", "5.00"],
    }
    data = write_files(tmp_path / "data", {
        t: csv_text(HEADERS[t], [*BASE_ROWS[t], row]).encode() for t, row in added.items()})

    assert stage.main(["--data-dir", str(data), "--rejects-dir", str(tmp_path / "rejects")]) == 0
    assert export_stage.main(["--date", "2024-05-01"]) == 0

    # Stored verbatim, and nothing ran: every table is there with its rows.
    assert query(empty_db, "SELECT first_name, last_name, phone FROM customer WHERE customer_id = 11") == [
        (TRICKY["first_name"], TRICKY["last_name"], TRICKY["phone"])]
    assert table_counts(empty_db) == {"customer": 11, "destination": 11, "booking": 11, "load_run": 1}
    # Exported verbatim: the CSV in the zip holds the same characters, quoted only as CSV needs.
    s3 = boto3.client("s3")
    exported = {}
    for key in sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]):
        if key.endswith(".csv.zip"):
            with zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())) as archive:
                (member,) = archive.namelist()
                exported[key.split("/")[-2]] = archive.read(member)  # <day>/<run>/<table>/<name>
    customer = {r["customer_id"]: r for r in csv.DictReader(io.StringIO(exported["customer"].decode(), newline=""))}
    assert (customer["11"]["first_name"], customer["11"]["last_name"], customer["11"]["phone"]) == (
        TRICKY["first_name"], TRICKY["last_name"], TRICKY["phone"])
    assert b'11,"=HYPERLINK(""http://example.com/x"",""click me"")",' + SQL_TEXT.encode() in exported["customer"]
    booking = {r["booking_id"]: r for r in csv.DictReader(io.StringIO(exported["booking"].decode(), newline=""))}
    assert (booking["11"]["destination"], booking["11"]["country"]) == (TRICKY["destination"], TRICKY["country"])
