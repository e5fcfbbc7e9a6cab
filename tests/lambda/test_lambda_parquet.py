"""Stage 5 on Parquet exports (EXPORT_FORMAT=parquet): the golden Parquet export of the same
dataset as the zip and gzip ones gives the same metrics to the cent; money stays exact up to
the limit (decimal -> its exact text -> integer cents, never a float); a Parquet export without
pyarrow, or a Parquet object off the contract, fails with one clear error.

The tests that write or read Parquet need pyarrow and are skipped in the venv without it; the
no-pyarrow error runs everywhere (in a child process where no import finds pyarrow, and in
that venv for real)."""

from __future__ import annotations

import hashlib
import io
import json
from decimal import Decimal

import boto3
import pytest

from .support import DAY, EXPECTED, GZIP_DAY, PARQUET_DAY, PREFIX, FakeContext, golden_files, run_child, upload_golden

LIMIT = "9999999999999999.99"


def has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


needs_pyarrow = pytest.mark.skipif(not has_pyarrow(), reason="writes or reads Parquet: needs pyarrow")


def independent_parquet_metrics(day: str = PARQUET_DAY) -> dict:
    """The golden Parquet export's metrics without the Lambda: pyarrow's Decimal values and loops."""
    import pyarrow.parquet as pq

    files = golden_files(day)
    manifest = json.loads(files[f"{PREFIX}{day}/_manifest.json"])
    rows = {"destination": [], "booking": []}
    for entry in manifest["objects"]:
        if entry["table"] in rows:
            rows[entry["table"]].extend(pq.read_table(io.BytesIO(files[entry["key"]])).to_pylist())
    sums = {d["destination_id"]: [d["destination"], d["country"], 0, Decimal("0.00"), 0] for d in rows["destination"]}
    for b in rows["booking"]:
        assert isinstance(b["total_booking_value"], Decimal)  # typed: a decimal, not text, not a float
        row = sums[b["destination_id"]]
        row[2] += 1
        row[3] += b["total_booking_value"]
        row[4] += b["number_of_passengers"]
    return {i: (name, country, n, f"{value:.2f}", p) for i, (name, country, n, value, p) in sums.items()}


@needs_pyarrow
def test_lambda_parquet_and_csv_exports_of_one_database_give_the_same_metrics_exactly(lf, s3_bucket):
    results = {}
    for day in (DAY, GZIP_DAY, PARQUET_DAY):  # zip, gzip, Parquet: stage 4's exports of the same rows
        upload_golden(s3_bucket, day)
        results[day] = lf.lambda_handler({"date": day}, FakeContext())
    parquet, csv_zip, csv_gzip = results[PARQUET_DAY], results[DAY], results[GZIP_DAY]
    for name in ("metrics", "totals", "destinations_without_bookings", "destination_ids_without_bookings",
                 "rows_read", "objects_read"):
        assert parquet[name] == csv_zip[name] == csv_gzip[name], name
    assert (parquet["metrics"], parquet["totals"]) == (EXPECTED["metrics"], EXPECTED["totals"])
    assert {m["destination_id"]: tuple(m[c] for c in list(m)[1:]) for m in parquet["metrics"]} == (
        independent_parquet_metrics())
    assert parquet["totals"]["total_booking_value"] == "10000010107358903.15"  # float would show ...903.2


def test_lambda_parquet_export_without_pyarrow_is_one_clear_error(s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    upload_golden(s3_bucket, PARQUET_DAY)
    upload_golden(s3_bucket, DAY)  # a CSV export still works in the same process
    lines, stderr = run_child("without", [PARQUET_DAY, DAY])
    parquet, csv_day, versions = lines
    assert versions["pyarrow"] is False
    assert parquet["error"] == "MetricsError"
    first_destination = f"{PREFIX}{PARQUET_DAY}/{PARQUET_DAY.replace('-', '')}T060000.000Z-90100e11/destination/" \
                        f"destination_{PARQUET_DAY}_batch_0001.parquet"
    assert parquet["message"] == (
        f"object {first_destination} is Parquet and this Lambda has no pyarrow: add a layer with pyarrow (AWS SDK for "
        "pandas) or export the day as CSV (EXPORT_FORMAT=csv)")
    assert csv_day["totals"] == EXPECTED["totals"]
    assert stderr.count('"message": "run failed"') == 1 and "Traceback" not in stderr


# ---------------------------------------------------------------------------------------
# Parquet objects made here: the limit, and objects off the contract


def put_parquet_day(bucket: str, day: str, table) -> str:
    """A day of the golden Parquet destinations and one booking object holding `table`; its key."""
    import pyarrow.parquet as pq

    s3, files = boto3.client("s3"), golden_files(PARQUET_DAY)
    manifest = {"format_version": 1, "date": day, "prefix": f"{PREFIX}{day}/", "run_id": "r", "format": "parquet",
                "tables": {"destination": {"rows": 9}}, "objects": []}
    golden = json.loads(files[f"{PREFIX}{PARQUET_DAY}/_manifest.json"])["objects"]
    for entry in [e for e in golden if e["table"] == "destination"]:
        key = entry["key"].replace(PARQUET_DAY, day)
        s3.put_object(Bucket=bucket, Key=key, Body=files[entry["key"]])
        manifest["objects"].append({**entry, "key": key})
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy")
    body, key = out.getvalue(), f"{PREFIX}{day}/r/booking/booking_{day}_batch_0001.parquet"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    manifest["objects"].append({"key": key, "table": "booking", "rows": table.num_rows, "bytes": len(body),
                                "sha256": hashlib.sha256(body).hexdigest()})
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}{day}/_manifest.json", Body=json.dumps(manifest).encode())
    return key


def bookings(money, money_type=None, passengers=None, nullable=False):
    """A booking table of destination 1 with the given totals (typed as stage 4 types them, unless told)."""
    import pyarrow as pa

    money_type = money_type or pa.decimal128(22, 2)
    values = [Decimal(v) if pa.types.is_decimal(money_type) else v for v in money]
    schema = pa.schema([pa.field("destination_id", pa.int64(), nullable=False),
                        pa.field("number_of_passengers", pa.int32(), nullable=False),
                        pa.field("total_booking_value", money_type, nullable=nullable)])
    return pa.table([[1] * len(money), passengers or [1] * len(money), pa.array(values, money_type)], schema=schema)


@needs_pyarrow
def test_lambda_parquet_money_at_the_limit_is_exact(lf, s3_bucket):
    totals, passengers = [LIMIT] * 5 + ["0.01", "0.10"], [1] * 6 + [2147483647]
    put_parquet_day(s3_bucket, "2031-01-01", bookings(totals, passengers=passengers))
    result = lf.lambda_handler({"date": "2031-01-01"}, FakeContext())
    paris = next(m for m in result["metrics"] if m["destination_id"] == 1)
    assert paris["total_booking_value_per_destination"] == f"{Decimal(LIMIT) * 5 + Decimal('0.11'):.2f}"
    assert paris["total_booking_value_per_destination"] == "50000000000000000.06"  # as a float: 5e16
    assert paris["total_passengers_booked_per_destination"] == 6 + 2147483647
    assert result["rows_read"]["booking"] == 7


@needs_pyarrow
def test_lambda_parquet_money_is_read_in_chunks_naming_the_row(lf, s3_bucket):
    import pyarrow as pa

    key = put_parquet_day(s3_bucket, "2031-01-02", bookings(["1.00"] * 7 + ["-1.00"]))
    with pytest.raises(lf.ExportCorrupt) as raised:  # chunks of 3 rows: row 8 is in the third
        lf.compute_metrics(boto3.client("s3"), s3_bucket, PREFIX, "2031-01-02", chunk_rows=3)
    assert str(raised.value).startswith(f"object {key} data row 8: total_booking_value '-1.00' is not money")
    put_parquet_day(s3_bucket, "2031-01-05", bookings(["1.000"], pa.decimal128(22, 3)))
    with pytest.raises(lf.ExportCorrupt, match="'1.000' is not money"):  # a third decimal, even zero
        lf.compute_metrics(boto3.client("s3"), s3_bucket, PREFIX, "2031-01-05")


def _off_contract_cases():
    import pyarrow as pa

    return {
        "float money": (bookings([1.5, 2.25], pa.float64()), "total_booking_value '1.5' is not money"),
        "negative money": (bookings(["-1.00"]), "total_booking_value '-1.00' is not money"),
        "17 digits of units": (bookings(["10000000000000000.00"]), "'10000000000000000.00' is not money"),
        "money may be null": (bookings(["1.00"], nullable=True), "lacks column(s) total_booking_value; required"),
        "no money column": (bookings(["1.00"]).drop_columns(["total_booking_value"]),
                            "lacks column(s) total_booking_value"),
        "no passengers": (bookings(["1.00"], passengers=[0]), "number_of_passengers 0 is not a positive count"),
    }


@needs_pyarrow
@pytest.mark.parametrize("case", ["float money", "negative money", "17 digits of units", "money may be null",
                                  "no money column", "no passengers"])
def test_lambda_parquet_object_off_the_contract_is_export_corrupt(lf, s3_bucket, case):
    table, message = _off_contract_cases()[case]
    key = put_parquet_day(s3_bucket, "2031-01-03", table)
    with pytest.raises(lf.ExportCorrupt) as raised:
        lf.lambda_handler({"date": "2031-01-03"}, FakeContext())
    assert str(raised.value).startswith(f"object {key}") and message in str(raised.value)


@needs_pyarrow
def test_lambda_parquet_object_that_is_not_parquet_is_export_corrupt(lf, s3_bucket):
    key = put_parquet_day(s3_bucket, "2031-01-04", bookings(["1.00"]))
    manifest = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"{PREFIX}2031-01-04/_manifest.json")
                          ["Body"].read())
    body = b"destination_id,number_of_passengers,total_booking_value\n1,1,1.00\n"  # a CSV named .parquet
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=key, Body=body)
    entry = next(o for o in manifest["objects"] if o["key"] == key)
    entry.update(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{PREFIX}2031-01-04/_manifest.json",
                                  Body=json.dumps(manifest).encode())
    with pytest.raises(lf.ExportCorrupt, match=rf"object {key} cannot be read as a booking parquet: .*[Pp]arquet"):
        lf.lambda_handler({"date": "2031-01-04"}, FakeContext())


def test_lambda_manifest_of_an_unknown_format_is_export_corrupt(lf, s3_bucket):
    manifest = upload_golden(s3_bucket, DAY)
    manifest["format"] = "orc"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"{PREFIX}{DAY}/_manifest.json",
                                  Body=json.dumps(manifest).encode())
    with pytest.raises(lf.ExportCorrupt, match="is for format 'orc', not 'csv' or 'parquet' or None"):
        lf.lambda_handler({"date": DAY}, FakeContext())
