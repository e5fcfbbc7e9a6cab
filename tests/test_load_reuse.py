"""Stage 3 takes the outcome of the last load when nothing that decides it has changed: the
same files, encoding and rules, the tables as that load left them (tables_version), and its
rejects files in the rejects folder. Anything else and it cleanses again (README, "Stage 3").
The goldens prove that a taken outcome is byte for byte what cleansing again gives
(test_load_golden.py, test_load_golden_again_takes_the_first_outcome)."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from support.database import apply_schema, query

import transform_load_csv_data as stage
from waddle_common import load_database

RUNS = "SELECT run_id, reused_run FROM load_run ORDER BY run_id"
ANY_WRITE = "UPDATE destination SET destination = destination WHERE false"  # no row, still a write


def load(data, rejects, *extra) -> int:
    return stage.main(["--data-dir", str(data), "--rejects-dir", str(rejects), *extra])


def row_versions(url) -> dict[str, list[tuple]]:
    """Every row of the three tables with its row version (xmin): equal only if untouched."""
    return {t: query(url, f"SELECT xmin::text, * FROM {t} ORDER BY 2") for t in ("customer", "destination", "booking")}


def contents(url) -> dict[str, list[tuple]]:
    return {t: query(url, f"SELECT * FROM {t} ORDER BY 1") for t in ("customer", "destination", "booking")}


def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_load_reuse_the_same_files_again_take_the_last_outcome(schema_db, sample_dir, tmp_path, capsys):
    rejects = tmp_path / "rejects"
    assert load(sample_dir, rejects) == 0
    written = row_versions(schema_db)
    capsys.readouterr()

    assert load(sample_dir, rejects) == 0
    taken = capsys.readouterr()
    assert row_versions(schema_db) == written  # not a row rewritten
    taken_rejects = files_of(rejects)

    query(schema_db, ANY_WRITE)  # the tables were written: the next load cleanses
    assert load(sample_dir, rejects) == 0
    cleansed = capsys.readouterr()

    assert query(schema_db, RUNS) == [(1, None), (2, 1), (3, None)]
    assert (taken.out, taken.err) == (cleansed.out, cleansed.err)
    assert taken_rejects == files_of(rejects)
    counts = "SELECT table_name, rows_read, rows_loaded, rows_repaired, rows_imputed, rows_rejected, rows_inserted, " \
             "rows_updated FROM load_run_table WHERE run_id = %s ORDER BY 1"
    assert query(schema_db, counts, (2,)) == query(schema_db, counts, (3,))
    assert query(schema_db, "SELECT count(DISTINCT tables_version), count(DISTINCT input_key) FROM load_run") == [(2, 1)]


@pytest.mark.parametrize("statement", [
    "UPDATE customer SET phone = '000' WHERE customer_id = 1",
    "DELETE FROM booking WHERE booking_id = 207",
    "TRUNCATE booking",
    "INSERT INTO destination VALUES (999, 'Nowhere', 'Noland', 'Spring')",
    ANY_WRITE,
])
def test_load_reuse_not_after_a_write_to_the_tables(schema_db, sample_dir, tmp_path, statement):
    """A hand edit, even of no row, makes the next load cleanse again and put the rows back."""
    assert load(sample_dir, tmp_path / "rejects") == 0
    loaded = contents(schema_db)
    query(schema_db, statement)

    assert load(sample_dir, tmp_path / "rejects") == 0

    assert query(schema_db, RUNS) == [(1, None), (2, None)]
    after = contents(schema_db)
    after["destination"] = [row for row in after["destination"] if row[0] != 999]  # rows not in the files stay
    assert after == loaded


def edit(path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


@pytest.mark.parametrize("change", ["a file", "the encoding", "the rules", "a rejects file edited",
                                    "a rejects file removed", "another rejects folder"])
def test_load_reuse_not_when_what_decides_the_outcome_differs(schema_db, sample_dir, tmp_path, monkeypatch, change):
    rejects = tmp_path / "rejects"
    assert load(sample_dir, rejects) == 0
    wrote = files_of(rejects)
    extra = []
    if change == "a file":
        edit(sample_dir / "customer.csv", b"\n1,", b"\n1, ")  # a space the rules trim: the same rows
    elif change == "the encoding":
        extra = ["--encoding", "utf-8-sig"]  # reads these files alike
    elif change == "the rules":
        rules = tmp_path / "cleansing.py"
        rules.write_bytes(b"# a comment is a change\n" + Path(stage.cleansing.__file__).read_bytes())
        monkeypatch.setattr(stage.cleansing, "__file__", str(rules))
    elif change == "a rejects file edited":
        with open(rejects / "booking_rejects.csv", "ab") as fh:
            fh.write(b"999,a row nobody rejected\n")
    elif change == "a rejects file removed":
        (rejects / "customer_rejects.csv").unlink()
    else:
        rejects = tmp_path / "other"

    assert load(sample_dir, rejects, *extra) == 0

    assert query(schema_db, RUNS) == [(1, None), (2, None)]
    assert files_of(rejects) == wrote  # written again, as the first load wrote them


def test_load_reuse_a_dry_run_takes_it_too_and_records_nothing(schema_db, sample_dir, tmp_path, capsys):
    assert load(sample_dir, tmp_path / "rejects") == 0
    capsys.readouterr()

    assert load(sample_dir, tmp_path / "rejects", "--dry-run") == 0

    out = capsys.readouterr().out
    assert out.endswith("dry run: nothing was written to the database\n")
    assert "customer           204       201         1         0         3         0         0" in out
    assert query(schema_db, RUNS) == [(1, None)]


def test_load_reuse_refuses_as_cleansing_would_at_a_lower_max_reject_rate(schema_db, sample_dir, tmp_path, capsys):
    assert load(sample_dir, tmp_path / "rejects") == 0
    wrote = files_of(tmp_path / "rejects")
    capsys.readouterr()

    assert load(sample_dir, tmp_path / "rejects", "--max-reject-rate", "0.01") == 2
    taken = capsys.readouterr()
    query(schema_db, ANY_WRITE)
    assert load(sample_dir, tmp_path / "rejects", "--max-reject-rate", "0.01") == 2
    cleansed = capsys.readouterr()

    assert (taken.out, taken.err) == (cleansed.out, cleansed.err)
    assert "above MAX_REJECT_RATE" in taken.err
    assert files_of(tmp_path / "rejects") == wrote
    assert query(schema_db, RUNS) == [(1, None)]


def test_load_keeps_other_writers_out_until_it_ends(schema_db):
    """What makes the recorded version the load's own: from its start, nobody else writes."""
    loader, other = psycopg2.connect(schema_db), psycopg2.connect(schema_db)
    try:
        with loader.cursor() as cur:
            load_database.begin_load(cur)
        with other.cursor() as cur:
            cur.execute("SELECT count(*) FROM customer")  # readers (the export) go on
            for table in ("destination", "customer", "booking"):
                with pytest.raises(psycopg2.errors.LockNotAvailable):
                    cur.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE NOWAIT")  # what INSERT takes
                other.rollback()
        loader.rollback()
        with other.cursor() as cur:
            cur.execute("LOCK TABLE booking IN ROW EXCLUSIVE MODE NOWAIT")
    finally:
        loader.close()
        other.close()


def test_load_reuse_needs_every_table_written_to_count(schema_db):
    """Each of the three tables counts its writes: a table without the trigger could be
    edited unseen."""
    before = query(schema_db, "SELECT version FROM tables_version")[0][0]
    for table in ("destination", "customer", "booking"):
        query(schema_db, f"DELETE FROM {table} WHERE false")
    assert query(schema_db, "SELECT version FROM tables_version")[0][0] == before + 3


def test_load_reuse_survives_the_schema_applied_again(schema_db, sample_dir, tmp_path):
    """travel.sql again (travel.sh runs it every time) keeps the version and the triggers."""
    assert load(sample_dir, tmp_path / "rejects") == 0
    apply_schema(schema_db)
    assert load(sample_dir, tmp_path / "rejects") == 0
    assert query(schema_db, RUNS) == [(1, None), (2, 1)]
