"""The Athena named queries of lambda/athena.yaml, run where Athena cannot: DuckDB over the
Parquet export that stage 4 wrote to moto's S3 server.

Athena reads a day of a table as the objects its symlink file lists
(<prefix><day>/_symlink/<table>/symlink.txt, SymlinkTextInputFormat); these tests fetch
exactly those objects with boto3 (DuckDB's own S3 support is an extension it would download)
into one folder per table and day, bind the table names to them as the Glue tables declare
them (their columns and the export_day partition), and run the queries' exact text from the
template, with the day (or the range) as parameters. The answer must be the metrics Lambda's
for every day, to the cent and in its order, and what SQL on PostgreSQL says of the same
snapshot. The data covers a destination never booked, totals beyond 9999999999999999.99
(exact DECIMAL sums, never floats), names that sort differently by code point than by
locale, and several objects per table and day.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import boto3
import psycopg2
import pyarrow.parquet as pq
import pytest
from support import REPO
from support.database import query
from support.lambda_module import lambda_module

import batch_transfer_data_to_cloud_storage as stage

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("cfnlint")

TEMPLATE = REPO / "lambda" / "athena.yaml"
PREFIX = "exports/"
DAYS = ("2026-11-24", "2026-11-25", "2026-11-26")
BATCH_SIZE = "2"  # several objects per table and day
# The largest total one booking may have (travel.sql's booking_total_value_limit), as
# 2999997 passengers at 3333336666.67 (the product is exact; both fit their columns).
MAX_PASSENGERS, MAX_COST = 2999997, Decimal("3333336666.67")
METRIC_COLUMNS = ("destination_id", "destination", "country", "total_bookings_per_destination",
                  "total_booking_value_per_destination", "total_passengers_booked_per_destination")
# Parquet (Arrow) types as the Glue tables name them, for the Parquet SerDe.
GLUE_TYPES = {"int64": "bigint", "int32": "int", "date32[day]": "date", "bool": "boolean", "string": "string"}


def load_template() -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads(TEMPLATE.read_text(encoding="utf-8"))


def named_query(resource: str) -> str:
    return load_template()["Resources"][resource]["Properties"]["QueryString"]


def glue_columns(table: str) -> list[tuple[str, str]]:
    described = load_template()["Resources"][f"{table.capitalize()}Table"]["Properties"]["TableInput"]
    return [(c["Name"], c["Type"]) for c in described["StorageDescriptor"]["Columns"]]


def glue_type(arrow_type) -> str:
    text = str(arrow_type)
    if text.startswith("decimal128("):
        return "decimal" + text[len("decimal128"):].replace(", ", ",")
    return GLUE_TYPES[text]


# ---------------------------------------------------------------------------------------
# The database, changed between the days' exports


def execute(url: str, statements: list[tuple[str, tuple]]) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql, params)
    finally:
        conn.close()


def destination(dest_id: int, name: str, country: str) -> tuple[str, tuple]:
    upsert = ("INSERT INTO destination VALUES (%s, %s, %s, 'Summer') "
              "ON CONFLICT (destination_id) DO UPDATE SET destination = EXCLUDED.destination")
    return upsert, (dest_id, name, country)


def booking(booking_id: int, dest_id: int, passengers: int, cost: Decimal | str) -> tuple[str, tuple]:
    cost = Decimal(cost)
    return ("INSERT INTO booking VALUES (%s, 1, %s, '2026-11-01', %s, %s, %s, false, %s)",
            (booking_id, dest_id, passengers, cost, cost * passengers, booking_id % 2 == 0))


CHANGES = {
    "2026-11-24": [
        ("INSERT INTO customer VALUES (1, 'Ada', 'Lovelace', 'ada@example.com', NULL)", ()),
        destination(1, "Paris", "France"),
        destination(2, "Zürich", "Switzerland"),
        destination(3, "Nowhere", "Atlantis"),  # never booked, on any day
        destination(4, "Paris", "United States"),  # the same name: country decides the order
        destination(5, "paris", "France"),  # code point order: after every capital
        destination(6, "Ávila", "Spain"),  # and after every ASCII letter
        booking(1, 1, MAX_PASSENGERS, MAX_COST),
        booking(2, 2, MAX_PASSENGERS, MAX_COST),
        booking(3, 2, MAX_PASSENGERS, MAX_COST),  # Zürich: 19999999999999999.98
        booking(4, 4, 1, "0.00"),  # a booking worth nothing still counts
        booking(5, 5, 3, "12.34"),
        booking(6, 6, 2, "0.01"),
    ],
    "2026-11-25": [
        destination(7, "Lisbon", "Portugal"),  # new, not booked yet
        destination(3, "Nowhere Else", "Atlantis"),  # a renamed destination: each day its name
        booking(7, 1, 1, "0.99"),  # Paris: 10000000000000000.98
        booking(8, 6, 4, "250.00"),
    ],
    "2026-11-26": [
        destination(8, "Empty", "Nowhere"),
        booking(9, 7, 2, "19.99"),  # Lisbon booked at last
        booking(10, 7, 1, "0.01"),
        booking(11, 2, MAX_PASSENGERS, MAX_COST),  # Zürich: 29999999999999999.97
    ],
}
# Then the last day is exported again: its first run stays (retention keeps a replaced run
# for a while) but must not be read.
REEXPORT = [booking(12, 8, 5, "100.00")]


def database_metrics(url: str) -> list[tuple]:
    """The metrics as SQL on PostgreSQL computes them, in the Lambda's order (code points)."""
    rows = query(url, """
        SELECT d.destination_id, d.destination, d.country, count(b.booking_id),
               coalesce(sum(b.total_booking_value), 0), coalesce(sum(b.number_of_passengers), 0)
        FROM destination AS d LEFT JOIN booking AS b ON b.destination_id = d.destination_id
        GROUP BY d.destination_id, d.destination, d.country
        ORDER BY d.destination COLLATE "C", d.country COLLATE "C", d.destination_id""")
    return [(i, name, country, count, f"{value:.2f}", passengers)
            for i, name, country, count, value, passengers in rows]


# ---------------------------------------------------------------------------------------
# Stage 4, and what Athena would read


def export(monkeypatch, day: str) -> None:
    monkeypatch.setenv("EXPORT_FORMAT", "parquet")
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    assert stage.main(["--date", day]) == 0


def fetch_symlinked(bucket: str, day: str, folder: Path) -> dict[str, list[str]]:
    """The objects each table's symlink file lists for `day`, fetched into
    folder/<table>/export_day=<day>/; returns their keys by table."""
    s3 = boto3.client("s3")
    listed = {}
    for table in ("customer", "destination", "booking"):
        body = s3.get_object(Bucket=bucket, Key=stage.symlink_key(PREFIX, day, table))["Body"].read()
        uris = body.decode("utf-8").splitlines()
        assert uris and all(uri.startswith(f"s3://{bucket}/") for uri in uris), uris
        listed[table] = [uri[len(f"s3://{bucket}/"):] for uri in uris]
        target = folder / table / f"export_day={day}"
        target.mkdir(parents=True)
        for key in listed[table]:
            s3.download_file(bucket, key, str(target / key.rsplit("/", 1)[1]))
    return listed


def duckdb_catalogue(folder: Path):
    """A DuckDB connection where each table name reads the fetched objects as its Glue table
    declares it: exactly its columns, plus the export_day partition (text, as in Glue)."""
    # Nothing is downloaded: no extension may be installed or loaded behind our back.
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for table in ("customer", "destination", "booking"):
        columns = ", ".join(name for name, _ in glue_columns(table))
        files = (folder / table).as_posix().replace("'", "''") + "/*/*.parquet"
        con.execute(f"CREATE VIEW {table} AS SELECT {columns}, export_day FROM read_parquet("
                    f"'{files}', hive_partitioning = true, hive_types = {{'export_day': VARCHAR}})")
    return con


def as_metrics(rows: list[tuple]) -> list[tuple]:
    """Query rows as the Lambda writes them: the value as its exact two-decimal text."""
    out = []
    for *head, value, passengers in rows:
        assert isinstance(value, Decimal) and value.as_tuple().exponent == -2, value  # DECIMAL(38, 2), not a float
        out.append((*head, str(value), passengers))
    return out


def lambda_metrics(module, bucket: str, day: str) -> list[tuple]:
    """The Lambda's metrics of the same Parquet export (it resolves the day by the manifest)."""
    result = module.compute_metrics(module.s3_client(), bucket, PREFIX, day)
    return [tuple(row[name] for name in METRIC_COLUMNS) for row in result["metrics"]]


@pytest.fixture
def exported(schema_db, s3_bucket, monkeypatch, tmp_path):
    """Three days: each day's changes, then stage 4 as Parquet (the last day twice); the
    symlinked objects fetched. Returns (bucket, folder, {day: database metrics},
    {day: {table: keys}})."""
    monkeypatch.setenv("EXPORT_BATCH_SIZE", BATCH_SIZE)
    folder, truth, listed = tmp_path / "athena", {}, {}
    for day in DAYS:
        execute(schema_db, CHANGES[day])
        truth[day] = database_metrics(schema_db)
        export(monkeypatch, day)
    execute(schema_db, REEXPORT)
    truth[DAYS[-1]] = database_metrics(schema_db)
    export(monkeypatch, DAYS[-1])
    for day in DAYS:  # after every export: each day still reads as its own run
        listed[day] = fetch_symlinked(s3_bucket, day, folder)
    return s3_bucket, folder, truth, listed


# ---------------------------------------------------------------------------------------
# The tests


def test_export_athena_queries_day_metrics_equal_the_lambdas_and_the_databases(exported):
    bucket, folder, truth, _ = exported
    con = duckdb_catalogue(folder)
    sql = named_query("DayMetricsQuery")
    module = lambda_module("waddle_lambda_for_athena")
    for day in DAYS:
        cursor = con.execute(sql, [day, day])
        assert tuple(column[0] for column in cursor.description) == METRIC_COLUMNS
        got = as_metrics(cursor.fetchall())
        assert got == lambda_metrics(module, bucket, day), day
        assert got == truth[day], day
    # The cases the data was made for, read back.
    last = {row[0]: row for row in as_metrics(con.execute(sql, [DAYS[0], DAYS[0]]).fetchall())}
    assert last[3][3:] == (0, "0.00", 0)  # never booked, still listed
    assert last[2][4] == "19999999999999999.98" and last[1][4] == "9999999999999999.99"
    names = [row[1] for row in con.execute(sql, [DAYS[0], DAYS[0]]).fetchall()]
    assert names == ["Nowhere", "Paris", "Paris", "Zürich", "paris", "Ávila"]
    # The day's total as an exact sum: 4 x 9999999999999999.99 + 1578.02 (no float gets there).
    total = con.execute(f"SELECT sum(total_booking_value_per_destination) FROM ({sql})", [DAYS[2], DAYS[2]])
    assert total.fetchone()[0] == Decimal("40000000000001577.98")


def test_export_athena_queries_date_range_is_each_days_metrics(exported):
    _, folder, truth, _ = exported
    con = duckdb_catalogue(folder)
    sql = named_query("RangeMetricsQuery")
    cursor = con.execute(sql, [DAYS[0], DAYS[-1], DAYS[0], DAYS[-1]])
    assert tuple(column[0] for column in cursor.description) == ("export_day", *METRIC_COLUMNS)
    rows = [(day, *metrics) for day, *metrics in as_metrics(cursor.fetchall())]
    assert rows == [(day, *row) for day in DAYS for row in truth[day]]
    # A range inside: only its days, each with its own snapshot (never a sum over days).
    inner = as_metrics(con.execute(sql, [DAYS[1], DAYS[2], DAYS[1], DAYS[2]]).fetchall())
    assert inner == [(day, *row) for day in DAYS[1:] for row in truth[day]]
    # A day not exported reads as empty, as a projected partition without data does in Athena.
    assert con.execute(named_query("DayMetricsQuery"), ["2026-11-23", "2026-11-23"]).fetchall() == []


def test_export_athena_queries_symlinks_list_exactly_the_manifests_run_typed_as_the_glue_tables(exported):
    bucket, folder, _, listed = exported
    s3 = boto3.client("s3")
    for day in DAYS:
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{PREFIX}{day}/_manifest.json")["Body"].read())
        assert manifest["format"] == "parquet"
        for table, keys in listed[day].items():
            assert keys == [o["key"] for o in manifest["objects"] if o["table"] == table]
            assert all(key.startswith(f"{PREFIX}{day}/{manifest['run_id']}/{table}/") for key in keys)
    assert len(listed[DAYS[-1]]["booking"]) == 6  # 12 bookings in batches of 2
    # The replaced run of the last day is still there; listing the day would read both.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}{DAYS[-1]}/")["Contents"]]
    runs = {key.split("/")[2] for key in keys if stage.RUN_ID_PATTERN.fullmatch(key.split("/")[2])}
    assert len(runs) == 2
    # Every object has the Glue table's columns, in order, typed as Athena will read them.
    for table in ("customer", "destination", "booking"):
        for path in sorted((folder / table).glob("*/*.parquet")):
            schema = pq.read_schema(path)
            assert [(field.name, glue_type(field.type)) for field in schema] == glue_columns(table), path


def parquet_scans(con, sql: str, params: list[str]) -> dict[str, dict]:
    """What DuckDB's plan reads of each Parquet view: its columns and how many of its files."""
    scans = {}

    def walk(node: dict) -> None:
        info = node.get("extra_info", {})
        if node.get("name") == "READ_PARQUET":
            # Every scan's filter names the partition; the tables are told apart by columns.
            table = "booking" if "number_of_passengers" in info["Projections"] else "destination"
            # export_day is the partition: it comes from the object's location, not its bytes.
            scans[table] = {"columns": set(info["Projections"]) - {"export_day"}, "files": info["Scanning Files"]}
        for child in node.get("children", []):
            walk(child)

    for tree in json.loads(con.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()[0][1]):
        walk(tree)
    return scans


def test_export_athena_queries_read_three_columns_of_each_table_and_only_the_days_asked(exported):
    # Athena bills the bytes of the columns and partitions a query reads: the plan of each
    # named query reads three columns of each table, only of the days asked (each table has
    # its own day filter, so neither is read whole), and nothing of customer.
    _, folder, _, listed = exported
    con = duckdb_catalogue(folder)
    files = {table: sum(len(listed[day][table]) for day in DAYS) for table in ("destination", "booking")}
    for resource, params, days in [("DayMetricsQuery", [DAYS[1]] * 2, DAYS[1:2]),
                                   ("RangeMetricsQuery", [DAYS[1], DAYS[2]] * 2, DAYS[1:])]:
        scans = parquet_scans(con, named_query(resource), params)
        assert scans == {
            "destination": {"columns": {"destination_id", "destination", "country"},
                            "files": f"{sum(len(listed[d]['destination']) for d in days)}/{files['destination']}"},
            "booking": {"columns": {"destination_id", "number_of_passengers", "total_booking_value"},
                        "files": f"{sum(len(listed[d]['booking']) for d in days)}/{files['booking']}"},
        }, resource
    # Those columns' share of the day's booking bytes (what a scan reads of each object).
    read = total = 0
    for path in (folder / "booking" / f"export_day={DAYS[2]}").glob("*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        total += path.stat().st_size
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                chunk = metadata.row_group(group).column(index)
                if chunk.path_in_schema in scans["booking"]["columns"]:
                    read += chunk.total_compressed_size
    assert 0 < read < total / 2
