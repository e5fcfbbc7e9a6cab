"""Stage 3's streaming parts on their own: the chunked reader, the cross-chunk state of the
duplicate rules, the merge of the rejects, and the database thread's queue.

Each is checked against a plain model (a whole-file read, a dict, a sort) at many chunk sizes.
"""

from __future__ import annotations

import tempfile
import threading

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import transform_load_csv_data as stage
import waddle_common as common
from waddle_common import cleansing, load_database
from waddle_common.spill import SpilledArrays

HEADER = "booking_id,customer_id,booking_date,destination,number_of_passengers,cost_per_passenger\n"


def chunked(path, rows):
    return list(stage.read_chunks(path, "booking", "utf-8", rows))


def as_records(frames):
    whole = pd.concat(frames, ignore_index=True)
    return whole.astype(object).where(whole.notna(), None).to_dict("records")


# ---------------------------------------------------------------------------------------
# Reading in chunks


def test_load_streaming_chunks_number_records_like_the_whole_file(tmp_path):
    # Malformed records first, last, side by side and at chunk edges; an empty line (not a record).
    lines = ["1,1,2023-06-02,Paris,1,1", "short,row", "2,1,2023-06-02,Paris,1,1", "3,1,x,y,z,w,extra",
             "", "4,1,2023-06-02,Paris,1,1", "5,1,2023-06-02,Paris,1,1", "6", "7", "8,1,2023-06-02,Paris,1,1", "9"]
    path = tmp_path / "booking.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    whole = as_records(chunked(path, 1_000))

    assert [r["source_row"] for r in whole] == list(range(1, 11))
    assert [r["source_row"] for r in whole if r.get("raw_record")] == [2, 4, 7, 8, 10]
    for rows in range(1, 8):
        frames = chunked(path, rows)
        assert as_records(frames) == whole, rows
        assert all(len(f["raw_record"].dropna()) + f["raw_record"].isna().sum() == len(f) for f in frames if "raw_record" in f)


def test_load_streaming_header_only_file_gives_one_empty_chunk(tmp_path):
    path = tmp_path / "booking.csv"
    path.write_text(HEADER)
    frames = chunked(path, 7)
    assert len(frames) == 1 and frames[0].empty and list(frames[0].columns)[0] == "source_row"


def test_load_streaming_value_larger_than_a_block_at_a_chunk_edge(tmp_path):
    big = "x" * (3 * common.READ_BLOCK_BYTES)
    lines = [f"{i},1,2023-06-02,Paris,1,1" for i in range(1, 6)] + [f'6,1,2023-06-02,"{big}",1,1', "7,1,2023-06-02,Paris,1,1"]
    path = tmp_path / "booking.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    for rows in (1, 2, 5, 6, 100):
        records = as_records(chunked(path, rows))
        assert [r["booking_id"] for r in records] == [str(i) for i in range(1, 8)], rows
        assert records[5]["destination"] == big


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["good", "short", "long", "empty"]), max_size=30), rows=st.integers(1, 9))
def test_load_streaming_any_chunk_size_reads_the_same_records(tmp_path, kinds, rows):
    texts = {"good": "1,2,2023-06-02,Paris,1,1", "short": "1,2", "long": "1,2,3,4,5,6,7", "empty": ""}
    path = tmp_path / "booking.csv"
    path.write_text(HEADER + "\n".join(texts[k] for k in kinds) + "\n")
    assert as_records(chunked(path, rows)) == as_records(chunked(path, 1_000))


# ---------------------------------------------------------------------------------------
# The duplicate rules' state


def first_rows_model(batches):
    """The plain model: a dict of the first row of every key, over all batches."""
    first, out = {}, []
    for keys, rows in batches:
        for key, row in zip(zip(*keys), rows):
            first.setdefault(key, row)
            out.append(first[key])
    return out


@settings(max_examples=200, deadline=None, derandomize=True)
@given(values=st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 2)), max_size=120),
       sizes=st.lists(st.integers(1, 9), min_size=1, max_size=40), two_parts=st.booleans(),
       max_run=st.sampled_from([3, 8, cleansing.MAX_RUN]), spill=st.sampled_from([None, 1, 4]))
# Equal first halves, in memory and in files.
@example(values=[(1, 0), (1, 1), (1, 0), (1, 2), (1, 1)], sizes=[1], two_parts=True, max_run=8, spill=None)
@example(values=[(1, 0), (1, 1), (1, 0), (1, 2), (1, 1)], sizes=[1], two_parts=True, max_run=8, spill=1)
def test_load_streaming_first_seen_agrees_with_a_dict(values, sizes, two_parts, max_run, spill):
    # spill: runs of that many entries or more go to files, as stage 3 keeps them (None: all in memory).
    store = cleansing.IN_MEMORY if spill is None else SpilledArrays()
    seen, batches, start, row = cleansing.FirstSeen(store), [], 0, 1
    got = []
    defaults = cleansing.MAX_RUN, cleansing.SPILL_ENTRIES
    cleansing.MAX_RUN, cleansing.SPILL_ENTRIES = max_run, spill or defaults[1]  # capped runs: several stay apart
    try:
        check_first_seen(seen, batches, values, sizes, two_parts, got, start, row)
    finally:
        cleansing.MAX_RUN, cleansing.SPILL_ENTRIES = defaults
    if spill is not None:
        kept = {file for _, where, handle in seen._runs._runs if where is store for file, _, _ in handle}
        assert store.live == kept and not any(f.closed for f in kept)  # a merged run's files are closed
        store.close()
        assert not store.live and all(f.closed for f in kept)
    assert got == first_rows_model(batches)


def check_first_seen(seen, batches, values, sizes, two_parts, got, start, row):
    while start < len(values):
        size = sizes[len(batches) % len(sizes)]
        part = values[start:start + size]
        keys = tuple(np.array([v[i] for v in part], dtype=np.int64) for i in range(2 if two_parts else 1))
        rows = np.arange(row, row + len(part), dtype=np.int64)
        batches.append((keys, rows))
        got.extend(seen.first_rows(keys, rows).tolist())
        start, row = start + size, row + len(part)


def test_load_streaming_first_seen_keeps_few_runs():
    seen = cleansing.FirstSeen()
    for start in range(0, 100_000, 1_000):
        keys = np.arange(start, start + 1_000, dtype=np.int64)
        seen.first_rows((keys,), keys + 1)
    assert len(seen._runs) <= 8
    assert seen.first_rows((np.array([5, 99_999, 100_000]),), np.array([200_001, 200_002, 200_003])).tolist() == [
        6, 100_000, 200_003]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(ids=st.lists(st.integers(-50, 50), unique=True), cuts=st.lists(st.integers(0, 100), max_size=8),
       ascending=st.booleans())
def test_load_streaming_known_ids_in_files_agree_with_isin(ids, cuts, ascending):
    # Ids added in blocks, ascending (read from PostgreSQL) or in file order (as copied); every
    # run in a file of its own, several runs kept apart. Every number around them is asked for.
    ids = sorted(ids) if ascending else ids
    queries = np.arange(-51, 52, dtype=np.int64)
    store = SpilledArrays()
    known = cleansing.SortedKeys(store)
    defaults = cleansing.MAX_RUN, cleansing.SPILL_ENTRIES
    cleansing.MAX_RUN, cleansing.SPILL_ENTRIES = 8, 1
    try:
        for block in np.split(np.array(ids, dtype=np.int64), sorted(cuts)):
            known.add(block)
        got = known.contains(queries)
    finally:
        cleansing.MAX_RUN, cleansing.SPILL_ENTRIES = defaults
        store.close()
    assert got.tolist() == np.isin(queries, ids).tolist()


# ---------------------------------------------------------------------------------------
# Rejects merged from two ordered streams


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 200), unique=True, max_size=60), st.lists(st.booleans(), max_size=60),
       st.integers(1, 7))
def test_load_streaming_merge_by_row_gives_source_row_order(rows, sides, size):
    rows = sorted(rows)
    a = [r for r, s in zip(rows, sides + [True] * len(rows)) if s]
    b = [r for r in rows if r not in a]

    def frames(values):
        for start in range(0, len(values), size):
            yield pd.DataFrame({"source_row": values[start:start + size]})

    merged = list(stage.merge_by_row(frames(a), frames(b)))
    got = pd.concat(merged)["source_row"].tolist() if merged else []
    assert got == rows


# ---------------------------------------------------------------------------------------
# The database thread


class FakeConnection:
    """Only what ConnectionThread needs from a connection; the jobs below never use the cursor."""

    def cursor(self):
        import contextlib

        return contextlib.nullcontext(None)

    def cancel(self):
        pass

    def rollback(self):
        pass

    def close(self):
        pass


def test_load_streaming_database_queue_holds_the_cleansing_back():
    db = common.ConnectionThread(FakeConnection())
    release, running = threading.Event(), threading.Event()
    db.submit(lambda cur: (running.set(), release.wait()))
    running.wait()
    for _ in range(common.QUEUE_DEPTH - 1):
        db.submit(lambda cur: None)
    blocked = threading.Thread(target=db.submit, args=(lambda cur: None,))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive()  # a further chunk waits for a free place
    release.set()
    blocked.join()
    db.end(commit=False)


def test_load_streaming_database_failure_skips_the_rest_and_surfaces():
    db = common.ConnectionThread(FakeConnection())
    ran = []

    def fail(cur):
        raise ValueError("COPY failed")

    failing = db.submit(fail)
    with pytest.raises(ValueError):
        failing.result()
    with pytest.raises(ValueError, match="COPY failed"):
        db.submit(lambda cur: ran.append(1))
    assert ran == []
    db.end(commit=False)


# ---------------------------------------------------------------------------------------
# Failures part-way through the stream, on a real PostgreSQL


def dataset(folder, bookings: int):
    from support.datasets import write_csv

    write_csv(folder / "destination.csv", "destination_id,destination,country,popular_season\n1,Paris,France,Spring\n")
    write_csv(folder / "customer.csv", "customer_id,first_name,last_name,email,phone\n"
              + "".join(f"{i},A,B,c{i}@example.com,\n" for i in range(1, 31)))
    write_csv(folder / "booking.csv", HEADER + "".join(
        f"{i},{i % 30 + 1},2023-06-02,Paris,2,{'' if i % 5 == 0 else '10.25'}\n" for i in range(1, bookings + 1)))
    return folder


def test_load_streaming_a_chunk_the_database_refuses_rolls_back_every_chunk(schema_db, tmp_path, monkeypatch, capsys):
    from support.database import query

    # A row PostgreSQL refuses in a late chunk (a trigger stands for any failure there): the
    # chunks stored before it go too, the database thread stops, and no audit row remains.
    query(schema_db, """
        CREATE FUNCTION refuse_booking() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.booking_id = 60 THEN RAISE EXCEPTION 'refused booking 60'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON booking FOR EACH ROW EXECUTE FUNCTION refuse_booking();
    """)
    monkeypatch.setenv("LOAD_CHUNK_ROWS", "7")
    data = dataset(tmp_path / "data", 70)

    code = stage.main(["--data-dir", str(data), "--rejects-dir", str(tmp_path / "rejects")])

    assert code == 1
    assert "refused booking 60" in capsys.readouterr().err
    assert query(schema_db, "SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM booking), "
                            "(SELECT count(*) FROM load_run)") == [(0, 0, 0)]
    assert [t.name for t in threading.enumerate() if t.name.startswith("waddle-db")] == []


def test_load_streaming_pending_bookings_are_completed_after_the_last_chunk(schema_db, tmp_path, monkeypatch):
    from support.database import query

    # Every fifth booking has no cost: each waits for the median of all 70, across 10 chunks.
    monkeypatch.setenv("LOAD_CHUNK_ROWS", "7")
    data = dataset(tmp_path / "data", 70)

    assert stage.main(["--data-dir", str(data), "--rejects-dir", str(tmp_path / "rejects")]) == 0

    imputed = query(schema_db, "SELECT count(*), min(cost_per_passenger)::text, max(total_booking_value)::text "
                               "FROM booking WHERE cost_imputed")
    assert imputed == [(14, "10.25", "20.50")]
    assert query(schema_db, "SELECT rows_read, rows_loaded, rows_imputed FROM load_run_table "
                            "WHERE table_name = 'booking'") == [(70, 70, 14)]


@pytest.mark.parametrize("case", ["first", "again", "refused"])
def test_load_streaming_state_files_are_removed_when_the_load_ends(schema_db, tmp_path, monkeypatch, case):
    from support.database import query

    monkeypatch.setenv("LOAD_CHUNK_ROWS", "7")
    data = dataset(tmp_path / "data", 70)
    arguments = ["--data-dir", str(data), "--rejects-dir", str(tmp_path / "rejects")]
    if case == "again":  # after a write, so that it cleanses again and reads the stored customers' ids
        assert stage.main(arguments) == 0
        query(schema_db, "UPDATE destination SET destination = destination WHERE false")
    # Every run spilled, the stored customers' ids read a few at a time: all of the state in
    # files, under a temporary folder of this test's own. They have no name there (a killed
    # load leaves nothing behind), and the load closes every one.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    monkeypatch.setattr(cleansing, "SPILL_ENTRIES", 1)
    monkeypatch.setattr(load_database, "IDS_BLOCK_BYTES", 16)
    files, put = [], SpilledArrays.put

    def put_unnamed(self, arrays):
        handle = put(self, arrays)
        files.extend(file for file, _, _ in handle)
        assert list(temporary.iterdir()) == []
        return handle

    monkeypatch.setattr(SpilledArrays, "put", put_unnamed)
    if case == "refused":
        query(schema_db, """
            CREATE FUNCTION refuse_booking() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.booking_id = 60 THEN RAISE EXCEPTION 'refused booking 60'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON booking FOR EACH ROW EXECUTE FUNCTION refuse_booking();
        """)

    code = stage.main(arguments)

    assert code == (1 if case == "refused" else 0)
    assert len(files) > 10
    assert all(file.closed for file in files)
    assert list(temporary.iterdir()) == []
    if case != "refused":  # every booking's customer was found among the runs of known ids
        assert query(schema_db, "SELECT rows_loaded FROM load_run_table WHERE table_name = 'booking' "
                                "ORDER BY run_id DESC LIMIT 1") == [(70,)]
