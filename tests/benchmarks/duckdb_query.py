"""A named Athena query of lambda/athena.yaml, run in DuckDB over a day's Parquet export:
the benchmark's stand-in for Athena, which cannot run here.

    python duckdb_query.py fetch --bucket B --prefix P --day D --out DIR [--query DayMetricsQuery]
        Fetches, with boto3, the objects that the day's symlink files list
        (<prefix><day>/_symlink/<table>/symlink.txt) for each table the query reads, into
        DIR/<table>/export_day=<day>/, as Athena would resolve the day. Prints JSON: the
        objects and their bytes per table.
    python duckdb_query.py query --dir DIR --day D [--query DayMetricsQuery]
        Binds each table name to those objects as the Glue table declares it (its columns
        plus the export_day partition, as tests/test_export_athena_queries.py does), runs the
        query's exact text from the template with the day as its parameters, and prints JSON:
        the rows (the value as exact two-decimal text), the columns DuckDB's plan reads of
        each table, the query's own seconds. No DuckDB extension is installed or loaded
        (DuckDB's S3 support would be downloaded): the files are local.

parquet_bytes() then sums the Parquet column chunks of the columns read (their compressed
sizes, from each file's metadata): what Athena, which bills the bytes it scans, would read.
The benchmark runs `query` in its own child process, so that its peak RSS is DuckDB's alone.
S3 comes from boto3's default chain (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "lambda" / "athena.yaml"
# The named queries of one day (every parameter is the day), by their resource in the template.
DAY_QUERIES = ("DayMetricsQuery",)
sys.path.insert(0, str(REPO))


def load_template(path: Path = TEMPLATE) -> dict:
    """The CloudFormation template as data; its short-form tags (!Ref, !Sub ...) as plain values
    (the queries and the tables' columns use none)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)

    Loader.add_multi_constructor("!", any_tag)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)


def named_query(template: dict, resource: str) -> str:
    return template["Resources"][resource]["Properties"]["QueryString"]


def glue_tables(template: dict) -> dict[str, list[str]]:
    """Each Glue table's name and its columns (the partition key not included), in order."""
    tables = {}
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Glue::Table":
            described = resource["Properties"]["TableInput"]
            tables[described["Name"]] = [c["Name"] for c in described["StorageDescriptor"]["Columns"]]
    return tables


def query_tables(template: dict, sql: str) -> list[str]:
    """The Glue tables the query names after FROM or JOIN, in the template's order."""
    named = {name.lower() for name in re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_]\w*)", sql, re.IGNORECASE)}
    return [table for table in glue_tables(template) if table in named]


def fetch(args: argparse.Namespace) -> dict:
    import boto3

    import batch_transfer_data_to_cloud_storage as stage

    template = load_template()
    s3 = boto3.client("s3")
    out, listed = Path(args.out), {}
    for table in query_tables(template, named_query(template, args.query)):
        body = s3.get_object(Bucket=args.bucket, Key=stage.symlink_key(args.prefix, args.day, table))["Body"].read()
        uris = body.decode("utf-8").splitlines()
        if not uris or not all(uri.startswith(f"s3://{args.bucket}/") for uri in uris):
            raise SystemExit(f"duckdb_query: the symlink file of {table} lists {uris[:3]}")
        target = out / table / f"export_day={args.day}"
        target.mkdir(parents=True, exist_ok=True)
        total = 0
        for uri in uris:
            key = uri[len(f"s3://{args.bucket}/"):]
            path = target / key.rsplit("/", 1)[1]
            s3.download_file(args.bucket, key, str(path))
            total += path.stat().st_size
        listed[table] = {"objects": len(uris), "bytes": total}
    return {"tables": listed}


def catalogue(folder: Path, tables: dict[str, list[str]]):
    """A DuckDB connection where each fetched table's name reads its objects as its Glue table
    declares it: exactly its columns, plus the export_day partition (text, as in Glue)."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for table, columns in tables.items():
        files = (folder / table).as_posix().replace("'", "''") + "/*/*.parquet"
        con.execute(f"CREATE VIEW {table} AS SELECT {', '.join(columns)}, export_day FROM read_parquet("
                    f"'{files}', hive_partitioning = true, hive_types = {{'export_day': VARCHAR}})")
    return con


def columns_read(con, sql: str, params: list[str], tables: dict[str, list[str]]) -> dict[str, list[str]]:
    """The columns each Parquet scan of DuckDB's plan reads, by table (export_day, the partition,
    comes from the path and is not read). DuckDB's plan does not name a scan's view, so each
    scan is matched with the one table whose columns hold its projections; a scan that more
    than one table could hold (destination_id, destination, country are booking columns too)
    goes to the table left once the unambiguous scans are placed."""
    scans = []

    def walk(node: dict) -> None:
        if node.get("name") == "READ_PARQUET":
            scans.append(set(node.get("extra_info", {}).get("Projections", [])) - {"export_day"})
        for child in node.get("children", []):
            walk(child)

    for tree in json.loads(con.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchall()[0][1]):
        walk(tree)
    if len(scans) != len(tables):
        raise SystemExit(f"duckdb_query: {len(scans)} Parquet scans in the plan for {len(tables)} tables")
    found: dict[str, list[str]] = {}
    pending = list(scans)
    while pending:
        placed = False
        for scan in list(pending):
            fits = [t for t, cols in tables.items() if t not in found and scan <= set(cols)]
            if len(fits) == 1:
                found[fits[0]] = [c for c in tables[fits[0]] if c in scan]
                pending.remove(scan)
                placed = True
        if not placed:
            raise SystemExit(f"duckdb_query: cannot tell which table scans {pending} read")
    return found


def run_query(args: argparse.Namespace) -> dict:
    import duckdb

    template = load_template()
    sql = named_query(template, args.query)
    tables = {t: cols for t, cols in glue_tables(template).items() if t in query_tables(template, sql)}
    started = time.perf_counter()
    con = catalogue(Path(args.dir), tables)
    cursor = con.execute(sql, [args.day] * sql.count("?"))
    names = [column[0] for column in cursor.description]
    rows = cursor.fetchall()
    seconds = time.perf_counter() - started
    value = names.index("total_booking_value_per_destination")
    out_rows = []
    for row in rows:
        row = list(row)
        if row[value].as_tuple().exponent != -2:
            raise SystemExit(f"duckdb_query: {row[value]!r} is not an exact two-decimal value")
        row[value] = str(row[value])
        out_rows.append(row)
    return {
        "query": args.query, "columns": names, "rows": out_rows, "query_seconds": round(seconds, 3),
        "columns_read": columns_read(con, sql, [args.day] * sql.count("?"), tables),
        "duckdb": duckdb.__version__, "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
    }


def parquet_bytes(folder: Path, table: str, columns: Sequence[str]) -> dict:
    """The table's fetched objects: their bytes, and the compressed bytes of the column chunks
    of `columns` (what a scan of those columns reads, footers aside)."""
    import pyarrow.parquet as pq

    total = read = objects = 0
    for path in sorted((folder / table).glob("*/*.parquet")):
        objects += 1
        total += path.stat().st_size
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            for index in range(metadata.num_columns):
                chunk = metadata.row_group(group).column(index)
                if chunk.path_in_schema in columns:
                    read += chunk.total_compressed_size
    return {"objects": objects, "bytes": total, "columns_read": list(columns), "bytes_read": read}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch")
    get.add_argument("--bucket", required=True)
    get.add_argument("--prefix", default="")
    get.add_argument("--day", required=True)
    get.add_argument("--out", required=True)
    get.add_argument("--query", default="DayMetricsQuery", choices=DAY_QUERIES, help="the named query's resource")
    ask = commands.add_parser("query")
    ask.add_argument("--dir", required=True)
    ask.add_argument("--day", required=True)
    ask.add_argument("--query", default="DayMetricsQuery", choices=DAY_QUERIES, help="the named query's resource")
    args = parser.parse_args(argv)
    print(json.dumps({"fetch": fetch, "query": run_query}[args.command](args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
