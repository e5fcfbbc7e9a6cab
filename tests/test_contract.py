"""The contract between stage 4 and the Lambda, pinned by a golden export.

tests/lambda/golden_export/ holds, as static files, three exports of the small dataset below
exactly as stage 4 writes them: 2026-11-26 as zip, 2026-11-27 as gzip and 2026-11-28 as
Parquet, 4 rows per batch (so every table has several batches), under S3_PREFIX `exports/`.
The Lambda's tests (tests/lambda/) read those very files and check exact metrics; here stage
4 runs for real (PostgreSQL, moto's S3 server) on the dataset and must write exactly those
objects, byte for byte, and that manifest, apart from what differs run to run: the run id
(in the keys too), the export time and the producer's tool_version. Parquet objects are
compared as tables (schema, types, values, row groups, codec), not bytes: the file records
the pyarrow version that wrote it. The symlink files (they name the bucket) are not kept.

The dataset: a destination without bookings, two places named Springfield, a town called
Nan, names with commas, quotes and non-ASCII text, a BIGINT id, a customer without a phone,
totals from 0.00 to near stage 3's limit.

After a deliberate change of the format, regenerate the files (then review the diff):
    WADDLE_REGENERATE_GOLDEN=1 python -m pytest tests/test_contract.py
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import zipfile

import boto3
import pyarrow.parquet as pq
import pytest
from support import REPO
from support.contract_data import BOOKINGS, CUSTOMERS, DESTINATIONS, load_dataset
from support.lambda_module import lambda_module

import batch_transfer_data_to_cloud_storage as stage4
import waddle_common as common

GOLDEN = REPO / "tests" / "lambda" / "golden_export"
PREFIX = "exports/"
EXPORTS = {"2026-11-26": "zip", "2026-11-27": "gzip", "2026-11-28": "parquet"}  # day -> kind of object
BATCH_SIZE = 4
# What differs from run to run, as the golden files spell it.
GOLDEN_RUN = "{day}T060000.000Z-90100e11"  # the day without dashes
GOLDEN_TOOL_VERSION = "golden"

def export(day: str, kind: str, monkeypatch, prefix: str = PREFIX) -> None:
    monkeypatch.setenv("S3_PREFIX", prefix)
    monkeypatch.delenv("EXPORT_FORMAT", raising=False)
    how = ["--format", "parquet"] if kind == "parquet" else ["--compression", kind]
    assert stage4.main(["--date", day, *how, "--batch-size", str(BATCH_SIZE)]) == 0


def stored(bucket: str, day: str, prefix: str = PREFIX) -> tuple[dict, dict[str, bytes]]:
    """The day's manifest and every object under the day's folder but the symlink files, keyed
    relative to the bucket."""
    s3 = boto3.client("s3")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}{day}/")
    objects = {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing["Contents"]
               if "/_symlink/" not in o["Key"]}
    return json.loads(objects.pop(f"{prefix}{day}/_manifest.json")), objects


def normalised(manifest: dict, objects: dict[str, bytes], day: str) -> tuple[dict, dict[str, bytes]]:
    """The run's id, time and producer version replaced by the golden files' (keys included)."""
    run_id, golden_run = manifest["run_id"], GOLDEN_RUN.format(day=day.replace("-", ""))
    manifest = json.loads(json.dumps(manifest).replace(run_id, golden_run))
    manifest.update(exported_at=f"{day}T06:00:00Z", tool_version=GOLDEN_TOOL_VERSION)
    return manifest, {key.replace(run_id, golden_run): body for key, body in objects.items()}


def golden(day: str) -> tuple[dict, dict[str, bytes]]:
    folder = GOLDEN / PREFIX / day
    files = {f"{PREFIX}{day}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*")
             if p.is_file()}
    return json.loads(files.pop(f"{PREFIX}{day}/_manifest.json")), files


def parquet(body: bytes):
    return pq.ParquetFile(io.BytesIO(body))


def same_parquet(body: bytes, golden_body: bytes) -> bool:
    """Equal as tables (schema with types, values), in the same row groups with the same codecs."""
    got, want = parquet(body), parquet(golden_body)
    layout = [(m.num_row_groups, [m.row_group(i).num_rows for i in range(m.num_row_groups)],
               {m.row_group(i).column(c).compression for i in range(m.num_row_groups) for c in range(m.num_columns)})
              for m in (got.metadata, want.metadata)]
    return got.schema_arrow == want.schema_arrow and got.read() == want.read() and layout[0] == layout[1]


def without_parquet_digests(manifest: dict) -> dict:
    """The manifest with the size and SHA-256 of Parquet objects left out (the bytes name the writer)."""
    manifest = json.loads(json.dumps(manifest))
    for entry in manifest["objects"]:
        if entry["key"].endswith(".parquet"):
            del entry["bytes"], entry["sha256"]
    return manifest


def unpacked(key: str, body: bytes) -> bytes:
    if key.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            return b"".join(archive.read(name) for name in archive.namelist())
    return gzip.decompress(body)


@pytest.mark.slow
def test_contract_stage_4_writes_the_golden_export(schema_db, s3_bucket, monkeypatch):
    load_dataset(schema_db)
    for day, kind in EXPORTS.items():
        export(day, kind, monkeypatch)
        manifest, objects = normalised(*stored(s3_bucket, day), day)
        if os.environ.get("WADDLE_REGENERATE_GOLDEN") == "1":
            shutil.rmtree(GOLDEN / PREFIX / day, ignore_errors=True)
            objects[f"{PREFIX}{day}/_manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
            for key, body in objects.items():
                (GOLDEN / key).parent.mkdir(parents=True, exist_ok=True)
                (GOLDEN / key).write_bytes(body)
            continue
        want_manifest, want_objects = golden(day)

        assert without_parquet_digests(manifest) == without_parquet_digests(want_manifest)
        assert sorted(objects) == sorted(want_objects) == sorted(o["key"] for o in manifest["objects"])
        for key, body in objects.items():
            if kind == "parquet":
                assert same_parquet(body, want_objects[key]), key
                continue
            # The CSV first: a clearer diff than the bytes.
            assert unpacked(key, body).decode() == unpacked(key, want_objects[key]).decode(), key
            assert body == want_objects[key], key
    if os.environ.get("WADDLE_REGENERATE_GOLDEN") == "1":
        pytest.skip(f"golden export regenerated in {GOLDEN}: review `git diff`")


def test_contract_golden_export_is_complete_and_consistent():
    """The static files agree with their manifests: every listed object, its size and SHA-256."""
    for day, kind in EXPORTS.items():
        manifest, objects = golden(day)
        assert (manifest["date"], manifest["prefix"]) == (day, f"{PREFIX}{day}/")
        assert (manifest["format"], manifest["compression"]) == (
            ("parquet", "snappy") if kind == "parquet" else ("csv", kind))
        assert sorted(objects) == sorted(o["key"] for o in manifest["objects"])
        for entry in manifest["objects"]:
            body = objects[entry["key"]]
            assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["bytes"], entry["sha256"])
            assert entry["key"].startswith(f"{PREFIX}{day}/{manifest['run_id']}/{entry['table']}/")
        counts = {table: sum(1 for o in manifest["objects"] if o["table"] == table) for table in manifest["tables"]}
        assert counts == {"customer": 2, "destination": 3, "booking": 4}  # several batches each
        assert {t: manifest["tables"][t]["rows"] for t in counts} == {
            "customer": len(CUSTOMERS), "destination": len(DESTINATIONS), "booking": len(BOOKINGS)}


# ---------------------------------------------------------------------------------------
# S3_PREFIX: one normalisation in stage 4 and the Lambda


PREFIXES = [  # S3_PREFIX as written -> the folder both stages use
    ("", ""), ("/", ""), ("exports", "exports/"), ("exports/", "exports/"), ("/exports", "exports/"),
    (" exports/ ", "exports/"), ("a/b", "a/b/"), ("a/b/", "a/b/"), ("//exports", "exports/"),
]


@pytest.mark.parametrize("value, folder", PREFIXES)
def test_contract_s3_prefix_is_normalised_the_same_way_by_stage_4_and_the_lambda(value, folder):
    assert stage4.check_prefix(value.strip()) == lambda_module().normalise_prefix(value) == folder


@pytest.mark.slow
def test_contract_prefix_without_slash_export_and_lambda_meet(schema_db, s3_bucket, monkeypatch):
    # Stage 4 given "exports" writes under exports/; the Lambda given "/exports" reads it there.
    load_dataset(schema_db)
    export("2026-11-26", "zip", monkeypatch, prefix="exports")
    manifest, objects = stored(s3_bucket, "2026-11-26")
    assert manifest["prefix"] == "exports/2026-11-26/" and all(k.startswith("exports/2026-11-26/") for k in objects)
    monkeypatch.setenv("S3_PREFIX", "/exports")
    lf = lambda_module()
    result = lf.run({"date": "2026-11-26"}, lf.Settings.from_env(), boto3.client("s3"))
    expected = json.loads((GOLDEN / "expected_metrics.json").read_text(encoding="utf-8"))
    assert result["prefix"] == "exports/"
    assert (result["metrics"], result["totals"]) == (expected["metrics"], expected["totals"])


def test_contract_money_grammar_is_what_stage_4_writes():
    # Every total in the golden export matches the Lambda's one grammar (in Parquet, the
    # decimal's exact text, which the Lambda checks the same way), and nothing else does.
    grammar = re.compile(lambda_module().EXPORT_MONEY)
    for day in EXPORTS:
        manifest, objects = golden(day)
        for entry in manifest["objects"]:
            if entry["table"] != "booking":
                continue
            if entry["key"].endswith(".parquet"):
                values = [str(v) for v in parquet(objects[entry["key"]]).read()["total_booking_value"].to_pylist()]
            else:
                values = [line.split(",")[-3] for line in unpacked(entry["key"], objects[entry["key"]]).decode()
                          .splitlines()[1:]]
            assert values and all(grammar.fullmatch(value) for value in values), entry["key"]


def test_contract_parquet_golden_export_is_snappy_which_the_lambda_layers_read():
    # The AWS SDK for pandas layers build Arrow with ARROW_WITH_ZSTD=OFF (building/lambda/
    # build-lambda-layer.sh at 3.10.1 and 3.16.1): a zstd file would fail there, and the CI
    # venvs (pip's pyarrow wheels, which have zstd) would not notice.
    manifest, objects = golden("2026-11-28")
    for entry in manifest["objects"]:
        metadata = parquet(objects[entry["key"]]).metadata
        assert metadata.num_row_groups <= 1, entry["key"]
        assert {metadata.row_group(0).column(c).compression for c in range(metadata.num_columns)
                if metadata.num_row_groups} <= {"SNAPPY"}, entry["key"]
    assert stage4.PARQUET_CODEC == "snappy"


# ---------------------------------------------------------------------------------------
# The Lambda's own copy of the column declaration


# How the Lambda reads a column of each SQL type: ids and counts as int64, text and money as text.
LAMBDA_DTYPE = {"BIGINT": "int64", "INTEGER": "int64", "TEXT": object, "NUMERIC(12, 2)": object,
                "NUMERIC(22, 2)": object}


def test_contract_lambda_columns_agree_with_waddle_common_schema():
    lf = lambda_module()
    for table, columns in lf.COLUMNS.items():
        exported = {c.name: c for c in stage4.EXPORT_DECLARATION[table]}
        for name, dtype in columns.items():
            assert name in exported, f"the Lambda reads {table}.{name}, which stage 4 does not export"
            assert exported[name] in common.SCHEMA[table].columns + common.SCHEMA["destination"].columns
            assert not exported[name].nullable, f"{table}.{name} may be NULL: the Lambda has no reading for it"
            assert LAMBDA_DTYPE[exported[name].sql_type] == dtype, f"{table}.{name}: {exported[name].sql_type}"
    assert set(lf.COLUMNS) == {"destination", "booking"}  # never customer: personal data
    # The money the Lambda sums is the column the grammar's 16 digits of units were set for.
    money = common.SCHEMA["booking"].column("total_booking_value")
    assert money.sql_type == "NUMERIC(22, 2)" and lf.MAX_UNIT_DIGITS == 16
