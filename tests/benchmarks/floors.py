"""The reference procedures the benchmark compares the stages with, each run as a child process.

    python floors.py export --bucket B --prefix P --batch-size 50000 --level 6
        COPY ... TO STDOUT of exactly the rows stage 4 exports (its own queries), cut into
        batches of the same size, each zip-compressed at the same level on this one thread
        and stored with a plain boto3 put_object: the least work an export can do.
    python floors.py lambda --bucket B --manifest KEY
        One pandas read_csv of the whole exported booking data (the objects downloaded and
        unzipped into one buffer) and a groupby: the simplest, memory-hungry metrics.
    python floors.py naive --data-dir DIR
        The naive load, as earlier versions of this pipeline did: pandas DataFrame.to_sql of
        the clean rows. pandas needs SQLAlchemy for PostgreSQL; without it this does what
        to_sql does underneath: one executemany INSERT per table, in one transaction.

Database and S3 come from DATABASE_URL and boto3's default chain (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import waddle_common as common  # noqa: E402  the one declaration of the tables

# The columns of each table, in travel.sql's order (the order of the clean CSVs).
TABLE_COLUMNS = {table: common.SCHEMA[table].column_names for table in common.LOAD_ORDER}
LOAD_ORDER = common.LOAD_ORDER  # parents before children (foreign keys)


class SequentialBatches:
    """COPY target: every `batch_size` rows are compressed and uploaded right away, in line.

    The benchmark's data has no newline inside a value, so a row is a line here.
    """

    def __init__(self, upload, header: bytes, batch_size: int):
        self.upload, self.header, self.batch_size = upload, header, batch_size
        self.parts: list[bytes] = [header]
        self.rows = 0
        self.batches = 0

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        self.rows += data.count(b"\n")
        if self.rows >= self.batch_size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        self.batches += 1
        self.upload(self.batches, b"".join(self.parts))
        self.parts, self.rows = [self.header], 0


def export_floor(args: argparse.Namespace) -> dict:
    import boto3

    import batch_transfer_data_to_cloud_storage as stage

    s3 = boto3.client("s3")
    conn = common.connect_db("benchmark export floor")
    objects = 0
    try:
        for table in common.TABLES:
            def upload(number: int, data: bytes, table=table) -> None:
                nonlocal objects
                member = stage.member_name(table, args.day, number)
                body = stage.compress_batch(data, member, "zip", args.level, args.day)
                key = stage.batch_key(args.prefix, args.day, "floor", table, number, "zip")
                s3.put_object(Bucket=args.bucket, Key=key, Body=body)
                objects += 1

            writer = SequentialBatches(upload, stage.csv_header(table), args.batch_size)
            with conn.cursor() as cur:
                cur.copy_expert(stage.export_query(table).as_string(cur), writer)
            if writer.rows or not writer.batches:
                writer.flush()
        conn.rollback()
    finally:
        conn.close()
    return {"objects": objects}


def lambda_floor(args: argparse.Namespace) -> dict:
    import boto3
    import pandas as pd

    s3 = boto3.client("s3")
    manifest = json.loads(s3.get_object(Bucket=args.bucket, Key=args.manifest)["Body"].read())
    buffer = io.BytesIO()
    for number, entry in enumerate(o for o in manifest["objects"] if o["table"] == "booking"):
        body = s3.get_object(Bucket=args.bucket, Key=entry["key"])["Body"].read()
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            data = archive.read(archive.namelist()[0])
        buffer.write(data if number == 0 else data[data.index(b"\n") + 1:])
    buffer.seek(0)
    frame = pd.read_csv(buffer)
    del buffer
    metrics = frame.groupby("destination_id").agg(
        bookings=("booking_id", "size"),
        passengers=("number_of_passengers", "sum"),
        value=("total_booking_value", "sum"),
    )
    return {"bookings": int(metrics["bookings"].sum()), "destinations": len(metrics)}


def naive_load(args: argparse.Namespace) -> dict:
    import pandas as pd

    frames = {
        table: pd.read_csv(
            Path(args.data_dir) / f"{table}.csv", header=None, names=list(TABLE_COLUMNS[table]),
            keep_default_na=False, na_values={"phone": [""]},
        )
        for table in LOAD_ORDER
    }
    try:
        import sqlalchemy
    except ImportError:
        sqlalchemy = None
    if sqlalchemy is not None:
        engine = sqlalchemy.create_engine(os.environ["DATABASE_URL"])
        with engine.begin() as conn:
            for table in LOAD_ORDER:
                frames[table].to_sql(table, conn, if_exists="append", index=False)
        return {"method": "pandas DataFrame.to_sql (SQLAlchemy)"}
    import psycopg2

    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    try:
        with conn, conn.cursor() as cur:
            for table in LOAD_ORDER:
                columns = TABLE_COLUMNS[table]
                frame = frames[table].astype(object).where(frames[table].notna(), None)
                statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
                cur.executemany(statement, frame.itertuples(index=False, name=None))
    finally:
        conn.close()
    return {"method": "executemany INSERT via psycopg2 (what to_sql does; SQLAlchemy not installed)"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export")
    export.add_argument("--bucket", required=True)
    export.add_argument("--prefix", default="")
    export.add_argument("--day", required=True)
    export.add_argument("--batch-size", type=int, default=50_000)
    export.add_argument("--level", type=int, default=6)
    metrics = commands.add_parser("lambda")
    metrics.add_argument("--bucket", required=True)
    metrics.add_argument("--manifest", required=True)
    naive = commands.add_parser("naive")
    naive.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    run = {"export": export_floor, "lambda": lambda_floor, "naive": naive_load}[args.command]
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
