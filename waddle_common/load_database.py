"""Stage 3's side of PostgreSQL: the load lock, staging and comparing the rows of each
chunk, inserting and updating them, rule email_in_use (it compares with the stored
customers, so it is SQL), the ids a booking may name, and the load_run audit rows.

Every function that takes a cursor runs on the load's database thread
(common.ConnectionThread): it alone uses the connection. transform_load_csv_data.py
orchestrates them; README.md, "Stage 3", says what a load does with them.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

import waddle_common as common
from waddle_common import cleansing
from waddle_common.cleansing import Table, TableSummary

log = logging.getLogger("data_waddle.transform_load")

LOAD_LOCK_KEY = 0x5741_4444  # pg advisory lock shared by every loader ("WADD")
IDS_BLOCK_BYTES = 1 << 23  # the stored customers' ids are read about a million at a time

# The loaded columns of each table, in COPY order, and how they travel: text, except numbers
# and flags (dates and money stay text until PostgreSQL stores them).
LOAD_COLUMNS = {t: common.SCHEMA[t].column_names for t in common.LOAD_ORDER}
KEYS = {t: common.SCHEMA[t].key for t in common.LOAD_ORDER}
ARROW_TYPES = {"BIGINT": pa.int64(), "INTEGER": pa.int64(), "BOOLEAN": pa.bool_()}
LOAD_SCHEMAS = {
    t: pa.schema([(c.name, ARROW_TYPES.get(c.sql_type, pa.string())) for c in common.SCHEMA[t].columns])
    for t in common.LOAD_ORDER
}
# The customers' staging table also keeps each row's source_row and repaired flag: rule
# email_in_use, applied there, rejects rows after their chunk was counted.
STAGE_EXTRA = {"customer": ("source_row", "repaired")}


# ---------------------------------------------------------------------------------------
# Locks, and what the last load left


def take_load_lock(cur) -> None:
    """Serialise loads: a second loader waits for the first to commit (and says so)."""
    cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOAD_LOCK_KEY,))
    if not cur.fetchone()[0]:
        log.info("another load is running; waiting for it to finish")
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOAD_LOCK_KEY,))


def begin_load(cur) -> tuple[pd.DataFrame, dict[str, bool], LastRun | None]:
    """Take the load lock and set the session up: (the stored destinations' ids and names,
    {table: whether it holds rows}, the last load if nothing has written the tables since).
    Nothing else writes the three tables until this load ends, so the version of the tables
    it records is the one its own writes left."""
    take_load_lock(cur)
    cur.execute("LOCK TABLE destination, customer, booking IN SHARE ROW EXCLUSIVE MODE")
    cur.execute("SET LOCAL datestyle = 'ISO, YMD'")
    cur.execute("SELECT destination_id, destination FROM destination")
    stored = pd.DataFrame(cur.fetchall(), columns=["destination_id", "destination"])
    filled = {}
    for table in common.LOAD_ORDER:
        cur.execute(sql_text("SELECT EXISTS (SELECT 1 FROM {})", table))
        filled[table] = cur.fetchone()[0]
    return stored, filled, last_run(cur)


@dataclass
class LastRun:
    """The latest committed load, when the tables are still as it left them."""

    run_id: int
    input_key: str | None
    rejects_files: dict[str, str] | None


def last_run(cur) -> LastRun | None:
    cur.execute(
        """SELECT run_id, input_key, rejects_files FROM load_run r
           WHERE run_id = (SELECT max(run_id) FROM load_run)
             AND tables_version = (SELECT version FROM tables_version)
             AND (SELECT count(*) FROM load_run_table t WHERE t.run_id = r.run_id) = 3"""
    )
    row = cur.fetchone()
    return LastRun(*row) if row else None


def counts_of_run(cur, run_id: int) -> dict[str, TableSummary]:
    """What load run `run_id` read, loaded, repaired, imputed and rejected, per table."""
    cur.execute(
        """SELECT table_name, rows_read, rows_loaded, rows_repaired, rows_imputed, rows_rejected
           FROM load_run_table WHERE run_id = %s""", (run_id,))
    return {name: TableSummary(*counts) for name, *counts in cur.fetchall()}


# ---------------------------------------------------------------------------------------
# Staging, comparing, storing


def sql_text(template: str, *names: str):
    from psycopg2 import sql

    return sql.SQL(template).format(*map(sql.Identifier, names))


def create_staging(cur, table: str) -> None:
    from psycopg2 import sql

    cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        sql.Identifier(f"stage_{table}"), sql.Identifier(table)))
    if table in STAGE_EXTRA:
        cur.execute(sql.SQL("ALTER TABLE {} ADD source_row bigint, ADD repaired boolean").format(
            sql.Identifier(f"stage_{table}")))


def copy_rows(cur, target: str, columns: Sequence[str], data: bytes) -> int:
    """COPY CSV `data` (no header; NULL is an empty unquoted field) into `target`."""
    from psycopg2 import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(target), sql.SQL(", ").join(map(sql.Identifier, columns)))
    cur.copy_expert(statement.as_string(cur), io.BytesIO(data), size=1 << 20)
    return cur.rowcount


def stage_new_or_changed(cur, table: str, rows: pa.Table) -> None:
    """COPY into stage_<table> the rows of a chunk that are not stored yet, or stored with
    other values: the stored rows with the chunk's keys are read back and compared."""
    pending = rows.filter(pa.array(new_or_changed(rows, stored_rows(cur, table, rows[KEYS[table]]), KEYS[table])))
    if pending.num_rows:
        copy_rows(cur, f"stage_{table}", pending.column_names, as_csv(pending))


def stored_rows(cur, table: str, keys: pa.ChunkedArray) -> pa.Table:
    """The stored rows of `table` with these keys, typed as LOAD_SCHEMAS[table]."""
    from psycopg2 import sql

    statement = sql.SQL("COPY (SELECT {} FROM {} WHERE {} = ANY(%s::bigint[])) TO STDOUT WITH (FORMAT csv)").format(
        sql.SQL(", ").join(map(sql.Identifier, LOAD_COLUMNS[table])), sql.Identifier(table), sql.Identifier(KEYS[table]))
    buffer = io.BytesIO()
    wanted = "{" + ",".join(map(str, keys.to_numpy().tolist())) + "}"  # a bigint[] literal: ids are digits
    cur.copy_expert(cur.mogrify(statement, (wanted,)).decode(), buffer)
    schema = LOAD_SCHEMAS[table]
    return common.read_copy_csv(buffer.getbuffer(), schema.names, dict(zip(schema.names, schema.types)))


def new_or_changed(rows: pa.Table, stored: pa.Table, key: str) -> np.ndarray:
    """Mask of `rows` whose key is not stored, or whose stored row differs in a column."""
    positions = pd.Index(stored[key].to_numpy()).get_indexer(rows[key].to_numpy())
    found = positions >= 0
    pending = ~found
    if found.any():
        ours, theirs = rows.filter(pa.array(found)), stored.take(pa.array(positions[found]))
        differs = np.zeros(int(found.sum()), dtype=bool)
        for column in stored.column_names:
            a, b = ours[column], theirs[column]
            same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
            differs |= ~same.to_numpy(zero_copy_only=False)
        pending[found] = differs
    return pending


def upsert(cur, table: str) -> tuple[int, int]:
    """Insert the staged rows that are new, update the changed ones, leave identical ones
    untouched (PostgreSQL compares them): (inserted, updated)."""
    from psycopg2 import sql

    columns = LOAD_COLUMNS[table]
    key = KEYS[table]
    others = [c for c in columns if c != key]
    statement = sql.SQL(
        """
        WITH changed AS (
            INSERT INTO {table} AS t ({columns})
            SELECT {staged} FROM {stage} s LEFT JOIN {table} c ON c.{key} = s.{key}
            WHERE c.{key} IS NULL OR ({stored}) IS DISTINCT FROM ({new})
            ON CONFLICT ({key}) DO UPDATE SET ({others}) = ROW({excluded})
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM changed
        """
    ).format(
        table=sql.Identifier(table),
        stage=sql.Identifier(f"stage_{table}"),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        staged=sql.SQL(", ").join(sql.Identifier("s", c) for c in columns),
        key=sql.Identifier(key),
        others=sql.SQL(", ").join(map(sql.Identifier, others)),
        stored=sql.SQL(", ").join(sql.Identifier("c", c) for c in others),
        new=sql.SQL(", ").join(sql.Identifier("s", c) for c in others),
        excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in others),
    )
    cur.execute(statement)
    inserted, updated = cur.fetchone()
    return int(inserted), int(updated)


def reject_emails_in_use(cur) -> list[tuple[int, int, bool]]:
    """Rule email_in_use, on stage_customer (this run's accepted customers): a customer that
    is new or changes address cannot take one another stored customer keeps. A holder keeps
    its address unless it moves away in this run, and also when its own move is rejected, so
    the rule repeats until nothing changes (a chain: 1 takes 2's address, 2 takes the address
    of 3, who stays: both 2 and 1 are rejected). The rejected leave stage_customer:
    [(source_row, holder, repaired)], by source_row."""
    cur.execute(
        """
        CREATE TEMP TABLE moving ON COMMIT DROP AS
        SELECT s.customer_id, s.email, s.source_row, s.repaired
        FROM stage_customer s LEFT JOIN customer c USING (customer_id)
        WHERE c.email IS DISTINCT FROM s.email
        """
    )
    rejected = []
    while True:
        cur.execute(
            """
            DELETE FROM moving m USING customer c
            WHERE c.email = m.email AND c.customer_id <> m.customer_id
              AND NOT EXISTS (SELECT 1 FROM moving holder WHERE holder.customer_id = c.customer_id)
            RETURNING m.source_row, c.customer_id, m.repaired
            """
        )
        found = cur.fetchall()
        if not found:
            break
        rejected += found
    if rejected:
        cur.execute("DELETE FROM stage_customer WHERE source_row = ANY(%s)", ([row for row, _, _ in rejected],))
    return sorted(rejected)


def known_customer_ids(cur, store: cleansing.ArrayStore) -> cleansing.SortedKeys:
    """The ids of every stored customer (this run's included), kept in `store`: whom a
    booking may name. Read in ascending blocks, they make runs that do not overlap."""
    known = cleansing.SortedKeys(store)
    with tempfile.TemporaryFile(prefix="waddle-ids-") as buffer:
        cur.copy_expert("COPY (SELECT customer_id FROM customer ORDER BY 1) TO STDOUT", buffer)
        if buffer.tell():
            buffer.seek(0)
            blocks = pacsv.open_csv(buffer, read_options=pacsv.ReadOptions(
                column_names=["id"], block_size=IDS_BLOCK_BYTES, use_threads=False,
            ), convert_options=pacsv.ConvertOptions(column_types={"id": pa.int64()}))
            for block in blocks:
                known.add(block.column(0).to_numpy())
    return known


def record_run(cur, started_at: datetime, sources: dict[str, dict], summaries: dict[str, TableSummary],
               key: str, rejects: dict[str, str | None], reused: int | None) -> int:
    cur.execute(
        """INSERT INTO load_run (started_at, tool_version, source_files, input_key, tables_version,
               rejects_files, reused_run)
           VALUES (%s, %s, %s, %s, (SELECT version FROM tables_version), %s, %s) RETURNING run_id""",
        (started_at, common.__version__, json.dumps(sources), key, json.dumps(rejects), reused),
    )
    run_id = cur.fetchone()[0]
    for name, s in summaries.items():
        cur.execute(
            """INSERT INTO load_run_table (run_id, table_name, rows_read, rows_loaded, rows_repaired,
                   rows_imputed, rows_rejected, rows_inserted, rows_updated)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (run_id, name, s.read, s.loaded, s.repaired, s.imputed, s.rejected, s.inserted, s.updated),
        )
    return run_id


# ---------------------------------------------------------------------------------------
# A chunk's rows as PostgreSQL takes them


def load_rows(table: Table, extra: Sequence[str] = ()) -> pa.Table:
    """The rows of `table` to store now, in COPY order, typed as LOAD_SCHEMAS[table.name]
    (and `extra`: source_row, repaired)."""
    schema = LOAD_SCHEMAS[table.name]
    frame = table.clean.loc[:, list(schema.names)]
    if "source_row" in extra:
        frame["source_row"] = table.raw["source_row"].to_numpy()
    if "repaired" in extra:
        frame["repaired"] = cleansing.repaired_rows(table).to_numpy() & ~table.imputed.to_numpy()
    for name in extra:
        schema = schema.append(pa.field(name, pa.int64() if name == "source_row" else pa.bool_()))
    rows = pa.Table.from_pandas(frame, preserve_index=False).cast(schema)
    return rows.filter(pa.array(table.loaded))


def as_csv(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(rows, sink, write_options=pacsv.WriteOptions(include_header=False))
    return sink.getvalue().to_pybytes()

