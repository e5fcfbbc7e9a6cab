"""Benchmark of the pipeline against its physical floors, measured in the same run on the same data.

    python tests/benchmarks/run.py --bookings 1000000 [--json FILE] [--runs 3]

Generates the seeded dataset (sample_data/generate.py: customers = bookings, the 50
destinations), starts the services the tests use (embedded PostgreSQL with fsync on,
moto's S3 server on 127.0.0.1), applies travel.sql with psql, then measures, each in its
own child process (wall seconds, and peak RSS from os.wait4 on that child):

  load     transform_load_csv_data.py on the generated files, into an empty database
  reload   the same command again on the same files (nothing changes: it takes the first
           run's outcome, the files, rules, tables and rejects files being unchanged)
  recleanse
           the same again after a write of no row (UPDATE ... WHERE false): the tables
           may have changed, so it cleanses and compares every chunk with the stored rows
           floor: psql \\copy of the rows the loader loaded (dumped with \\copy TO) into a
           fresh database with the same schema, keys and constraints, in one transaction
  export   batch_transfer_data_to_cloud_storage.py
           floor: COPY TO STDOUT of the same rows + single-threaded zip at the same level
           + plain boto3 put_object of the same bytes (floors.py export)
  export-parquet
           the same with --format parquet; compared with the CSV export of the same run
           (its seconds as the "floor", and the bytes stored: the manifests' sums)
  lambda   lambda/lambda_function.py over that export
           floor: download + one pandas read_csv of all booking data + groupby (floors.py lambda)
  lambda-parquet
           the Lambda over the Parquet export (needs export-parquet); compared with the
           Lambda over the CSV export of the same run (needs lambda)
  duckdb   the named query destination-metrics-for-a-day of lambda/athena.yaml, its exact
           text, in DuckDB over the Parquet export (needs export-parquet): the objects the
           day's symlink files list, fetched with boto3 first (not measured), then the
           query in its own process (duckdb_query.py); its result must equal the Lambda's
           metrics of the same export. Reports the bytes of the Parquet column chunks the
           query reads (what Athena would bill) beside the bytes of those tables' objects
  naive    on a --naive-rows sample: the naive load (pandas to_sql, or its executemany
           equivalent without SQLAlchemy), next to the loader and the \\copy floor on it

Prints a table (stage, rows, seconds, rows/s, peak RSS, floor seconds, ratio, target) and,
with --json, writes the same figures and a description of the machine. With --runs N every
measurement is repeated N times and the medians are reported (the spread is in the JSON).
--stages export,lambda (or export,export-parquet, or export-parquet,duckdb) skips stage 3 and fills the database with
\\copy of the generator's clean rows (for 10M-row memory runs). --server production runs PostgreSQL with the settings of a production instance
(production_settings(): shared_buffers a quarter of the RAM, max_wal_size 16GB); the floors run on that same server. Services are stopped and the work folder is removed
at the end, also on Ctrl-C, unless --keep.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from waddle_common import local_services  # noqa: E402  the same servers as the tests and travel.sh's local mode
import waddle_common as common  # noqa: E402  the one declaration of the tables
from measure import CommandFailed, Measurement, measure, stop_running  # noqa: E402

PYTHON = sys.executable
DAY = "2026-01-01"
BUCKET = "waddle-benchmark"
STAGE_PREFIX = "stage/"
FLOOR_PREFIX = "floor/"
PARQUET_PREFIX = "parquet/"
STAGES = ("load", "reload", "recleanse", "export", "export-parquet", "lambda", "lambda-parquet", "duckdb", "naive")
MAIN_ROWS = ("load", "reload", "recleanse", "export", "export-parquet", "lambda", "lambda-parquet", "duckdb")
TARGETS = {"load": 1.10, "reload": 0.25, "export": 1.0, "lambda": 1.0}
MAX_LOAD_RSS_MB = 400  # stage 3, load and reload, at any size (its streaming target)
TABLES = common.LOAD_ORDER  # parents first
# Variables of the pipeline that must not leak from the caller's shell into a measured run.
CLEARED = (
    "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGPASSFILE",
    "S3_BUCKET_NAME", "S3_PREFIX", "RESULTS_PREFIX", "EXPORT_BATCH_SIZE", "EXPORT_COMPRESSION",
    "EXPORT_COMPRESSION_LEVEL", "EXPORT_FORMAT", "S3_SSE", "S3_KMS_KEY_ID", "DOWNLOAD_DIR", "REJECTS_DIR", "MAX_REJECT_RATE",
    "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "DB_SECRET_ID", "STRICT_SECURITY",
)


class BenchmarkError(Exception):
    """A step of the benchmark failed: reported in one line, exit 1."""


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class Figures:
    """Every run of one stage and of its floor; medians are what gets reported."""

    rows: int = 0
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    floor_seconds: list[float] = field(default_factory=list)
    floor_cpu_seconds: list[float] = field(default_factory=list)
    floor_peak_rss_mb: list[float] = field(default_factory=list)
    note: str = ""
    stored_bytes: int = 0  # exports: the objects' bytes, as the manifest lists them
    scanned_bytes: int = 0  # duckdb: the bytes of the column chunks the query reads
    extra: dict = field(default_factory=dict)  # further figures of the stage, reported as they are

    def add(self, run: Measurement) -> None:
        self.seconds.append(run.seconds)
        self.peak_rss_mb.append(run.peak_rss_mb)
        self.cpu_seconds.append(run.cpu_seconds)

    def add_floor(self, run: Measurement) -> None:
        self.floor_seconds.append(run.seconds)
        self.floor_peak_rss_mb.append(run.peak_rss_mb)
        self.floor_cpu_seconds.append(run.cpu_seconds)

    def summary(self) -> dict:
        seconds = statistics.median(self.seconds)
        floor = statistics.median(self.floor_seconds) if self.floor_seconds else None
        out = {
            "rows": self.rows,
            "seconds": round(seconds, 3),
            "rows_per_second": round(self.rows / seconds) if seconds else None,
            "peak_rss_mb": round(statistics.median(self.peak_rss_mb), 1),
            "floor_seconds": round(floor, 3) if floor else None,
            "floor_peak_rss_mb": round(statistics.median(self.floor_peak_rss_mb), 1) if self.floor_peak_rss_mb else None,
            "ratio": round(seconds / floor, 3) if floor else None,
            # CPU time of the measured process alone (PostgreSQL and moto not included): less
            # sensitive than wall time to other work on a shared machine.
            "cpu_seconds": round(statistics.median(self.cpu_seconds), 3) if self.cpu_seconds else None,
            "floor_cpu_seconds": round(statistics.median(self.floor_cpu_seconds), 3) if self.floor_cpu_seconds else None,
            "runs": {
                "seconds": [round(s, 3) for s in self.seconds],
                "floor_seconds": [round(s, 3) for s in self.floor_seconds],
                "peak_rss_mb": [round(m, 1) for m in self.peak_rss_mb],
                "floor_peak_rss_mb": [round(m, 1) for m in self.floor_peak_rss_mb],
            },
        }
        if self.note:
            out["note"] = self.note
        if self.stored_bytes:
            out["stored_bytes"] = self.stored_bytes
        if self.scanned_bytes:
            out["scanned_bytes"] = self.scanned_bytes
        out.update(self.extra)
        return out


def format_table(results: dict[str, dict]) -> str:
    headers = ("stage", "rows", "seconds", "CPU s", "rows/s", "peak RSS MB", "floor s", "floor RSS MB", "ratio",
               "target", "stored MB", "read MB")
    lines = []
    for stage, r in results.items():
        target = TARGETS.get(stage)
        lines.append((
            stage, f"{r['rows']:,}", f"{r['seconds']:.2f}",
            f"{r['cpu_seconds']:.1f}" if r.get("cpu_seconds") is not None else "-",
            f"{r['rows_per_second'] or 0:,}", f"{r['peak_rss_mb']:.0f}",
            f"{r['floor_seconds']:.2f}" if r["floor_seconds"] else "-",
            f"{r['floor_peak_rss_mb']:.0f}" if r["floor_peak_rss_mb"] else "-",
            f"{r['ratio']:.2f}x" if r["ratio"] else "-",
            (f"<= {target}x" if target else "-") + (f", <= {MAX_LOAD_RSS_MB} MB" if stage in ("load", "reload", "recleanse") else ""),
            f"{r['stored_bytes'] / 1e6:.1f}" if r.get("stored_bytes") else "-",
            f"{r['scanned_bytes'] / 1e6:.1f}" if r.get("scanned_bytes") else "-",
        ))
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]
    render = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in [headers, tuple("-" * w for w in widths), *lines]
    ]
    return "\n".join(render)


def machine_info() -> dict:
    def cpu_model() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "unknown"

    def memory_gb() -> float | None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
        except OSError:
            pass
        return None

    import pandas

    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "pandas": pandas.__version__,
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------
# Services and databases


class Services:
    """The embedded PostgreSQL and moto's S3 server, stopped by close() whatever happened."""

    def __init__(self, workdir: Path, fast_db: bool, settings: dict[str, str] | None = None):
        self.workdir = workdir
        self.pg = local_services.EmbeddedPostgres(workdir / "pg" / "data", fast=fast_db, settings=settings)
        self.moto = None
        self.endpoint = ""

    def start(self) -> "Services":
        self.pg.start()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
        self.moto, self.endpoint = local_services.start_moto_server()
        return self

    def close(self) -> None:
        if self.moto is not None:
            self.moto.stop()
        try:
            self.pg.stop()
        except Exception as exc:  # noqa: BLE001 - already stopped (Ctrl-C reaches it too)
            print(f"benchmark: note: stopping PostgreSQL: {exc}".splitlines()[0], file=sys.stderr)

    def env(self, dbname: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a measured child: this run's database and S3, nothing else."""
        env = {k: v for k, v in os.environ.items() if k not in CLEARED}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID="benchmark-key-id",
            AWS_SECRET_ACCESS_KEY="benchmark-secret-key", AWS_DEFAULT_REGION="us-east-1",
        )
        if dbname:
            env["DATABASE_URL"] = self.pg.url(dbname)
        env.update(extra)
        return env

    def psql_env(self, dbname: str) -> dict[str, str]:
        """libpq variables, so the password never appears on a command line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k not in CLEARED}
        env.update(PGHOST="127.0.0.1", PGPORT=str(self.pg.port), PGUSER="postgres",
                   PGPASSWORD=self.pg.password, PGDATABASE=dbname)
        return env

    def psql(self, dbname: str, script: str, what: str) -> Measurement:
        path = self.workdir / "psql-script.sql"
        path.write_text("\\set ON_ERROR_STOP 1\n" + script)
        return measure([local_services.psql_path(), "-X", "-q", "-f", str(path)], self.psql_env(dbname), what=what)

    def query(self, dbname: str, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(self.pg.url(dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def fresh_database(self, dbname: str) -> None:
        """An empty database named `dbname` with travel.sql applied."""
        self.drop_database(dbname)
        self.query("postgres", f'CREATE DATABASE "{dbname}"')
        self.psql(dbname, (REPO / "travel.sql").read_text(), what="psql -f travel.sql")

    def drop_database(self, dbname: str) -> None:
        self.query("postgres", f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def counts(self, dbname: str) -> dict[str, int]:
        return {t: self.query(dbname, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def copy_in_script(clean_dir: Path) -> str:
    """One transaction of \\copy FROM, parents first: the load floor."""
    lines = ["BEGIN;"]
    lines += [f"\\copy {t} FROM '{clean_dir / (t + '.csv')}' WITH (FORMAT csv)" for t in TABLES]
    return "\n".join([*lines, "COMMIT;", ""])


def copy_out_script(clean_dir: Path) -> str:
    """The rows as loaded, in key order: exactly what a floor load has to write."""
    return "".join(
        f"\\copy (SELECT * FROM {t} ORDER BY {common.SCHEMA[t].key}) TO '{clean_dir / (t + '.csv')}' "
        "WITH (FORMAT csv)\n"
        for t in TABLES
    )


# ---------------------------------------------------------------------------------------
# The measured steps


class Benchmark:
    def __init__(self, args: argparse.Namespace, svc: Services, workdir: Path):
        self.args = args
        self.svc = svc
        self.workdir = workdir
        self.figures: dict[str, Figures] = {}
        self.lambda_parquet_metrics: list[dict] | None = None  # the Lambda's answer over the Parquet export

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def generate(self, rows: int, out: Path) -> None:
        self.log(f"generating {rows:,} customers and bookings in {out}")
        subprocess.run(
            [PYTHON, str(REPO / "sample_data" / "generate.py"), "--customers", str(rows), "--bookings", str(rows),
             "--out", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )

    def run_loader(self, dbname: str, data: Path, what: str) -> Measurement:
        return measure(
            [PYTHON, str(REPO / "transform_load_csv_data.py"), "--data-dir", str(data),
             "--rejects-dir", str(self.workdir / "rejects")],
            self.svc.env(dbname), cwd=self.workdir, what=what,
        )

    def load_floor(self, clean: Path, dbname: str = "bench_floor") -> Measurement:
        self.svc.fresh_database(dbname)
        try:
            return self.svc.psql(dbname, copy_in_script(clean), what="load floor (psql \\copy)")
        finally:
            self.svc.drop_database(dbname)

    def load_and_reload(self, raw: Path, clean: Path) -> None:
        load, reload = self.figures.setdefault("load", Figures()), self.figures.setdefault("reload", Figures())
        recleanse = self.figures.setdefault("recleanse", Figures())
        for run in range(self.args.runs):
            self.svc.fresh_database("bench")
            self.log(f"load, run {run + 1}")
            load.add(self.run_loader("bench", raw, "transform_load_csv_data.py (load)"))
            if "reload" in self.args.stages:
                self.log(f"reload, run {run + 1}")
                reload.add(self.run_loader("bench", raw, "transform_load_csv_data.py (reload)"))
            if "recleanse" in self.args.stages:
                self.svc.query("bench", "UPDATE destination SET destination = destination WHERE false")
                self.log(f"recleanse, run {run + 1}")
                recleanse.add(self.run_loader("bench", raw, "transform_load_csv_data.py (recleanse)"))
            if run == 0:
                self.svc.psql("bench", copy_out_script(clean), what="dump of the loaded rows")
            self.log(f"load floor, run {run + 1}")
            load.add_floor(self.load_floor(clean))
        load.rows = sum(self.svc.counts("bench").values())
        for again in ("reload", "recleanse"):  # compared with the load floor
            figures = self.figures[again]
            figures.rows = load.rows
            figures.floor_seconds, figures.floor_peak_rss_mb = load.floor_seconds, load.floor_peak_rss_mb
            figures.floor_cpu_seconds = load.floor_cpu_seconds
            if not figures.seconds:
                del self.figures[again]

    def direct_fill(self, clean: Path) -> None:
        """Without stage 3: \\copy the generator's clean rows straight into the tables."""
        self.log(f"writing the clean rows of {self.args.bookings:,} bookings to {clean}")
        subprocess.run(
            [PYTHON, str(HERE / "clean_data.py"), "--bookings", str(self.args.bookings), "--out", str(clean)],
            check=True, stdout=subprocess.DEVNULL,
        )
        self.svc.fresh_database("bench")
        self.log("filling the database with psql \\copy (direct path, stage 3 not run)")
        run = self.svc.psql("bench", copy_in_script(clean), what="direct \\copy fill")
        self.log(f"direct fill took {run.seconds:.1f} s")

    def export(self) -> None:
        figures = self.figures.setdefault("export", Figures())
        env = self.svc.env("bench", S3_BUCKET_NAME=BUCKET, S3_PREFIX=STAGE_PREFIX)
        for run in range(self.args.runs):
            self.log(f"export, run {run + 1}")
            figures.add(measure(
                [PYTHON, str(REPO / "batch_transfer_data_to_cloud_storage.py"), "--date", DAY,
                 "--batch-size", str(self.args.batch_size)],
                env, cwd=self.workdir, what="batch_transfer_data_to_cloud_storage.py",
            ))
            self.log(f"export floor, run {run + 1}")
            figures.add_floor(measure(
                [PYTHON, str(HERE / "floors.py"), "export", "--bucket", BUCKET, "--prefix", FLOOR_PREFIX,
                 "--day", DAY, "--batch-size", str(self.args.batch_size), "--level", "6"],
                self.svc.env("bench"), cwd=self.workdir, what="export floor",
            ))
        figures.rows = sum(self.svc.counts("bench").values())
        figures.stored_bytes = self.stored_bytes(STAGE_PREFIX)

    def export_parquet(self) -> None:
        """Stage 4 with --format parquet on the same rows; the CSV export's seconds are its "floor"."""
        figures = self.figures.setdefault("export-parquet", Figures())
        env = self.svc.env("bench", S3_BUCKET_NAME=BUCKET, S3_PREFIX=PARQUET_PREFIX)
        for run in range(self.args.runs):
            self.log(f"export-parquet, run {run + 1}")
            figures.add(measure(
                [PYTHON, str(REPO / "batch_transfer_data_to_cloud_storage.py"), "--date", DAY, "--format", "parquet",
                 "--batch-size", str(self.args.batch_size)],
                env, cwd=self.workdir, what="batch_transfer_data_to_cloud_storage.py --format parquet",
            ))
        csv_export = self.figures.get("export")
        if csv_export:
            figures.floor_seconds, figures.floor_peak_rss_mb = csv_export.seconds, csv_export.peak_rss_mb
            figures.floor_cpu_seconds = csv_export.cpu_seconds
            figures.note = "floor = the CSV (zip) export of the same rows in this run"
        figures.rows = sum(self.svc.counts("bench").values())
        figures.stored_bytes = self.stored_bytes(PARQUET_PREFIX)

    def stored_bytes(self, prefix: str) -> int:
        """The bytes of the objects the day's manifest under `prefix` lists."""
        import boto3

        env = self.svc.env()
        s3 = boto3.client("s3", endpoint_url=self.svc.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}{DAY}/_manifest.json")["Body"].read())
        return sum(o["bytes"] for o in manifest["objects"])

    def metrics_parquet(self) -> None:
        """The Lambda over the Parquet export; the Lambda over the CSV export is its "floor"."""
        figures = self.figures.setdefault("lambda-parquet", Figures())
        env = self.svc.env(None, S3_BUCKET_NAME=BUCKET, S3_PREFIX=PARQUET_PREFIX)
        expected = self.svc.counts("bench")["booking"]
        for run in range(self.args.runs):
            self.log(f"lambda-parquet, run {run + 1}")
            result = measure([PYTHON, str(REPO / "lambda" / "lambda_function.py"), "--date", DAY, "--json"],
                             env, cwd=self.workdir, what="lambda_function.py (Parquet export)")
            answer = json.loads(result.stdout)
            total = answer["totals"]["total_bookings"]
            if total != expected:
                raise BenchmarkError(f"the Lambda counted {total} Parquet bookings, the database holds {expected}")
            self.lambda_parquet_metrics = answer["metrics"]
            figures.add(result)
        csv_lambda = self.figures.get("lambda")
        if csv_lambda:
            figures.floor_seconds, figures.floor_peak_rss_mb = csv_lambda.seconds, csv_lambda.peak_rss_mb
            figures.floor_cpu_seconds = csv_lambda.cpu_seconds
            figures.note = "floor = the Lambda over the CSV (zip) export of the same rows in this run"
        figures.rows = expected

    def duckdb_query(self) -> None:
        """The day-metrics named query in DuckDB over the Parquet export's symlinked objects."""
        from duckdb_query import parquet_bytes

        figures = self.figures.setdefault("duckdb", Figures())
        folder = self.workdir / "athena"
        shutil.rmtree(folder, ignore_errors=True)
        self.log("duckdb: fetching the objects the symlink files list")
        fetched = measure([PYTHON, str(HERE / "duckdb_query.py"), "fetch", "--bucket", BUCKET, "--prefix",
                           PARQUET_PREFIX, "--day", DAY, "--out", str(folder)],
                          self.svc.env(None), cwd=self.workdir, what="duckdb_query.py fetch")
        expected = self.lambda_metrics_parquet()
        query_seconds, answer = [], {}
        for run in range(self.args.runs):
            self.log(f"duckdb, run {run + 1}")
            result = measure([PYTHON, str(HERE / "duckdb_query.py"), "query", "--dir", str(folder), "--day", DAY],
                             self.svc.env(None), cwd=self.workdir, what="duckdb_query.py query")
            answer = json.loads(result.stdout)
            got = [dict(zip(answer["columns"], row, strict=True)) for row in answer["rows"]]
            if got != expected:
                raise BenchmarkError("DuckDB's answer to the named query differs from the Lambda's metrics "
                                     f"of the same export (first rows: {got[:2]} against {expected[:2]})")
            query_seconds.append(answer["query_seconds"])
            figures.add(result)
        tables = {table: parquet_bytes(folder, table, columns) for table, columns in answer["columns_read"].items()}
        figures.rows = sum(row["total_bookings_per_destination"] for row in expected)
        figures.stored_bytes = sum(t["bytes"] for t in tables.values())
        figures.scanned_bytes = sum(t["bytes_read"] for t in tables.values())
        figures.note = ("the named query destination-metrics-for-a-day over the objects its tables' symlink files "
                        "list, fetched first; stored = those objects, read = their column chunks the query reads")
        figures.extra = {
            "query_seconds": statistics.median(query_seconds),
            "fetch_seconds": round(fetched.seconds, 3),
            "tables": tables,
            "export_bytes": self.stored_bytes(PARQUET_PREFIX),
            "equals_lambda": True,
            "duckdb": answer["duckdb"],
            "threads": answer["threads"],
        }
        shutil.rmtree(folder, ignore_errors=True)

    def lambda_metrics_parquet(self) -> list[dict]:
        """The Lambda's metrics of the Parquet export: from the lambda-parquet stage, or one run."""
        if self.lambda_parquet_metrics is None:
            self.log("duckdb: the Lambda over the Parquet export, for its metrics (not measured)")
            env = self.svc.env(None, S3_BUCKET_NAME=BUCKET, S3_PREFIX=PARQUET_PREFIX)
            result = measure([PYTHON, str(REPO / "lambda" / "lambda_function.py"), "--date", DAY, "--json"],
                             env, cwd=self.workdir, what="lambda_function.py (Parquet export)")
            self.lambda_parquet_metrics = json.loads(result.stdout)["metrics"]
        return self.lambda_parquet_metrics

    def metrics(self) -> None:
        figures = self.figures.setdefault("lambda", Figures())
        env = self.svc.env(None, S3_BUCKET_NAME=BUCKET, S3_PREFIX=STAGE_PREFIX)
        expected = self.svc.counts("bench")["booking"]
        for run in range(self.args.runs):
            self.log(f"lambda, run {run + 1}")
            result = measure(
                [PYTHON, str(REPO / "lambda" / "lambda_function.py"), "--date", DAY, "--json"],
                env, cwd=self.workdir, what="lambda_function.py",
            )
            total = json.loads(result.stdout)["totals"]["total_bookings"]
            if total != expected:
                raise BenchmarkError(f"the Lambda counted {total} bookings, the database holds {expected}")
            figures.add(result)
            self.log(f"lambda floor, run {run + 1}")
            figures.add_floor(measure(
                [PYTHON, str(HERE / "floors.py"), "lambda", "--bucket", BUCKET,
                 "--manifest", f"{STAGE_PREFIX}{DAY}/_manifest.json"],
                self.svc.env(None), cwd=self.workdir, what="lambda floor",
            ))
        figures.rows = expected

    def naive(self) -> None:
        """The naive load on a sample, next to the loader and the floor on the same sample."""
        rows = min(self.args.naive_rows, self.args.bookings)
        if rows == self.args.bookings and "load" in self.figures:
            # The sample is the whole dataset, already loaded, dumped and floored: reuse those.
            clean, loader = self.workdir / "clean", self.figures["load"]
            total = loader.rows
            floor = Measurement(loader.floor_seconds[0], loader.floor_peak_rss_mb[0], "", loader.floor_cpu_seconds[0])
        else:
            clean, loader, total = self.sample_load(rows)
            self.log("load floor on the sample")
            floor = self.load_floor(clean)
        self.svc.fresh_database("bench_naive")
        self.log("naive load on the sample")
        naive = measure([PYTHON, str(HERE / "floors.py"), "naive", "--data-dir", str(clean)],
                        self.svc.env("bench_naive"), cwd=self.workdir, what="naive load")
        loaded = sum(self.svc.counts("bench_naive").values())
        if loaded != total:
            raise BenchmarkError(f"the naive load stored {loaded} rows, the loader {total}")
        self.svc.drop_database("bench_naive")
        self.figures["naive"] = Figures(rows=total, note=json.loads(naive.stdout)["method"])
        self.figures["naive"].add(naive)
        self.figures["naive"].add_floor(floor)
        self.figures["loader_on_sample"] = Figures(rows=total, seconds=loader.seconds[:1],
                                                   peak_rss_mb=loader.peak_rss_mb[:1],
                                                   cpu_seconds=loader.cpu_seconds[:1])
        self.figures["loader_on_sample"].add_floor(floor)

    def sample_load(self, rows: int) -> tuple[Path, Figures, int]:
        """Generate and load a `rows` sample; its clean rows, the loader's figures, rows loaded."""
        raw, clean = self.workdir / "sample_raw", self.workdir / "sample_clean"
        self.generate(rows, raw)
        self.svc.fresh_database("bench_sample")
        self.log(f"loader on the {rows:,}-row sample")
        loader = Figures()
        loader.add(self.run_loader("bench_sample", raw, "transform_load_csv_data.py (sample)"))
        clean.mkdir(exist_ok=True)
        self.svc.psql("bench_sample", copy_out_script(clean), what="dump of the sample")
        total = sum(self.svc.counts("bench_sample").values())
        self.svc.drop_database("bench_sample")
        return clean, loader, total


# ---------------------------------------------------------------------------------------
# Entry point


def stage_list(text: str) -> tuple[str, ...]:
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if {"reload", "recleanse"} & set(stages) and "load" not in stages:
        raise argparse.ArgumentTypeError("reload and recleanse need load")
    if "lambda" in stages and "export" not in stages:
        raise argparse.ArgumentTypeError("lambda reads the export: add export")
    if "lambda-parquet" in stages and "export-parquet" not in stages:
        raise argparse.ArgumentTypeError("lambda-parquet reads the Parquet export: add export-parquet")
    if "duckdb" in stages and "export-parquet" not in stages:
        raise argparse.ArgumentTypeError("duckdb reads the Parquet export: add export-parquet")
    if "duckdb" in stages and importlib.util.find_spec("duckdb") is None:
        raise argparse.ArgumentTypeError("the duckdb stage needs PyPI duckdb (requirements-dev.txt); "
                                         "install it or leave the stage out")
    return stages


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bookings", type=positive, default=1_000_000, help="bookings (= customers) to generate")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--runs", type=positive, default=1, help="repeat each measurement; medians are reported")
    parser.add_argument("--stages", type=stage_list, default=STAGES, help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--naive-rows", type=positive, default=100_000, help="sample size of the naive load")
    parser.add_argument("--batch-size", type=positive, default=50_000, help="export rows per object")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, database files)")
    parser.add_argument("--fast-db", action="store_true",
                        help="PostgreSQL with fsync off (quick smoke runs; figures are then not realistic)")
    parser.add_argument("--server", choices=("default", "production"), default="default",
                        help="PostgreSQL's settings: its defaults, or those of a production instance "
                             "(production_settings(): a quarter of the RAM for shared_buffers, larger WAL)")
    return parser


def production_settings() -> dict[str, str]:
    """What a production instance sized for this machine would set, where PostgreSQL's defaults
    (128 MB of shared_buffers, 1 GB max_wal_size) are sized for a small one: a quarter of the
    RAM as shared buffers (as RDS does), and WAL enough that a bulk load is not cut by
    checkpoints every few seconds."""
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    return {"shared_buffers": f"{ram_mb // 4}MB", "wal_buffers": "64MB", "max_wal_size": "16GB",
            "checkpoint_timeout": "15min"}


WORK_ENTRIES = ("pg", "raw", "clean", "sample_raw", "sample_clean", "rejects", "athena", "psql-script.sql")


def remove_work(workdir: Path, created: bool) -> None:
    """Remove the work folder if this run created it, else only what this run put in it."""
    if created:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in WORK_ENTRIES:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="waddle-bench-")) if created else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    server_settings = production_settings() if args.server == "production" else {}
    svc = Services(workdir, fast_db=args.fast_db, settings=server_settings)
    bench = Benchmark(args, svc, workdir)
    started = time.monotonic()
    machine = machine_info()
    try:
        svc.start()
        import boto3

        env = svc.env()
        boto3.client(
            "s3", endpoint_url=svc.endpoint, region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)
        raw, clean = workdir / "raw", workdir / "clean"
        clean.mkdir(exist_ok=True)
        if "load" in args.stages:
            bench.generate(args.bookings, raw)
            bench.load_and_reload(raw, clean)
        elif "export" in args.stages or "export-parquet" in args.stages:
            bench.direct_fill(clean)
        if "export" in args.stages:
            bench.export()
        if "export-parquet" in args.stages:
            bench.export_parquet()
        if "lambda" in args.stages:
            bench.metrics()
        if "lambda-parquet" in args.stages:
            bench.metrics_parquet()
        if "duckdb" in args.stages:
            bench.duckdb_query()
        if "naive" in args.stages:
            bench.naive()
    except KeyboardInterrupt:
        stop_running()
        print("benchmark: interrupted; cleaning up", file=sys.stderr)
        return 130
    except (CommandFailed, BenchmarkError, subprocess.CalledProcessError, RuntimeError) as exc:
        stop_running()
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 1
    finally:
        svc.close()
        if args.keep:
            print(f"benchmark: work folder kept: {workdir}", file=sys.stderr)
        else:
            remove_work(workdir, created)

    results = {stage: figures.summary() for stage, figures in bench.figures.items()}
    machine["load_average_end"] = list(os.getloadavg())
    report = {
        **{stage: results[stage] for stage in MAIN_ROWS if stage in results},
        **({"naive": {**results["naive"], "loader_on_sample": results["loader_on_sample"]}} if "naive" in results else {}),
        "bookings": args.bookings,
        "runs": args.runs,
        "fast_db": args.fast_db,
        "server_settings": server_settings,
        "export_batch_size": args.batch_size,
        "machine": machine,
        "total_seconds": round(time.monotonic() - started, 1),
    }
    main_rows = {s: results[s] for s in MAIN_ROWS if s in results}
    print(f"data-waddle benchmark: {args.bookings:,} bookings, {args.runs} run(s), "
          f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']} GB RAM")
    if main_rows:
        print(format_table(main_rows))
        print("ratio = seconds / floor seconds (medians); reload and recleanse are compared with the load floor, "
              "export-parquet and lambda-parquet with their CSV counterparts")
        if "duckdb" in main_rows:
            d = main_rows["duckdb"]
            print(f"duckdb: the day-metrics named query, {d['query_seconds']:.2f} s in DuckDB {d['duckdb']} "
                  f"({d['threads']} threads), equal to the Lambda's metrics; it reads "
                  f"{d['scanned_bytes'] / 1e6:.1f} MB of column chunks of the {d['stored_bytes'] / 1e6:.1f} MB "
                  f"of objects of its tables ({d['export_bytes'] / 1e6:.1f} MB the whole day's export)")
    if "naive" in results:
        sample = {"naive": results["naive"], "loader (sample)": results["loader_on_sample"]}
        print(f"\nnaive load on a {results['naive']['rows']:,}-row sample ({results['naive']['note']}):")
        print(format_table(sample))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
