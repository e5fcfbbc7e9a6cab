"""Stage 4 with EXPORT_FORMAT=parquet against moto's S3 server over HTTP and a real PostgreSQL:
typed objects equal to the database (money exact at the limit), the manifest's format, and the
Hive symlink files for engines: what they list, when they change, what a reader resolving a day
through them sees while the day is replaced, and the runs retention must keep for them."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import io
import json
import threading
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from urllib.parse import unquote, urlparse

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.contract_data import load_dataset
from support.database import query
from support.exports import DB_QUERIES
from support.fault_proxy import ForwardingHandler

import batch_transfer_data_to_cloud_storage as stage
import waddle_common as common
from waddle_common.local_services import free_port

DAY = "2024-05-01"
LIMIT = Decimal("9999999999999999.99")  # the largest total stage 3 and travel.sql allow

@pytest.fixture(autouse=True)
def no_export_format(monkeypatch):
    """conftest's list of cleared variables predates EXPORT_FORMAT: a shell's value must not leak in."""
    monkeypatch.delenv("EXPORT_FORMAT", raising=False)


@pytest.fixture
def dataset_db(schema_db):
    """The contract's dataset (BIGINT ids, a customer without phone, names such as "NA" and
    "Nan", commas, quotes, non-ASCII text, a destination without bookings)."""
    load_dataset(schema_db)
    return schema_db


_clients: dict[tuple[str | None, str | None], object] = {}


def s3(endpoint: str | None = None):
    """A client of moto (`endpoint`, else the environment's), made once per endpoint."""
    import os

    where = (endpoint, os.environ.get("AWS_ENDPOINT_URL"))
    if where not in _clients:
        _clients[where] = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
    return _clients[where]


def get(bucket: str, key: str, endpoint: str | None = None) -> bytes:
    return s3(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(bucket: str) -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def manifest_of(bucket: str, day: str = DAY) -> dict:
    return json.loads(get(bucket, f"{day}/_manifest.json"))


def database_rows(url: str) -> dict[str, list[dict]]:
    """table -> its exported rows as psycopg2 types them (int, str, None, date, Decimal, bool)."""
    out = {}
    for table, sql in DB_QUERIES.items():
        names = stage.EXPORT_COLUMNS[table]
        out[table] = [dict(zip(names, row, strict=True)) for row in query(url, sql)]
    return out


def parquet_rows(body: bytes) -> list[dict]:
    return pq.read_table(io.BytesIO(body)).to_pylist()


def export(*args: str) -> int:
    return stage.main(["--date", DAY, *args])


# ---------------------------------------------------------------------------------------
# Pure parts


def test_export_parquet_schema_is_waddle_common_schema_plus_the_destination_names():
    for table in common.TABLES:
        declared = common.SCHEMA[table].columns
        schema = stage.arrow_schema(table)
        own = [f for f in schema if f.name in common.SCHEMA[table].column_names]
        assert [(f.name, f.nullable) for f in own] == [(c.name, c.nullable) for c in declared]
        assert list(stage.KEYS.values()) == [common.SCHEMA[t].key for t in common.TABLES]
    booking = stage.arrow_schema("booking")
    assert booking.names == ["booking_id", "customer_id", "destination_id", "destination", "country", "booking_date",
                             "number_of_passengers", "cost_per_passenger", "total_booking_value",
                             "passengers_imputed", "cost_imputed"]
    assert [str(t) for t in booking.types] == ["int64", "int64", "int64", "string", "string", "date32[day]", "int32",
                                               "decimal128(12, 2)", "decimal128(22, 2)", "bool", "bool"]
    assert stage.arrow_schema("customer").field("phone").nullable
    assert not stage.arrow_schema("customer").field("email").nullable


@pytest.mark.parametrize("sql_type, arrow", [
    ("BIGINT", pa.int64()), ("INTEGER", pa.int32()), ("DATE", pa.date32()), ("BOOLEAN", pa.bool_()),
    ("TEXT", pa.string()), ("NUMERIC(12, 2)", pa.decimal128(12, 2)), ("NUMERIC(22,2)", pa.decimal128(22, 2)),
])
def test_export_parquet_arrow_type_of_each_sql_type(sql_type, arrow):
    assert stage.arrow_type(sql_type) == arrow


def test_export_parquet_arrow_type_refuses_an_undeclared_sql_type():
    with pytest.raises(ValueError, match="REAL"):
        stage.arrow_type("REAL")  # a float type for money would never pass unnoticed


def test_export_parquet_batch_reads_copys_csv_exactly():
    # COPY's CSV: NULL is an empty unquoted field, "" an empty text; no other null spelling.
    customers = b'1,NA,"",nan@example.com,\n2,"x\ny","a ""b""",b@example.com,""\n'
    rows = parquet_rows(stage.parquet_batch(customers, "customer"))
    assert rows == [
        {"customer_id": 1, "first_name": "NA", "last_name": "", "email": "nan@example.com", "phone": None},
        {"customer_id": 2, "first_name": "x\ny", "last_name": 'a "b"', "email": "b@example.com", "phone": ""},
    ]
    bookings = (b"9000000000000000001,2,3,Nan,NA,2026-02-28,37037037,270000000.27,9999999999999999.99,t,f\n"
                b"2,2,3,Nan,NA,1970-01-01,1,0.00,0.00,f,t\n")
    table = pq.read_table(io.BytesIO(stage.parquet_batch(bookings, "booking")))
    assert table.schema == stage.arrow_schema("booking")
    first, second = table.to_pylist()
    assert first["total_booking_value"] == LIMIT and str(first["total_booking_value"]) == "9999999999999999.99"
    assert first["cost_per_passenger"] == Decimal("270000000.27")
    assert (first["booking_id"], first["booking_date"], first["passengers_imputed"], first["cost_imputed"]) == (
        9000000000000000001, date(2026, 2, 28), True, False)
    assert (second["total_booking_value"], second["booking_date"]) == (Decimal("0.00"), date(1970, 1, 1))
    assert Decimal(float(LIMIT)) != LIMIT  # a float on the way would have shown


def test_export_parquet_batch_one_row_group_and_snappy():
    data = b"".join(b"%d,Place %d,Country,Summer\n" % (i, i) for i in range(1, 1001))
    metadata = pq.ParquetFile(io.BytesIO(stage.parquet_batch(data, "destination"))).metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (1000, 1)
    assert {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)} == {"SNAPPY"}


def test_export_parquet_batch_of_an_empty_table_has_the_schema_and_no_rows():
    table = pq.read_table(io.BytesIO(stage.parquet_batch(b"", "booking")))
    assert table.schema == stage.arrow_schema("booking") and table.num_rows == 0


def test_export_parquet_batch_refuses_what_a_decimal_cannot_hold_exactly():
    with pytest.raises(pa.ArrowInvalid):  # three decimals: rescaling would lose a digit; never rounded
        stage.parquet_batch(b"1,1,1,a,b,2026-01-01,1,1.005,1.005,f,f\n", "booking")


def test_export_format_setting_off_the_list_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("S3_BUCKET_NAME", "never-contacted")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    monkeypatch.setenv("EXPORT_FORMAT", "ORC")
    assert export() == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "batch_transfer_data_to_cloud_storage: error: EXPORT_FORMAT must be csv or parquet, got 'orc'"]


# ---------------------------------------------------------------------------------------
# Against PostgreSQL and the S3 server


@pytest.mark.slow
def test_export_parquet_objects_are_typed_and_equal_the_database(dataset_db, s3_bucket, capsys):
    assert export("--format", "parquet", "--batch-size", "4") == 0
    manifest = manifest_of(s3_bucket)
    run = manifest["run_id"]
    assert (manifest["format"], manifest["compression"]) == ("parquet", "snappy")
    assert {t: manifest["tables"][t]["columns"] for t in common.TABLES} == {
        t: list(stage.EXPORT_COLUMNS[t]) for t in common.TABLES}
    assert [o["key"] for o in manifest["objects"] if o["table"] == "booking"] == [
        f"{DAY}/{run}/booking/booking_{DAY}_batch_{n:04d}.parquet" for n in (1, 2, 3, 4)]
    symlinks = [f"{DAY}/_symlink/{t}/symlink.txt" for t in common.TABLES]
    assert keys(s3_bucket) == sorted([o["key"] for o in manifest["objects"]] + [f"{DAY}/_manifest.json", *symlinks])

    expected = database_rows(dataset_db)
    exported: dict[str, list[dict]] = {}
    for entry in manifest["objects"]:
        head = s3().head_object(Bucket=s3_bucket, Key=entry["key"], ChecksumMode="ENABLED")
        assert (head["ServerSideEncryption"], head["ContentType"]) == ("AES256", "application/vnd.apache.parquet")
        body = get(s3_bucket, entry["key"])
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"])
        parquet = pq.ParquetFile(io.BytesIO(body))
        assert parquet.schema_arrow == stage.arrow_schema(entry["table"])
        assert (parquet.metadata.num_row_groups, parquet.metadata.num_rows) == (1, entry["rows"])
        exported.setdefault(entry["table"], []).extend(parquet.read().to_pylist())
    assert exported == expected  # types too: Decimal, date, bool, int, None for the missing phone
    assert any(row["phone"] is None for row in exported["customer"])
    assert any(row["phone"] == "" for row in exported["customer"])
    assert "manifest: s3://" in capsys.readouterr().out


@pytest.mark.slow
def test_export_parquet_money_at_the_limit_stays_exact(schema_db, s3_bucket):
    query(schema_db, "INSERT INTO destination VALUES (1, 'Paris', 'France', 'Spring')")
    query(schema_db, "INSERT INTO customer VALUES (1, 'A', 'B', 'a@example.com', NULL)")
    for booking_id, passengers, cost in ((1, 37037037, "270000000.27"), (2, 1, "9999999999.99"), (3, 3, "0.10")):
        query(schema_db, "INSERT INTO booking VALUES (%s, 1, 1, '2026-01-01', %s, %s::numeric, %s * %s::numeric)",
              (booking_id, passengers, cost, passengers, cost))
    assert export("--format", "parquet") == 0
    (entry,) = [o for o in manifest_of(s3_bucket)["objects"] if o["table"] == "booking"]
    rows = parquet_rows(get(s3_bucket, entry["key"]))
    assert [(r["cost_per_passenger"], r["total_booking_value"]) for r in rows] == [
        (Decimal("270000000.27"), LIMIT), (Decimal("9999999999.99"), Decimal("9999999999.99")),
        (Decimal("0.10"), Decimal("0.30"))]
    assert [str(r["total_booking_value"]) for r in rows] == ["9999999999999999.99", "9999999999.99", "0.30"]
    assert query(schema_db, "SELECT total_booking_value FROM booking ORDER BY 1 DESC LIMIT 1")[0][0] == LIMIT


@pytest.mark.slow
def test_export_parquet_row_larger_than_a_read_block_is_exported_whole(schema_db, s3_bucket):
    # Stage 3 stores a 3 MB name; COPY sends it as one record, larger than Arrow's read block
    # (with newlines in values, Arrow refused such a record as "straddling" block boundaries).
    big = "x" * (3 * common.READ_BLOCK_BYTES) + "\ny"
    query(schema_db, "INSERT INTO customer VALUES (1, %s, 'B', 'a@example.com', NULL), "
                     "(2, 'C', 'D', 'c@example.com', NULL)", (big,))
    assert export("--format", "parquet") == 0
    (entry,) = [o for o in manifest_of(s3_bucket)["objects"] if o["table"] == "customer"]
    rows = parquet_rows(get(s3_bucket, entry["key"]))
    assert [(r["customer_id"], r["first_name"]) for r in rows] == [(1, big), (2, "C")]


@pytest.mark.slow
def test_export_parquet_empty_tables_have_one_schema_only_object_each(schema_db, s3_bucket):
    assert export("--format", "parquet") == 0
    manifest = manifest_of(s3_bucket)
    assert [(o["table"], o["rows"]) for o in manifest["objects"]] == [(t, 0) for t in sorted(common.TABLES)]
    for entry in manifest["objects"]:
        table = pq.read_table(io.BytesIO(get(s3_bucket, entry["key"])))
        assert (table.schema, table.num_rows) == (stage.arrow_schema(entry["table"]), 0)
        assert get(s3_bucket, f"{DAY}/_symlink/{entry['table']}/symlink.txt") == (
            f"s3://{s3_bucket}/{entry['key']}\n".encode())


# ---------------------------------------------------------------------------------------
# Symlink files for engines


def symlinked(bucket: str, table: str, endpoint: str | None = None) -> list[str]:
    """The keys the table's symlink file lists (they must all be in this bucket)."""
    lines = get(bucket, f"{DAY}/_symlink/{table}/symlink.txt", endpoint).decode("utf-8").splitlines()
    assert all(line.startswith(f"s3://{bucket}/") for line in lines), lines
    return [line.removeprefix(f"s3://{bucket}/") for line in lines]


@pytest.mark.slow
def test_export_parquet_symlink_files_list_exactly_the_manifests_objects(dataset_db, s3_bucket):
    assert export("--format", "parquet", "--batch-size", "4") == 0
    manifest = manifest_of(s3_bucket)
    for table in common.TABLES:
        assert symlinked(s3_bucket, table) == [o["key"] for o in manifest["objects"] if o["table"] == table]
        head = s3().head_object(Bucket=s3_bucket, Key=f"{DAY}/_symlink/{table}/symlink.txt")
        assert head["ServerSideEncryption"] == "AES256" and head["ContentType"].startswith("text/plain")


@pytest.mark.slow
def test_export_csv_removes_the_days_symlink_files_and_keeps_the_parquet_run(dataset_db, s3_bucket):
    assert export("--format", "parquet") == 0
    parquet = manifest_of(s3_bucket)
    assert export() == 0  # CSV: the engines' Parquet tables cannot read it
    csv_manifest = manifest_of(s3_bucket)
    assert (csv_manifest["format"], csv_manifest["compression"]) == ("csv", "zip")
    assert not [k for k in keys(s3_bucket) if "/_symlink/" in k]
    assert [k["run_id"] for k in csv_manifest["kept_runs"]] == [parquet["run_id"]]
    assert {o["key"] for o in parquet["objects"]} <= set(keys(s3_bucket))
    assert export("--format", "parquet") == 0  # and back: the symlink files name the new run
    assert symlinked(s3_bucket, "booking") == [o["key"] for o in manifest_of(s3_bucket)["objects"]
                                               if o["table"] == "booking"]


class HookedStore:
    """An HTTP proxy on 127.0.0.1 in front of moto that calls `hook(phase, method, key)` before
    and after forwarding every write (PUT, POST, DELETE), one write at a time, and answers
    `refuse(method, key)` writes with 403 AccessDenied instead. The stage's requests pass
    through it; a reader the hook runs talks to moto directly, so each hook sees the store
    exactly between two of the stage's writes: a deterministic interleaving, no timing. What
    the hook raises is kept in `errors` (the stage's request still goes on)."""

    DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
              b"<Message>Access Denied</Message></Error>")

    def __init__(self, upstream: str, hook: Callable[[str, str, str], None] = lambda *a: None,
                 refuse: Callable[[str, str], bool] = lambda method, key: False):
        self.upstream = urlparse(upstream)
        self.writes: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        lock = threading.Lock()

        def call_hook(*args) -> None:
            try:
                hook(*args)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                self.errors.append(exc)

        outer = self

        class Handler(ForwardingHandler):
            upstream = outer.upstream

            def forward(self):
                body = self.read_body()
                key = unquote(urlparse(self.path).path.lstrip("/").partition("/")[2])
                if self.command in ("PUT", "POST", "DELETE"):
                    with lock:
                        outer.writes.append((self.command, key))
                        if refuse(self.command, key):
                            return self.reply(403, outer.DENIED, [("Content-Type", "application/xml")])
                        call_hook("before", self.command, key)
                        answer = self.upstream_reply(body)
                        call_hook("after", self.command, key)
                else:
                    answer = self.upstream_reply(body)
                self.reply(*answer, head=self.command == "HEAD")

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HookedStore:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def change_the_data(url: str, new_id: int) -> None:
    """A load between two exports: a new destination with a booking, a renamed destination, a
    new booking of an old destination, a new customer (the loader never deletes)."""
    query(url, "INSERT INTO destination VALUES (%s, %s, 'Land', 'Summer')", (new_id, f"Place {new_id}"))
    query(url, "INSERT INTO booking VALUES (%s, 1, %s, '2026-01-01', 2, 5.00, 10.00)", (new_id, new_id))
    query(url, "INSERT INTO booking VALUES (%s, 2, 1, '2026-01-02', 1, 0.01, 0.01)", (new_id + 1,))
    query(url, "UPDATE destination SET destination = %s WHERE destination_id = 2", (f"Renamed {new_id}",))
    query(url, "INSERT INTO customer VALUES (%s, 'New', 'Customer', %s, NULL)", (new_id, f"c{new_id}@example.com"))


@pytest.mark.slow
def test_export_parquet_reader_through_the_symlink_files_sees_one_complete_run_per_table(
        dataset_db, s3_bucket, monkeypatch, moto_endpoint):
    """A day replaced while readers resolve it through the symlink files, at every point between
    two of the export's writes (objects, manifest, the three symlink files, the deletion of an
    old run): each reader, resolving at one point and fetching at that point and at every later
    one, reads of each table exactly the old run's rows or the new run's, never a mix, and never
    a missing object. Across tables the only states are the order of the symlink PUTs allows
    (destination first, booking last), and every booking then finds its destination."""
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)  # the third export deletes the first run
    assert export("--format", "parquet", "--batch-size", "3") == 0
    first = manifest_of(s3_bucket)["run_id"]
    change_the_data(dataset_db, 100)
    assert export("--format", "parquet", "--batch-size", "3") == 0
    old_rows = database_rows(dataset_db)
    change_the_data(dataset_db, 200)
    new_rows = database_rows(dataset_db)
    assert all(old_rows[t] != new_rows[t] for t in common.TABLES)

    readers: set[tuple[str, tuple[str, ...]]] = set()  # (table, the keys its symlink file listed)
    seen_states: set[tuple[str, ...]] = set()

    def which_run(table: str, listed: list[str]) -> str:
        rows = [row for key in listed for row in parquet_rows(get(s3_bucket, key, moto_endpoint))]
        assert rows in (old_rows[table], new_rows[table]), f"{table}: a mix of runs or a partial run"
        return "old" if rows == old_rows[table] else "new"

    def hook(phase: str, method: str, key: str) -> None:
        if phase == "before" and seen_states:  # the same store as after the write before it
            return
        resolved = {t: symlinked(s3_bucket, t, moto_endpoint) for t in common.LOAD_ORDER}
        readers.update((t, tuple(listed)) for t, listed in resolved.items())
        state = tuple(which_run(t, resolved[t]) for t in common.LOAD_ORDER)
        seen_states.add(state)
        tables = dict(zip(common.LOAD_ORDER, state, strict=True))
        destinations = {r["destination_id"] for r in (old_rows if tables["destination"] == "old" else new_rows)[
            "destination"]}
        bookings = (old_rows if tables["booking"] == "old" else new_rows)["booking"]
        assert {r["destination_id"] for r in bookings} <= destinations, "a booking without its destination"
        for table, listed in readers:  # every reader still holding older symlink contents reads them whole
            which_run(table, list(listed))

    with HookedStore(moto_endpoint, hook) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert export("--format", "parquet", "--batch-size", "3", "--workers", "1") == 0
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert proxy.errors == []

    written = [key.rpartition("/")[2] or key for method, key in proxy.writes]
    assert written[-5:-1] == ["_manifest.json", "symlink.txt", "symlink.txt", "symlink.txt"]
    assert proxy.writes[-1][0] == "POST"  # DeleteObjects of the first run, after the symlink files
    assert not [k for k in keys(s3_bucket) if f"/{first}/" in k]
    # Per table: old then new; across tables, the prefixes of LOAD_ORDER only.
    assert seen_states == {("old", "old", "old"), ("new", "old", "old"), ("new", "new", "old"),
                           ("new", "new", "new")}


@pytest.mark.slow
def test_export_symlink_file_not_written_exit_1_and_its_run_is_kept(dataset_db, s3_bucket, monkeypatch,
                                                                     moto_endpoint, capsys):
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)
    assert export("--format", "parquet") == 0
    first = manifest_of(s3_bucket)
    capsys.readouterr()

    def refuse(method: str, key: str) -> bool:
        return method == "PUT" and key == f"{DAY}/_symlink/booking/symlink.txt"

    for attempt in (1, 2):  # twice: the first run is then neither the manifest's nor the one it replaced
        with HookedStore(moto_endpoint, refuse=refuse) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            assert export("--format", "parquet") == 1
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"batch_transfer_data_to_cloud_storage: error: the export of {DAY} is published")
        assert "run the export again" in lines[0]
        manifest = manifest_of(s3_bucket)
        assert manifest["run_id"] != first["run_id"]
        assert symlinked(s3_bucket, "destination") == [o["key"] for o in manifest["objects"]
                                                       if o["table"] == "destination"]
        # booking's symlink file still names the first run: its objects must all still be there.
        listed = symlinked(s3_bucket, "booking")
        assert listed == [o["key"] for o in first["objects"] if o["table"] == "booking"]
        assert set(listed) <= set(keys(s3_bucket)), f"attempt {attempt}: a symlinked object was deleted"

    assert export("--format", "parquet") == 0  # the symlink files agree again: old runs go
    manifest = manifest_of(s3_bucket)
    assert symlinked(s3_bucket, "booking") == [o["key"] for o in manifest["objects"] if o["table"] == "booking"]
    assert not [k for k in keys(s3_bucket) if f"/{first['run_id']}/" in k]
