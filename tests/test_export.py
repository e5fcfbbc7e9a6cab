"""Stage 4 (batch_transfer_data_to_cloud_storage.py) against moto's S3 server over HTTP and a
real PostgreSQL: layout, content, manifest, re-runs, failures. Pure parts are tested alone."""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import re
import zipfile
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import urlparse

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from support.database import query
from support.exports import DB_QUERIES
from support.fault_proxy import ACCESS_DENIED, FaultyStore

import batch_transfer_data_to_cloud_storage as stage
import transform_load_csv_data
import waddle_common as common
from waddle_common import load_database
from waddle_common.local_services import free_port

DAY = "2024-05-01"
SUFFIX = {"zip": ".csv.zip", "gzip": ".csv.gz"}
RUN = "20240501T063015.123Z-1a2b3c4d"


# ---------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def no_export_format(monkeypatch):
    """conftest's list of cleared variables predates EXPORT_FORMAT: a shell's value must not leak in."""
    monkeypatch.delenv("EXPORT_FORMAT", raising=False)


@pytest.fixture
def loaded_db(schema_db, sample_dir):
    """The sample dataset loaded by stage 3."""
    assert transform_load_csv_data.main(["--data-dir", str(sample_dir)]) == 0
    return schema_db


def s3():
    return boto3.client("s3")


def all_keys(bucket: str) -> list[str]:
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def get_bytes(bucket: str, key: str) -> bytes:
    return s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_manifest(bucket: str, day: str = DAY, prefix: str = "") -> dict:
    return json.loads(get_bytes(bucket, f"{prefix}{day}/_manifest.json"))


def run_keys(bucket: str, run_id: str, day: str = DAY, prefix: str = "") -> list[str]:
    """The keys under one run's folder."""
    return [key for key in all_keys(bucket) if key.startswith(f"{prefix}{day}/{run_id}/")]


def listed_keys(*manifests: dict) -> list[str]:
    return sorted(o["key"] for manifest in manifests for o in manifest["objects"])


def unpack(body: bytes, compression: str, member: str) -> bytes:
    """The CSV inside one object; a zip must hold exactly the one expected member."""
    if compression == "zip":
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert archive.namelist() == [member]
            return archive.read(member)
    return gzip.decompress(body)


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def exported_tables(bucket: str, manifest: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """table -> (header, rows of every batch in manifest order), checking each object on the way."""
    result: dict[str, tuple[list[str], list[list[str]]]] = {}
    for entry in manifest["objects"]:
        body = get_bytes(bucket, entry["key"])
        assert len(body) == entry["bytes"]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        number = int(re.search(r"_batch_(\d{4})\.", entry["key"]).group(1))
        member = f"{entry['table']}_{manifest['date']}_batch_{number:04d}.csv"
        header, *rows = parse_csv(unpack(body, manifest["compression"], member))
        assert header == manifest["tables"][entry["table"]]["columns"]
        assert len(rows) == entry["rows"]
        previous = result.setdefault(entry["table"], (header, []))
        previous[1].extend(rows)
    return result


# Exported text -> the Python value psycopg2 returns, column by column.
TYPED = {
    "customer_id": int, "destination_id": int, "booking_id": int, "number_of_passengers": int,
    "cost_per_passenger": Decimal, "total_booking_value": Decimal,
    "booking_date": date.fromisoformat,
    "passengers_imputed": {"t": True, "f": False}.__getitem__,
    "cost_imputed": {"t": True, "f": False}.__getitem__,
}

def typed_rows(header: list[str], rows: list[list[str]]) -> list[tuple]:
    return [tuple(TYPED.get(column, str)(value) for column, value in zip(header, row, strict=True)) for row in rows]


def database_rows(url: str, table: str) -> list[tuple]:
    # csv.reader cannot tell NULL (empty) from "" (quoted): both come back as ''.
    return [tuple("" if value is None else value for value in row) for row in query(url, DB_QUERIES[table])]


def assert_export_equals_database(bucket: str, url: str, manifest: dict) -> None:
    exported = exported_tables(bucket, manifest)
    assert set(exported) == set(common.TABLES)
    for table in common.TABLES:
        header, rows = exported[table]
        expected = database_rows(url, table)
        assert manifest["tables"][table]["rows"] == len(expected)
        assert typed_rows(header, rows) == expected, table


def run(*args: str) -> int:
    return stage.main(["--date", DAY, *args])


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(
    "prefix, table, number, compression, expected",
    [
        ("", "booking", 1, "zip", f"2024-05-01/{RUN}/booking/booking_2024-05-01_batch_0001.csv.zip"),
        ("exports/", "customer", 12, "gzip",
         f"exports/2024-05-01/{RUN}/customer/customer_2024-05-01_batch_0012.csv.gz"),
        ("a/b/", "destination", 9999, "zip",
         f"a/b/2024-05-01/{RUN}/destination/destination_2024-05-01_batch_9999.csv.zip"),
    ],
)
def test_export_key_names(prefix, table, number, compression, expected):
    assert stage.batch_key(prefix, DAY, RUN, table, number, compression) == expected
    assert stage.member_name(table, DAY, number) == expected.rsplit("/", 1)[1].rsplit(".", 1)[0]


def test_export_run_ids_sort_by_time_and_never_repeat():
    at = datetime(2024, 5, 1, 6, 30, 15, 123456, tzinfo=timezone.utc)
    ids = [stage.new_run_id(at) for _ in range(50)]
    assert all(stage.RUN_ID_PATTERN.fullmatch(i) and i.startswith("20240501T063015.123Z-") for i in ids)
    assert len(set(ids)) == 50
    later = stage.new_run_id(at.replace(microsecond=124000))
    assert later > max(ids)  # one millisecond later sorts after, whatever the suffixes


def test_export_lock_key_is_one_positive_bigint_per_bucket_prefix_and_day():
    key = stage.export_lock_key("b", "exports/", DAY)
    assert key == stage.export_lock_key("b", "exports/", DAY)
    assert 0 < key < 2**63
    others = {stage.export_lock_key(*args) for args in
              [("b", "exports/", "2024-05-02"), ("b", "", DAY), ("c", "exports/", DAY), ("b", "exports/x/", DAY)]}
    assert key not in others and len(others) == 4
    assert key != load_database.LOAD_LOCK_KEY


OLD = "20240501T010000.000Z-00000001"
PREVIOUS = "20240501T020000.000Z-00000002"
NOW = datetime(2024, 5, 1, 3, 0, 0, tzinfo=timezone.utc)


def at_minutes_before_now(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.mark.parametrize(
    "previous, expected",
    [
        (None, []),  # the day's first export
        (stage.PreviousExport(None), [(None, NOW)]),  # replacing the layout before runs
        (stage.PreviousExport(PREVIOUS), [(PREVIOUS, NOW)]),
        (stage.PreviousExport(PREVIOUS, (stage.KeptRun(OLD, at_minutes_before_now(5)),)),
         [(PREVIOUS, NOW), (OLD, at_minutes_before_now(5))]),  # a reader may still read OLD
        (stage.PreviousExport(PREVIOUS, (stage.KeptRun(OLD, at_minutes_before_now(20)),)),
         [(PREVIOUS, NOW)]),  # replaced long enough ago
        (stage.PreviousExport(PREVIOUS, (stage.KeptRun(None, at_minutes_before_now(1)),)),
         [(PREVIOUS, NOW), (None, at_minutes_before_now(1))]),
        (stage.PreviousExport(None, known=False), [(None, NOW), (OLD, NOW), (PREVIOUS, NOW)]),  # keep all
    ],
    ids=["first", "old-layout", "previous", "recently-replaced", "long-replaced", "old-layout-recent", "unknown"],
)
def test_export_runs_to_keep(previous, expected):
    kept = stage.runs_to_keep(previous, NOW, present={PREVIOUS, OLD, None})
    assert [(k.run_id, k.replaced_at) for k in kept] == expected


def test_export_keys_to_delete_only_touches_runs_and_the_old_layout():
    day = "exports/2024-05-01/"
    keys = [
        f"{day}_manifest.json",
        f"{day}notes.txt",
        f"{day}mine/booking/x.csv.zip",  # not a run id: someone else's folder
        f"{day}{RUN}/booking/booking_2024-05-01_batch_0001.csv.zip",
        f"{day}{OLD}/booking/booking_2024-05-01_batch_0001.csv.zip",
        f"{day}{OLD}/customer/customer_2024-05-01_batch_0001.csv.zip",
        f"{day}{PREVIOUS}/destination/destination_2024-05-01_batch_0001.csv.zip",
        f"{day}booking/booking_2024-05-01_batch_0001.csv.zip",  # the layout before runs
        "exports/2024-05-02/booking/booking_2024-05-02_batch_0001.csv.zip",  # another day
    ]
    assert stage.keys_to_delete(keys, day, {RUN, PREVIOUS}) == [
        f"{day}{OLD}/booking/booking_2024-05-01_batch_0001.csv.zip",
        f"{day}{OLD}/customer/customer_2024-05-01_batch_0001.csv.zip",
        f"{day}booking/booking_2024-05-01_batch_0001.csv.zip",
    ]
    assert stage.keys_to_delete(keys, day, {RUN, PREVIOUS, OLD, None}) == []
    assert stage.runs_present(keys, day) == {RUN, OLD, PREVIOUS, None}


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"format_version": 1, "objects": []}', stage.PreviousExport(None)),  # before runs
        (json.dumps({"format_version": 1, "run_id": PREVIOUS, "kept_runs": [
            {"run_id": OLD, "replaced_at": "2024-05-01T02:55:00Z"},
            {"run_id": None, "replaced_at": "2024-05-01T02:00:00Z"},
        ]}).encode(), stage.PreviousExport(PREVIOUS, (
            stage.KeptRun(OLD, datetime(2024, 5, 1, 2, 55, tzinfo=timezone.utc)),
            stage.KeptRun(None, datetime(2024, 5, 1, 2, 0, tzinfo=timezone.utc)),
        ))),
        (b"not json", stage.PreviousExport(None, known=False)),
        (b"\xff\xfe", stage.PreviousExport(None, known=False)),
        (b'{"format_version": 2, "run_id": "x"}', stage.PreviousExport(None, known=False)),
        (b'{"format_version": 1, "run_id": "../../etc"}', stage.PreviousExport(None, known=False)),
        (json.dumps({"format_version": 1, "run_id": PREVIOUS, "kept_runs": [{"run_id": "x/y", "replaced_at": ""}]})
         .encode(), stage.PreviousExport(None, known=False)),
        (json.dumps({"format_version": 1, "run_id": PREVIOUS, "kept_runs": "all"}).encode(),
         stage.PreviousExport(None, known=False)),
    ],
    ids=["old-layout", "runs", "not-json", "not-utf8", "newer-format", "bad-run-id", "bad-kept-run", "bad-kept-list"],
)
def test_export_parse_previous_manifest(body, expected):
    assert stage.parse_previous(body) == expected


@pytest.mark.parametrize("prefix", ["exports/", "a/b/", ""])
def test_export_prefix_empty_or_a_folder_is_accepted(prefix):
    assert stage.check_prefix(prefix) == prefix


# The same normalisation as the Lambda's: tests/test_contract.py checks both on one table.
@pytest.mark.parametrize("prefix, folder",
                         [("exports", "exports/"), ("a/b", "a/b/"), ("/", ""), ("/exports/", "exports/")])
def test_export_prefix_without_trailing_or_with_leading_slash_is_normalised(prefix, folder):
    assert stage.check_prefix(prefix) == folder


ROWS = [
    b'1,plain,,t\n',
    b'2,"with ""quotes"", a comma",x,f\n',
    b'3,"two\nlines",,t\n',
    b'4,"ends with newline\n","",f\n',
    b'5,\xc3\xa9t\xc3\xa9,y,t\n',
]


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_export_batch_writer_cuts_whole_rows_however_chunked(chunk):
    batches = []
    writer = stage.BatchWriter(b"id,text,other,flag\n", 2, lambda n, rows, data: batches.append((n, rows, data)))
    stream = b"".join(ROWS)
    pieces = ROWS if chunk is None else [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    for piece in pieces:
        writer.write(piece)
    writer.finish()

    assert [(n, rows) for n, rows, _ in batches] == [(1, 2), (2, 2), (3, 1)]
    assert [data for _, _, data in batches] == [
        b"id,text,other,flag\n" + ROWS[0] + ROWS[1],
        b"id,text,other,flag\n" + ROWS[2] + ROWS[3],
        b"id,text,other,flag\n" + ROWS[4],
    ]
    assert writer.total_rows == 5


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 6])
def test_export_batch_writer_row_per_write_any_batch_size(batch_size):
    """psycopg2's way (one row per write): batches hold whole rows, quoted newlines included."""
    batches = []
    writer = stage.BatchWriter(b"h\n", batch_size, lambda n, rows, data: batches.append((rows, data)))
    for row in ROWS * 3:
        writer.write(row)
    writer.finish()
    assert b"".join(data.removeprefix(b"h\n") for _, data in batches) == b"".join(ROWS * 3)
    assert [rows for rows, _ in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert sum(rows for rows, _ in batches) == writer.total_rows == 15
    for rows, data in batches:  # every batch parses as CSV into exactly its rows
        assert len(list(csv.reader(io.StringIO(data.decode("utf-8"))))) == rows + 1


@pytest.mark.parametrize(
    "data, expected",
    [(b"1,a\n2,b\n", True), (b'1,"a, b"\n2,""\n', True), (b'1,"a\nb"\n', False), (b'1,"x""\n""y"\n', False)],
)
def test_export_lines_are_rows(data, expected):
    assert stage.lines_are_rows(data) is expected


def test_export_batch_writer_full_last_batch_and_empty_table():
    batches = []
    writer = stage.BatchWriter(b"h\n", 2, lambda n, rows, data: batches.append((n, rows, data)))
    writer.write(b"1\n")
    writer.write(b"2\n")
    writer.finish()
    assert batches == [(1, 2, b"h\n1\n2\n")]  # no empty trailing batch

    batches.clear()
    empty = stage.BatchWriter(b"h\n", 2, lambda n, rows, data: batches.append((n, rows, data)))
    empty.finish()
    assert batches == [(1, 0, b"h\n")]  # readers always find the columns


def test_export_batch_writer_refuses_a_cut_off_row():
    writer = stage.BatchWriter(b"h\n", 10, lambda *batch: None)
    writer.write(b'1,"open quote\n')
    with pytest.raises(common.PipelineError):
        writer.finish()


@pytest.mark.parametrize("compression", ["zip", "gzip"])
def test_export_compress_batch_round_trips_and_is_deterministic(compression):
    data = b"id,text\n" + b"".join(b"%d,row number %d\n" % (i, i) for i in range(2000))
    member = stage.member_name("customer", DAY, 1)
    body = stage.compress_batch(data, member, compression, 6, DAY)

    assert unpack(body, compression, member) == data
    assert len(body) < len(data) / 3
    assert stage.compress_batch(data, member, compression, 6, DAY) == body
    if compression == "zip":
        info = zipfile.ZipFile(io.BytesIO(body)).getinfo(member)
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.date_time == (2024, 5, 1, 0, 0, 0)


def plan(**overrides) -> stage.ExportPlan:
    values = dict(bucket="b", prefix="exports/", day=DAY, compression="zip", compression_level=6,
                  batch_size=2, workers=1, sse="AES256", kms_key_id="")
    values.update(overrides)
    return stage.ExportPlan(**values)


def test_export_build_manifest_follows_the_contract():
    def made(table, number, rows, size, sha256):
        key = stage.batch_key("exports/", DAY, RUN, table, number, "zip")
        return stage.ExportedObject(key, table, number, rows, size, sha256)

    objects = [
        made("booking", 2, 1, 30, "b2"), made("customer", 1, 0, 10, "c1"),
        made("booking", 1, 2, 40, "b1"), made("destination", 1, 2, 20, "d1"),
    ]
    at = datetime(2024, 5, 1, 6, 30, 15, 123456, tzinfo=timezone.utc)

    kept = [stage.KeptRun(PREVIOUS, datetime(2024, 5, 1, 6, 31, 2, tzinfo=timezone.utc)),
            stage.KeptRun(None, datetime(2024, 5, 1, 6, 20, tzinfo=timezone.utc))]

    manifest = stage.build_manifest(plan(), RUN, at, objects, kept)

    assert manifest == {
        "format_version": 1,
        "date": "2024-05-01",
        "prefix": "exports/2024-05-01/",
        "exported_at": "2024-05-01T06:30:15Z",
        "run_id": RUN,
        "tool": "data-waddle",
        "tool_version": common.__version__,
        "format": "csv",
        "compression": "zip",
        "tables": {
            "customer": {"columns": ["customer_id", "first_name", "last_name", "email", "phone"], "rows": 0},
            "destination": {"columns": ["destination_id", "destination", "country", "popular_season"], "rows": 2},
            "booking": {
                "columns": ["booking_id", "customer_id", "destination_id", "destination", "country", "booking_date",
                            "number_of_passengers", "cost_per_passenger", "total_booking_value",
                            "passengers_imputed", "cost_imputed"],
                "rows": 3,
            },
        },
        "objects": [
            {"key": o.key, "table": o.table, "rows": o.rows, "bytes": o.bytes, "sha256": o.sha256}
            for o in (objects[2], objects[0], objects[1], objects[3])
        ],
        "kept_runs": [
            {"run_id": PREVIOUS, "replaced_at": "2024-05-01T06:31:02Z"},
            {"run_id": None, "replaced_at": "2024-05-01T06:20:00Z"},
        ],
    }
    assert stage.parse_previous(json.dumps(manifest).encode()) == stage.PreviousExport(RUN, tuple(kept))
    assert [o["key"] for o in manifest["objects"]] == sorted(o["key"] for o in manifest["objects"])


def client_error(code: str, operation: str = "PutObject", status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       operation)


@pytest.mark.parametrize(
    "exc, expected",
    [
        (NoCredentialsError(), "no AWS credentials found"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b"), "cannot reach the S3 endpoint"),
        (client_error("NoSuchBucket", status=404), "bucket b does not exist"),
        (client_error("404", "HeadBucket", 404), "bucket b does not exist"),
        (client_error("AccessDenied", status=403), "access denied (AccessDenied) to bucket b"),
        (client_error("InvalidAccessKeyId", status=403), "access denied (InvalidAccessKeyId) to bucket b"),
        (client_error("SlowDown", status=503), "S3 refused uploading k in bucket b (SlowDown: msg)"),
    ],
    ids=["credentials", "endpoint", "no-such-bucket", "head-404", "denied", "bad-key", "other"],
)
def test_export_storage_errors_are_one_clear_line(exc, expected):
    error = stage.storage_error(exc, "b", "uploading k")
    assert isinstance(error, common.PipelineError) and error.exit_code == 1
    assert expected in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    "env, argv",
    [
        ({"EXPORT_COMPRESSION": "rar"}, []),
        ({"EXPORT_COMPRESSION_LEVEL": "12"}, []),
        ({"EXPORT_BATCH_SIZE": "0"}, []),
        ({"S3_SSE": "none"}, []),
        ({"S3_KMS_KEY_ID": "alias/x"}, []),
        ({}, ["--date", "2024-13-01"]),
        ({}, ["--date", "20240501"]),
        ({}, ["--batch-size", "0"]),
        ({}, ["--compression", "rar"]),
        ({"EXPORT_FORMAT": "orc"}, []),
        ({}, ["--format", "orc"]),
        ({}, ["--format", "parquet", "--compression", "gzip"]),
    ],
    ids=["compression", "level", "batch-env", "sse", "kms-without-sse", "date", "date-basic",
         "batch-flag", "compression-flag", "format-env", "format-flag", "parquet-with-compression"],
)
def test_export_bad_settings_exit_2_before_touching_anything(monkeypatch, capsys, env, argv):
    monkeypatch.setenv("S3_BUCKET_NAME", "never-contacted")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert stage.main(argv) == 2
    assert capsys.readouterr().err.strip()


def test_export_missing_bucket_name_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    assert run() == 2
    assert len(error_lines(capsys)) == 1


def test_export_default_day_is_today_in_utc():
    args = stage.build_parser().parse_args([])
    settings = common.Settings.from_env({"S3_BUCKET_NAME": "b"})
    assert stage.make_plan(settings, args, today=date(2030, 1, 2)).day == "2030-01-02"
    before = datetime.now(timezone.utc).date().isoformat()
    day = stage.make_plan(settings, args).day
    assert day in (before, datetime.now(timezone.utc).date().isoformat())


# ---------------------------------------------------------------------------------------
# Against PostgreSQL and the S3 server


def test_export_writes_layout_content_manifest_and_encryption(loaded_db, s3_bucket, capsys):
    assert run() == 0
    out = capsys.readouterr().out

    manifest = read_manifest(s3_bucket)
    keys = [o["key"] for o in manifest["objects"]]
    run_id = manifest["run_id"]
    assert stage.RUN_ID_PATTERN.fullmatch(run_id)
    assert keys == [
        f"2024-05-01/{run_id}/booking/booking_2024-05-01_batch_0001.csv.zip",
        f"2024-05-01/{run_id}/customer/customer_2024-05-01_batch_0001.csv.zip",
        f"2024-05-01/{run_id}/destination/destination_2024-05-01_batch_0001.csv.zip",
    ]
    assert all_keys(s3_bucket) == sorted(keys + ["2024-05-01/_manifest.json"])
    assert manifest["kept_runs"] == []  # the day's first export replaced nothing
    assert f"manifest: s3://{s3_bucket}/2024-05-01/_manifest.json (run {run_id})" in out
    assert manifest["format_version"] == 1
    assert manifest["date"] == DAY
    assert manifest["prefix"] == "2024-05-01/"
    assert manifest["tool"] == "data-waddle" and manifest["tool_version"] == common.__version__
    assert manifest["compression"] == "zip"
    exported_at = datetime.fromisoformat(manifest["exported_at"])
    assert manifest["exported_at"].endswith("Z") and exported_at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - exported_at).total_seconds()) < 600
    assert run_id.startswith(exported_at.strftime("%Y%m%dT%H%M%S"))
    assert {t: manifest["tables"][t]["columns"] for t in common.TABLES} == {
        t: list(stage.EXPORT_COLUMNS[t]) for t in common.TABLES
    }
    for table in common.TABLES:
        assert manifest["tables"][table]["rows"] == query(loaded_db, f"SELECT count(*) FROM {table}")[0][0] > 0

    assert_export_equals_database(s3_bucket, loaded_db, manifest)

    for key in all_keys(s3_bucket):
        head = s3().head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "AES256"
        if key.endswith(".zip"):
            entry = next(o for o in manifest["objects"] if o["key"] == key)
            # The store kept the SHA-256 the upload declared, and it is the manifest's.
            assert base64.b64decode(head["ChecksumSHA256"]).hex() == entry["sha256"]
            assert head["ContentType"] == "application/zip"
    for table in common.TABLES:
        assert re.search(rf"^{table}\s+1\s+{manifest['tables'][table]['rows']}\s+\d+$", out, re.M)


def test_export_money_dates_and_booleans_are_plain_text(loaded_db, s3_bucket):
    first = "(SELECT min(booking_id) FROM booking)"
    query(loaded_db, f"UPDATE booking SET passengers_imputed = true WHERE booking_id = {first}")
    assert run() == 0
    manifest = read_manifest(s3_bucket)
    header, rows = exported_tables(s3_bucket, manifest)["booking"]
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}

    assert all(re.fullmatch(r"\d+\.\d{2}", v) for v in columns["cost_per_passenger"] + columns["total_booking_value"])
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) for v in columns["booking_date"])
    assert set(columns["passengers_imputed"]) == {"t", "f"}
    assert set(columns["cost_imputed"]) <= {"t", "f"}
    for row in rows:
        value = dict(zip(header, row, strict=True))
        assert Decimal(value["total_booking_value"]) == (
            Decimal(value["cost_per_passenger"]) * int(value["number_of_passengers"])
        )


def test_export_special_values_round_trip_exactly(schema_db, s3_bucket):
    query(schema_db, "INSERT INTO destination VALUES (1, 'São Paulo, \"SP\"', 'Brazil', 'Summer')")
    query(
        schema_db,
        """INSERT INTO customer VALUES
             (1, E'Two\\nLines', 'O''Brien, Jr.', 'a@example.com', NULL),
             (2, 'Zoë', '"Quoted"', 'b@example.com', ''),
             (3, 'Plain', 'Name', 'c@example.com', '555-0100')""",
    )
    query(schema_db, "INSERT INTO booking VALUES (7, 1, 1, '2024-02-29', 3, 33.33, 99.99, false, true)")
    # A server whose sessions write dates as 29/02/2024 must not change the files.
    query(schema_db, f"ALTER DATABASE {urlparse(schema_db).path.lstrip('/')} SET DateStyle TO 'SQL, DMY'")

    assert run("--batch-size", "1") == 0
    manifest = read_manifest(s3_bucket)
    customers = [
        unpack(get_bytes(s3_bucket, o["key"]), "zip", o["key"].rsplit("/", 1)[1][: -len(".zip")])
        for o in manifest["objects"] if o["table"] == "customer"
    ]
    header = b"customer_id,first_name,last_name,email,phone\n"
    assert customers == [
        header + b'1,"Two\nLines","O\'Brien, Jr.",a@example.com,\n',  # NULL: empty, unquoted
        header + b'2,Zo\xc3\xab,"""Quoted""",b@example.com,""\n',  # empty text: ""
        header + b"3,Plain,Name,c@example.com,555-0100\n",
    ]
    booking = [o for o in manifest["objects"] if o["table"] == "booking"]
    assert unpack(get_bytes(s3_bucket, booking[0]["key"]), "zip", "booking_2024-05-01_batch_0001.csv") == (
        b"booking_id,customer_id,destination_id,destination,country,booking_date,number_of_passengers,"
        b"cost_per_passenger,total_booking_value,passengers_imputed,cost_imputed\n"
        b'7,1,1,"S\xc3\xa3o Paulo, ""SP""",Brazil,2024-02-29,3,33.33,99.99,f,t\n'
    )


@pytest.mark.parametrize("how", ["env", "flag"])
def test_export_gzip_mode(loaded_db, s3_bucket, monkeypatch, how):
    monkeypatch.setenv("S3_PREFIX", "exports/")
    if how == "env":
        monkeypatch.setenv("EXPORT_COMPRESSION", "gzip")
        monkeypatch.setenv("EXPORT_COMPRESSION_LEVEL", "9")
        assert run() == 0
    else:
        monkeypatch.setenv("EXPORT_COMPRESSION", "zip")
        assert run("--compression", "gzip") == 0

    manifest = read_manifest(s3_bucket, prefix="exports/")
    assert manifest["compression"] == "gzip"
    assert manifest["prefix"] == "exports/2024-05-01/"
    run_id = manifest["run_id"]
    assert all_keys(s3_bucket) == sorted([
        "exports/2024-05-01/_manifest.json",
        f"exports/2024-05-01/{run_id}/booking/booking_2024-05-01_batch_0001.csv.gz",
        f"exports/2024-05-01/{run_id}/customer/customer_2024-05-01_batch_0001.csv.gz",
        f"exports/2024-05-01/{run_id}/destination/destination_2024-05-01_batch_0001.csv.gz",
    ])
    for entry in manifest["objects"]:
        body = get_bytes(s3_bucket, entry["key"])
        assert body[:2] == b"\x1f\x8b"
        assert s3().head_object(Bucket=s3_bucket, Key=entry["key"])["ContentType"] == "application/gzip"
    assert_export_equals_database(s3_bucket, loaded_db, manifest)


def test_export_small_batch_size_gives_several_batches(loaded_db, s3_bucket):
    assert run("--batch-size", "30", "--workers", "3") == 0

    manifest = read_manifest(s3_bucket)
    for table in common.TABLES:
        total = manifest["tables"][table]["rows"]
        entries = [o for o in manifest["objects"] if o["table"] == table]
        expected_batches = -(-total // 30)
        assert [o["key"] for o in entries] == [
            stage.batch_key("", DAY, manifest["run_id"], table, n, "zip") for n in range(1, expected_batches + 1)
        ]
        assert [o["rows"] for o in entries] == [30] * (expected_batches - 1) + [total - 30 * (expected_batches - 1)]
    assert len([o for o in manifest["objects"] if o["table"] == "booking"]) > 2
    assert_export_equals_database(s3_bucket, loaded_db, manifest)


def test_export_batch_size_from_environment(loaded_db, s3_bucket, monkeypatch):
    monkeypatch.setenv("EXPORT_BATCH_SIZE", "100")
    assert run() == 0
    manifest = read_manifest(s3_bucket)
    rows = manifest["tables"]["customer"]["rows"]
    assert len([o for o in manifest["objects"] if o["table"] == "customer"]) == -(-rows // 100)


def test_export_rerun_same_day_writes_a_new_run_and_keeps_the_replaced_ones(loaded_db, s3_bucket):
    assert run("--batch-size", "20") == 0
    first = read_manifest(s3_bucket)
    first_bytes = {o["key"]: get_bytes(s3_bucket, o["key"]) for o in first["objects"]}
    bookings_before = first["tables"]["booking"]["rows"]
    query(loaded_db, "DELETE FROM booking WHERE booking_id NOT IN (SELECT booking_id FROM booking ORDER BY 1 LIMIT 50)")

    assert run("--batch-size", "20") == 0

    second = read_manifest(s3_bucket)
    assert second["run_id"] > first["run_id"]
    assert second["tables"]["booking"]["rows"] == 50 < bookings_before
    booking_keys = [o["key"] for o in second["objects"] if o["table"] == "booking"]
    assert booking_keys == [stage.batch_key("", DAY, second["run_id"], "booking", n, "zip") for n in (1, 2, 3)]
    assert_export_equals_database(s3_bucket, loaded_db, second)
    # Nothing of the first run was overwritten or removed: a reader holding its manifest reads it all.
    assert all_keys(s3_bucket) == sorted(listed_keys(first, second) + ["2024-05-01/_manifest.json"])
    assert {key: get_bytes(s3_bucket, key) for key in first_bytes} == first_bytes
    exported_tables(s3_bucket, first)
    assert [k["run_id"] for k in second["kept_runs"]] == [first["run_id"]]

    # A third run in the other format: the first was replaced moments ago, so it stays too.
    assert run("--compression", "gzip") == 0
    third = read_manifest(s3_bucket)
    assert [k["run_id"] for k in third["kept_runs"]] == [second["run_id"], first["run_id"]]
    assert all_keys(s3_bucket) == sorted(listed_keys(first, second, third) + ["2024-05-01/_manifest.json"])
    assert all(o["key"].endswith(".csv.gz") for o in third["objects"])


def test_export_retention_deletes_runs_replaced_long_ago_keeps_the_previous(loaded_db, s3_bucket, monkeypatch):
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)  # every replaced run is old enough to go
    manifests = []
    for _ in range(3):
        assert run("--batch-size", "100") == 0
        manifests.append(read_manifest(s3_bucket))
    first, second, third = manifests

    assert [k["run_id"] for k in third["kept_runs"]] == [second["run_id"]]  # the previous, always
    assert run_keys(s3_bucket, first["run_id"]) == []
    assert all_keys(s3_bucket) == sorted(listed_keys(second, third) + ["2024-05-01/_manifest.json"])
    exported_tables(s3_bucket, second)


def test_export_reader_holding_an_old_manifest_reads_exactly_its_bytes(loaded_db, s3_bucket):
    """A reader fetched the manifest, then two runs with changed rows commit while it reads:
    every object it lists is still there, byte for byte, holding the rows of its snapshot."""
    assert run("--batch-size", "30") == 0
    held = read_manifest(s3_bucket)
    before = {table: database_rows(loaded_db, table) for table in common.TABLES}
    query(loaded_db, "UPDATE customer SET first_name = first_name || ' (changed)'")
    query(loaded_db, "DELETE FROM booking WHERE booking_id IN (SELECT booking_id FROM booking ORDER BY 1 LIMIT 10)")

    assert run("--batch-size", "30") == 0
    assert run("--batch-size", "30") == 0

    current = read_manifest(s3_bucket)
    assert current["run_id"] != held["run_id"]
    assert held["run_id"] in [k["run_id"] for k in current["kept_runs"]]
    for table, (header, rows) in exported_tables(s3_bucket, held).items():
        assert typed_rows(header, rows) == before[table], table
    assert_export_equals_database(s3_bucket, loaded_db, current)


def test_export_replaces_the_layout_before_runs_then_deletes_it(loaded_db, s3_bucket, monkeypatch):
    """An export of the previous version (objects at <day>/<table>/...) stays readable until
    a run replaces its manifest, and goes with the next one; a failed run's leftovers and
    objects this stage did not write are handled as such."""
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)
    old_objects = []
    for table in common.TABLES:
        body = stage.compress_batch(stage.csv_header(table), stage.member_name(table, DAY, 1), "zip", 6, DAY)
        key = f"{DAY}/{table}/{table}_{DAY}_batch_0001.csv.zip"
        s3().put_object(Bucket=s3_bucket, Key=key, Body=body)
        old_objects.append({"key": key, "table": table, "rows": 0, "bytes": len(body),
                            "sha256": hashlib.sha256(body).hexdigest()})
    old_manifest = {"format_version": 1, "date": DAY, "prefix": f"{DAY}/", "compression": "zip",
                    "tables": {t: {"columns": list(stage.EXPORT_COLUMNS[t]), "rows": 0} for t in common.TABLES},
                    "objects": old_objects}
    s3().put_object(Bucket=s3_bucket, Key=f"{DAY}/_manifest.json", Body=json.dumps(old_manifest).encode())
    failed = f"{DAY}/20240501T000000.000Z-deadbeef/customer/customer_{DAY}_batch_0001.csv.zip"
    foreign = [f"{DAY}/notes.txt", f"{DAY}/mine/booking/x.csv.zip"]
    for key in [failed, *foreign]:
        s3().put_object(Bucket=s3_bucket, Key=key, Body=b"x")

    assert run() == 0
    first = read_manifest(s3_bucket)
    assert first["kept_runs"] == [{"run_id": None, "replaced_at": first["kept_runs"][0]["replaced_at"]}]
    assert all_keys(s3_bucket) == sorted(listed_keys(first, old_manifest) + foreign + [f"{DAY}/_manifest.json"])
    exported_tables(s3_bucket, old_manifest)  # a reader holding the old manifest still reads it

    assert run() == 0
    second = read_manifest(s3_bucket)
    assert [k["run_id"] for k in second["kept_runs"]] == [first["run_id"]]
    assert all_keys(s3_bucket) == sorted(listed_keys(first, second) + foreign + [f"{DAY}/_manifest.json"])


def test_export_other_days_and_foreign_objects_are_left_alone(loaded_db, s3_bucket, monkeypatch):
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)
    s3().put_object(Bucket=s3_bucket, Key="2024-05-01/notes.txt", Body=b"kept")
    assert stage.main(["--date", "2024-04-30"]) == 0
    assert run() == 0
    assert run() == 0
    assert run() == 0
    keys = all_keys(s3_bucket)
    assert "2024-05-01/notes.txt" in keys
    assert "2024-04-30/_manifest.json" in keys
    assert len([k for k in keys if k.startswith("2024-04-30/")]) == 4
    assert len([k for k in keys if k.startswith("2024-05-01/")]) == 2 * 3 + 2  # two runs, manifest, notes


def test_export_unreadable_previous_manifest_keeps_every_run(loaded_db, s3_bucket, monkeypatch, capsys):
    """A manifest this version does not understand (garbage, or a newer format) names runs
    that readers may be using: they are all kept until a later run knows they were replaced."""
    monkeypatch.setattr(stage, "KEEP_REPLACED_SECONDS", 0)
    assert run() == 0
    first = read_manifest(s3_bucket)
    s3().put_object(Bucket=s3_bucket, Key=f"{DAY}/_manifest.json", Body=b'{"format_version": 2}')
    capsys.readouterr()

    assert run() == 0
    assert "the day's previous manifest cannot be read" in capsys.readouterr().err
    second = read_manifest(s3_bucket)
    assert [k["run_id"] for k in second["kept_runs"]] == [first["run_id"]]
    assert all_keys(s3_bucket) == sorted(listed_keys(first, second) + [f"{DAY}/_manifest.json"])


def test_export_empty_tables_have_one_header_only_object_each(schema_db, s3_bucket):
    assert run() == 0
    manifest = read_manifest(s3_bucket)
    assert [(o["table"], o["rows"]) for o in manifest["objects"]] == [
        ("booking", 0), ("customer", 0), ("destination", 0),
    ]
    exported = exported_tables(s3_bucket, manifest)
    assert {t: exported[t] for t in common.TABLES} == {t: (list(stage.EXPORT_COLUMNS[t]), []) for t in common.TABLES}


def test_export_kms_encryption(loaded_db, s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_SSE", "aws:kms")
    monkeypatch.setenv("S3_KMS_KEY_ID", "alias/waddle-exports")
    assert run() == 0
    for key in all_keys(s3_bucket):
        head = s3().head_object(Bucket=s3_bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith("alias/waddle-exports")


def test_export_snapshot_ignores_changes_committed_during_the_run(loaded_db, s3_bucket, monkeypatch, moto_endpoint):
    """A load that commits while the export runs changes nothing in it: the first upload
    happens while customers are still being read (the queue holds 2 batches), and the change
    lands before destination and booking are read, yet neither shows it."""
    before = {table: database_rows(loaded_db, table) for table in common.TABLES}
    booking_id, customer_id, destination_id = query(
        loaded_db,
        "SELECT (SELECT max(booking_id) + 1 FROM booking), (SELECT max(customer_id) + 1 FROM customer), "
        "(SELECT min(destination_id) FROM booking)",
    )[0]

    def concurrent_load():
        query(loaded_db, "INSERT INTO customer VALUES (%s, 'New', 'Customer', 'new@example.com', NULL)", (customer_id,))
        query(loaded_db, "INSERT INTO booking VALUES (%s, %s, %s, '2024-01-01', 1, 10.00, 10.00)",
              (booking_id, customer_id, destination_id))
        query(loaded_db, "UPDATE destination SET destination = 'Renamed' WHERE destination_id = %s", (destination_id,))
        query(loaded_db, "DELETE FROM booking WHERE booking_id = (SELECT min(booking_id) FROM booking)")

    with FaultyStore(moto_endpoint, on_first_put=concurrent_load) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert run("--batch-size", "10", "--workers", "1") == 0
        assert proxy.puts > 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    manifest = read_manifest(s3_bucket)
    exported = exported_tables(s3_bucket, manifest)
    for table in common.TABLES:
        header, rows = exported[table]
        assert typed_rows(header, rows) == before[table], table
    assert database_rows(loaded_db, "booking") != before["booking"]  # the change did happen


def test_export_failure_part_way_keeps_the_previous_export(loaded_db, s3_bucket, monkeypatch, moto_endpoint,
                                                          capsys):
    assert run("--batch-size", "20") == 0
    previous = read_manifest(s3_bucket)
    capsys.readouterr()

    # A store whose policy changes mid-run: 403 is not retried by botocore.
    with FaultyStore(moto_endpoint, fail=lambda n: n > 3, error=ACCESS_DENIED) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        code = run("--batch-size", "10")
        assert proxy.failed >= 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert code == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("batch_transfer_data_to_cloud_storage: error: access denied")
    # The day still shows the previous export, complete; the failed run removed what it stored.
    assert read_manifest(s3_bucket) == previous
    assert_export_equals_database(s3_bucket, loaded_db, previous)
    assert all_keys(s3_bucket) == sorted(listed_keys(previous) + ["2024-05-01/_manifest.json"])

    assert run("--batch-size", "20") == 0
    manifest = read_manifest(s3_bucket)
    assert [k["run_id"] for k in manifest["kept_runs"]] == [previous["run_id"]]
    assert all_keys(s3_bucket) == sorted(listed_keys(previous, manifest) + ["2024-05-01/_manifest.json"])


def test_export_missing_bucket_exits_1_with_one_line(loaded_db, s3_bucket, monkeypatch, capsys):
    monkeypatch.setenv("S3_BUCKET_NAME", f"{s3_bucket}-missing")
    assert run() == 1
    lines = error_lines(capsys)
    assert len(lines) == 1 and f"bucket {s3_bucket}-missing does not exist" in lines[0]
    assert all_keys(s3_bucket) == []


def test_export_database_unreachable_exits_1_and_keeps_the_old_export(s3_bucket, monkeypatch, capsys):
    s3().put_object(Bucket=s3_bucket, Key="2024-05-01/_manifest.json", Body=b"{}")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://waddle:sekrit-pw@127.0.0.1:{free_port()}/travel")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")

    assert run() == 1

    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("batch_transfer_data_to_cloud_storage: error: cannot connect")
    assert "sekrit-pw" not in lines[0]
    assert all_keys(s3_bucket) == ["2024-05-01/_manifest.json"]


def test_export_help_exits_0(capsys):
    assert stage.main(["--help"]) == 0
    assert "--batch-size" in capsys.readouterr().out


def test_export_make_plan_applies_flags_over_settings():
    settings = common.Settings.from_env({
        "S3_BUCKET_NAME": "b", "S3_PREFIX": "p/", "EXPORT_BATCH_SIZE": "5", "EXPORT_COMPRESSION": "GZIP",
        "S3_SSE": "aws:kms", "S3_KMS_KEY_ID": "k",
    })
    args = argparse.Namespace(date="2024-01-31", batch_size=7, compression="zip", workers=3, format=None)
    assert stage.make_plan(settings, args) == stage.ExportPlan(
        bucket="b", prefix="p/", day="2024-01-31", compression="zip", compression_level=6,
        batch_size=7, workers=3, sse="aws:kms", kms_key_id="k", format="csv",
    )
    args = argparse.Namespace(date=None, batch_size=None, compression=None, workers=None, format=None)
    result = stage.make_plan(settings, args, today=date(2024, 2, 1))
    assert (result.day, result.batch_size, result.compression, result.workers, result.format) == (
        "2024-02-01", 5, "gzip", stage.DEFAULT_WORKERS, "csv",
    )
    parquet = common.Settings.from_env({"S3_BUCKET_NAME": "b", "EXPORT_FORMAT": " Parquet "})
    assert (stage.make_plan(parquet, args).format, stage.make_plan(parquet, args).kind) == ("parquet", "parquet")
    args.format = "csv"  # the flag wins over EXPORT_FORMAT
    assert stage.make_plan(parquet, args).kind == "zip"
