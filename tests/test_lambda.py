"""Stage 5, the Lambda (lambda/lambda_function.py), against moto's S3 server over real HTTP.

Exports are written here by `write_export()` in the stage-4 contract format (manifest with
sizes and SHA-256, .csv.zip / .csv.gz / .csv batches), so these tests do not depend on
stage 4; one end-to-end test runs stages 3 and 4 for real when stage 4 is present.
Expected metrics are computed independently, in plain Python with Decimal.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import importlib.util
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from conftest import REPO, query

LAMBDA_DIR = REPO / "lambda"
LAMBDA_FILE = LAMBDA_DIR / "lambda_function.py"
DAY = "2026-11-26"
PREFIX = "exports/"


def load_lambda_module():
    """Import lambda/lambda_function.py by path (`lambda` is a keyword, not a package)."""
    name = "waddle_lambda_function"
    spec = importlib.util.spec_from_file_location(name, LAMBDA_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


lf = load_lambda_module()


class FakeContext:
    """The attributes of a Lambda context the handler may use."""

    aws_request_id = "11111111-2222-3333-4444-555555555555"
    function_name = "waddle-destination-metrics"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 300_000


# An EventBridge scheduled event as Lambda receives it (AWS's sample, with our rule).
EVENTBRIDGE_EVENT = """
{
  "version": "0",
  "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
  "detail-type": "Scheduled Event",
  "source": "aws.events",
  "account": "123456789012",
  "time": "2026-11-26T06:00:00Z",
  "region": "us-east-1",
  "resources": ["arn:aws:events:us-east-1:123456789012:rule/waddle-daily-metrics"],
  "detail": {}
}
"""


# ---------------------------------------------------------------------------------------
# Test data and an export writer in the stage-4 contract format

DESTINATION_COLUMNS = ["destination_id", "destination", "country", "popular_season"]
BOOKING_COLUMNS = [
    "booking_id", "customer_id", "destination_id", "destination", "country", "booking_date",
    "number_of_passengers", "cost_per_passenger", "total_booking_value", "passengers_imputed", "cost_imputed",
]

DESTINATIONS = [
    {"destination_id": 1, "destination": "Paris", "country": "France", "popular_season": "Spring"},
    {"destination_id": 2, "destination": "Springfield", "country": "United States", "popular_season": "Summer"},
    {"destination_id": 3, "destination": "Springfield", "country": "Australia", "popular_season": "Winter"},
    {"destination_id": 4, "destination": "Nan", "country": "Thailand", "popular_season": "Winter"},  # not NaN
    {"destination_id": 5, "destination": "Atlantis", "country": "Nowhere", "popular_season": "Summer"},  # unbooked
    {"destination_id": 9000000000000000001, "destination": "Kyoto", "country": "Japan", "popular_season": "Autumn"},
    {"destination_id": 7, "destination": "Reykjavik", "country": "Iceland", "popular_season": "Winter"},  # unbooked
]


def make_bookings(destinations, count: int, seed: int = 7) -> list[dict]:
    """Bookings with total = passengers x cost, as stage 3 computes it (text, 2 places)."""
    rng = random.Random(seed)
    booked = [d for d in destinations if d["destination"] not in ("Atlantis", "Reykjavik")]
    rows = []
    for number in range(1, count + 1):
        dest = rng.choice(booked)
        passengers = rng.randint(1, 9)
        cost = Decimal(rng.randint(0, 999_999)) / 100  # 0.00 .. 9999.99
        rows.append({
            "booking_id": number,
            "customer_id": rng.randint(1, 50),
            "destination_id": dest["destination_id"],
            "destination": dest["destination"],
            "country": dest["country"],
            "booking_date": f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}",
            "number_of_passengers": passengers,
            "cost_per_passenger": f"{cost:.2f}",
            "total_booking_value": f"{cost * passengers:.2f}",
            "passengers_imputed": "false",
            "cost_imputed": "true" if number % 11 == 0 else "false",
        })
    return rows


BOOKINGS = make_bookings(DESTINATIONS, 120)

EXTENSIONS = {"zip": ".csv.zip", "gzip": ".csv.gz", "none": ".csv"}


def csv_bytes(columns, rows) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def pack(member_name: str, data: bytes, compression: str) -> bytes:
    if compression == "zip":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member_name, data)
        return out.getvalue()
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    return data


def write_export(bucket: str, day: str = DAY, prefix: str = PREFIX, *, destinations=DESTINATIONS,
                 bookings=BOOKINGS, compression: str = "zip", batch_size: int = 50,
                 extra_objects: int = 0) -> dict:
    """Write a day's export as stage 4 does; returns the manifest (objects listed in order)."""
    s3 = boto3.client("s3")
    tables = {"destination": (DESTINATION_COLUMNS, destinations), "booking": (BOOKING_COLUMNS, bookings)}
    manifest = {
        "format_version": 1, "date": day, "prefix": prefix, "exported_at": f"{day}T05:00:00Z",
        "tool": "data-waddle", "tool_version": "test", "compression": compression,
        "tables": {"customer": {"columns": ["customer_id"], "rows": 0}}, "objects": [],
    }
    for table, (columns, rows) in tables.items():
        manifest["tables"][table] = {"columns": columns, "rows": len(rows)}
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)] or [[]]
        for number, batch in enumerate(batches, start=1):
            name = f"{table}_{day}_batch_{number:04d}"
            body = pack(f"{name}.csv", csv_bytes(columns, batch), compression)
            key = f"{prefix}{day}/{table}/{name}{EXTENSIONS[compression]}"
            s3.put_object(Bucket=bucket, Key=key, Body=body)
            manifest["objects"].append({
                "key": key, "table": table, "rows": len(batch), "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            })
    for number in range(extra_objects):  # in the folder but not listed: not part of the export
        s3.put_object(Bucket=bucket, Key=f"{prefix}{day}/booking/stray_{number}.csv", Body=b"not,a,booking\n1,2,3\n")
    s3.put_object(Bucket=bucket, Key=f"{prefix}{day}/_manifest.json", Body=json.dumps(manifest).encode())
    return manifest


def expected_metrics(destinations, bookings) -> dict[int, dict]:
    """The metrics computed independently: plain loops and Decimal."""
    out = {
        d["destination_id"]: {"name": d["destination"], "country": d["country"], "bookings": 0,
                              "value": Decimal("0.00"), "passengers": 0}
        for d in destinations
    }
    for b in bookings:
        m = out[int(b["destination_id"])]
        m["bookings"] += 1
        m["value"] += Decimal(str(b["total_booking_value"]))
        m["passengers"] += int(b["number_of_passengers"])
    return out


def assert_metrics_equal(result: dict, expected: dict[int, dict]) -> None:
    got = {m["destination_id"]: m for m in result["metrics"]}
    assert set(got) == set(expected)
    for dest_id, want in expected.items():
        m = got[dest_id]
        assert (m["destination"], m["country"]) == (want["name"], want["country"])
        assert m["total_bookings_per_destination"] == want["bookings"]
        assert m["total_passengers_booked_per_destination"] == want["passengers"]
        assert m["total_booking_value_per_destination"] == f"{want['value']:.2f}"
    order = [(m["destination"], m["country"], m["destination_id"]) for m in result["metrics"]]
    assert order == sorted(order)
    totals = result["totals"]
    assert totals["total_bookings"] == sum(w["bookings"] for w in expected.values())
    assert totals["total_passengers_booked"] == sum(w["passengers"] for w in expected.values())
    assert totals["total_booking_value"] == f"{sum(w['value'] for w in expected.values()):.2f}"
    assert totals["destinations"] == len(expected)
    unbooked = [m for m in result["metrics"] if expected[m["destination_id"]]["bookings"] == 0]
    assert result["destinations_without_bookings"] == [m["destination"] for m in unbooked]
    assert result["destination_ids_without_bookings"] == [m["destination_id"] for m in unbooked]


@pytest.fixture(autouse=True)
def export_prefix(monkeypatch):
    """Stage 4's usual S3_PREFIX; tests of other prefixes set their own."""
    monkeypatch.setenv("S3_PREFIX", PREFIX)


@pytest.fixture
def s3(s3_bucket):
    return boto3.client("s3")


# ---------------------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize("compression", ["zip", "gzip", "none"])
def test_lambda_metrics_match_independent_computation(s3_bucket, compression):
    manifest = write_export(s3_bucket, compression=compression, batch_size=25, extra_objects=1)

    result = lf.lambda_handler({"date": DAY}, FakeContext())

    assert_metrics_equal(result, expected_metrics(DESTINATIONS, BOOKINGS))
    assert (result["date"], result["bucket"], result["prefix"]) == (DAY, s3_bucket, PREFIX)
    assert result["objects_read"] == len(manifest["objects"]) == 1 + 5  # the stray object is not read
    assert result["rows_read"] == {"destination": len(DESTINATIONS), "booking": len(BOOKINGS)}
    assert result["results"] is None
    assert json.loads(json.dumps(result)) == result


def test_lambda_zero_booking_and_same_name_destinations(s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", "")  # the bucket's root
    write_export(s3_bucket, prefix="")
    result = lf.lambda_handler({"date": DAY}, FakeContext())

    by_id = {m["destination_id"]: m for m in result["metrics"]}
    for unbooked in (5, 7):
        assert by_id[unbooked]["total_bookings_per_destination"] == 0
        assert by_id[unbooked]["total_passengers_booked_per_destination"] == 0
        assert by_id[unbooked]["total_booking_value_per_destination"] == "0.00"
    assert result["destinations_without_bookings"] == ["Atlantis", "Reykjavik"]
    springfields = [m for m in result["metrics"] if m["destination"] == "Springfield"]
    assert [(m["destination_id"], m["country"]) for m in springfields] == [(3, "Australia"), (2, "United States")]
    expected = expected_metrics(DESTINATIONS, BOOKINGS)
    for m in springfields:
        assert m["total_bookings_per_destination"] == expected[m["destination_id"]]["bookings"] > 0
    assert by_id[4]["destination"] == "Nan"  # a real town, not a missing value
    assert by_id[9000000000000000001]["destination"] == "Kyoto"  # BIGINT ids survive exactly


@pytest.mark.parametrize("chunk_rows", [1, 7, 100_000])
def test_lambda_chunk_size_does_not_change_results(s3, s3_bucket, chunk_rows):
    write_export(s3_bucket, compression="gzip", batch_size=40)
    result = lf.compute_metrics(s3, s3_bucket, PREFIX, DAY, chunk_rows=chunk_rows)
    assert_metrics_equal(result, expected_metrics(DESTINATIONS, BOOKINGS))


def test_lambda_money_is_exact_to_the_cent(s3_bucket):
    # Floats would drift on these (0.1 + 0.2 ...); int64 would overflow on the big ones.
    tiny = [{"destination_id": 1, "destination": "Paris", "country": "France", "popular_season": "Spring"}]
    values = ["0.10", "0.20", "0.01", "9999999999999999.99", "9999999999999999.99", "1234.5", "7"]
    bookings = [
        dict(BOOKINGS[0], booking_id=n, destination_id=1, number_of_passengers=1, total_booking_value=v)
        for n, v in enumerate(values, start=1)
    ]
    write_export(s3_bucket, destinations=tiny, bookings=bookings, compression="none")
    result = lf.lambda_handler({"date": DAY}, None)
    expected = sum(Decimal(v) for v in values)
    assert result["metrics"][0]["total_booking_value_per_destination"] == f"{expected:.2f}" == "20000000000001241.79"
    assert result["totals"]["total_booking_value"] == "20000000000001241.79"


def test_lambda_sums_do_not_overflow_int64_within_a_chunk():
    pd = lf.pd
    chunk = pd.DataFrame({
        "destination_id": pd.Series([1] * 10, dtype="int64"),
        "number_of_passengers": pd.Series([1] * 10, dtype="int64"),
        "total_booking_value": pd.Series(["9999999999999999.99"] * 10, dtype="str"),
    })
    sums = lf.Sums()
    sums.add(chunk)
    sums.add(chunk)
    assert sums.cents == {1: 20 * (10**18 - 1)}
    assert lf.format_cents(sums.cents[1]) == f"{Decimal('9999999999999999.99') * 20:.2f}"


@pytest.mark.parametrize(
    "text, cents",
    [("99.99", 9999), ("100", 10000), ("0.5", 50), ("3.", 300), ("0.00", 0), ("-1.05", -105), (" 12.30 ", 1230)],
)
def test_lambda_parse_cents(text, cents):
    assert lf.parse_cents(lf.pd.Series([text], dtype="str")).tolist() == [cents]


@pytest.mark.parametrize("dtype", ["str", object, "string[pyarrow]"])
def test_lambda_parse_cents_same_on_every_string_storage(dtype):
    texts = ["99.99", "100", "0.5", "-1.05", "0.00", "9999999999999999.99", " 12.30 ", "007.10"]
    expected = [9999, 10000, 50, -105, 0, 999999999999999999, 1230, 710]
    assert lf.parse_cents(lf.pd.Series(texts, dtype=dtype)).tolist() == expected
    exported = ["1234.50", "-0.05", "0.00"]  # stage 4's own shape: the all-vectorised path
    assert lf.parse_cents(lf.pd.Series(exported, dtype=dtype)).tolist() == [123450, -5, 0]


@pytest.mark.parametrize("dtype", ["str", object, "string[pyarrow]"])
@pytest.mark.parametrize("text", ["1.234", "1.2.3", "12.3.", "abc", "1e5", ""])
def test_lambda_parse_cents_rejects_on_every_string_storage(dtype, text):
    with pytest.raises(ValueError, match="total_booking_value"):
        lf.parse_cents(lf.pd.Series(["10.00", text], dtype=dtype))


def test_lambda_group_sums_are_exact_integers():
    np = lf.np
    ids = np.array([3, 1, 3, 2, 1, 3], dtype=np.int64)
    cents = np.array([10**17, 1, 10**17, 5, 2, 7], dtype=np.int64)
    keys, counts, (sums,) = lf.group_sums(ids, cents)
    by_id = {k: (c, t) for k, c, t in zip(keys.tolist(), counts.tolist(), sums.tolist())}
    assert by_id == {1: (2, 3), 2: (1, 5), 3: (3, 2 * 10**17 + 7)}  # beyond float64's exact integers
    _, _, (big,) = lf.group_sums(ids[:1], np.array([10**18], dtype=object) * 20)
    assert big.tolist() == [20 * 10**18]  # Python integers when int64 could overflow


@pytest.mark.parametrize("text", ["1.234", "abc", "", "1e5", "1,50", "12345678901234567.00", "NaN"])
def test_lambda_parse_cents_rejects(text):
    with pytest.raises(ValueError, match="total_booking_value"):
        lf.parse_cents(lf.pd.Series([text], dtype="str"))


@pytest.mark.parametrize(
    "cents, text",
    [(0, "0.00"), (5, "0.05"), (123450, "1234.50"), (-5, "-0.05"), (10**20, "1000000000000000000.00")],
)
def test_lambda_format_cents(cents, text):
    assert lf.format_cents(cents) == text


# ---------------------------------------------------------------------------------------
# The day


def test_lambda_date_from_event(s3_bucket):
    write_export(s3_bucket, day="2026-01-31")
    assert lf.lambda_handler({"date": "2026-01-31"}, FakeContext())["date"] == "2026-01-31"


def test_lambda_date_from_eventbridge_time(s3_bucket):
    write_export(s3_bucket)
    event = json.loads(EVENTBRIDGE_EVENT)
    result = lf.lambda_handler(event, FakeContext())
    assert result["date"] == DAY
    assert_metrics_equal(result, expected_metrics(DESTINATIONS, BOOKINGS))


def test_lambda_date_defaults_to_today_utc(s3_bucket):
    before = datetime.now(timezone.utc).date()
    for day in {before, before + timedelta(days=1)}:  # the run may straddle midnight UTC
        write_export(s3_bucket, day=day.isoformat())
    result = lf.lambda_handler({}, FakeContext())
    after = datetime.now(timezone.utc).date()
    assert result["date"] in {before.isoformat(), after.isoformat()}


@pytest.mark.parametrize(
    "event, now, day",
    [
        ({"date": "2026-02-28", "time": "2026-03-01T06:00:00Z"}, None, "2026-02-28"),
        ({"time": "2026-11-26T06:00:00Z"}, None, "2026-11-26"),
        ({"time": "2026-11-26T23:30:00-02:00"}, None, "2026-11-27"),  # UTC date
        ({}, datetime(2026, 11, 26, 23, 59, tzinfo=timezone(timedelta(hours=-5))), "2026-11-27"),
        (None, datetime(2026, 11, 26, 0, 1, tzinfo=timezone.utc), "2026-11-26"),
    ],
)
def test_lambda_resolve_date(event, now, day):
    assert lf.resolve_date(event, now=now) == day


@pytest.mark.parametrize("event", [{"date": "2026-13-01"}, {"date": "26-11-2026"}, {"date": "2026-02-30"},
                                   {"date": 20261126}, {"time": "yesterday"}])
def test_lambda_rejects_bad_dates(s3_bucket, event):
    with pytest.raises(lf.MetricsError, match="YYYY-MM-DD|ISO 8601"):
        lf.lambda_handler(event, FakeContext())


# ---------------------------------------------------------------------------------------
# Failures name what is wrong


def test_lambda_no_manifest_names_bucket_and_prefix(s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", "exports")  # normalised to exports/
    with pytest.raises(lf.ExportNotFound) as raised:
        lf.lambda_handler({"date": DAY}, FakeContext())
    message = str(raised.value)
    assert s3_bucket in message and "'exports/'" in message and f"exports/{DAY}/_manifest.json" in message


def test_lambda_missing_bucket_setting_is_reported(monkeypatch):
    with pytest.raises(lf.MetricsError, match="S3_BUCKET_NAME is not set"):
        lf.lambda_handler({"date": DAY}, FakeContext())


@pytest.mark.parametrize("change", ["same_size", "appended", "truncated"])
def test_lambda_corrupted_object_names_its_key(s3, s3_bucket, change):
    manifest = write_export(s3_bucket, compression="zip", batch_size=30)
    key = [o["key"] for o in manifest["objects"] if o["table"] == "booking"][2]
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    if change == "same_size":
        body[len(body) // 2] ^= 0xFF
    elif change == "appended":
        body += b"\n"
    else:
        del body[-10:]
    s3.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))

    with pytest.raises(lf.ExportCorrupt, match=re.escape(key)):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_listed_object_missing_names_its_key(s3, s3_bucket):
    manifest = write_export(s3_bucket, compression="gzip")
    key = manifest["objects"][-1]["key"]
    s3.delete_object(Bucket=s3_bucket, Key=key)
    with pytest.raises(lf.ExportCorrupt, match=re.escape(key) + ".*missing"):
        lf.lambda_handler({"date": DAY}, FakeContext())


def rewrite_object(s3, bucket: str, manifest: dict, index: int, data: bytes, compression: str = "none") -> str:
    """Replace an object and fix its manifest entry, so only the content is at fault."""
    entry = manifest["objects"][index]
    body = pack("x.csv", data, compression)
    s3.put_object(Bucket=bucket, Key=entry["key"], Body=body)
    entry.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{DAY}/_manifest.json", Body=json.dumps(manifest).encode())
    return entry["key"]


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"destination_id,number_of_passengers\n1,2\n", "lacks column.*total_booking_value"),
        (b"destination_id,number_of_passengers,total_booking_value\n1,2,1.234\n", "1.234"),
        (b"destination_id,number_of_passengers,total_booking_value\n1,,10.00\n", "cannot be read"),
        (b"destination_id,number_of_passengers,total_booking_value\n999,2,10.00\n", "destination_id.*999"),
        (b"destination_id,number_of_passengers,total_booking_value\n1,2,10.00\n1,2,10.00\n",
         "2 rows, the manifest says 1"),
    ],
)
def test_lambda_bad_booking_content_is_reported(s3, s3_bucket, data, problem):
    bookings = BOOKINGS[:1]
    manifest = write_export(s3_bucket, bookings=bookings, compression="none")
    index = next(i for i, o in enumerate(manifest["objects"]) if o["table"] == "booking")
    key = rewrite_object(s3, s3_bucket, manifest, index, data)
    with pytest.raises(lf.ExportCorrupt, match=problem) as raised:
        lf.lambda_handler({"date": DAY}, FakeContext())
    if "destination_id" not in problem:  # the unknown-id check runs after all objects
        assert key in str(raised.value)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m.update(format_version=2), "format_version"),
        (lambda m: m.update(date="2026-11-25"), "is for date"),
        (lambda m: m["objects"][0].update(key="elsewhere/x.csv.zip"), "outside the day's folder"),
        (lambda m: m["objects"][0].update(sha256="abc"), "sha256"),
        (lambda m: m["tables"]["booking"].update(rows=1), "table booking has 1 rows"),
    ],
)
def test_lambda_invalid_manifest_is_reported(s3, s3_bucket, edit, problem):
    manifest = write_export(s3_bucket)
    edit(manifest)
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/_manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(lf.ExportCorrupt, match=problem):
        lf.lambda_handler({"date": DAY}, FakeContext())


def test_lambda_zip_with_two_members_is_reported(s3, s3_bucket):
    manifest = write_export(s3_bucket)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.csv", csv_bytes(DESTINATION_COLUMNS, DESTINATIONS))
        archive.writestr("b.csv", b"")
    entry = manifest["objects"][0]
    s3.put_object(Bucket=s3_bucket, Key=entry["key"], Body=out.getvalue())
    entry.update(bytes=len(out.getvalue()), sha256=hashlib.sha256(out.getvalue()).hexdigest())
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/_manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(lf.ExportCorrupt, match=re.escape(entry["key"]) + ".*holds 2 files"):
        lf.lambda_handler({"date": DAY}, FakeContext())


# ---------------------------------------------------------------------------------------
# Results in the bucket


def test_lambda_writes_results_when_results_prefix_set(s3, s3_bucket, monkeypatch):
    monkeypatch.setenv("RESULTS_PREFIX", "metrics")
    write_export(s3_bucket)
    result = lf.lambda_handler({"date": DAY}, FakeContext())

    json_key, csv_key = f"metrics/{DAY}/destination_metrics.json", f"metrics/{DAY}/destination_metrics.csv"
    assert result["results"] == {"json": f"s3://{s3_bucket}/{json_key}", "csv": f"s3://{s3_bucket}/{csv_key}"}
    stored = json.loads(s3.get_object(Bucket=s3_bucket, Key=json_key)["Body"].read())
    assert stored == result
    rows = list(csv.DictReader(io.StringIO(s3.get_object(Bucket=s3_bucket, Key=csv_key)["Body"].read().decode())))
    assert rows == [{k: str(v) for k, v in m.items()} for m in result["metrics"]]
    assert rows[0].keys() == set(lf.METRIC_COLUMNS) and list(rows[0]) == list(lf.METRIC_COLUMNS)


def test_lambda_writes_nothing_without_results_prefix(s3, s3_bucket):
    manifest = write_export(s3_bucket)
    lf.lambda_handler({"date": DAY}, FakeContext())
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert keys == {o["key"] for o in manifest["objects"]} | {f"{PREFIX}{DAY}/_manifest.json"}


# ---------------------------------------------------------------------------------------
# Deployed alone: imports


ALLOWED_IMPORTS = {"pandas", "numpy", "boto3", "botocore"}
OPTIONAL_IMPORTS = {"dotenv", "pyarrow"}  # only inside try/except ImportError (local runs; the faster reader)


def test_lambda_imports_only_stdlib_pandas_and_boto3():
    tree = ast.parse(LAMBDA_FILE.read_text(encoding="utf-8"))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OPTIONAL_IMPORTS:
                assert id(node) in guarded, f"{name} must be optional (try/except ImportError)"
                continue
            assert top in sys.stdlib_module_names or top in ALLOWED_IMPORTS, f"lambda_function imports {name}"


def test_lambda_module_has_the_handler():
    assert callable(lf.lambda_handler)
    assert lf.lambda_handler.__code__.co_varnames[:2] == ("event", "context")


# ---------------------------------------------------------------------------------------
# The local command line (a subprocess: the file runs on its own, outside the repo's path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAMBDA_FILE), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_lambda_cli_json(s3_bucket, tmp_path):
    write_export(s3_bucket)
    done = run_cli("--date", DAY, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    result = json.loads(done.stdout)
    assert_metrics_equal(result, expected_metrics(DESTINATIONS, BOOKINGS))
    assert result["date"] == DAY


def test_lambda_cli_table(s3_bucket, tmp_path):
    write_export(s3_bucket)
    done = run_cli("--date", DAY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = expected_metrics(DESTINATIONS, BOOKINGS)
    lines = done.stdout.splitlines()
    paris = next(line for line in lines if " Paris " in line).split()
    assert paris == ["1", "Paris", "France", str(expected[1]["bookings"]), f"{expected[1]['value']:.2f}",
                     str(expected[1]["passengers"])]
    assert lines[-1] == "Destinations without bookings: Atlantis, Reykjavik"


def test_lambda_cli_reads_dotenv(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("S3_PREFIX")  # a real variable would win over .env
    write_export(s3_bucket, prefix="other/")
    (tmp_path / ".env").write_text("S3_PREFIX=other/\n")
    done = run_cli("--date", DAY, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prefix"] == "other/"


def test_lambda_cli_failure_is_one_line(s3_bucket, tmp_path):
    done = run_cli("--date", DAY, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("lambda_function: error: no export for 2026-11-26")
    assert s3_bucket in done.stderr


def test_lambda_cli_help_and_usage(tmp_path):
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--date", "--json", "--env-file", "--verbose"):
        assert option in done.stdout
    assert run_cli("--date", "26/11/2026", cwd=tmp_path).returncode == 2


def test_lambda_main_in_process(s3_bucket, capsys):
    write_export(s3_bucket)
    assert lf.main(["--date", DAY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["destinations"] == len(DESTINATIONS)


# ---------------------------------------------------------------------------------------
# Configuration, README and template agree


def env_example_variables() -> list[str]:
    text = (LAMBDA_DIR / "env.example").read_text(encoding="utf-8")
    return [line.split("=", 1)[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_lambda_env_example_lists_the_settings_and_no_secret():
    names = env_example_variables()
    assert names == ["S3_BUCKET_NAME", "S3_PREFIX", "RESULTS_PREFIX", "LOG_LEVEL"]
    source = LAMBDA_FILE.read_text(encoding="utf-8")
    for name in names:
        assert f'"{name}"' in source
    text = (LAMBDA_DIR / "env.example").read_text(encoding="utf-8")
    assert not re.search(r"(?i)(secret|access_key|password|token)\s*=", text)


def test_lambda_readme_agrees_with_env_example_help_and_template():
    readme = (LAMBDA_DIR / "README.md").read_text(encoding="utf-8")
    for name in env_example_variables():
        assert f"`{name}`" in readme, f"README does not document {name}"
    for option in ("--date", "--json", "--env-file", "--verbose"):
        assert option in readme
    assert "lambda_function.lambda_handler" in readme and "python3.12" in readme
    # The policies and the template: tests/test_lambda_template.py.


# ---------------------------------------------------------------------------------------
# End to end: stage 3 loads the sample, stage 4 exports it, the Lambda reads it


STAGE4 = REPO / "batch_transfer_data_to_cloud_storage.py"


@pytest.mark.slow
@pytest.mark.skipif(not STAGE4.exists(), reason="stage 4 (batch_transfer_data_to_cloud_storage.py) not present")
def test_lambda_end_to_end_with_stages_3_and_4(schema_db, sample_dir, s3_bucket, monkeypatch):
    import batch_transfer_data_to_cloud_storage as stage4
    import transform_load_csv_data as stage3

    monkeypatch.setenv("S3_PREFIX", "exports/")
    monkeypatch.setenv("EXPORT_BATCH_SIZE", "37")  # several objects per table
    assert stage3.main(["--data-dir", str(sample_dir)]) == 0
    assert stage4.main(["--date", DAY]) == 0

    result = lf.lambda_handler({"date": DAY}, FakeContext())

    rows = query(schema_db, """
        SELECT d.destination_id, d.destination, d.country, count(b.booking_id),
               coalesce(sum(b.total_booking_value), 0), coalesce(sum(b.number_of_passengers), 0)
        FROM destination d LEFT JOIN booking b USING (destination_id)
        GROUP BY d.destination_id, d.destination, d.country
    """)
    expected = {
        dest_id: {"name": name, "country": country, "bookings": count, "value": Decimal(value),
                  "passengers": int(passengers)}
        for dest_id, name, country, count, value, passengers in rows
    }
    assert_metrics_equal(result, expected)
    assert result["rows_read"]["booking"] == query(schema_db, "SELECT count(*) FROM booking")[0][0]
