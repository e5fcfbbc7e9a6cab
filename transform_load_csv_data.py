"""Stage 3: cleanse the three CSVs with pandas and load them into PostgreSQL, in bounded memory.

Reads destination.csv, customer.csv and booking.csv from DOWNLOAD_DIR (or --data-dir) in
chunks of LOAD_CHUNK_ROWS rows, applies the cleansing rules to each chunk (in the order of
README.md's rules table), adds total_booking_value = number_of_passengers x
cost_per_passenger (exact to the cent), and loads the accepted rows, all three tables in one
transaction. While PostgreSQL takes in chunk k, this thread cleanses chunk k+1: one database
thread owns the connection and receives finished chunks through a bounded queue. A table
that is empty takes the rows by COPY; otherwise they go through a staging table and
PostgreSQL itself inserts the new rows and updates the changed ones. Every rejected row is
written to REJECTS_DIR (one CSV per table: the row as written, its source row number and a
reject_reason) and counted in the summary, which is also stored in the load_run /
load_run_table audit tables.

This file reads and orchestrates; the rules are waddle_common/cleansing.py (pure), what is
said to PostgreSQL is waddle_common/load_database.py, and the state that outgrows memory
goes to temporary files through waddle_common/spill.py.

Needs: the schema from travel.sql; DATABASE_URL or the libpq variables (PGHOST, ...).

Example:
    python transform_load_csv_data.py --data-dir ./download_dataset
    python transform_load_csv_data.py --dry-run      # cleanse and report, change nothing
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import waddle_common as common
from waddle_common import cleansing, load_database, spill
from waddle_common.cleansing import (
    TEXT_DTYPE,
    Table,
    TableSummary,
    check_reject_rates,
    cleanse_bookings,
    cleanse_customers,
    cleanse_destinations,
    format_summary,
    summarise,
)

log = logging.getLogger("data_waddle.transform_load")


# ---------------------------------------------------------------------------------------
# Reading


def read_chunks(path: Path, table: str, encoding: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file's data records in chunks of `chunk_rows`, as text columns, with `source_row`
    = the record's 1-based number (README, "Cleansing rules").

    A record whose field count differs from the header's is kept as a row with every column
    missing, its text in `raw_record` and its count in `field_count`: rule wrong_field_count
    rejects it."""
    names = common.check_source(path, table, encoding)
    keep = [n for n in names if not n.startswith("_unnamed_")]
    for records, numbers, malformed in common.numbered_records(path, len(names), encoding, chunk_rows):
        frame = records.to_pandas(types_mapper={pa.string(): TEXT_DTYPE}.get)
        frame.columns = names
        frame = frame[keep]
        frame.insert(0, "source_row", numbers)
        if malformed:
            odd = pd.DataFrame({
                "source_row": [n for n, _, _ in malformed],
                "raw_record": [text for _, _, text in malformed],
                "field_count": pd.array([count for _, count, _ in malformed], dtype="Int64"),
            })
            frame = pd.concat([frame, odd]).sort_values("source_row", kind="stable", ignore_index=True)
            frame = frame.astype({name: TEXT_DTYPE for name in keep})
        frame.attrs["header_fields"] = len(names)  # the index column pandas writes included
        yield frame


def read_source(path: Path, table: str, encoding: str = "utf-8", chunk_rows: int = 1_000_000) -> pd.DataFrame:
    """The whole file as one frame, as read_chunks() gives it in chunks (for tests and tools)."""
    parts = list(read_chunks(path, table, encoding, chunk_rows))
    whole = pd.concat(parts, ignore_index=True)
    whole.attrs = dict(parts[0].attrs)
    return whole


def cleanse_all(raw: dict[str, pd.DataFrame], stored_destinations: pd.DataFrame | None = None,
                stored_customer_ids=()) -> dict[str, Table]:
    """cleansing.cleanse_all at the chunk size LOAD_CHUNK_ROWS sets, as the stage runs it."""
    chunk_rows = common.Settings.from_env().load_chunk_rows
    return cleansing.cleanse_all(raw, stored_destinations, stored_customer_ids, chunk_rows)


# ---------------------------------------------------------------------------------------
# Reuse: what decides a load's outcome besides the tables


def input_key(sources: dict[str, dict], encoding: str) -> str:
    """What decides a load's outcome besides the tables: the files, their encoding, and the
    code of the rules with the libraries it runs on."""
    digest = hashlib.sha256()
    for name in common.LOAD_ORDER:
        digest.update(f"{name}:{sources[name]['sha256']}\n".encode())
    digest.update(f"encoding:{encoding}\n".encode())
    for library in (np, pd, pa):
        digest.update(f"{library.__name__}:{library.__version__}\n".encode())
    for code in (Path(__file__), *(Path(m.__file__) for m in (cleansing, common, load_database, spill))):
        digest.update(code.read_bytes())
    return digest.hexdigest()


def rejects_digests(rejects_dir: Path) -> dict[str, str | None]:
    """The SHA-256 of each rejects file in `rejects_dir` (None where there is none)."""
    paths = {name: rejects_dir / f"{name}_rejects.csv" for name in common.LOAD_ORDER}
    return {name: describe_source(path)["sha256"] if path.is_file() else None for name, path in paths.items()}


def describe_source(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def unchanged_since(last: load_database.LastRun, sources: dict[str, dict], encoding: str, rejects_dir: Path) -> bool:
    """Whether the load `last` read these files with these rules, and its rejects files are
    the ones in `rejects_dir`: the tables being as it left them, this load would change
    nothing and write the same rejects and counts (README, "Stage 3")."""
    return last.input_key == input_key(sources, encoding) and last.rejects_files == rejects_digests(rejects_dir)


# ---------------------------------------------------------------------------------------
# Rows out: to the rejects files


class Rejects:
    """The rejected rows of one table: those of each chunk in order, and those a later step
    rejects (email_in_use, a pending booking), merged by source_row into the rejects file."""

    def __init__(self, table: str, columns: list[str]):
        self.table, self.columns = table, ["source_row", *columns, "reject_reason", "raw_record"]
        self.in_chunks, self.later = spill.Spool(), spill.Spool()

    def add(self, table: Table) -> None:
        rows = table.rejected()
        if len(rows):
            self.in_chunks.add(rows.reindex(columns=self.columns))

    def add_later(self, rows: pd.DataFrame) -> None:
        if len(rows):
            self.later.add(rows.reindex(columns=self.columns))

    def write(self, rejects_dir: Path) -> Path:
        """rejects_dir/<table>_rejects.csv, replaced atomically."""
        target = rejects_dir / f"{self.table}_rejects.csv"
        with common.replacing(target) as written, open(written, "w", newline="", encoding="utf-8") as out:
            pd.DataFrame(columns=self.columns).to_csv(out, index=False)
            for rows in merge_by_row(iter(self.in_chunks), iter(self.later)):
                rows.to_csv(out, index=False, header=False)
        return target

    def close(self) -> None:
        self.in_chunks.close()
        self.later.close()


def merge_by_row(*streams: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Streams of frames, each in source_row order, as one stream in source_row order."""
    buffers = [pd.DataFrame() for _ in streams]
    open_ = [True] * len(streams)
    while True:
        for i, stream in enumerate(streams):
            if open_[i] and buffers[i].empty:
                buffers[i] = next(stream, None)
                if buffers[i] is None:
                    open_[i], buffers[i] = False, pd.DataFrame()
        if not any(open_) and all(b.empty for b in buffers):
            return
        # Every row up to the smallest last row of a stream still open is final.
        limits = [int(b["source_row"].iloc[-1]) for b, more in zip(buffers, open_) if more and not b.empty]
        limit = min(limits) if limits else None
        ready = []
        for i, rows in enumerate(buffers):
            if rows.empty:
                continue
            upto = rows["source_row"] <= limit if limit is not None else np.ones(len(rows), dtype=bool)
            ready.append(rows[upto])
            buffers[i] = rows[~upto]
        yield pd.concat(ready).sort_values("source_row", kind="stable")


def make_rejects_dir(rejects_dir: Path) -> None:
    """Create REJECTS_DIR before anything is read, so that a bad one stops the load early."""
    try:
        rejects_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise common.ConfigError(f"REJECTS_DIR {rejects_dir} is a file, not a folder; set REJECTS_DIR or --rejects-dir to a folder") from None
    except OSError as exc:
        raise common.ConfigError(f"cannot create REJECTS_DIR {rejects_dir}: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------
# The stage


class Run:
    """One load: the phases share the database thread, the file state, the rejects, the counts."""

    def __init__(self, db: common.ConnectionThread, paths: dict[str, Path], encoding: str, chunk_rows: int,
                 columns: dict[str, list[str]]):
        self.db, self.paths, self.encoding, self.chunk_rows = db, paths, encoding, chunk_rows
        self.filled: dict[str, bool] = {}
        self.spilled = spill.SpilledArrays()
        self.state = cleansing.FileState.kept_in(self.spilled)
        self.rejects = {t: Rejects(t, [c for c in columns[t] if not c.startswith("_unnamed_")]) for t in common.LOAD_ORDER}
        self.summaries = {t: TableSummary(0, 0, 0, 0, 0) for t in common.LOAD_ORDER}
        self.copied_customer_ids = cleansing.SortedKeys(self.spilled)

    def chunks(self, table: str) -> Iterator[pd.DataFrame]:
        with common.progress(None, table, unit="rows") as bar:
            for raw in read_chunks(self.paths[table], table, self.encoding, self.chunk_rows):
                bar.update(len(raw))
                yield raw

    def begin(self, table: str) -> None:
        if self.filled[table]:
            self.db.submit(load_database.create_staging, table)

    def store(self, table: Table, rows_read: bool = True) -> None:
        """Count the chunk, keep its rejects, and queue its rows for PostgreSQL."""
        self.summaries[table.name] += summarise(table, rows_read)
        if rows_read:
            self.rejects[table.name].add(table)
        else:
            self.rejects[table.name].add_later(table.rejected())
        name = table.name
        extra = load_database.STAGE_EXTRA.get(name, ()) if self.filled[name] else ()
        rows = load_database.load_rows(table, extra)
        if rows.num_rows and self.filled[name]:
            self.db.submit(load_database.stage_new_or_changed, name, rows)
        elif rows.num_rows:
            self.db.submit(load_database.copy_rows, name, rows.column_names, load_database.as_csv(rows))
            if name == "customer":
                self.copied_customer_ids.add(rows["customer_id"].to_numpy())

    def known_customer_ids(self) -> cleansing.SortedKeys:
        """Whom a booking may name. Into an empty customer table this load copied every
        customer it accepted, and only those: no need to wait for PostgreSQL to ask it."""
        if self.filled["customer"]:
            return self.db.call(load_database.known_customer_ids, self.spilled)
        return self.copied_customer_ids

    def finish(self, table: str) -> None:
        """Store the staged rows (a table that held rows); count what was inserted and updated."""
        summary = self.summaries[table]
        if self.filled[table]:
            summary.inserted, summary.updated = self.db.call(load_database.upsert, table)
        else:
            summary.inserted = summary.loaded
        log.info("%s: %d rows read, %d inserted, %d updated", table, summary.read, summary.inserted, summary.updated)

    def close(self) -> None:
        """Remove the rejects' spools and the state's files, however the load ended."""
        for rejects in self.rejects.values():
            rejects.close()
        self.spilled.close()


def load_destinations(run: Run) -> pd.DataFrame:
    """Cleanse and store destination.csv: the accepted destinations' ids and names."""
    run.begin("destination")
    accepted = []
    for raw in run.chunks("destination"):
        table = cleanse_destinations(raw, run.state)
        run.store(table)
        accepted.append(table.clean.loc[table.loaded, ["destination_id", "destination"]])
    run.finish("destination")
    return pd.concat(accepted, ignore_index=True)


def load_customers(run: Run) -> None:
    """Cleanse and store customer.csv; with customers stored already, rule email_in_use in
    PostgreSQL before they are written."""
    run.begin("customer")
    for raw in run.chunks("customer"):
        run.store(cleanse_customers(raw, run.state))
    run.state.customer_ids = run.state.emails = None
    if run.filled["customer"]:
        reject_customers_later(run, run.db.call(load_database.reject_emails_in_use))
    run.finish("customer")


def reject_customers_later(run: Run, rejected: list[tuple[int, int, bool]]) -> None:
    """Rule email_in_use's rejects, their rows read again from the file for their text."""
    if not rejected:
        return
    holders = pd.Series({row: holder for row, holder, _ in rejected}, dtype="int64")
    for raw in read_chunks(run.paths["customer"], "customer", run.encoding, run.chunk_rows):
        rows = raw[raw["source_row"].isin(holders.index)].copy()
        if len(rows):
            shown = cleansing.quoted(rows["email"])[np.ones(len(rows), dtype=bool)]
            holder = holders[rows["source_row"]].tolist()
            rows["reject_reason"] = [f"email_in_use: {e} belongs to customer_id {h}" for e, h in zip(shown, holder)]
            run.rejects["customer"].add_later(rows)
    summary = run.summaries["customer"]
    summary.loaded -= len(rejected)
    summary.rejected += len(rejected)
    summary.repaired -= sum(1 for _, _, repaired in rejected if repaired)


def load_bookings(run: Run, destinations: pd.DataFrame) -> None:
    """Cleanse and store booking.csv: the bookings without a cost wait in a spool for the
    median of the file's costs (rule impute_cost), kept in a file meanwhile."""
    lookup = cleansing.DestinationLookup(destinations)
    known_customers = run.known_customer_ids()
    run.begin("booking")
    pending = spill.Spool()
    with tempfile.TemporaryFile(prefix="waddle-costs-") as costs:
        for raw in run.chunks("booking"):
            table = cleanse_bookings(raw, lookup, known_customers, run.state)
            run.store(table)
            table.costs.tofile(costs)
            if table.pending.any():
                pending.add(table.take(table.pending))
        run.state.booking_ids = known_customers = None
        costs.seek(0)
        median = cleansing.median_cents(np.fromfile(costs, dtype=np.int64))
    for part in pending:
        run.store(cleansing.complete_pending(part, median), rows_read=False)
    pending.close()
    run.finish("booking")


def cleanse_and_load(run: Run, stored_destinations: pd.DataFrame, rejects_dir: Path) -> None:
    """The three files, parents first, cleansed and queued for PostgreSQL; the rejects written."""
    accepted = load_destinations(run)
    load_customers(run)
    load_bookings(run, cleansing.known_destinations(accepted, stored_destinations))
    for rejects in run.rejects.values():
        rejects.write(rejects_dir)


def use_jemalloc() -> None:
    """pyarrow's jemalloc pool hands the memory of finished chunks back; its default pool
    (mimalloc) keeps it, about 100 MB more at any size."""
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without it
        pass


def reject_rate(text: str) -> float:
    """--max-reject-rate: MAX_REJECT_RATE's grammar (common.parse_share)."""
    try:
        return common.parse_share(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser():
    parser = common.stage_parser(__doc__)
    parser.add_argument("--data-dir", metavar="DIR", help="folder with the three CSVs (default: $DOWNLOAD_DIR)")
    parser.add_argument("--rejects-dir", metavar="DIR", help="where rejected rows go (default: $REJECTS_DIR)")
    parser.add_argument(
        "--max-reject-rate", type=reject_rate, metavar="RATE",
        help="refuse the load when a table loses more than this share of its rows (default: $MAX_REJECT_RATE, 0.10)",
    )
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the CSVs (default: utf-8)")
    parser.add_argument("--dry-run", action="store_true", help="cleanse, write rejects and the summary; change no table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    return common.run_stage("transform_load_csv_data", args, lambda settings: transform_and_load(settings, args))


def transform_and_load(settings: common.Settings, args) -> int:
    """Read, cleanse and load the three files, parents first, in one transaction."""
    import psycopg2

    started_at = datetime.now(UTC)
    use_jemalloc()
    data_dir = Path(args.data_dir) if args.data_dir else settings.download_dir
    rejects_dir = Path(args.rejects_dir) if args.rejects_dir else settings.rejects_dir
    max_rate = settings.max_reject_rate if args.max_reject_rate is None else args.max_reject_rate
    paths = {name: data_dir / f"{name}.csv" for name in common.LOAD_ORDER}
    make_rejects_dir(rejects_dir)
    columns = {name: common.check_source(paths[name], name, args.encoding) for name in common.LOAD_ORDER}

    log.info("loading into %s", common.describe_database())
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="waddle-sha256")
    sources = hashing.submit(lambda: {name: describe_source(path) for name, path in paths.items()})
    hashing.shutdown(wait=False)
    db = common.ConnectionThread(common.connect_db("transform_load"))
    run = Run(db, paths, args.encoding, settings.load_chunk_rows, columns)
    try:
        try:
            stored_destinations, run.filled, last = db.call(load_database.begin_load)
            reused = last if last and unchanged_since(last, sources.result(), args.encoding, rejects_dir) else None
            if reused:
                log.info("the files, the rules and the tables are as load run %d left them: nothing to change",
                         reused.run_id)
                run.summaries = db.call(load_database.counts_of_run, reused.run_id)
            else:
                cleanse_and_load(run, stored_destinations, rejects_dir)
            check_reject_rates({name: run.summaries[name] for name in common.TABLES}, max_rate)
            db.call(lambda cur: cur.execute("SET CONSTRAINTS ALL IMMEDIATE"))  # a deferred e-mail clash shows here
            if not args.dry_run:
                key = input_key(sources.result(), args.encoding)
                db.call(load_database.record_run, started_at, sources.result(), run.summaries, key,
                        reused.rejects_files if reused else rejects_digests(rejects_dir),
                        reused.run_id if reused else None)
        except BaseException:
            db.stop()
            db.end(commit=False)
            raise
        db.end(commit=not args.dry_run)
    except psycopg2.Error as exc:
        raise common.PipelineError(
            f"load failed and was rolled back, no table changed: {common.first_line(common.redact(exc))}"
        ) from None
    finally:
        run.close()

    ordered = {name: run.summaries[name] for name in common.TABLES}
    print(format_summary(ordered, args.dry_run))
    return common.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
